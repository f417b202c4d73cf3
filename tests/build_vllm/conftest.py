"""Fixtures of the build script's tests: the two interpreters and a scratch checkout (helpers.py)."""

import pathlib
import shlex
import subprocess
import sys
import sysconfig

import pytest

from tests.build_vllm.helpers import FAKE_PYTHON, kill_recorded_build_processes, make_checkout


@pytest.fixture(scope="session")
def build_python(tmp_path_factory) -> pathlib.Path:
    """A throwaway venv whose site-packages also sees ours (torch, pip, setuptools) via a .pth."""
    venv = tmp_path_factory.mktemp("build-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # addsitedir (not a bare path line) so that the .pth files of our venv are processed too: a
    # thin venv reaches its packages through one of them.
    outer = sysconfig.get_paths()["purelib"]
    pathlib.Path(purelib, "outer_venv.pth").write_text(f"import site; site.addsitedir({outer!r})\n")
    return python


@pytest.fixture(scope="session")
def fake_python(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("fake-python") / "python"
    path.write_text(FAKE_PYTHON.format(python=shlex.quote(sys.executable)))
    path.chmod(0o755)
    return path


@pytest.fixture
def checkout(tmp_path):
    repo = make_checkout(tmp_path / "vllm")
    yield repo
    kill_recorded_build_processes(repo)

"""Each clone runs its own code: setup.sh gives every clone a thin venv over the shared cached one.

Two scratch clones (setup.sh, the lock and a package that says which clone it is) are set up one
after the other against the cached venv this suite runs in; afterwards each clone's interpreter, its
console scripts (torchrun) and scripts started by path must import that clone's package, not the
other's and not this checkout's.
"""

import os
import pathlib
import shutil
import subprocess

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MARKER = REPO_ROOT / ".venv" / ".pytorch_scripts_base"


def cached_venv() -> pathlib.Path:
    if not MARKER.is_file():
        pytest.fail(f"{MARKER} is missing: run the suite through `bash setup.sh test`")
    return pathlib.Path(MARKER.read_text().strip().split("|")[0])


def make_clone(root: pathlib.Path, name: str) -> pathlib.Path:
    clone = root / name
    (clone / "requirements").mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "setup.sh", clone / "setup.sh")
    for path in ["lock.cpu.txt", "check_lock.py"]:
        shutil.copy2(REPO_ROOT / "requirements" / path, clone / "requirements" / path)
    # The package name every clone has (here the shared one), saying which clone it came from.
    package = clone / "pytorch_scripts_common"
    package.mkdir()
    (package / "__init__.py").write_text(f"CLONE = {name!r}\n")
    (clone / "tool").mkdir()
    which = "import pytorch_scripts_common\nprint(pytorch_scripts_common.CLONE)\n"
    (clone / "tool" / "which.py").write_text(which)
    return clone


def setup_env(clone: pathlib.Path, base: pathlib.Path) -> str:
    env = {**os.environ, "PYTORCH_SCRIPTS_CACHE_DIR": str(base.parent), "PYTHON": "python3.11"}
    result = subprocess.run(
        ["bash", "setup.sh", "env"], cwd=clone, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "building" not in result.stderr, "the cached venv was rebuilt instead of reused"
    return result.stdout.strip().splitlines()[-1]


def run(args: list[str], cwd: pathlib.Path) -> str:
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_two_clones_each_import_their_own_code(tmp_path):
    base = cached_venv()
    clones = [make_clone(tmp_path, "clone_a"), make_clone(tmp_path, "clone_b")]
    for clone in clones:
        assert setup_env(clone, base) == str(clone / ".venv")
    for clone in clones:
        python = str(clone / ".venv" / "bin" / "python")
        torchrun = str(clone / ".venv" / "bin" / "torchrun")
        which = str(clone / "tool" / "which.py")
        # From another directory, so that the working directory cannot be what finds the package.
        code = "import pytorch_scripts_common as p; print(p.CLONE)"
        assert run([python, "-c", code], tmp_path) == clone.name
        assert run([python, which], tmp_path) == clone.name
        assert run([torchrun, "--nproc_per_node", "1", which], tmp_path) == clone.name
        # The heavy packages come from the one cached venv.
        torch_file = run([python, "-c", "import torch; print(torch.__file__)"], tmp_path)
        assert torch_file.startswith(str(base) + os.sep), torch_file


def test_setup_refuses_a_venv_folder_it_did_not_make(tmp_path):
    clone = make_clone(tmp_path, "clone_c")
    (clone / ".venv").mkdir()
    (clone / ".venv" / "mine.txt").write_text("user data")
    env = {**os.environ, "PYTORCH_SCRIPTS_CACHE_DIR": str(cached_venv().parent), "PYTHON": "python3.11"}
    result = subprocess.run(
        ["bash", "setup.sh", "env"], cwd=clone, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "was not made by setup.sh" in result.stderr
    assert (clone / ".venv" / "mine.txt").read_text() == "user data"
    assert not list(clone.glob(".venv.tmp-*"))

"""build_vllm_with_existing_torch.sh against scratch git repos shaped like a vLLM checkout.

The scratch checkout has a fake ``use_existing_torch.py`` (drops torch lines, as vLLM's does) and a
``setup.py`` whose build succeeds, fails, hangs or commits on demand (env ``FAKE_VLLM_BUILD``). The
build is a real ``pip install --no-build-isolation -e .`` into a throwaway venv that sees this
repo's venv (torch, pip, setuptools) through a .pth file, so nothing is installed into the shared
environment.
"""

import hashlib
import os
import pathlib
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "build_vllm_with_existing_torch.sh"

FAKE_USE_EXISTING_TORCH = """\
import glob

for path in (*glob.glob("requirements/*.txt"), "pyproject.toml"):
    try:
        with open(path) as f:
            lines = f.readlines()
    except FileNotFoundError:
        continue
    with open(path, "w") as f:
        f.writelines(line for line in lines if "torch" not in line.lower())
"""

FAKE_SETUP_PY = """\
import os
import pathlib
import subprocess
import sys
import time

from setuptools import setup

mode = os.environ.get("FAKE_VLLM_BUILD", "ok")
requirements = "".join(p.read_text() for p in sorted(pathlib.Path("requirements").glob("*.txt")))
pathlib.Path("build_marker.txt").write_text(
    f"target={os.environ.get('VLLM_TARGET_DEVICE')}\\n"
    f"torch_in_requirements={'torch' in requirements}\\n"
    f"feature={pathlib.Path('vllm_fake/feature.py').read_text()!r}\\n"
)
if mode == "fail":
    sys.exit("fake vLLM build: failure requested")
if mode == "hang":
    pathlib.Path("build_started").write_text("1")
    time.sleep(300)
if mode == "commit":
    pathlib.Path("README.md").write_text("committed during the build\\n")
    subprocess.run(["git", "commit", "-qam", "commit during build"], check=True)
setup(name="fake-vllm-checkout", version="0.0.1", packages=["vllm_fake"])
"""


def git(repo: pathlib.Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, timeout=60
    ).stdout


@pytest.fixture(scope="module")
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
    pathlib.Path(purelib, "outer_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture
def checkout(tmp_path) -> pathlib.Path:
    repo = tmp_path / "vllm"
    (repo / "requirements").mkdir(parents=True)
    (repo / "vllm_fake").mkdir()
    files = {
        "use_existing_torch.py": FAKE_USE_EXISTING_TORCH,
        "setup.py": FAKE_SETUP_PY,
        ".gitignore": "build/\n*.egg-info/\n__pycache__/\nbuild_marker.txt\nbuild_started\n",
        "README.md": "fake vLLM\n",
        "requirements/build.txt": "setuptools>=40\ntorch==2.9.0\n",
        "requirements/cpu-build.txt": "setuptools>=40\ntorch==2.9.0+cpu\n",
        "requirements/common.txt": "packaging\n",
        "pyproject.toml": (
            '[build-system]\nrequires = [\n    "setuptools>=40",\n    "torch == 2.9.0",\n]\n'
            'build-backend = "setuptools.build_meta"\n'
        ),
        "vllm_fake/__init__.py": "",
        "vllm_fake/feature.py": "FEATURE = 1\n",
        "vllm_fake/old.py": "OLD = 1\n",
    }
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "dev@example.com")
    git(repo, "config", "user.name", "dev")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "initial")
    return repo


def make_local_work(repo: pathlib.Path) -> None:
    """Tracked, staged (then edited again), deleted and untracked changes, like a developer's tree."""
    (repo / "README.md").write_text("fake vLLM\nlocal unstaged edit\n")
    (repo / "vllm_fake/feature.py").write_text("FEATURE = 2  # staged\n")
    git(repo, "add", "vllm_fake/feature.py")
    (repo / "vllm_fake/feature.py").write_text("FEATURE = 3  # staged, then edited again\n")
    (repo / "requirements/common.txt").write_text("packaging\nmy-local-dep\n")
    git(repo, "rm", "-q", "vllm_fake/old.py")
    (repo / "notes.txt").write_text("untracked notes\n")
    (repo / "scratch").mkdir()
    (repo / "scratch/experiment.py").write_text("print('untracked dir')\n")


def snapshot(repo: pathlib.Path) -> dict:
    """Everything a developer cares about: porcelain status, the index, and every non-ignored file."""
    files = {}
    listed = git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, listed):
        path = repo / name
        files[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    return {
        "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
        "index": git(repo, "ls-files", "--stage"),
        "files": files,
        "head": git(repo, "rev-parse", "HEAD"),
    }


def run_script(repo, python, *args, mode="ok", timeout=300):
    env = {**os.environ, "PYTHON": str(python), "FAKE_VLLM_BUILD": mode, "PIP_NO_INDEX": "1"}
    return subprocess.run(
        ["bash", str(SCRIPT), str(repo), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_shellcheck_clean():
    shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "set -euo pipefail" in SCRIPT.read_text()


@pytest.mark.parametrize("local_work", [True, False], ids=["dirty", "clean"])
def test_success_builds_with_local_changes_and_restores_everything(checkout, build_python, local_work):
    if local_work:
        make_local_work(checkout)
    before = snapshot(checkout)
    result = run_script(checkout, build_python, "--target", "cpu")
    assert result.returncode == 0, result.stderr
    marker = (checkout / "build_marker.txt").read_text()
    # The build saw use_existing_torch.py's edits, the CPU target and the developer's own changes.
    assert "target=cpu" in marker
    assert "torch_in_requirements=False" in marker
    assert ("FEATURE = 3" if local_work else "FEATURE = 1") in marker
    assert snapshot(checkout) == before
    assert git(checkout, "stash", "list") == ""
    # The editable install really happened, into the throwaway venv.
    show = subprocess.run(
        [str(build_python), "-m", "pip", "show", "fake-vllm-checkout"], capture_output=True, text=True
    )
    assert show.returncode == 0, show.stderr


def test_build_failure_restores_and_exits_non_zero(checkout, build_python):
    make_local_work(checkout)
    before = snapshot(checkout)
    result = run_script(checkout, build_python, "--target", "cpu", mode="fail")
    assert result.returncode != 0
    assert "failure requested" in result.stderr
    assert "local changes restored" in result.stderr
    assert snapshot(checkout) == before
    assert git(checkout, "stash", "list") == ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_build_restores(checkout, build_python, sig):
    make_local_work(checkout)
    before = snapshot(checkout)
    env = {**os.environ, "PYTHON": str(build_python), "FAKE_VLLM_BUILD": "hang", "PIP_NO_INDEX": "1"}
    process = subprocess.Popen(
        ["bash", str(SCRIPT), str(checkout), "--target", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not (checkout / "build_started").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the fake build never started"
            time.sleep(0.2)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == (130 if sig == signal.SIGINT else 143), stderr
    assert f"caught SIG{sig.name[3:]}" in stderr
    (checkout / "build_started").unlink()  # ignored file written by the fake build itself
    assert snapshot(checkout) == before
    assert git(checkout, "stash", "list") == ""


def test_head_moving_during_build_keeps_the_stash_and_explains(checkout, build_python):
    make_local_work(checkout)
    result = run_script(checkout, build_python, "--target", "cpu", mode="commit")
    assert result.returncode == 3, result.stderr
    assert "HEAD moved during the build" in result.stderr
    assert "git stash pop --index" in result.stderr
    stashes = git(checkout, "stash", "list")
    assert "build_vllm_with_existing_torch: saved local changes" in stashes
    # Following the printed recovery gets the developer's work back.
    git(checkout, "reset", "--hard", "-q", "HEAD~1")
    git(checkout, "clean", "-fdq")
    git(checkout, "stash", "pop", "-q", "--index", "stash@{0}")
    assert (checkout / "notes.txt").read_text() == "untracked notes\n"
    assert "FEATURE = 3" in (checkout / "vllm_fake/feature.py").read_text()
    assert "FEATURE = 2" in git(checkout, "show", ":vllm_fake/feature.py")


def test_dry_run_prints_steps_and_changes_nothing(checkout, build_python):
    make_local_work(checkout)
    before = snapshot(checkout)
    result = run_script(checkout, build_python, "--target", "cpu", "--dry-run", "--no-editable")
    assert result.returncode == 0, result.stderr
    steps = result.stdout
    assert "git stash push --include-untracked" in steps
    assert "use_existing_torch.py" in steps
    assert "pip install -r requirements/cpu-build.txt" in steps
    assert "VLLM_TARGET_DEVICE=cpu" in steps
    assert "pip install --no-build-isolation ." in steps and " -e " not in steps
    assert "git stash pop --index" in steps
    assert snapshot(checkout) == before
    assert not (checkout / "build_marker.txt").exists()


def test_cuda_target_uses_build_txt_in_dry_run(checkout, build_python):
    result = run_script(checkout, build_python, "--target", "cuda", "--dry-run")
    import torch

    if torch.version.cuda is None:
        assert result.returncode == 2
        assert "needs a CUDA build of torch" in result.stderr
    else:
        assert "requirements/build.txt" in result.stdout
        assert "VLLM_TARGET_DEVICE=cuda" in result.stdout


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("not_git", [], "is not a git checkout"),
        ("no_script", [], "has no use_existing_torch.py"),
        ("no_requirements", [], "has no requirements/ folder"),
        ("ok", ["--target", "tpu"], "--target must be cpu or cuda, got 'tpu'"),
        ("ok", ["--frobnicate"], "unknown option '--frobnicate'"),
        ("missing_dir", [], "is not a directory"),
    ],
)
def test_refuses_bad_checkouts_and_arguments(tmp_path, checkout, build_python, setup, args, message):
    repo = checkout
    if setup == "not_git":
        repo = tmp_path / "plain"
        repo.mkdir()
    elif setup == "no_script":
        git(checkout, "rm", "-q", "use_existing_torch.py")
    elif setup == "no_requirements":
        git(checkout, "rm", "-rq", "requirements")
    elif setup == "missing_dir":
        repo = tmp_path / "does-not-exist"
    result = run_script(repo, build_python, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_refuses_a_python_without_torch(checkout, tmp_path):
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    result = run_script(checkout, bare / "bin" / "python", "--dry-run")
    assert result.returncode == 2
    assert "cannot import torch" in result.stderr


def test_prints_torch_version_and_cuda_availability(checkout, build_python):
    import torch

    result = run_script(checkout, build_python, "--dry-run")
    assert f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("RUN_REAL_VLLM_BUILD") != "1",
    reason="a real vLLM CPU source build compiles C++ for tens of minutes; set RUN_REAL_VLLM_BUILD=1",
)
def test_real_vllm_sdist_cpu_build(tmp_path):
    """Optional: the real thing, on vLLM's source distribution turned into a git checkout."""
    import vllm

    download = tmp_path / "sdist"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-d", str(download),
         f"vllm=={vllm.__version__.split('+')[0]}"],
        check=True,
        timeout=600,
    )  # fmt: skip
    (archive,) = download.glob("vllm-*.tar.gz")
    subprocess.run(["tar", "xzf", str(archive), "-C", str(tmp_path)], check=True)
    (source,) = (p for p in tmp_path.glob("vllm-*") if p.is_dir())
    git(source, "init", "-q")
    git(source, "add", "-A")
    git(source, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "sdist")
    before = snapshot(source)
    result = subprocess.run(
        ["bash", str(SCRIPT), str(source), "--target", "cpu", "--no-editable"],
        capture_output=True,
        text=True,
        timeout=4 * 3600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert snapshot(source) == before


def test_help_lists_every_option():
    result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for option in ("--target", "--dry-run", "--editable", "--no-editable", "VLLM_DIR"):
        assert option in result.stdout
    assert textwrap.dedent(result.stdout).strip()

"""Scratch git checkouts shaped like vLLM, the interpreters that build them, and snapshots.

The scratch checkout has a fake ``use_existing_torch.py`` (drops torch lines, as vLLM's does) and a
``setup.py`` whose build succeeds, fails, hangs, commits or damages the checkout on demand (env
``FAKE_VLLM_BUILD``). Two interpreters run it:

- ``build_python``: a throwaway venv that sees this repo's venv (torch, pip, setuptools); the build
  is a real ``pip install --no-build-isolation -e .`` (pip runs setup.py in a backend subprocess),
  so nothing is installed into the shared environment.
- ``fake_python``: a shell script standing in for that interpreter for the git-state cases: it
  answers the torch probe without importing torch, runs ``use_existing_torch.py``, skips the
  requirement installs and "builds" with ``setup.py -q egg_info`` (the same setup.py code, about
  ten times faster than pip).

``snapshot`` records what a developer could lose: ``git status --porcelain``, the index, the stash
list, HEAD, and every path under the checkout except .git/ (files by sha256 and mode, symlinks by
target, directories including empty ones, ignored ones included).
"""

import hashlib
import os
import pathlib
import signal
import stat
import subprocess
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "build_vllm_with_existing_torch.sh"
STASH_PREFIX = "build_vllm_with_existing_torch"

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

# hang / hang_ignore_term: write this process's pid and start a grandchild that appends to
# build_heartbeat every 50 ms (writes into the checkout for as long as it lives) and writes its
# own pid; hang_ignore_term's grandchild ignores SIGTERM, so only SIGKILL stops it.
FAKE_SETUP_PY = """\
import os
import pathlib
import signal
import subprocess
import sys
import time

from setuptools import setup

HEARTBEAT = '''
import os, signal, sys, time
if sys.argv[1] == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open("build_pids", "a") as f:
    f.write(f"{os.getpid()}\\\\n")
while True:
    with open("build_heartbeat", "a") as f:
        f.write("x")
    time.sleep(0.05)
'''

mode = os.environ.get("FAKE_VLLM_BUILD", "ok")
requirements = "".join(p.read_text() for p in sorted(pathlib.Path("requirements").glob("*.txt")))
pathlib.Path("build_marker.txt").write_text(
    f"target={os.environ.get('VLLM_TARGET_DEVICE')}\\n"
    f"torch_in_requirements={'torch' in requirements}\\n"
    f"feature={pathlib.Path('vllm_fake/feature.py').read_text()!r}\\n"
)
if mode == "fail":
    sys.exit("fake vLLM build: failure requested")
if mode in ("hang", "hang_ignore_term"):
    with open("build_pids", "a") as f:
        f.write(f"{os.getpid()}\\n")
    subprocess.Popen([sys.executable, "-c", HEARTBEAT, "1" if mode == "hang_ignore_term" else "0"])
    while not pathlib.Path("build_heartbeat").exists():
        time.sleep(0.01)
    pathlib.Path("build_started").write_text("1")
    time.sleep(300)
if mode == "commit":
    pathlib.Path("README.md").write_text("committed during the build\\n")
    subprocess.run(["git", "commit", "-qam", "commit during build"], check=True)
if mode == "vandal":
    # What a careless build (or the developer, while it runs) can do to the checkout.
    pathlib.Path("README.md").write_text("overwritten by the build\\n")
    pathlib.Path("notes.txt").write_text("untracked notes overwritten\\n")
    pathlib.Path("scratch/experiment.py").unlink()
    pathlib.Path("vllm_fake/feature.py").chmod(0o755)
    subprocess.run(["git", "add", "README.md"], check=True)
setup(name="fake-vllm-checkout", version="0.0.1", packages=["vllm_fake"])
"""

GITIGNORE = (
    "build/\n*.egg-info/\n__pycache__/\n*.so\nbuild_marker.txt\nbuild_started\nbuild_pids\nbuild_heartbeat\n"
)

FAKE_PYTHON = """\
#!/usr/bin/env bash
# Stands in for an interpreter with torch (see conftest.py): the torch probe, use_existing_torch.py,
# no-op requirement installs, and setup.py egg_info as the build.
case "$1" in
    -c) echo "2.13.0+cpu False None" ;;
    -m)
        for arg in "$@"; do [[ "$arg" == -r ]] && exit 0; done
        exec {python} setup.py -q egg_info ;;
    *) exec {python} "$@" ;;
esac
"""


def git(repo: pathlib.Path, *args: str, check: bool = True) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=check, capture_output=True, text=True, timeout=60
    ).stdout


def make_checkout(repo: pathlib.Path) -> pathlib.Path:
    (repo / "requirements").mkdir(parents=True)
    (repo / "vllm_fake").mkdir()
    files = {
        "use_existing_torch.py": FAKE_USE_EXISTING_TORCH,
        "setup.py": FAKE_SETUP_PY,
        ".gitignore": GITIGNORE,
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
    """A developer's tree: tracked, staged-then-edited, deleted, mode-changed and untracked changes
    (a symlink among them), empty untracked directories (one inside an untracked directory) and
    ignored build outputs."""
    (repo / "README.md").write_text("fake vLLM\nlocal unstaged edit\n")
    (repo / "vllm_fake/feature.py").write_text("FEATURE = 2  # staged\n")
    git(repo, "add", "vllm_fake/feature.py")
    (repo / "vllm_fake/feature.py").write_text("FEATURE = 3  # staged, then edited again\n")
    (repo / "requirements/common.txt").write_text("packaging\nmy-local-dep\n")
    git(repo, "rm", "-q", "vllm_fake/old.py")
    (repo / "notes.txt").write_text("untracked notes\n")
    (repo / "notes_link").symlink_to("notes.txt")
    (repo / "use_existing_torch.py").chmod(0o755)
    (repo / "scratch/empty_sub").mkdir(parents=True)
    (repo / "scratch/experiment.py").write_text("print('untracked dir')\n")
    (repo / "empty_dir").mkdir()
    (repo / "vllm_fake/empty_in_tracked_dir").mkdir()
    (repo / "build/lib").mkdir(parents=True)
    (repo / "build/lib/old_artifact.o").write_bytes(b"\x7fELF old object")
    (repo / "build/empty_ignored").mkdir()
    (repo / "vllm_fake/_C.so").write_bytes(b"\x7fELF compiled extension")


def _tree(root: pathlib.Path) -> dict:
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = pathlib.Path(dirpath).relative_to(root)
        if rel_dir == pathlib.Path("."):
            dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in dirnames:
            path = pathlib.Path(dirpath, name)
            entries[str(rel_dir / name)] = ("link", os.readlink(path)) if path.is_symlink() else ("dir",)
        for name in filenames:
            path = pathlib.Path(dirpath, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                entries[str(rel_dir / name)] = ("link", os.readlink(path))
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries[str(rel_dir / name)] = ("file", digest, stat.S_IMODE(mode))
    return entries


def snapshot(repo: pathlib.Path) -> dict:
    return {
        "status": git(repo, "status", "--porcelain", "--untracked-files=all", "--ignored"),
        "index": git(repo, "ls-files", "--stage"),
        "index_bits": git(repo, "ls-files", "-v"),
        "stash": git(repo, "stash", "list", "--format=%H %gs"),
        "head": git(repo, "rev-parse", "HEAD"),
        "symbolic_head": git(repo, "symbolic-ref", "-q", "HEAD", check=False),
        "paths": _tree(repo),
    }


def assert_intact(repo: pathlib.Path, before: dict, allow_new_stash: int = 0) -> None:
    """Everything in `before` is exactly as it was; the only new paths are ignored build outputs."""
    after = snapshot(repo)
    for key in ("index", "index_bits", "head", "symbolic_head"):
        assert after[key] == before[key], key
    stash_before, stash_after = before["stash"].splitlines(), after["stash"].splitlines()
    assert len(stash_after) == len(stash_before) + allow_new_stash, after["stash"]
    assert stash_after[allow_new_stash:] == stash_before
    assert all(STASH_PREFIX in line for line in stash_after[:allow_new_stash]), stash_after
    now = after["paths"]
    changed = {path: (was, now.get(path)) for path, was in before["paths"].items() if now.get(path) != was}
    assert not changed, changed
    new = sorted(set(now) - set(before["paths"]))
    # New paths may only be build outputs, which .gitignore covers.
    check_ignore = ["git", "check-ignore", "-z", "--stdin"]
    ignored = subprocess.run(check_ignore, cwd=repo, input="\0".join(new), capture_output=True, text=True)
    unexpected = sorted(set(new) - set(ignored.stdout.split("\0")))
    assert not unexpected, unexpected
    status_before = [line for line in before["status"].splitlines() if not line.startswith("!!")]
    status_after = [line for line in after["status"].splitlines() if not line.startswith("!!")]
    assert status_after == status_before


def script_env(python: pathlib.Path, mode: str = "ok", **extra: str) -> dict:
    return {**os.environ, "PYTHON": str(python), "FAKE_VLLM_BUILD": mode, "PIP_NO_INDEX": "1", **extra}


def run_script(repo, python, *args, mode="ok", timeout=300, cwd=None, env=None, pass_dir=True):
    command = ["bash", str(SCRIPT), *([str(repo)] if pass_dir else []), *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env or script_env(python, mode),
        timeout=timeout,
        cwd=cwd,
    )


def process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def assert_build_processes_gone(repo: pathlib.Path) -> None:
    """No process the fake build started lives, and nothing writes into the checkout any more."""
    pids = [int(line) for line in (repo / "build_pids").read_text().split()]
    assert pids, "the fake build recorded no pid"
    survivors = [pid for pid in pids if process_alive(pid)]
    assert not survivors, f"build processes still running: {survivors}"
    heartbeat = repo / "build_heartbeat"
    size = heartbeat.stat().st_size
    time.sleep(0.3)  # six heartbeat periods
    assert heartbeat.stat().st_size == size, "something still writes build_heartbeat"


def wait_for(path: pathlib.Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def kill_recorded_build_processes(repo: pathlib.Path) -> None:
    """Test clean-up: a fake build the script failed to stop must not outlive the test."""
    pids = repo / "build_pids"
    for pid in map(int, pids.read_text().split()) if pids.exists() else []:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)

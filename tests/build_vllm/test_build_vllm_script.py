"""build_vllm_with_existing_torch.sh end to end: real pip builds of a scratch checkout (helpers.py),
arguments, refusals and the dry run. Hostile git states: test_git_states.py; signals: test_signals.py."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.build_vllm.helpers import (
    SCRIPT,
    assert_build_processes_gone,
    assert_intact,
    git,
    make_local_work,
    run_script,
    script_env,
    snapshot,
    wait_for,
)
from tests.hostile_cli import default_sigint


def test_shellcheck_clean():
    shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "set -euo pipefail" in SCRIPT.read_text()


@pytest.mark.parametrize(
    ("local_work", "interpreter"),
    [(True, "build_python"), (False, "fake_python")],
    ids=["dirty-real-pip", "clean-fake-python"],
)
def test_success_builds_with_local_work_and_restores_everything(request, checkout, local_work, interpreter):
    python = request.getfixturevalue(interpreter)
    if local_work:
        make_local_work(checkout)
    before = snapshot(checkout)
    result = run_script(checkout, python, "--target", "cpu")
    assert result.returncode == 0, result.stderr
    marker = (checkout / "build_marker.txt").read_text()
    # The build saw use_existing_torch.py's edits, the CPU target and the developer's own changes.
    assert "target=cpu" in marker
    assert "torch_in_requirements=False" in marker
    assert ("FEATURE = 3" if local_work else "FEATURE = 1") in marker
    assert_intact(checkout, before)
    if interpreter == "build_python":
        # The editable install really happened, into the throwaway venv.
        show = subprocess.run([python, "-m", "pip", "show", "fake-vllm-checkout"], capture_output=True)
        assert show.returncode == 0, show.stderr.decode()


def test_build_failure_restores_and_exits_non_zero(checkout, fake_python):
    make_local_work(checkout)
    before = snapshot(checkout)
    result = run_script(checkout, fake_python, "--target", "cpu", mode="fail")
    assert result.returncode != 0
    assert "failure requested" in result.stderr
    assert "checkout restored" in result.stderr
    assert_intact(checkout, before)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_build_stops_every_build_process_then_restores(checkout, build_python, sig):
    """pip runs setup.py in a backend subprocess, which starts a grandchild that keeps writing into
    the checkout: none of them may outlive the script."""
    make_local_work(checkout)
    before = snapshot(checkout)
    process = subprocess.Popen(
        ["bash", str(SCRIPT), str(checkout), "--target", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=script_env(build_python, "hang"),
        preexec_fn=default_sigint,
    )
    try:
        wait_for(checkout / "build_started", process)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == (130 if sig == signal.SIGINT else 143), stderr
    assert f"caught SIG{sig.name[3:]}" in stderr
    assert_build_processes_gone(checkout)
    assert_intact(checkout, before)


def test_head_moving_during_build_touches_nothing_keeps_the_stash_and_explains(checkout, fake_python):
    make_local_work(checkout)
    before = snapshot(checkout)
    result = run_script(checkout, fake_python, "--target", "cpu", mode="commit")
    assert result.returncode == 3, result.stderr
    assert "HEAD moved during the build" in result.stderr
    saved = git(checkout, "stash", "list", "--format=%H %gs").splitlines()
    assert len(saved) == 1 and "the checkout before the build" in saved[0]
    sha = saved[0].split()[0]
    assert f"git stash apply --index {sha}" in result.stderr
    # Nothing was written: the untracked files are untouched, the commit holds the tracked ones.
    assert (checkout / "notes.txt").read_text() == "untracked notes\n"
    assert (checkout / "empty_dir").is_dir()
    # Following the printed recovery gets the developer's work back exactly.
    git(checkout, "reset", "--hard", "-q", before["head"].strip())
    for name in git(checkout, "show", "--name-only", "--format=", f"{sha}^3").splitlines():
        (checkout / name).unlink()
    git(checkout, "stash", "apply", "-q", "--index", sha)
    git(checkout, "stash", "drop", "-q")
    assert_intact(checkout, before)
    assert (checkout / "notes.txt").read_text() == "untracked notes\n"


def test_dry_run_prints_steps_and_changes_nothing(checkout, fake_python):
    make_local_work(checkout)
    before = snapshot(checkout)
    result = run_script(checkout, fake_python, "--target", "cpu", "--dry-run", "--no-editable")
    assert result.returncode == 0, result.stderr
    steps = result.stdout
    assert "git stash store" in steps
    assert "setsid" in steps
    assert "use_existing_torch.py" in steps
    assert "pip install -r requirements/cpu-build.txt" in steps
    assert "VLLM_TARGET_DEVICE=cpu" in steps
    assert "pip install --no-build-isolation ." in steps and " -e " not in steps
    assert "git checkout-index" in steps and "git stash drop" in steps
    assert snapshot(checkout) == before
    assert not (checkout / "build_marker.txt").exists()


def test_cuda_target_with_the_real_torch(checkout, build_python):
    """The real torch's version and CUDA availability are printed; a CPU build refuses --target cuda,
    a CUDA build plans requirements/build.txt."""
    import torch

    result = run_script(checkout, build_python, "--target", "cuda", "--dry-run")
    assert f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}" in result.stderr
    if torch.version.cuda is None:
        assert result.returncode == 2
        assert "needs a CUDA build of torch" in result.stderr
    else:
        assert "requirements/build.txt" in result.stdout
        assert "VLLM_TARGET_DEVICE=cuda" in result.stdout


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("not_git", [], "is not in a git checkout"),
        ("no_script", [], "has no use_existing_torch.py"),
        ("no_requirements", [], "has no requirements/ folder"),
        ("ok", ["--target", "tpu"], "--target must be cpu or cuda, got 'tpu'"),
        ("ok", ["--frobnicate"], "unknown option '--frobnicate'"),
        ("missing_dir", [], "is not a directory"),
    ],
)
def test_refuses_bad_checkouts_and_arguments(tmp_path, checkout, fake_python, setup, args, message):
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
    result = run_script(repo, fake_python, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr


def test_refuses_a_python_without_torch(checkout, tmp_path):
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    result = run_script(checkout, bare / "bin" / "python", "--dry-run")
    assert result.returncode == 2
    assert "cannot import torch" in result.stderr


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

"""Signals to build_vllm_with_existing_torch.sh: no process of the build survives the script, and the
checkout is restored exactly. The fake build records its pids and keeps a grandchild appending to
build_heartbeat in the checkout (helpers.py), so a survivor shows as a live pid or a growing file.

These runs use ``fake_python``; the real pip process tree (pip -> backend -> setup.py) is in
test_build_vllm_script.py::test_signal_mid_build_stops_every_build_process_then_restores.
"""

import os
import random
import signal
import subprocess
import time

import pytest

from tests.build_vllm.helpers import (
    SCRIPT,
    assert_build_processes_gone,
    assert_intact,
    make_local_work,
    script_env,
    snapshot,
    wait_for,
)
from tests.hostile_cli import default_sigint


def start(repo, python, mode, tmp_path, **extra_env):
    tmpdir = tmp_path / "script-tmp"
    tmpdir.mkdir(exist_ok=True)
    return subprocess.Popen(
        ["bash", str(SCRIPT), str(repo), "--target", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=script_env(python, mode, TMPDIR=str(tmpdir), **extra_env),
        start_new_session=True,  # its own process group, like a job in a terminal
        preexec_fn=default_sigint,
    )


def finish(process, timeout=60):
    try:
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return stderr


def test_build_ignoring_sigterm_is_killed_after_the_grace_period(checkout, fake_python, tmp_path):
    make_local_work(checkout)
    before = snapshot(checkout)
    process = start(checkout, fake_python, "hang_ignore_term", tmp_path, KILL_GRACE_S="1")
    wait_for(checkout / "build_started", process)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stderr = finish(process)
    assert process.returncode == 143, stderr
    assert "SIGKILL" in stderr
    assert time.monotonic() - started < 20, "the KILL did not come after the 1 s grace period"
    assert_build_processes_gone(checkout)
    assert_intact(checkout, before)
    assert not any((tmp_path / "script-tmp").iterdir()), "temporary files left behind"


def test_sighup_stops_the_build_and_restores(checkout, fake_python, tmp_path):
    make_local_work(checkout)
    before = snapshot(checkout)
    process = start(checkout, fake_python, "hang", tmp_path)
    wait_for(checkout / "build_started", process)
    process.send_signal(signal.SIGHUP)
    stderr = finish(process)
    assert process.returncode == 129, stderr
    assert_build_processes_gone(checkout)
    assert_intact(checkout, before)


def test_ctrl_c_to_the_whole_foreground_group_stops_the_build_and_restores(checkout, fake_python, tmp_path):
    """A terminal sends SIGINT to every process of the foreground job, the script's git commands
    included; a second Ctrl-C while the script restores must not interrupt the restore."""
    make_local_work(checkout)
    before = snapshot(checkout)
    process = start(checkout, fake_python, "hang", tmp_path)
    wait_for(checkout / "build_started", process)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    stderr = finish(process)
    assert process.returncode == 130, stderr
    assert_build_processes_gone(checkout)
    assert_intact(checkout, before)


@pytest.mark.parametrize("seed", range(8))
def test_repeated_signals_at_a_random_moment_never_lose_work(checkout, fake_python, tmp_path, seed):
    """Signals from a random moment on (validation, save, build steps or restore), every 20-120 ms
    until the script exits. Whatever phase they hit, the checkout ends as it was (possibly plus the
    documented stash entry holding the checkout as the build left it) and no temporary file stays."""
    rng = random.Random(seed)
    make_local_work(checkout)
    before = snapshot(checkout)
    sig = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
    to_group = rng.random() < 0.5
    process = start(checkout, fake_python, "ok", tmp_path)
    time.sleep(rng.uniform(0.0, 1.2))
    while process.poll() is None:
        try:
            os.killpg(process.pid, sig) if to_group else process.send_signal(sig)
        except ProcessLookupError:
            break
        time.sleep(rng.uniform(0.02, 0.12))
    stderr = finish(process)
    assert process.returncode in (0, 128 + sig, -sig), stderr
    new_stash = 1 if "as the build left it" in stderr else 0
    assert_intact(checkout, before, allow_new_stash=new_stash)
    assert not any((tmp_path / "script-tmp").iterdir()), "temporary files left behind"

"""tests/forked_cli.py: a forked run gives what a fresh interpreter gives (compared with subprocess.run)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.forked_cli import run_forked

PROBE = """\
import atexit, json, os, sys
atexit.register(lambda: print("atexit ran"))
print(json.dumps({"cwd": os.getcwd(), "argv": sys.argv[1:], "path0": sys.path[0],
                  "probe": os.environ.get("FORKED_CLI_PROBE"), "name": __name__}))
print("to stderr", file=sys.stderr)
print("stdin:", repr(sys.stdin.read()))
sys.exit(int(sys.argv[1]))
"""


def fresh(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, cwd=cwd, env=env, stdin=subprocess.DEVNULL, timeout=120
    )


@pytest.mark.parametrize("exit_code", [0, 3])
def test_a_script_sees_what_a_fresh_interpreter_sees(tmp_path, exit_code):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "FORKED_CLI_PROBE": "yes"}
    forked = run_forked(script, [str(exit_code), "two words"], cwd=work, env=env)
    expected = fresh([sys.executable, str(script), str(exit_code), "two words"], work, env)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        expected.returncode,
        expected.stdout,
        expected.stderr,
    )
    assert (
        forked.returncode == exit_code and "atexit ran" in forked.stdout and '"probe": "yes"' in forked.stdout
    )


def test_a_module_runs_as_main_with_minus_m_paths(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    forked = run_forked("json.tool", [str(broken)], cwd=tmp_path)
    expected = fresh([sys.executable, "-m", "json.tool", str(broken)], tmp_path, dict(os.environ))
    assert forked.returncode == expected.returncode == 1
    assert forked.stderr == expected.stderr and "Expecting property name" in forked.stderr
    good = tmp_path / "good.json"
    good.write_text('{"b": 1, "a": [1, 2]}')
    assert run_forked("json.tool", ["--sort-keys", str(good)], cwd=tmp_path).stdout == (
        fresh(
            [sys.executable, "-m", "json.tool", "--sort-keys", str(good)], tmp_path, dict(os.environ)
        ).stdout
    )


def test_an_uncaught_exception_prints_its_traceback_and_exits_1(tmp_path):
    script = tmp_path / "raises.py"
    script.write_text("raise RuntimeError('boom')\n")
    forked = run_forked(script, [], cwd=tmp_path)
    assert forked.returncode == 1
    assert forked.stderr.startswith("Traceback") and forked.stderr.endswith("RuntimeError: boom\n")


def test_a_child_killed_by_a_signal_and_a_timeout(tmp_path):
    script = tmp_path / "sleeps.py"
    script.write_text(
        "import os, signal, sys, time\nif sys.argv[1] == 'kill': os.kill(os.getpid(), 9)\ntime.sleep(60)\n"
    )
    assert run_forked(script, ["kill"], cwd=tmp_path).returncode == -9
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_forked(script, ["sleep"], cwd=tmp_path, timeout=2)
    assert time.monotonic() - started < 30
    assert run_forked(script, ["kill"], cwd=tmp_path).returncode == -9  # the server still serves

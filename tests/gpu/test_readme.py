"""gpu/README.md's commands use flags that exist, and its time limits are the code's."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from gpu import download_wheels, run_checks
from tests.readme_commands import bash_block_commands

REPO_ROOT = Path(__file__).resolve().parents[2]
README = (REPO_ROOT / "gpu" / "README.md").read_text(encoding="utf-8")
ENTRIES = {"gpu.run_checks": run_checks.main, "gpu.download_wheels": download_wheels.main}


def flags(command: list[str]) -> list[str]:
    return [arg[2:].split("=", 1)[0] for arg in command if arg.startswith("--")]


def test_readme_commands_use_existing_flags():
    commands = bash_block_commands(README, (".venv/bin/python -m gpu.", "bash gpu/", "PYTHON="))
    assert len(commands) == 5
    for command in commands:
        if command[0].startswith("PYTHON="):
            command = command[1:]
        if command[0] == "bash":
            assert command[1] == "gpu/run_checks.sh"
            entry = run_checks.main
        else:
            entry = ENTRIES[command[2]]
        parameters = inspect.signature(entry).parameters
        for flag in flags(command):
            assert flag in parameters, (
                f"{' '.join(command)}: --{flag} is not a parameter of {entry.__module__}"
            )


def test_readme_device_call_and_time_limits_match_the_code():
    assert '| `command` | `bash gpu/run_checks.sh "$OUT"` |' in README
    assert '| `carry` | `[".whl"]` |' in README
    script = (REPO_ROOT / "gpu" / "run_checks.sh").read_text(encoding="utf-8")
    hard_limit_s = int(re.search(r"hard_limit_s=\$\{HARD_LIMIT_S:-(\d+)\}", script).group(1))
    budget_s = inspect.signature(run_checks.main).parameters["budget_s"].default
    assert f"ends itself by {hard_limit_s} s" in README
    assert f"stops its steps by {budget_s - run_checks.PACKING_RESERVE_S:.0f} s" in README
    timeout_s = int(re.search(r"\| `timeout_s` \| `(\d+)`", README).group(1))
    assert budget_s < hard_limit_s and hard_limit_s + 20 < timeout_s <= 600  # SIGKILL 20 s after SIGTERM

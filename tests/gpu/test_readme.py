"""gpu/README.md's commands use flags that exist, and its time limits are the code's."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from gpu import run_checks
from tests.readme_commands import bash_block_commands, readme_problems

REPO_ROOT = Path(__file__).resolve().parents[2]
README_PATH = REPO_ROOT / "gpu" / "README.md"
README = README_PATH.read_text(encoding="utf-8")


def test_readme_commands_use_existing_flags():
    """The Python commands by the shared check; `bash gpu/run_checks.sh` passes its flags to
    gpu.run_checks, which the shared check does not know."""
    assert readme_problems(README_PATH) == []
    commands = [
        c[1:] if c[0].startswith("PYTHON=") else c
        for c in bash_block_commands(README, ("bash gpu/", "PYTHON="))
    ]
    assert len(commands) >= 2
    parameters = inspect.signature(run_checks.main).parameters
    for command in commands:
        assert command[:2] == ["bash", "gpu/run_checks.sh"], command
        for flag in (arg[2:].split("=", 1)[0] for arg in command if arg.startswith("--")):
            assert flag in parameters, f"{' '.join(command)}: --{flag} is not a parameter of gpu.run_checks"


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

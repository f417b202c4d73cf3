"""Run a tool the way its README does: ``.venv/bin/python -m <module> <args>`` from the clone's root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_module(
    module: str,
    *args: str,
    cwd: str | Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``sys.executable -m module *args`` in ``cwd`` (default the repository root), output captured as
    text; ``env`` replaces the environment when given. A non-zero exit is returned, not raised."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )

"""Helpers of the tests that launch torchrun: a free rendezvous port, the launcher options of a run on
this machine, the environment of a launch without torchrun, and what a launch prints when every rank
refuses its arguments."""

from __future__ import annotations

import os
import re
import socket
import subprocess

# What torchrun sets in each rank's environment (and a plain `python -m` launch does not have).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_launcher_args(nproc: int) -> list[str]:
    """torchrun's options for ``nproc`` processes on this machine, meeting on a free local port."""
    return ["--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(free_port())]


def environment_without_torchrun() -> dict[str, str]:
    """This process's environment without the variables torchrun sets: a plain ``python -m`` launch."""
    return {key: value for key, value in os.environ.items() if key not in TORCHRUN_VARIABLES}


OUR_FRAMES = re.compile(r'File ".*/(dtensor_parallelisms|dp2ep|pytorch_scripts_common)/')


def assert_one_line_user_error(result: subprocess.CompletedProcess, line_start: str) -> None:
    """The script printed one ``error:`` line (local rank 0), no traceback of ours, a non-zero exit;
    torchrun's failure summary shows that line as the root cause, and for each other rank either the
    line or the SIGTERM torchrun stopped it with."""
    shown = f"exit code {result.returncode}\n--- stderr ---\n{result.stderr[-6000:]}"
    assert result.returncode != 0, shown
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(line_start), shown
    summary = re.findall(r"^  traceback : (.*)$", result.stderr, flags=re.M)
    root_cause = result.stderr[result.stderr.index("Root Cause") :]
    assert f"traceback : {lines[0]}" in root_cause, shown
    assert all(text == lines[0] or text.startswith("Signal 15 (SIGTERM)") for text in summary), shown
    assert not OUR_FRAMES.search(result.stderr), shown

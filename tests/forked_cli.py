"""Run ``python -m <module> <args>`` (or ``python <script> <args>``) as a fork of a warm interpreter,
for the suite's many short runs of a command line that is refused: torch, torchao and transformers are
imported once per pytest worker instead of once per run (3-4 s of CPU each on the CI machine, where
most such runs spend nothing else).

``run_forked(target, args, cwd=..., env=...)`` returns a ``subprocess.CompletedProcess`` like
``subprocess.run(..., capture_output=True, text=True)``. The child is its own process: its own
working directory, environment, stdin (/dev/null), stdout and stderr, exit status and default signal
dispositions; the module (or script) runs as ``__main__`` through ``runpy`` with ``sys.argv`` and
``sys.path[0]`` as ``python`` sets them, and ends through ``atexit`` and a flush as an interpreter does.

What differs from a fresh interpreter: the preloaded libraries (``PRELOADED``) were imported once,
under the server's environment. A run whose point is an import-time variable of one of them, an
import failure, or signal handling needs a real subprocess (every tool also has those).

The server is ``python -m tests.forked_cli`` (one per pytest worker, started at first use, ended
when the worker exits): it reads one JSON request per line on stdin, forks, replies ``{"pid": ...}``
then ``{"status": ...}`` (the exit code, or minus the signal number).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PRELOADED = ("torch", "torchao", "transformers", "safetensors.torch", "compressed_tensors", "fire", "numpy")

_server: subprocess.Popen[bytes] | None = None
_lock = threading.Lock()


def run_forked(
    target: str | Path,
    args: Sequence[str],
    *,
    cwd: str | Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``python -m target *args`` (``python target *args`` for a ``Path``: a script) in ``cwd`` with
    ``env`` (default: this process's), as a forked child of the warm server. Raises
    ``subprocess.TimeoutExpired`` (after killing the child) on timeout."""
    words = [str(arg) for arg in args]
    request = {
        "module": None if isinstance(target, Path) else target,
        "script": str(target.resolve()) if isinstance(target, Path) else None,
        "args": words,
        "cwd": str(cwd),
        "env": dict(env or os.environ),
    }
    command = [sys.executable, *(["-m", target] if isinstance(target, str) else [str(target)]), *words]
    with _lock, tempfile.TemporaryDirectory(prefix="forked_cli.") as folder:
        request["stdout"], request["stderr"] = f"{folder}/stdout", f"{folder}/stderr"
        server = _started_server()
        server.stdin.write(json.dumps(request).encode() + b"\n")
        server.stdin.flush()
        pid = _reply(server, time.monotonic() + 60)["pid"]
        try:
            status = _reply(server, time.monotonic() + timeout)["status"]
        except TimeoutError:
            os.killpg(pid, signal.SIGKILL)
            _reply(server, time.monotonic() + 60)
            raise subprocess.TimeoutExpired(command, timeout) from None
        stdout, stderr = (Path(request[name]).read_text(errors="replace") for name in ("stdout", "stderr"))
    return subprocess.CompletedProcess(command, status, stdout, stderr)


def _started_server() -> subprocess.Popen[bytes]:
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen(
            [sys.executable, "-m", "tests.forked_cli"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
        )
        atexit.register(_server.kill)
        assert _reply(_server, time.monotonic() + 300) == {"ready": True}
    return _server


def _reply(server: subprocess.Popen[bytes], deadline: float) -> dict:
    """The server's next JSON line, waiting until ``deadline``."""
    while not select.select([server.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
        if time.monotonic() >= deadline:
            raise TimeoutError("no reply from the fork server")
    line = server.stdout.readline()
    if not line:
        raise RuntimeError(f"the fork server exited with {server.wait()}")
    return json.loads(line)


def _child(request: dict) -> None:
    """In the forked child: become ``python -m module args`` (never returns)."""
    import runpy
    import traceback

    code = 1
    try:
        os.setpgid(0, 0)  # run_forked kills its group on timeout
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ):
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if request["script"]:
            sys.path[0] = os.path.dirname(request["script"])  # as `python script.py` sets them
            sys.argv = [request["script"], *request["args"]]
            runpy.run_path(request["script"], run_name="__main__")
        else:
            sys.path[0] = os.getcwd()  # as -m sets it
            sys.argv = [request["module"], *request["args"]]
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _serve() -> None:
    import importlib

    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()  # as pytorch_scripts_common.cli.run does before a tool imports torchao
    for name in PRELOADED:
        importlib.import_module(name)
    replies = sys.stdout.buffer

    def reply(value: dict) -> None:
        replies.write(json.dumps(value).encode() + b"\n")
        replies.flush()

    reply({"ready": True})
    for line in sys.stdin.buffer:
        request = json.loads(line)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        reply({"pid": pid})
        _, status = os.waitpid(pid, 0)
        reply({"status": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    _serve()

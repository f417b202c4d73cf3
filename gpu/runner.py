"""Running a plan's steps: a few subprocesses at a time, each with its own timeout and log, within
one wall-clock budget; and packing the work folder into a tarball of parts the device machine returns."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpu.plan import REPO_ROOT, Step

TARBALL = "gpu_checks.tar.gz"

# What the device machine returns: at most 8 files of at most 16 MiB each. The tarball is split into
# parts of PART_BYTES when it is larger (rejoin with cat); one summary plus MAX_PARTS parts fit.
PART_BYTES = 15 * 2**20

MAX_PARTS = 6

# Left out of the tarball (listed in the summary): checkpoints' weights (the quantized embedded models
# are 6-18 MB each and are re-made in seconds) and any single file over this size.
LEFT_OUT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

MAX_PACKED_FILE_BYTES = 8 * 2**20

LOG_TAIL_CHARS = 3000

MIN_STEP_S = 10.0  # a step is not started with less of the budget left than this


def child_env(device: str, wheel_site: str, max_parallel: int) -> dict[str, str]:
    """The environment of every step: this one, minus torch logging settings, plus the run's own."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TORCH_LOGS", "TORCH_LOGS_FORMAT", "TORCH_LOGS_OUT", "TORCH_TRACE")
    }
    python_path = [p for p in (wheel_site, str(REPO_ROOT), env.get("PYTHONPATH", "")) if p]
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    env["PYTHONUNBUFFERED"] = "1"
    env["GPU_CHECKS_WHEEL_SITE"] = wheel_site  # the environment step lists what was installed there
    # The tools skip torchao's CUDA extensions by default (they print load failures on a CPU build of
    # torch); on CUDA the real kernels (mxfp8 cast, CUTLASS) must load.
    env["TORCHAO_FORCE_SKIP_LOADING_SO_FILES"] = "1" if device == "cpu" else "0"
    # The GPU machine has no network: a Hugging Face Hub lookup must fail at once, not wait for a timeout.
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    threads = max(1, (os.cpu_count() or 1) // max_parallel)
    env["TORCHINDUCTOR_COMPILE_THREADS"] = str(threads)
    # max_parallel steps share the cores: each step's OpenMP pool gets its share (one thread per core
    # in every step would put max_parallel threads on each core), and idle OpenMP threads sleep instead
    # of spinning (tests/conftest.py has the measurement on oversubscribed cores). A value set is kept.
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # --cpu on a CUDA machine: every tool picks the CPU
    return env


@dataclasses.dataclass
class Running:
    step: Step
    process: subprocess.Popen
    log_file: Any
    started: float
    deadline: float
    cut_by_budget: bool  # its timeout is what was left of the budget, shorter than its own


def start(step: Step, work: Path, env: dict[str, str], timeout_s: float) -> Running:
    log_path = work / step.log_path
    log_path.parent.mkdir(parents=True, exist_ok=True)
    step_env = dict(env)
    for key, value in step.env.items():
        # paths in a step's env are relative to the work folder, like its arguments
        step_env[key] = str(work / value) if key == "TORCH_TRACE" else value
    # a cold compile per step: fixtures show every graph's output code, and no step reads another's cache
    step_env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "tmp" / "inductor_cache" / step.name)
    log_file = open(log_path, "wb")  # noqa: SIM115 (closed in finish)
    process = subprocess.Popen(
        step.argv,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=work,
        env=step_env,
        start_new_session=True,  # its own process group: a timeout kills inductor workers too
    )
    now = time.monotonic()
    return Running(step, process, log_file, now, now + timeout_s, timeout_s < step.timeout_s)


def stop(running: Running) -> None:
    """SIGTERM the step's process group, wait up to 5 s for its leader, then SIGKILL the group."""
    try:
        os.killpg(running.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        running.process.wait(timeout=5.0)
    kill_group(running)
    running.process.wait()


def kill_group(running: Running, wait_s: float = 5.0) -> None:
    """SIGKILL what is left of the step's process group (workers that outlive their leader: the group
    is its own session, so the device machine would not end them when the run's command returns), and
    wait up to ``wait_s`` for them to be gone: a killed process still has to be scheduled to exit (and
    to free its GPU memory) after kill() returns."""
    try:
        os.killpg(running.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while _group_running(running.process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` has not exited yet (zombies waiting for their reaper have)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def finish(running: Running, work: Path, status: str | None = None) -> dict[str, Any]:
    kill_group(running)
    running.log_file.close()
    step = running.step
    rc = running.process.returncode
    result: dict[str, Any] = {
        "status": status or ("ok" if rc == 0 else "failed"),
        "returncode": rc,
        "seconds": round(time.monotonic() - running.started, 1),
    }
    if result["status"] == "timeout":
        result["timeout_s"] = round(running.deadline - running.started, 1)
        result["cut_by_budget"] = running.cut_by_budget  # True: the run's budget ran out, not its own timeout
    if step.collect is not None and result["status"] in ("ok", "failed"):
        try:
            result["metrics"] = step.collect(work, step)
        except Exception as error:  # a harvest of another tool's output; its format may change
            result["metrics_error"] = f"{type(error).__name__}: {error}"
    result["log_tail"] = log_tail(work / step.log_path)
    return result


def log_tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-LOG_TAIL_CHARS:].decode("utf-8", errors="replace")


def start_order(steps: list[Step]) -> dict[str, tuple[int, int]]:
    """Round-robin over the groups in table order: the k-th step of every group before any group's
    (k+1)-th, so that a spent budget cuts the tail of every group rather than whole groups."""
    groups = list(dict.fromkeys(step.group for step in steps))
    seen: dict[str, int] = {}
    order = {}
    for step in steps:
        order[step.name] = (seen.get(step.group, 0), groups.index(step.group))
        seen[step.group] = seen.get(step.group, 0) + 1
    return order


def note_sigterm() -> Callable[[], str]:
    """Make SIGTERM set a flag instead of raising, and return a function that says whether it came.

    The hard limit of run_checks.sh sends SIGTERM (GNU timeout sends it twice: to the driver and to
    its process group); an exception raised at an arbitrary point could abort the packing that must
    follow, so the step loop polls the flag instead.
    """
    received: list[str] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append("SIGTERM"))
    return lambda: received[0] if received else ""


def run_steps(
    steps: list[Step],
    work: Path,
    env: dict[str, str],
    deadline: float,
    max_parallel: int,
    interrupted: Callable[[], str] = lambda: "",
) -> tuple[dict[str, dict[str, Any]], str]:
    """Run the steps that are not skipped, at most ``max_parallel`` at a time; return results and
    how the run ended ("completed" or "interrupted: <signal>"). ``interrupted`` names a signal that
    asks the run to stop (see note_sigterm); SIGINT arrives as KeyboardInterrupt."""
    from pytorch_scripts_common.cli import Terminated

    results: dict[str, dict[str, Any]] = {}
    pending = [step for step in steps if not step.skip_reason]
    order = start_order(pending)
    running: dict[str, Running] = {}
    ended = "completed"
    try:
        while pending or running:
            if interrupted():
                raise Terminated(signal.SIGTERM)
            for step in list(pending):
                failed = [d for d in step.after if d in results and results[d]["status"] != "ok"]
                if failed:
                    pending.remove(step)
                    results[step.name] = {
                        "status": "skipped",
                        "skip_reason": f"needs {failed[0]}, which did not succeed",
                    }
            # steps that finish a chain first (their input is ready), then round-robin over the groups
            ready = sorted(
                (s for s in pending if all(d in results for d in s.after)),
                key=lambda s: (not s.after, order[s.name]),
            )
            for step in ready:
                if len(running) >= max_parallel:
                    break
                pending.remove(step)
                left_s = deadline - time.monotonic()
                if left_s < MIN_STEP_S:
                    results[step.name] = {
                        "status": "skipped",
                        "skip_reason": "time budget spent before it could start",
                    }
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] start {step.name}", flush=True)
                running[step.name] = start(step, work, env, min(step.timeout_s, left_s))
            if not running and pending and not ready:
                raise AssertionError(f"steps wait on steps that are not planned: {[s.name for s in pending]}")
            time.sleep(0.2)
            for name, item in list(running.items()):
                status = None
                if item.process.poll() is None:
                    if time.monotonic() < item.deadline:
                        continue
                    stop(item)
                    status = "timeout"
                del running[name]
                results[name] = finish(item, work, status)
                print(
                    f"[{time.strftime('%H:%M:%S')}] {results[name]['status']:<8} {name} "
                    f"({results[name]['seconds']} s)",
                    flush=True,
                )
    except (KeyboardInterrupt, Terminated) as error:
        ended = "interrupted: SIGINT" if isinstance(error, KeyboardInterrupt) else "interrupted: SIGTERM"
        for step in pending:
            results[step.name] = {"status": "skipped", "skip_reason": ended}
    finally:
        for name, item in running.items():
            stop(item)
            results[name] = finish(item, work, "interrupted")
    return results, ended


def pack(work: Path, staging: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    """Tar + gzip the work folder (less tmp/ and left-out files) into parts of at most PART_BYTES."""
    left_out = []
    tar_path = staging / TARBALL
    with tarfile.open(tar_path, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            relative = path.relative_to(work)
            if not path.is_file() or path.is_symlink() or relative.parts[0] == "tmp":
                continue
            size = path.stat().st_size
            if path.name.endswith(LEFT_OUT_SUFFIXES) or size > MAX_PACKED_FILE_BYTES:
                left_out.append({"path": str(relative), "bytes": size})
                continue
            tar.add(path, arcname=str(Path("gpu_checks") / relative), recursive=False)
    size = tar_path.stat().st_size
    if size <= PART_BYTES:
        return [tar_path], left_out
    parts = []
    with open(tar_path, "rb") as whole:
        for index in range((size + PART_BYTES - 1) // PART_BYTES):
            part = staging / f"{TARBALL}.part{index:02d}"
            part.write_bytes(whole.read(PART_BYTES))
            parts.append(part)
    tar_path.unlink()
    return parts, left_out

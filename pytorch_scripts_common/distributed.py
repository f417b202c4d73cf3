"""torchrun entry points: launch checks, process-group set-up and teardown, and one comparison rule.

Set-up and teardown (every rank runs the same script under torchrun):

- ``run(main)``: ``cli.run`` for a torchrun script. A user mistake is one line,
  ``error: <what>: <fix>``, printed by local rank 0 only (one line per machine, not one per rank)
  and written to the rank's torchrun error file, so that torchrun's failure summary shows that line
  instead of "To enable traceback see ..."; the rank exits 2. torchrun stops every rank as soon as
  the first one exits, so the other ranks wait up to ``OTHER_RANKS_EXIT_DELAY_S`` before exiting:
  local rank 0 prints first and is the root cause torchrun names. A bug keeps its traceback in the
  error file (``torch.distributed.elastic.multiprocessing.errors.record``). SIGTERM keeps its
  default: torchrun stops ranks with it, and a rank blocked in a collective would not run a Python
  handler until the collective times out. The process ends with ``os._exit`` and the exit code
  (0 after success): gloo's background threads intermittently abort interpreter finalization on
  CPU ("terminate called without an active exception", SIGABRT after every check passed). A bug's
  exception still ends the usual way, with its traceback.
- ``torchrun_world_size(command)``: the world size torchrun set, or a ``UsageError`` naming
  ``command`` when the script was not started by torchrun. Validate everything with it *before*
  ``process_group``: a mistake then fails on every rank alike, and no rank waits in a collective.
- ``check_timeout(timeout_s)``: 0 < timeout_s <= ``MAX_TIMEOUT_S``.
- ``rank_device()`` / ``backend_for(device)``: ``cuda:LOCAL_RANK`` (made current with
  ``torch.cuda.set_device``) and nccl when CUDA is available; cpu and gloo otherwise.
- ``process_group(timeout_s)``: ``init_process_group`` with that backend and timeout, yields the
  device; on success a barrier, then ``destroy_process_group`` (no rank tears gloo down while a peer
  is still in a collective); on an exception ``destroy_process_group`` only.

Comparison of a parallel result with its single-process reference: ``compare(name, ref, test,
tolerance)`` returns a ``CheckResult`` (it never raises on a mismatch). A ``Tolerance`` is one of

- ``Tolerance.exact(reason)``: equal values (``torch.equal``: ``-0.0 == 0.0``), bitwise for floats
  otherwise; for identical arithmetic;
- ``Tolerance.elementwise(rtol, atol, reason)``: ``|test - ref| <= atol + rtol * |ref|`` for every
  element (the rule of ``torch.testing.assert_close``);
- ``Tolerance.scaled(bound, reason)``: ``max |test - ref| <= bound * max |ref|``, one bound for the
  whole tensor relative to its largest value;
- ``Tolerance.sqnr(min_db, reason)``: ``compute_sqnr(ref, test) >= min_db`` (dB).

Every kind also needs equal shapes and dtypes and finite values in both tensors. A non-exact kind
needs a bound above zero: exactness is asked for by name, never by a zero tolerance. Every result
records the measured errors, so a passing tolerance is reported with its margin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from pytorch_scripts_common.cli import UsageError
from pytorch_scripts_common.cli import run as cli_run

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_TIMEOUT_S",
    "TORCHRUN_ENV_VARS",
    "CheckResult",
    "Tolerance",
    "backend_for",
    "check_timeout",
    "check_true",
    "compare",
    "process_group",
    "rank_device",
    "run",
    "torchrun_world_size",
]

TORCHRUN_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
MAX_TIMEOUT_S = 86_400  # one day: longer is a hang, and timedelta / the backends overflow far above it
OTHER_RANKS_EXIT_DELAY_S = 5.0


# --- set-up and teardown -------------------------------------------------------------------------


def _report_from_local_rank_zero(line: str) -> None:
    """Print ``line`` on local rank 0 only, and put it in this rank's torchrun error file."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        # The layout torch's ErrorHandler.record_exception writes; torchrun's summary shows py_callstack.
        message = {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}
        # Written whole, then renamed: torchrun stops the other ranks with SIGTERM (default action)
        # as soon as one exits, and then reads every rank's error file; a rank killed between
        # truncating the file and writing it left an empty file, and torchrun failed on its JSON.
        # Without the file the summary only lacks the line: not worth failing over.
        staging = f"{error_file}.tmp-{os.getpid()}"
        with contextlib.suppress(OSError):
            with open(staging, "w", encoding="utf-8") as file:
                json.dump({"message": message}, file)
            os.replace(staging, error_file)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)
    else:
        # torchrun stops every rank (SIGTERM) as soon as the first one exits: give local rank 0 the
        # time to print the line (when it has the same mistake) and to be the root cause it reports.
        time.sleep(OTHER_RANKS_EXIT_DELAY_S)


def run(main: Callable[..., Any]) -> None:
    """``cli.run(main)`` for a script torchrun starts on every rank (see the module doc)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    code: int | str | None = 0
    try:
        cli_run(record(main), report=_report_from_local_rank_zero, sigterm_raises=False)
    except SystemExit as exit_request:  # user mistakes (2), failed checks (1), --help (0)
        code = exit_request.code
    # Output is printed and the process group destroyed: end without interpreter finalization,
    # which gloo's threads can abort (SIGABRT), turning a result into a crash.
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def torchrun_world_size(command: str) -> int:
    """WORLD_SIZE as torchrun set it; ``UsageError`` naming ``command`` when not under torchrun."""
    missing = [name for name in TORCHRUN_ENV_VARS if name not in os.environ]
    if missing:
        raise UsageError(
            f"not launched by torchrun (environment variables {', '.join(missing)} are not set): "
            f"run e.g. {command}  (--nproc_per_node 1 for a single process)"
        )
    world_size = os.environ["WORLD_SIZE"]
    if not world_size.isdigit() or int(world_size) < 1:
        raise UsageError(f"WORLD_SIZE={world_size!r} is not a positive integer: launch with torchrun")
    return int(world_size)


def check_timeout(timeout_s: float) -> None:
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise UsageError(
            f"--timeout_s is {timeout_s}: pass a number of seconds in (0, {MAX_TIMEOUT_S}] "
            "(it bounds the rendezvous and every collective)"
        )


def rank_device() -> torch.device:
    """``cuda:LOCAL_RANK``, made the current device, when CUDA is available; else ``cpu``."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local_rank >= count:
        raise UsageError(
            f"LOCAL_RANK {local_rank} has no GPU ({count} visible): launch at most "
            f"--nproc_per_node {count} per machine"
        )
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(timeout_s: float) -> Iterator[torch.device]:
    """The default process group for this rank's device; yields the device (see the module doc)."""
    import torch.distributed as dist

    device = rank_device()
    dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield device
        dist.barrier()  # no rank tears gloo down while a peer is still in a collective
    finally:
        dist.destroy_process_group()


# --- comparison ----------------------------------------------------------------------------------

ToleranceKind = Literal["exact", "elementwise", "scaled", "sqnr"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How close a result must be to its reference, and the one-line reason (see the module doc)."""

    kind: ToleranceKind
    reason: str
    rtol: float = 0.0  # elementwise
    atol: float = 0.0  # elementwise
    bound: float = 0.0  # scaled
    min_db: float = 0.0  # sqnr

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError("a tolerance needs its reason")
        numbers = {"rtol": self.rtol, "atol": self.atol, "bound": self.bound, "min_db": self.min_db}
        if any(not math.isfinite(v) or v < 0 for v in numbers.values()):
            raise ValueError(f"tolerance {numbers} must be finite and non-negative")
        allowance = {"exact": 0.0, "elementwise": self.rtol + self.atol, "scaled": self.bound, "sqnr": 1.0}
        if self.kind not in allowance:
            raise ValueError(f"unknown tolerance kind {self.kind!r}")
        if allowance[self.kind] == 0 and self.kind != "exact":
            raise ValueError(f"a {self.kind} tolerance of zero: use Tolerance.exact for exact checks")

    @classmethod
    def exact(cls, reason: str) -> Tolerance:
        return cls("exact", reason)

    @classmethod
    def elementwise(cls, rtol: float, atol: float, reason: str) -> Tolerance:
        return cls("elementwise", reason, rtol=rtol, atol=atol)

    @classmethod
    def scaled(cls, bound: float, reason: str) -> Tolerance:
        return cls("scaled", reason, bound=bound)

    @classmethod
    def sqnr(cls, min_db: float, reason: str) -> Tolerance:
        return cls("sqnr", reason, min_db=min_db)

    @property
    def is_exact(self) -> bool:
        return self.kind == "exact"

    def __str__(self) -> str:
        return {
            "exact": "exact",
            "elementwise": f"rtol={self.rtol:.0e} atol={self.atol:.0e}",
            "scaled": f"max|diff| <= {self.bound:g} max|ref|",
            "sqnr": f"SQNR >= {self.min_db:g} dB",
        }[self.kind]


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One named check. ``tolerance`` is None for a yes/no check (``check_true``)."""

    name: str
    passed: bool
    tolerance: Tolerance | None
    max_abs_err: float = 0.0  # max |test - ref|
    max_rel_err: float = 0.0  # max |test - ref| / |ref| over the elements that differ
    scaled_err: float = 0.0  # max |test - ref| / max |ref|
    sqnr_db: float | None = None  # measured for sqnr checks and for failed exact / scaled ones
    detail: str = ""  # why it failed (or what a yes/no check found)

    @property
    def bitwise_equal(self) -> bool:
        """Passed with no difference at all (a passed yes/no check counts)."""
        return self.passed and self.max_abs_err == 0.0


def check_true(name: str, condition: bool, detail: str) -> CheckResult:
    """A yes/no check, e.g. "the local shard has the expected placement"; ``detail`` says what failed."""
    return CheckResult(name, bool(condition), None, detail="" if condition else detail)


def compare(name: str, ref: torch.Tensor, test: torch.Tensor, tolerance: Tolerance) -> CheckResult:
    """Compare ``test`` with ``ref`` under ``tolerance`` (see the module doc); records, never raises."""
    import torch

    from pytorch_scripts_common.idioms import compute_sqnr

    if ref.shape != test.shape or ref.dtype != test.dtype:
        ref_kind, test_kind = f"{tuple(ref.shape)} {ref.dtype}", f"{tuple(test.shape)} {test.dtype}"
        detail = f"shape/dtype mismatch: ref {ref_kind} vs test {test_kind}"
        return CheckResult(name, False, tolerance, math.inf, math.inf, math.inf, detail=detail)
    ref64 = ref.detach().to(device="cpu", dtype=torch.float64)
    test64 = test.detach().to(device="cpu", dtype=torch.float64)
    if not (torch.isfinite(ref64).all() and torch.isfinite(test64).all()):
        return CheckResult(name, False, tolerance, math.inf, math.inf, math.inf, detail="non-finite values")
    abs_err = (test64 - ref64).abs()  # float64 holds every float32 / bfloat16 difference exactly
    differs = abs_err > 0
    max_abs = abs_err.max().item() if abs_err.numel() else 0.0
    max_rel = 0.0
    if bool(differs.any()):
        max_rel = (abs_err / ref64.abs().clamp_min(torch.finfo(torch.float64).tiny))[differs].max().item()
    scale = ref64.abs().max().item() if ref64.numel() else 0.0
    scaled = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    sqnr = compute_sqnr(ref64, test64) if tolerance.kind == "sqnr" or max_abs > 0 else math.inf

    if tolerance.kind == "exact":
        passed = max_abs == 0.0  # finite values: equal as torch.equal compares them
    elif tolerance.kind == "elementwise":
        passed = bool((abs_err <= tolerance.atol + tolerance.rtol * ref64.abs()).all())
    elif tolerance.kind == "scaled":
        passed = scaled <= tolerance.bound
    else:
        passed = sqnr >= tolerance.min_db
    detail = ""
    if not passed:
        measured = f"max |diff| {max_abs:.3g}, max|diff|/max|ref| {scaled:.3g}, SQNR {sqnr:.1f} dB"
        detail = f"{'not exact' if tolerance.is_exact else f'outside {tolerance}'}: {measured}"
    return CheckResult(
        name,
        passed,
        tolerance,
        max_abs_err=max_abs,
        max_rel_err=max_rel,
        scaled_err=scaled,
        sqnr_db=sqnr if (tolerance.kind == "sqnr" or not passed) else None,
        detail=detail,
    )

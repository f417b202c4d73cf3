"""Comparison of a parallel run against the single-process reference: named checks with tolerances.

A check passes when ``|test - ref| <= atol + rtol * |ref|`` holds element-wise (the rule of
``torch.testing.assert_close``) and the shapes and dtypes match; a ``Tolerance.sqnr(min_db)``
check instead needs the SQNR (dB, ``pytorch_scripts_common.compute_sqnr``) to be at least ``min_db``.
``Tolerance.exact()`` is ``rtol = atol = 0``: bitwise-equal values (``-0.0 == 0.0`` aside).
Every check records the measured maximum absolute and relative error, so a passing tolerance is
reported together with its margin.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from pytorch_scripts_common import compute_sqnr


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    reason: str
    min_sqnr_db: float | None = None  # set: an SQNR check instead of an element-wise one

    @classmethod
    def exact(cls, reason: str) -> Tolerance:
        return cls(rtol=0.0, atol=0.0, reason=reason)

    @classmethod
    def sqnr(cls, min_db: float, reason: str) -> Tolerance:
        return cls(rtol=math.inf, atol=math.inf, reason=reason, min_sqnr_db=min_db)

    @property
    def is_exact(self) -> bool:
        return self.rtol == 0.0 and self.atol == 0.0

    def __str__(self) -> str:
        if self.min_sqnr_db is not None:
            return f"SQNR >= {self.min_sqnr_db:g} dB"
        return "exact" if self.is_exact else f"rtol={self.rtol:.0e} atol={self.atol:.0e}"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    max_abs_err: float
    max_rel_err: float
    tolerance: Tolerance | None  # None for a yes/no check
    detail: str = ""
    sqnr_db: float | None = None  # measured, for SQNR checks


def compare(name: str, ref: torch.Tensor, test: torch.Tensor, tolerance: Tolerance) -> CheckResult:
    """Compare ``test`` against ``ref`` under ``tolerance``; never raises on a mismatch (records it)."""
    if ref.shape != test.shape or ref.dtype != test.dtype:
        return CheckResult(
            name,
            False,
            math.inf,
            math.inf,
            tolerance,
            f"shape/dtype mismatch: ref {tuple(ref.shape)} {ref.dtype} "
            f"vs test {tuple(test.shape)} {test.dtype}",
        )
    ref64 = ref.detach().to(device="cpu", dtype=torch.float64)
    test64 = test.detach().to(device="cpu", dtype=torch.float64)
    if not (torch.isfinite(ref64).all() and torch.isfinite(test64).all()):
        return CheckResult(name, False, math.inf, math.inf, tolerance, "non-finite values")
    abs_err = (test64 - ref64).abs()
    max_abs = abs_err.max().item() if abs_err.numel() else 0.0
    rel = abs_err / ref64.abs().clamp_min(torch.finfo(torch.float64).tiny)
    max_rel = rel[abs_err > 0].max().item() if bool((abs_err > 0).any()) else 0.0
    if tolerance.min_sqnr_db is not None:
        sqnr = compute_sqnr(ref64, test64)
        return CheckResult(name, sqnr >= tolerance.min_sqnr_db, max_abs, max_rel, tolerance, sqnr_db=sqnr)
    passed = bool((abs_err <= tolerance.atol + tolerance.rtol * ref64.abs()).all())
    return CheckResult(name, passed, max_abs, max_rel, tolerance)


def _describe(result: CheckResult) -> str:
    sqnr = f"SQNR {result.sqnr_db:.1f} dB" if result.sqnr_db is not None else ""
    return "; ".join(part for part in (sqnr, result.detail) if part)


class Report:
    """The checks of one run, in order; rendered as a table on rank 0."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []
        self.notes: list[str] = []

    def check(self, name: str, ref: torch.Tensor, test: torch.Tensor, tolerance: Tolerance) -> CheckResult:
        result = compare(name, ref, test, tolerance)
        self.results.append(result)
        return result

    def check_all(
        self, name: str, refs: dict[str, torch.Tensor], tests: dict[str, torch.Tensor], tolerance: Tolerance
    ) -> CheckResult:
        """One row for many named tensors (e.g. every parameter gradient): the worst error, every failure."""
        if refs.keys() != tests.keys():
            missing = sorted(refs.keys() ^ tests.keys())
            result = CheckResult(
                name, False, math.inf, math.inf, tolerance, f"different tensor names: {missing}"
            )
        else:
            parts = [compare(key, refs[key], tests[key], tolerance) for key in refs]
            worst = max(parts, key=lambda r: r.max_abs_err)
            failed = [r.name + (f" ({_describe(r)})" if _describe(r) else "") for r in parts if not r.passed]
            sqnrs = [r.sqnr_db for r in parts if r.sqnr_db is not None]
            if failed:
                detail = f"failed: {', '.join(failed)}"
            elif sqnrs:
                lowest = min(parts, key=lambda r: r.sqnr_db)
                detail = f"{len(parts)} tensors, lowest SQNR {lowest.sqnr_db:.1f} dB ({lowest.name})"
            elif worst.max_abs_err == 0.0:
                detail = f"{len(parts)} tensors, all equal"
            else:
                detail = f"{len(parts)} tensors, worst {worst.name}"
            result = CheckResult(
                name, not failed, worst.max_abs_err, max(r.max_rel_err for r in parts), tolerance, detail
            )
        self.results.append(result)
        return result

    def check_true(self, name: str, condition: bool, detail: str) -> CheckResult:
        """A yes/no check (for example "the local shard has the expected shape")."""
        result = CheckResult(name, bool(condition), 0.0, 0.0, None, "" if condition else detail)
        self.results.append(result)
        return result

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def num_failed(self) -> int:
        return sum(not r.passed for r in self.results)

    def render(self) -> str:
        width = max([len(r.name) for r in self.results] + [5])
        lines = [f"{'check':<{width}}  result  {'max abs err':>11}  {'max rel err':>11}  tolerance"]
        for r in self.results:
            status = "ok" if r.passed else "FAIL"
            if r.tolerance is None:  # yes/no check: no error to measure
                errors = f"{'-':>11}  {'-':>11}"
            else:
                errors = f"{r.max_abs_err:>11.3e}  {r.max_rel_err:>11.3e}"
            lines.append(
                f"{r.name:<{width}}  {status:<6}  {errors}  {r.tolerance or 'yes/no'}"
                + (f"  ({_describe(r)})" if _describe(r) else "")
            )
        reasons = sorted({(str(r.tolerance), r.tolerance.reason) for r in self.results if r.tolerance})
        if reasons:
            lines.append("tolerances:")
            lines.extend(f"  {tol}: {reason}" for tol, reason in reasons)
        lines.extend(self.notes)
        return "\n".join(lines)

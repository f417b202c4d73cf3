"""The checks of one parallel run against its single-process reference, rendered as a table.

The comparison rule (exact, element-wise ``rtol``/``atol``, SQNR), the measured errors and the
reason of every tolerance are ``pytorch_scripts_common.distributed``'s ``compare`` / ``Tolerance``;
``Report`` collects the results of one mode, groups many tensors into one row (every parameter
gradient) and renders the table rank 0 prints.
"""

from __future__ import annotations

import math

import torch

from pytorch_scripts_common.distributed import CheckResult, Tolerance, check_true, compare


def _describe(result: CheckResult) -> str:
    """The failure detail (it includes the measured SQNR), else the SQNR of an SQNR check."""
    if result.detail:
        return result.detail
    return f"SQNR {result.sqnr_db:.1f} dB" if result.sqnr_db is not None else ""


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
                name, False, tolerance, math.inf, math.inf, detail=f"different tensor names: {missing}"
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
                name,
                not failed,
                tolerance,
                worst.max_abs_err,
                max(r.max_rel_err for r in parts),
                detail=detail,
            )
        self.results.append(result)
        return result

    def check_true(self, name: str, condition: bool, detail: str) -> CheckResult:
        """A yes/no check (for example "the local shard has the expected shape")."""
        result = check_true(name, condition, detail)
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

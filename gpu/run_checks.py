"""One GPU run of every tool's CUDA path, packed as one tarball and a summary JSON (see gpu/README.md).

``bash gpu/run_checks.sh OUT`` installs the carried wheels and runs this driver. The steps (the
tables of ``gpu/plan.py``) run a few at a time, each with its own timeout and log (``gpu/runner.py``);
a failed step is recorded and the others go on; steps that cannot start before the time budget runs
out are skipped and said so. ``--cpu`` runs the same plan on CPU, skipping what needs CUDA, so the
plan is exercised on every CI run. ``--dry_run`` prints the plan and checks every ``--flag`` of it
against the entry function of the tool it is passed to.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpu.plan import Step, check_flags, display, plan, plan_text, select
from gpu.runner import (
    LOG_TAIL_CHARS,
    MAX_PARTS,
    MIN_STEP_S,
    TARBALL,
    child_env,
    note_sigterm,
    pack,
    run_steps,
)

TOOL = "gpu.run_checks"
SUMMARY = "summary.json"

PACKING_RESERVE_S = 20.0  # budget kept for killing stragglers, packing and the summary
MIN_BUDGET_S = PACKING_RESERVE_S + 2 * MIN_STEP_S


def main(
    output_dir: str = "",
    cpu: bool = False,
    quick: bool = False,
    steps: str = "",
    dry_run: bool = False,
    budget_s: float = 420.0,
    max_parallel: int = 0,
    wheel_site: str = "",
    install_log: str = "",
    install_rc: int = -1,
    keep_work_dir: bool = False,
    overwrite: bool = False,
) -> None:
    """Run every tool's CUDA path (or, with --cpu, the CPU plan) and pack the results into OUTPUT_DIR.

    Args:
        output_dir: folder for gpu_checks.tar.gz (or its .partNN pieces) and summary.json; created if missing.
        cpu: run on CPU: every tool on CPU, steps that need CUDA skipped and listed with the reason.
        quick: small sizes and one step of each kind (for tests and a first look).
        steps: comma list of step names or groups to run (with the steps they need); default all.
        dry_run: print the plan and check every --flag against its tool's entry function; run nothing.
        budget_s: wall-clock budget in seconds; steps that cannot start before it is spent are skipped.
        max_parallel: steps running at once (0: half the CPU cores, at most 6).
        wheel_site: folder the carried wheels were installed into (set by run_checks.sh; put on PYTHONPATH).
        install_log: pip's log of that install (set by run_checks.sh; packed and summarised).
        install_rc: pip's exit status (set by run_checks.sh; -1 when no wheels were installed).
        keep_work_dir: keep the work folder (its path is printed) instead of deleting it after packing.
        overwrite: replace an earlier run's files in output_dir.
    """
    from pytorch_scripts_common.cli import UsageError, parse_list

    started = time.monotonic()
    deadline = started + budget_s - PACKING_RESERVE_S
    if deadline - started < 2 * MIN_STEP_S:
        raise UsageError(f"--budget_s={budget_s} leaves no time to run: pass at least {MIN_BUDGET_S:.0f}")
    if max_parallel < 0:
        raise UsageError(f"--max_parallel={max_parallel} is negative: pass 0 (automatic) or a count")
    max_parallel = max_parallel or max(1, min(6, (os.cpu_count() or 2) // 2))
    device = "cpu" if cpu else "cuda"
    planned = plan(sys.executable, device, quick)
    select(planned, quick, parse_list(steps, str, name="steps"))
    env = child_env(device, wheel_site, max_parallel)
    if dry_run:
        check_plan(planned, env)
        return
    out = prepare_output_dir(output_dir, overwrite)
    work = Path(tempfile.mkdtemp(prefix="gpu_checks."))
    try:
        if install_log:
            shutil.copyfile(install_log, work / "install_wheels.log")
        summary = run_plan(planned, work, env, deadline, max_parallel, device, note_sigterm())
        summary.update(
            quick=quick,
            budget_s=budget_s,
            install_wheels=install_summary(wheel_site, install_log, install_rc),
        )
        (work / "plan.txt").write_text(plan_text(planned, env), encoding="utf-8")
        summary["tarball"] = publish_tarball(work, out)
        summary["seconds"] = round(time.monotonic() - started, 1)
        write_json(out / SUMMARY, summary)
    finally:
        if keep_work_dir:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_results(summary, out)
    if summary["ended"] != "completed":
        raise SystemExit(143 if summary["ended"].endswith("SIGTERM") else 130)  # as cli.run exits
    if install_rc > 0:
        print(f"error: pip could not install the carried wheels (exit {install_rc}): see install_wheels")
    if install_rc > 0 or any(r["status"] not in ("ok", "skipped") for r in summary["steps"].values()):
        raise SystemExit(1)  # the summary says which steps


def check_plan(planned: list[Step], env: dict[str, str]) -> None:
    """--dry_run: print the plan; exit non-zero when a step passes a flag its tool does not take."""
    print(plan_text(planned, env), end="")
    problems = check_flags(sys.executable, planned, env)
    for problem in problems:
        print(f"flag check: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(f"error: {len(problems)} step(s) pass flags their tool does not take (above)")
    print(f"flag check: the --flags of all {sum(1 for s in planned if s.entry)} tool steps name parameters")


def prepare_output_dir(output_dir: str, overwrite: bool) -> Path:
    """The output folder, created; refused when it holds an earlier run's files and not --overwrite."""
    from pytorch_scripts_common.cli import UsageError

    if not output_dir:
        raise UsageError("--output_dir is empty: pass the folder for the tarball and summary.json")
    out = Path(output_dir)
    existing = [p.name for p in (out / SUMMARY, out / TARBALL, *out.glob(f"{TARBALL}.part*")) if p.exists()]
    if existing and not overwrite:
        raise UsageError(f"{out} already holds {existing}: pass --overwrite=True or another --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_plan(
    planned: list[Step],
    work: Path,
    env: dict[str, str],
    deadline: float,
    max_parallel: int,
    device: str,
    interrupted: Callable[[], str],
) -> dict[str, Any]:
    """The environment step alone (it says whether torch sees CUDA), then the others; the summary."""
    from pytorch_scripts_common.cli import UsageError

    started_wall = time.time()
    results, ended = run_steps(planned[:1], work, env, deadline, 1, interrupted)
    environment = results[planned[0].name].get("metrics", {})
    if device == "cuda" and not environment.get("cuda_available"):
        raise UsageError(
            "torch sees no CUDA device (the environment step's log ends "
            f"{results[planned[0].name].get('log_tail', '')[-300:]!r}): pass --cpu to run the CPU plan"
        )
    if ended == "completed":
        more, ended = run_steps(planned[1:], work, env, deadline, max_parallel, interrupted)
        results.update(more)
    summary: dict[str, Any] = {
        "tool": TOOL,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_wall)),
        "device": device,
        "ended": ended,
        "environment": environment,
        "counts": {},
        "steps": {},
    }
    for step in planned:
        result = results.get(step.name) or {"status": "skipped", "skip_reason": step.skip_reason or ended}
        entry = {"group": step.group, **result, "command": display(step)}
        if step.env:
            entry["env"] = step.env
        if step.note:
            entry["note"] = step.note
        summary["steps"][step.name] = entry
        summary["counts"][result["status"]] = summary["counts"].get(result["status"], 0) + 1
    return summary


def install_summary(wheel_site: str, install_log: str, install_rc: int) -> dict[str, Any]:
    tail = Path(install_log).read_text(errors="replace")[-LOG_TAIL_CHARS:] if install_log else ""
    return {"returncode": install_rc, "wheel_site": wheel_site, "log_tail": tail}


def publish_tarball(work: Path, out: Path) -> dict[str, Any]:
    """Pack ``work`` into ``out`` (replacing an earlier run's tarball); what was written and left out."""
    with tempfile.TemporaryDirectory(prefix="gpu_checks_pack.") as staging:
        parts, left_out = pack(work, Path(staging))
        tarball: dict[str, Any] = {
            "files": [p.name for p in parts],
            "bytes": sum(p.stat().st_size for p in parts),
            "left_out": left_out,
        }
        if len(parts) > MAX_PARTS:
            tarball["warning"] = f"{len(parts)} parts: the device machine returns at most 8 files"
        for stale in out.glob(f"{TARBALL}*"):
            stale.unlink()  # an earlier run's tarball or parts (prepare_output_dir checked --overwrite)
        for part in parts:
            publish_file(part, out / part.name)
    return tarball


def write_json(target: Path, data: dict[str, Any]) -> None:
    from pytorch_scripts_common.outputs import staged_file

    with staged_file(target) as temp:
        temp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def publish_file(source: Path, target: Path) -> None:
    from pytorch_scripts_common.outputs import staged_file

    with staged_file(target) as temp:
        shutil.copyfile(source, temp)


def highlights(result: dict[str, Any]) -> str:
    """One line of a step's metrics: link / match coverage, config statuses, quality."""
    metrics = result.get("metrics") or {}
    if "kernels_linked" in metrics:
        return (
            f"kernels linked {metrics['kernels_linked']}/{metrics['num_kernels']} "
            f"{metrics['kernels_by_kind']}, "
            f"non-view nodes without kernel {metrics['non_view_nodes_without_kernel']}, "
            f"warnings {metrics['num_warnings']}"
        )
    if "matched_by_category" in metrics:
        return ", ".join(
            f"{cat} {c['matched']}/{c['events']}" for cat, c in metrics["matched_by_category"].items()
        )
    if "configs" in metrics:
        return ", ".join(f"{name} {c['status']}" for name, c in metrics["configs"].items())
    if metrics.get("quality"):
        quality = metrics["quality"]
        sqnr, kl = quality.get("logits_sqnr_db", float("nan")), quality.get("kl_mean", float("nan"))
        return f"logits SQNR {sqnr:.1f} dB, KL {kl:.2e}"
    if "kernels" in metrics:
        return f"kernels in the log {metrics['kernels']}"
    if "counts" in metrics:
        return str(metrics["counts"])
    return result.get("metrics_error", "")


def print_results(summary: dict[str, Any], out: Path) -> None:
    """One line per step that ran (the device tool shows the last 12,000 characters of the output)."""
    for name, result in summary["steps"].items():
        if result["status"] != "skipped":
            line = f"{result['status']:<8} {result.get('seconds', 0):>6.1f} s  {name}  {highlights(result)}"
            print(line[:160])
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items()))
    print(f"{counts}; {summary['ended']} in {summary['seconds']} s")
    print(f"wrote {out / SUMMARY} and {', '.join(summary['tarball']['files'])} in {out}")


if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main)

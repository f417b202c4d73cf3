"""The plan of a GPU run: which tool runs with which flags, as tables, and the steps built from them.

Each step is one subprocess of one tool's own CLI (``python -m folder.script --flag=value``), run in
the run's work folder: relative paths in its flags are outputs there, inputs from the repository are
absolute. The tables (``*_RUNS``, ``GRAPH_VIZ_FORMATS`` and the ``*_QUICK`` selections) are the
place to change what runs. ``collect_*`` read a step's outputs into the summary's metrics.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

EMBEDDED_MODELS = "hf_torchao_vllm/embedded_models"

FP8_BLOCK_CUDA_ONLY = "fp8 128x128-block granularity runs through triton kernels: CUDA only"

CONVERTER_GAP = (
    "the converter maps no {subclass} today: a refusal naming it is the expected result until it does"
)

# graph_viz: every program of graph_viz/make_sample_logs.py's SAMPLE_LOGS, once per log format. The
# program runs under torch.set_default_device(<device>) (make_sample_logs has no device flag), with
# stdout + stderr in one file as `prog.py > log.txt 2>&1`. The default-format run also writes a
# TORCH_TRACE folder. --quick: the QUICK programs, short format only.
GRAPH_VIZ_FORMATS: dict[str, dict[str, str]] = {"short": {"TORCH_LOGS_FORMAT": "short"}, "default": {}}

GRAPH_VIZ_TRACE_FORMAT = "default"

GRAPH_VIZ_QUICK = ("mlp_inference",)

# perf_traces: name -> flags of profile_compiled_model (sizes of the committed CPU fixtures); each pair
# is then enriched by add_inductor_metadata_to_perf_trace.py. Value of QUICK: the --quick runs.
PERF_TRACE_SIZES = ("--hidden_dim=16", "--batch_size=4", "--num_layers=2")

PERF_TRACE_RUNS: dict[str, tuple[str, ...]] = {
    "train": ("--mode=train", "--graph_break=False"),
    "inference": ("--mode=inference", "--graph_break=False"),
    "graph_break": ("--mode=train", "--graph_break=True"),
}

PERF_TRACE_QUICK = ("inference",)

# test_ao.py: name -> (flags, --quick flags or None when not part of --quick). Every run writes
# report.json to its own --output_dir.
TEST_AO_RUNS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "small": (
        ("--model=small", "--configs=all", "--num_runs=3"),
        ("--model=small", "--configs=int8wo", "--num_runs=1"),
    ),
    "odd_shapes": (("--model=odd_shapes", "--configs=all", "--num_runs=3"), None),
    "embedded": (("--model=embedded", "--configs=all", "--num_runs=3"), None),
    "small_compile": (("--model=small", "--configs=all", "--num_runs=3", "--compile=True"), None),
}


@dataclasses.dataclass(frozen=True)
class QuantizeRun:
    """One quantize -> convert -> validate chain on an embedded model."""

    model: str  # folder under EMBEDDED_MODELS
    flags: tuple[str, ...]
    cuda_only: str = ""  # why it cannot run on CPU ("" = runs there too)
    convert_note: str = ""  # what the convert step is expected to do, when not plain success


# The CUDA recipes of hf_torchao_vllm (README "GPU"): Int4WeightOnlyConfig, fp8 dynamic per-row /
# per-tensor / 128x128 blocks, mxfp8 with KernelPreference.AUTO. On the MoE model int4 and mxfp8
# refuse 3D experts up front, so they skip them (as in that README's table).
QUANTIZE_RUNS: dict[str, QuantizeRun] = {
    "dense-int4": QuantizeRun("dense", ("--recipe=int4_weight_only",)),
    "dense-fp8-row": QuantizeRun("dense", ("--recipe=fp8", "--granularity=per_row")),
    "dense-fp8-tensor": QuantizeRun("dense", ("--recipe=fp8", "--granularity=per_tensor")),
    "dense-fp8-block": QuantizeRun(
        "dense", ("--recipe=fp8", "--granularity=a1x128_w128x128"), FP8_BLOCK_CUDA_ONLY
    ),
    "dense-mxfp8": QuantizeRun(
        "dense", ("--recipe=mxfp8",), convert_note=CONVERTER_GAP.format(subclass="MXTensor")
    ),
    "moe-fp8-row": QuantizeRun("moe", ("--recipe=fp8", "--granularity=per_row")),
    "moe-fp8-block": QuantizeRun(
        "moe", ("--recipe=fp8", "--granularity=a1x128_w128x128"), FP8_BLOCK_CUDA_ONLY
    ),
    "moe-int4": QuantizeRun("moe", ("--recipe=int4_weight_only", "--skip=experts")),
    "moe-mxfp8": QuantizeRun(
        "moe", ("--recipe=mxfp8", "--skip=experts"), convert_note=CONVERTER_GAP.format(subclass="MXTensor")
    ),
}

INT4_CUDA_NOTE = CONVERTER_GAP.format(subclass="Int4Tensor / Int4TilePackedTo4dTensor (CUDA int4 layouts)")

QUANTIZE_QUICK = ("dense-int4",)

QUANTIZE_QUICK_FLAGS = ("--eval_tokens=64", "--max_new_tokens=2")

# torchrun at world size 1 (nccl on CUDA, gloo on CPU): name -> (module, flags, --quick flags).
DISTRIBUTED_RUNS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    # fsdp_tp needs 4 ranks, so "all" cannot run on one GPU.
    "dtensor_parallelisms": ("dtensor_parallelisms.main", ("--mode=fsdp,tp,sp",), ("--mode=tp",)),
    "dp2ep": (
        "dp2ep.main",
        (),
        (
            "--num_experts=4",
            "--top_k=1",
            "--dtype=float32",
            "--routing=random",
            "--batch=even",
            "--expert_impl=loop",
        ),
    ),
}

# Inline programs (python -c); each prints one JSON line last.
ENVIRONMENT_CODE = """\
import importlib.metadata, json, logging, os, platform, sys
logging.basicConfig(level=logging.WARNING)  # torchao logs a failed load of its CUDA extensions here
info = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "versions": {}, "locations": {}}
for name in ("torch", "triton", "torchao", "transformers", "compressed-tensors", "safetensors", "fire",
             "pydantic", "pytest", "numpy", "jinja2", "rich"):
    try:
        info["versions"][name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        info["versions"][name] = None
import torch
info["torch_cuda"] = torch.version.cuda
info["cuda_available"] = torch.cuda.is_available()
if info["cuda_available"]:
    props = torch.cuda.get_device_properties(0)
    info["gpu"] = {"name": props.name, "capability": list(torch.cuda.get_device_capability(0)),
                   "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
site = os.environ.get("GPU_CHECKS_WHEEL_SITE", "")
carried = importlib.metadata.distributions(path=[site]) if site else []
info["carried"] = {dist.metadata["Name"]: dist.version for dist in carried}
for module in ("torchao", "compressed_tensors", "fire"):
    try:
        info["locations"][module] = os.path.dirname(importlib.import_module(module).__file__)
    except Exception as error:
        info["locations"][module] = f"import failed: {type(error).__name__}: {error}"
if not info["locations"]["torchao"].startswith("import failed"):
    # ops with a CUDA kernel: registered by torchao's extensions (_C_mxfp8, _C_cutlass_90a) when they load
    ops = [op for op in torch._C._dispatch_get_all_op_names() if op.startswith("torchao::")]
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    info["torchao_cuda_ops"] = sorted(op for op in ops if has_kernel(op, "CUDA"))
print(json.dumps(info))
"""

GRAPH_VIZ_PROGRAM_CODE = (
    "import sys, torch; torch.set_default_device(sys.argv[1]); "
    "from graph_viz.make_sample_logs import run_program; run_program(sys.argv[2])"
)

FLAG_CHECK_CODE = """\
import importlib, inspect, json, sys
result = {}
for entry in json.loads(sys.argv[1]):
    module, _, function = entry.partition(":")
    try:
        target = getattr(importlib.import_module(module), function)
        result[entry] = {"parameters": list(inspect.signature(target).parameters)}
    except Exception as error:
        result[entry] = {"error": f"{type(error).__name__}: {error}"}
print(json.dumps(result))
"""


@dataclasses.dataclass
class Step:
    """One subprocess: ``launcher + args``, run in the work folder (relative paths are its outputs;
    inputs from the repository are absolute; the repository is on PYTHONPATH)."""

    name: str
    group: str
    launcher: list[str]
    args: list[str] = dataclasses.field(default_factory=list)
    entry: str = ""  # "module:function" whose parameters the --flags of ``args`` must name
    timeout_s: float = 120.0
    after: tuple[str, ...] = ()
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    skip_reason: str = ""  # set when planned but not run (CUDA only, --quick, --steps, vLLM)
    quick: bool = False
    log: str = ""  # where stdout + stderr go, relative to the work folder (default logs/<name>.log)
    collect: Callable[[Path, Step], dict[str, Any]] | None = None
    note: str = ""

    @property
    def argv(self) -> list[str]:
        return [*self.launcher, *self.args]

    @property
    def log_path(self) -> str:
        return self.log or f"logs/{self.name}.log"


def plan(python: str, device: str, quick: bool) -> list[Step]:
    """Every step of a run on ``device`` ("cuda" or "cpu"), in start order; nothing is filtered yet."""
    on_cpu = device == "cpu"
    steps: list[Step] = [
        Step(
            "environment",
            "environment",
            [python, "-c", ENVIRONMENT_CODE],
            timeout_s=120,
            quick=True,
            collect=collect_environment,
        ),
        Step(
            "nvidia_smi",
            "environment",
            ["nvidia-smi"],
            timeout_s=30,
            quick=True,
            skip_reason="needs CUDA: nvidia-smi" if on_cpu else "",
        ),
        Step(
            "gpu_tests",
            "gpu_tests",
            [python, "-m", "pytest"],
            ["-m", "gpu_only", "-p", "no:cacheprovider", "-q", "-rs", *gpu_only_test_files()],
            timeout_s=240,
            quick=True,
            collect=collect_pytest,
            note="the tests marked gpu_only (skipped when torch sees no CUDA device)",
        ),
    ]
    steps += graph_viz_steps(python, device, quick)
    steps += perf_trace_steps(python)
    for name, (flags, quick_flags) in TEST_AO_RUNS.items():
        args = list(quick_flags if quick and quick_flags else flags)
        steps.append(
            Step(
                f"test_ao_{name}",
                "test_ao",
                [python, "-m", "test_ao"],
                [*args, f"--device={device}", f"--output_dir=test_ao/{name}", "--overwrite=True"],
                entry="test_ao:main",
                timeout_s=300,
                quick=quick_flags is not None,
                collect=collect_test_ao,
            )
        )
    steps += quantize_steps(python, device, quick)
    for name, (module, flags, quick_flags) in DISTRIBUTED_RUNS.items():
        steps.append(
            Step(
                f"torchrun_{name}",
                "distributed",
                [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", module],
                list(quick_flags if quick else flags),
                entry=f"{module}:main",
                timeout_s=180,
                quick=True,
                note=f"world size 1 on {'gloo' if on_cpu else 'nccl'}",
            )
        )
    steps.append(
        Step(
            "vllm",
            "vllm",
            [],
            quick=True,
            skip_reason="vLLM cannot travel to the GPU machine (no network there, and its CUDA wheels are "
            "far over the 64 MiB that the working tree may carry); serve the converted checkpoints "
            "elsewhere with hf_torchao_vllm/run_quantized_model_in_vllm.py",
        )
    )
    return steps


def graph_viz_steps(python: str, device: str, quick: bool) -> list[Step]:
    from graph_viz.make_sample_logs import SAMPLE_LOGS

    steps = []
    for log_format, format_env in GRAPH_VIZ_FORMATS.items():
        for name, (program, disable_caches, torch_logs) in SAMPLE_LOGS.items():
            env = {
                **format_env,
                "TORCH_LOGS": torch_logs,
                "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1" if disable_caches else "0",
            }
            if log_format == GRAPH_VIZ_TRACE_FORMAT:
                env["TORCH_TRACE"] = f"graph_viz/torch_trace/{name}"
            log = f"graph_viz/logs/{log_format}/{name}.log"
            in_quick = name in GRAPH_VIZ_QUICK and log_format == "short"
            steps.append(
                Step(
                    f"graph_viz_log_{log_format}_{name}",
                    "graph_viz",
                    [python, "-c", GRAPH_VIZ_PROGRAM_CODE],
                    [device, program],
                    entry="graph_viz.make_sample_logs:run_program",
                    timeout_s=240,
                    env=env,
                    quick=in_quick,
                    log=log,
                    collect=collect_graph_viz_log,
                    note=f"program {program!r} of graph_viz/make_sample_logs.py on {device}",
                )
            )
            steps.append(
                Step(
                    f"graph_viz_html_{log_format}_{name}",
                    "graph_viz",
                    [python, "-m", "graph_viz.main"],
                    [
                        f"--log_path={log}",
                        f"--output_dir=graph_viz/html/{log_format}/{name}",
                        "--overwrite=True",
                    ],
                    entry="graph_viz.main:main",
                    timeout_s=120,
                    quick=in_quick,
                    after=(f"graph_viz_log_{log_format}_{name}",),
                    collect=collect_graph_viz,
                )
            )
    return steps


def perf_trace_steps(python: str) -> list[Step]:
    steps = []
    for name, flags in PERF_TRACE_RUNS.items():
        folder = f"perf_traces/{name}"
        steps.append(
            Step(
                f"perf_traces_profile_{name}",
                "perf_traces",
                [python, "-m", "perf_traces.profile_compiled_model"],
                [f"--output_dir={folder}", *PERF_TRACE_SIZES, *flags, "--overwrite=True"],
                entry="perf_traces.profile_compiled_model:main",
                timeout_s=240,
                quick=name in PERF_TRACE_QUICK,
            )
        )
        steps.append(
            Step(
                f"perf_traces_enrich_{name}",
                "perf_traces",
                [python, "-m", "add_inductor_metadata_to_perf_trace"],
                [
                    f"--perf_trace_file={folder}/trace.json",
                    f"--torch_logs_file={folder}/output_code.log",
                    f"--modified_perf_trace_file={folder}/trace_enriched.json",
                    "--overwrite=True",
                ],
                entry="add_inductor_metadata_to_perf_trace:main",
                timeout_s=120,
                quick=name in PERF_TRACE_QUICK,
                after=(f"perf_traces_profile_{name}",),
                collect=collect_enriched_trace,
            )
        )
    return steps


def quantize_steps(python: str, device: str, quick: bool) -> list[Step]:
    steps = []
    module = "hf_torchao_vllm"
    for name, run in QUANTIZE_RUNS.items():
        folder = f"{module}/{name}"
        flags = list(run.flags)
        if device == "cpu" and "--recipe=fp8" in flags:
            flags.append("--fp8_emulation_on_cpu=True")  # the recipe's CPU opt-in (README "Recipes")
        if quick:
            flags += QUANTIZE_QUICK_FLAGS
        skip = f"needs CUDA: {run.cuda_only}" if run.cuda_only and device == "cpu" else ""
        in_quick = name in QUANTIZE_QUICK
        convert_note = run.convert_note
        if "--recipe=int4_weight_only" in run.flags and device == "cuda":
            convert_note = INT4_CUDA_NOTE
        steps.append(
            Step(
                f"quantize_{name}",
                module,
                [python, "-m", f"{module}.quantize_hf_model_with_torchao"],
                [
                    f"--model={REPO_ROOT / EMBEDDED_MODELS / run.model}",
                    *flags,
                    f"--output_dir={folder}/torchao",
                    "--overwrite=True",
                ],
                entry=f"{module}.quantize_hf_model_with_torchao:main",
                timeout_s=300,
                skip_reason=skip,
                quick=in_quick,
                collect=collect_quantize,
            )
        )
        steps.append(
            Step(
                f"convert_{name}",
                module,
                [python, "-m", f"{module}.convert_torchao_checkpoint_to_compressed_tensors"],
                [
                    f"--model={folder}/torchao",
                    f"--output_dir={folder}/compressed_tensors",
                    "--overwrite=True",
                    "--validate=False",
                ],
                entry=f"{module}.convert_torchao_checkpoint_to_compressed_tensors:main",
                timeout_s=180,
                skip_reason=skip,
                quick=in_quick,
                after=(f"quantize_{name}",),
                note=convert_note,
            )
        )
        steps.append(
            Step(
                f"validate_{name}",
                module,
                [python, "-m", f"{module}.validate_compressed_tensors_checkpoint"],
                [f"--model={folder}/compressed_tensors", f"--reference={folder}/torchao"],
                entry=f"{module}.validate_compressed_tensors_checkpoint:main",
                timeout_s=180,
                skip_reason=skip,
                quick=in_quick,
                after=(f"convert_{name}",),
                note="bit-exact weights against torchao's dequantization, then transformers KL",
            )
        )
    return steps


def gpu_only_test_files() -> list[str]:
    """Test files that mention the ``gpu_only`` marker (collecting only these keeps the step short)."""
    return sorted(
        str(path)
        for path in (REPO_ROOT / "tests").rglob("test_*.py")
        if "gpu_only" in path.read_text(encoding="utf-8")
    )


def select(steps: list[Step], quick: bool, names: list[str]) -> None:
    """Mark the steps that this run leaves out: not --quick, not named by --steps (nor needed by one)."""
    by_name = {step.name: step for step in steps}
    if names:
        unknown = [n for n in names if n not in by_name and n not in {s.group for s in steps}]
        if unknown:
            from pytorch_scripts_common.cli import UsageError

            raise UsageError(
                f"--steps names unknown steps or groups {unknown}: choose from the groups "
                f"{sorted({s.group for s in steps})} or the step names that --dry_run prints"
            )
        wanted = {s.name for s in steps if s.name in names or s.group in names}
        stack = list(wanted)
        while stack:  # a selected step brings the steps it needs
            for dependency in by_name[stack.pop()].after:
                if dependency not in wanted:
                    wanted.add(dependency)
                    stack.append(dependency)
        wanted.add("environment")
    else:
        wanted = set(by_name)
    for step in steps:
        if step.skip_reason:
            continue
        if quick and not step.quick:
            step.skip_reason = "not part of --quick"
        elif step.name not in wanted:
            step.skip_reason = "not selected by --steps"


def check_flags(python: str, steps: list[Step], env: dict[str, str]) -> list[str]:
    """Problems with the steps' flags: each must be --name=value, and name a parameter of the entry."""
    entries = sorted({step.entry for step in steps if step.entry})
    result = subprocess.run(
        [python, "-c", FLAG_CHECK_CODE, json.dumps(entries)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        return [f"the flag check could not run (exit {result.returncode}): {result.stderr.strip()[-2000:]}"]
    signatures = json.loads(result.stdout.strip().splitlines()[-1])
    problems = []
    for step in steps:
        if not step.entry:
            continue
        found = signatures[step.entry]
        if "error" in found:
            problems.append(f"{step.name}: cannot import {step.entry}: {found['error']}")
            continue
        if step.entry.endswith(":run_program"):
            continue  # a python -c program: its arguments are positional (device, program)
        for arg in step.args:
            match = re.fullmatch(r"--([A-Za-z_][\w-]*)=(.*)", arg, flags=re.S)
            if match is None:
                problems.append(f"{step.name}: {arg!r} is not --name=value")
            elif match.group(1).replace("-", "_") not in found["parameters"]:
                problems.append(
                    f"{step.name}: {step.entry} has no parameter {match.group(1)!r} "
                    f"(it takes {', '.join(found['parameters'])})"
                )
    return problems


def display(step: Step) -> str:
    """The step's command line; the environment program is named instead of printed (30 lines)."""
    if not step.launcher:
        return "-"
    return shlex.join(step.argv).replace(
        shlex.quote(ENVIRONMENT_CODE), "<ENVIRONMENT_CODE of gpu/run_checks.py>"
    )


def plan_text(planned: list[Step], env: dict[str, str]) -> str:
    lines = [
        f"# child environment additions: PYTHONPATH={env['PYTHONPATH']} "
        f"TORCHAO_FORCE_SKIP_LOADING_SO_FILES={env['TORCHAO_FORCE_SKIP_LOADING_SO_FILES']}"
    ]
    for step in planned:
        state = f"skip ({step.skip_reason})" if step.skip_reason else f"run  (timeout {step.timeout_s:.0f} s)"
        env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in step.env.items())
        command = display(step)
        lines.append(f"{step.name}: {state}\n    {env_text + ' ' if env_text else ''}{command}")
    return "\n".join(lines) + "\n"


def collect_environment(work: Path, step: Step) -> dict[str, Any]:
    lines = (work / step.log_path).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return json.loads(lines[-1])


def collect_pytest(work: Path, step: Step) -> dict[str, Any]:
    text = (work / step.log_path).read_text(encoding="utf-8", errors="replace")
    counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", text)
    return {"counts": {word: int(number) for number, word in counts}}


def collect_graph_viz_log(work: Path, step: Step) -> dict[str, Any]:
    """What the fixture log holds: kernels by backend (each ``async_compile.<backend>(`` line), the
    TORCH_TRACE files next to it."""
    text = (work / step.log_path).read_text(encoding="utf-8", errors="replace")
    metrics: dict[str, Any] = {
        "bytes": len(text.encode()),
        "kernels": {b: text.count(f"async_compile.{b}(") for b in ("triton", "cpp_pybinding", "cpp")},
        "cuda_device_mentions": text.count("device='cuda") + text.count('device="cuda'),
    }
    if "TORCH_TRACE" in step.env:
        trace_dir = work / step.env["TORCH_TRACE"]
        metrics["torch_trace_files"] = (
            sorted(p.name for p in trace_dir.glob("*")) if trace_dir.is_dir() else []
        )
    return metrics


def collect_graph_viz(work: Path, step: Step) -> dict[str, Any]:
    """Link coverage from model.json: kernels linked to a node, nodes computed by a kernel."""
    output_dir = next(a.split("=", 1)[1] for a in step.args if a.startswith("--output_dir="))
    model = json.loads((work / output_dir / "model.json").read_text(encoding="utf-8"))
    kernels = model["kernels"]
    nodes = [node for graph in model["graphs"] for node in graph["nodes"]]
    kinds: dict[str, int] = {}
    for kernel in kernels:
        kinds[kernel["kind"]] = kinds.get(kernel["kind"], 0) + 1
    return {
        "graphs": {graph["title"]: len(graph["nodes"]) for graph in model["graphs"]},
        "num_kernels": len(kernels),
        "kernels_by_kind": kinds,
        "kernels_linked": sum(1 for kernel in kernels if kernel["nodes"]),
        "num_nodes": len(nodes),
        "nodes_with_kernel": sum(1 for node in nodes if node["kernels"]),
        "non_view_nodes_without_kernel": sum(len(graph["unmapped_nodes"]) for graph in model["graphs"]),
        "num_warnings": len(model["warnings"]),
    }


def collect_enriched_trace(work: Path, step: Step) -> dict[str, Any]:
    """Match coverage from the enriched trace: complete events carrying inductor_* args, by category."""
    path = next(a.split("=", 1)[1] for a in step.args if a.startswith("--modified_perf_trace_file="))
    events = json.loads((work / path).read_text(encoding="utf-8"))["traceEvents"]
    by_category: dict[str, list[int]] = {}
    for event in events:
        if not isinstance(event, dict) or event.get("ph") != "X":
            continue
        counts = by_category.setdefault(str(event.get("cat", "")), [0, 0])
        counts[0] += 1
        counts[1] += any(str(key).startswith("inductor_") for key in (event.get("args") or {}))
    text = (work / step.log_path).read_text(encoding="utf-8", errors="replace")
    return {
        "matched_by_category": {
            cat: {"events": n, "matched": m} for cat, (n, m) in sorted(by_category.items())
        },
        "printed_summary": [
            line
            for line in text.splitlines()
            if re.match(r"(events matched|kernel-like|kernels in the log)", line)
        ],
    }


def collect_test_ao(work: Path, step: Step) -> dict[str, Any]:
    output_dir = next(a.split("=", 1)[1] for a in step.args if a.startswith("--output_dir="))
    report = json.loads((work / output_dir / "report.json").read_text(encoding="utf-8"))
    return {
        "device": report.get("device"),
        "configs": {
            config["name"]: {
                "status": config["status"],
                "variant": config.get("variant"),
                "quantized": f"{config.get('num_quantized')}/{config.get('num_linear')}",
                "model_sqnr_db": config.get("model_sqnr_db"),
                "error": (config.get("error") or "")[:300],
            }
            for config in report["configs"]
        },
    }


def collect_quantize(work: Path, step: Step) -> dict[str, Any]:
    output_dir = next(a.split("=", 1)[1] for a in step.args if a.startswith("--output_dir="))
    report = json.loads((work / output_dir / "quantization_report.json").read_text(encoding="utf-8"))
    return {"device": report.get("device"), "quality": report.get("quality")}

"""Profile a torch.compile'd toy model and write the (Chrome trace, output-code log) pair.

The pair is exactly the input of ``add_inductor_metadata_to_perf_trace.py``. The model is
``num_layers`` x (LayerNorm -> Linear -> activation), the activation one of ``ACTIVATIONS``: ReLU, a
``torch.library.custom_op`` (an opaque op call in the output code) or a ``torch.cond`` (two branch
subgraphs, one of which runs). ``mode="train"`` profiles forward + backward, ``mode="inference"`` a
``torch.no_grad`` forward; ``graph_break=True`` puts a graph break after the first layer (two compiled
graphs, each with its own forward and backward); ``dynamic=True`` compiles with symbolic sizes. C++
kernels are recorded by the CPU profiler only with ``torch._inductor.config.cpp.enable_kernel_profile``
(set here). The profiling runs in a child process whose environment sets the log the way a user does:
``TORCH_LOGS=output_code TORCH_LOGS_OUT=output_code.log`` (``log_format="default"``, plus
``TORCH_LOGS_FORMAT=short`` for ``"short"``) or ``TORCH_TRACE=torch_trace`` (``"trace"``); compile
caches are off so that every graph is compiled (and logged) in that process. The pair appears in
``output_dir`` only when everything succeeded.

Printed: ``key_averages()`` table; on CPU the Inductor kernels' self-time table, on CUDA the
top-level ops with the device self-time attributed to them. Checked (non-zero exit on failure): the
per-op self times recomputed from the written trace sum to the profiler's self-time total.

    python -m perf_traces.profile_compiled_model --output_dir /tmp/pair
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import pathlib
import re
import subprocess
import sys

import torch

from pytorch_scripts_common.cli import run

MODES = ("train", "inference")
LOG_FORMATS = ("default", "short", "trace")
LOG_FILE = "output_code.log"
TRACE_DIR = "torch_trace"
TOOL = "perf_traces.profile_compiled_model"
# Chrome-trace ts/dur are printed with ns resolution (3 decimals in us), so each event's self time
# read back from the trace is off by up to ~2 ns; 0.5 % + 2 ns per event also absorbs the profiler's
# own float accumulation order.
SELF_TIME_RELATIVE_TOLERANCE = 0.005
SELF_TIME_ABSOLUTE_TOLERANCE_US_PER_EVENT = 0.002
_INDUCTOR_KERNEL_RE = re.compile(r"^(?:graph_\d+_)?(?:cpp_|triton_)\w+$")


@functools.cache
def register_scaled_tanh() -> None:
    """Register ``perf_traces_sample::scaled_tanh(x, scale)`` = tanh(x) * scale, a custom op with a fake
    and an autograd formula: at first use (once per process), never at import."""

    @torch.library.custom_op("perf_traces_sample::scaled_tanh", mutates_args=())
    def scaled_tanh(x: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.tanh(x) * scale

    @scaled_tanh.register_fake
    def _(x: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.empty_like(x)

    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 (torch.library's signature)
        ctx.save_for_backward(inputs[0])
        ctx.scale = inputs[1]

    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        return grad * ctx.scale * (1 - torch.tanh(x) ** 2), None

    scaled_tanh.register_autograd(backward, setup_context=setup_context)


class ScaledTanhCustomOp(torch.nn.Module):
    """tanh(x) * 0.5 through the custom op ``perf_traces_sample::scaled_tanh``."""

    def __init__(self) -> None:
        super().__init__()
        register_scaled_tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # through torch.ops, as users call a registered op (dynamo does not trace into functools.cache)
        return torch.ops.perf_traces_sample.scaled_tanh(x, 0.5)


class SignCond(torch.nn.Module):
    """``torch.cond`` on the sign of the sum: sin(x) * 2 if it is positive, else cos(x) + 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda h: h.sin() * 2, lambda h: h.cos() + 1, (x,))


# The activation of every block: name -> module class.
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "relu": torch.nn.ReLU,
    "custom_op": ScaledTanhCustomOp,
    "cond": SignCond,
}


class ToyModel(torch.nn.Module):
    """``num_layers`` x (LayerNorm -> Linear -> activation), with a graph break after the first if asked."""

    def __init__(self, hidden_dim: int, num_layers: int, graph_break: bool, activation: str = "relu") -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.LayerNorm(hidden_dim),
                torch.nn.Linear(hidden_dim, hidden_dim),
                ACTIVATIONS[activation](),
            )
            for _ in range(num_layers)
        )
        self.graph_break = graph_break

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[0](x)
        if self.graph_break:
            # Outside the loop on purpose: dynamo runs a frame with a graph break inside a loop eagerly.
            torch._dynamo.graph_break()
        for layer in self.layers[1:]:
            x = layer(x)
        return x


@dataclasses.dataclass(frozen=True)
class ProfileSettings:
    """What the child process profiles (``main``'s arguments that are not about the output)."""

    hidden_dim: int
    batch_size: int
    num_layers: int
    mode: str
    activation: str
    graph_break: bool
    dynamic: bool
    num_warmup: int
    seed: int


def self_times_from_trace(trace_events: list[dict]) -> dict[str, tuple[int, float]]:
    """name -> (calls, self time in us) of CPU ops, recomputed from the trace (dur minus direct children)."""
    by_thread = collections.defaultdict(list)
    for event in trace_events:
        if event.get("ph") == "X" and event.get("cat") in ("cpu_op", "user_annotation"):
            by_thread[(event["pid"], event["tid"])].append(event)
    totals: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for events in by_thread.values():
        events.sort(key=lambda event: (event["ts"], -event["dur"]))
        stack: list[list] = []  # [end, event, children time]
        for event in events:
            end = event["ts"] + event["dur"]
            while stack and stack[-1][0] <= event["ts"]:
                finished = stack.pop()
                _add_self_time(totals, finished)
            if stack:
                stack[-1][2] += event["dur"]
            stack.append([end, event, 0.0])
        while stack:
            _add_self_time(totals, stack.pop())
    return {name: (calls, self_us) for name, (calls, self_us) in totals.items()}


def _add_self_time(totals: dict, frame: list) -> None:
    _, event, children_us = frame
    entry = totals[event["name"]]
    entry[0] += 1
    entry[1] += event["dur"] - children_us


def check_self_times(trace_self: dict[str, tuple[int, float]], profiler_total_us: float) -> tuple[bool, str]:
    """Does the per-op self time from the trace sum to the profiler's self-time total (within tolerance)?"""
    trace_total = sum(self_us for _, self_us in trace_self.values())
    num_events = sum(calls for calls, _ in trace_self.values())
    tolerance = max(
        SELF_TIME_RELATIVE_TOLERANCE * profiler_total_us,
        SELF_TIME_ABSOLUTE_TOLERANCE_US_PER_EVENT * num_events,
    )
    difference = abs(trace_total - profiler_total_us)
    ok = difference <= tolerance
    message = (
        f"sum of per-op self CPU times from the trace: {trace_total:.3f} us; profiler self CPU total: "
        f"{profiler_total_us:.3f} us; |difference| {difference:.3f} us "
        f"{'<=' if ok else '>'} tolerance {tolerance:.3f} us "
        f"(max of {SELF_TIME_RELATIVE_TOLERANCE:.1%} and {SELF_TIME_ABSOLUTE_TOLERANCE_US_PER_EVENT} us x "
        f"{num_events} events: trace times have ns resolution)"
    )
    return ok, message


def kernel_table(trace_self: dict[str, tuple[int, float]], total_us: float) -> list[str]:
    rows = sorted(
        (
            (name, calls, self_us)
            for name, (calls, self_us) in trace_self.items()
            if _INDUCTOR_KERNEL_RE.match(name)
        ),
        key=lambda row: -row[2],
    )
    lines = [f"{'Inductor kernel':<80} {'calls':>6} {'self CPU us':>12} {'% of total':>10}"]
    for name, calls, self_us in rows:
        lines.append(
            f"{name[:80]:<80} {calls:>6d} {self_us:>12.3f} {100 * self_us / max(total_us, 1e-9):>9.2f}%"
        )
    kernel_sum = sum(row[2] for row in rows)
    lines.append(
        f"{'sum of Inductor kernels':<80} {'':>6} {kernel_sum:>12.3f} "
        f"{100 * kernel_sum / max(total_us, 1e-9):>9.2f}%"
    )
    return lines


def device_table(trace_events: list[dict]) -> list[str]:
    """Top-level CPU ops (per thread) with the GPU kernel time launched under them (External id)."""
    kernel_us_by_external_id: dict[int, float] = collections.defaultdict(float)
    for event in trace_events:
        if event.get("cat") == "kernel" and isinstance(event.get("args", {}).get("External id"), int):
            kernel_us_by_external_id[event["args"]["External id"]] += event.get("dur", 0.0)
    by_thread = collections.defaultdict(list)
    for event in trace_events:
        if event.get("ph") == "X" and event.get("cat") == "cpu_op":
            by_thread[(event["pid"], event["tid"])].append(event)
    attributed: dict[str, float] = collections.defaultdict(float)
    for events in by_thread.values():
        events.sort(key=lambda event: (event["ts"], -event["dur"]))
        top_end, top_name = float("-inf"), None
        for event in events:
            if event["ts"] >= top_end:
                top_end, top_name = event["ts"] + event["dur"], event["name"]
            attributed[top_name] += kernel_us_by_external_id.get(
                event.get("args", {}).get("External id"), 0.0
            )
    lines = [f"{'top-level op':<80} {'device self us':>14}"]
    for name, device_us in sorted(attributed.items(), key=lambda item: -item[1]):
        if device_us > 0:
            lines.append(f"{name[:80]:<80} {device_us:>14.3f}")
    lines.append(f"{'total GPU kernel time':<80} {sum(kernel_us_by_external_id.values()):>14.3f}")
    return lines


def main(
    output_dir: str,
    hidden_dim: int = 256,
    batch_size: int = 64,
    num_layers: int = 2,
    mode: str = "train",
    activation: str = "relu",
    graph_break: bool = False,
    dynamic: bool = False,
    num_warmup: int = 2,
    seed: int = 0,
    overwrite: bool = False,
    log_format: str = "default",
) -> None:
    """Compile a LayerNorm+Linear toy model, profile it, write trace.json and its output-code log.

    Args:
        output_dir: folder to create for trace.json and output_code.log (or torch_trace/); see --overwrite.
        hidden_dim: feature size of every LayerNorm / Linear.
        batch_size: rows of the random input.
        num_layers: number of LayerNorm -> Linear -> activation blocks.
        mode: "train" (profile forward + backward) or "inference" (torch.no_grad forward).
        activation: relu, custom_op (torch.library.custom_op: tanh(x) * 0.5), cond (torch.cond: sin / cos).
        graph_break: put a torch._dynamo.graph_break() after the first layer (two compiled graphs).
        dynamic: compile with dynamic=True (symbolic sizes in the output code).
        num_warmup: un-profiled steps after compilation.
        seed: seed of the weights and input.
        overwrite: replace output_dir if it is an earlier output of this tool.
        log_format: default (glog prefix on each line), short (TORCH_LOGS_FORMAT=short), trace (TORCH_TRACE).
    """
    from pytorch_scripts_common.outputs import check_output, staged_dir

    settings = ProfileSettings(
        hidden_dim, batch_size, num_layers, mode, activation, graph_break, dynamic, num_warmup, seed
    )
    check_arguments(settings, log_format)
    target = check_output(output_dir, overwrite=overwrite, tool=TOOL, flag="output_dir")
    log_name = TRACE_DIR if log_format == "trace" else LOG_FILE
    with staged_dir(target, tool=TOOL) as staging:
        run_profiling_process(staging, settings, log_format)
        check_log_written(staging / log_name)
    print(f"wrote {target / 'trace.json'}\nwrote {target / log_name}")


def check_arguments(settings: ProfileSettings, log_format: str) -> None:
    """A ``UsageError`` naming the first argument out of range."""
    from pytorch_scripts_common.cli import UsageError

    if settings.mode not in MODES:
        raise UsageError(f"--mode is {settings.mode!r}: pass --mode=train or --mode=inference")
    if settings.activation not in ACTIVATIONS:
        raise UsageError(f"--activation is {settings.activation!r}: pass one of {', '.join(ACTIVATIONS)}")
    if log_format not in LOG_FORMATS:
        raise UsageError(f"--log_format is {log_format!r}: pass one of {', '.join(LOG_FORMATS)}")
    for label, minimum in (("hidden_dim", 1), ("batch_size", 1), ("num_layers", 1), ("num_warmup", 0)):
        value = getattr(settings, label)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UsageError(f"--{label} is {value!r}: pass an integer >= {minimum}")
    if settings.graph_break and settings.num_layers < 2:
        raise UsageError(
            f"--graph_break needs two layers (the break goes after the first), --num_layers is "
            f"{settings.num_layers}: pass --num_layers=2 or more"
        )


def logging_environment(staging: pathlib.Path, log_format: str) -> dict[str, str]:
    """This process's environment with torch's logging set the way a user sets it for ``log_format``.

    Through the environment of a fresh process: torch reads TORCH_LOGS_FORMAT and TORCH_TRACE when its
    logging starts.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("TORCH_LOGS", "TORCH_LOGS_OUT", "TORCH_LOGS_FORMAT", "TORCH_TRACE")
    }
    if log_format == "trace":
        env["TORCH_TRACE"] = str(staging / TRACE_DIR)
    else:
        env["TORCH_LOGS"] = "output_code"
        env["TORCH_LOGS_OUT"] = str(staging / LOG_FILE)
        if log_format == "short":
            env["TORCH_LOGS_FORMAT"] = "short"
    return env


def run_profiling_process(staging: pathlib.Path, settings: ProfileSettings, log_format: str) -> None:
    """``profile_pair`` in a child process that logs in ``log_format``, writing into ``staging``."""
    code = (
        "import json, sys; from perf_traces.profile_compiled_model import ProfileSettings, profile_pair; "
        "profile_pair(sys.argv[1], ProfileSettings(**json.loads(sys.argv[2])))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(staging), json.dumps(dataclasses.asdict(settings))],
        env=logging_environment(staging, log_format),
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"profiling failed (exit {result.returncode}); see the output above")


def check_log_written(written: pathlib.Path) -> None:
    """The log file (or TORCH_TRACE folder) exists and is not empty."""
    if (
        not written.exists()
        or (written.is_file() and written.stat().st_size == 0)
        or (written.is_dir() and not any(written.iterdir()))
    ):
        raise RuntimeError(
            f"no output code was logged to {written.name}: nothing was compiled by Inductor (did dynamo "
            "fall back to eager?) or torch logging did not reach the file"
        )


def profile_pair(output_dir: str, settings: ProfileSettings) -> None:
    """Child-process body of ``main``: profile the compiled model, write ``output_dir/trace.json``.

    torch's logging (TORCH_LOGS / TORCH_LOGS_OUT / TORCH_LOGS_FORMAT / TORCH_TRACE) comes from the
    environment ``main`` started this process with.
    """
    from pytorch_scripts_common import get_device

    device = get_device()
    profiler, x = profile_compiled_steps(settings, device)
    trace_path = os.path.join(output_dir, "trace.json")
    profiler.export_chrome_trace(trace_path)
    ok, message = print_tables_and_check(profiler, trace_path, device)
    print(
        f"torch {torch.__version__}, device {device}, mode {settings.mode}, "
        f"activation {settings.activation}, graph_break {settings.graph_break}, dynamic {settings.dynamic}, "
        f"x {tuple(x.shape)} float32, {settings.num_layers} layers"
    )
    if not ok:
        raise SystemExit("self-time check failed: " + message)


def profile_compiled_steps(settings: ProfileSettings, device: torch.device):  # noqa: ANN201 (profiler, input)
    """Compile the model, run it 1 + ``num_warmup`` times, profile one more step; (profiler, input)."""
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity, profile

    from pytorch_scripts_common import set_seed

    set_seed(settings.seed)
    model = ToyModel(settings.hidden_dim, settings.num_layers, settings.graph_break, settings.activation)
    model = model.to(device)
    train = settings.mode == "train"
    x = torch.randn(settings.batch_size, settings.hidden_dim, device=device, requires_grad=train)

    def step() -> None:
        if train:
            compiled(x).sum().backward()
        else:
            with torch.no_grad():
                compiled(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    with (
        inductor_config.patch({"cpp.enable_kernel_profile": True, "fx_graph_cache": False}),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        compiled = torch.compile(model, dynamic=settings.dynamic)
        for _ in range(1 + settings.num_warmup):  # the first call compiles
            step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as profiler:
            step()
    return profiler, x


def print_tables_and_check(profiler, trace_path: str, device: torch.device) -> tuple[bool, str]:  # noqa: ANN001
    """Print the profiler's and the kernel tables; check the trace's self times against the profiler's."""
    averages = profiler.key_averages()
    sort_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(averages.table(sort_by=sort_key, row_limit=25))
    with open(trace_path, encoding="utf-8") as trace_file:
        trace_events = json.load(trace_file)["traceEvents"]
    trace_self = self_times_from_trace(trace_events)
    profiler_total_us = averages.self_cpu_time_total
    if device.type == "cuda":
        print("\n".join(device_table(trace_events)))
    print("\n".join(kernel_table(trace_self, profiler_total_us)))
    ok, message = check_self_times(trace_self, profiler_total_us)
    print(message)
    return ok, message


if __name__ == "__main__":
    run(main)

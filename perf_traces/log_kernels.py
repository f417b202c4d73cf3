"""What the enrichment needs from an output-code log: the compiled graphs, their kernels and call() lines.

The only place in ``perf_traces`` (besides ``profile_compiled_model``'s own checks) that knows the log
parser: ``read_compiled_graphs`` turns its modules into the small records below, which is all
``enrich`` and ``kernel_summary`` use. Swapping the parser means changing ``_from_parsed`` only.
"""

from __future__ import annotations

import dataclasses
import re

from pytorch_scripts_common.inductor_log import InductorLog, OutputCodeModule, ops_from_kernel_name
from pytorch_scripts_common.inductor_log.output_code import MAIN_FUNCTION_RE

__all__ = ["Call", "CompiledGraph", "Kernel", "compiled_graphs", "read_compiled_graphs"]

# the rank in the parser's stream name: "pid 4242 rank 1", "<trace file> pid 4242 rank 1"
_RANK_RE = re.compile(r"\brank (\d+)")


@dataclasses.dataclass(frozen=True, eq=False)
class Kernel:
    """One generated kernel of a compiled graph."""

    name: str  # the name in the output code, e.g. "cpp_fused_native_layer_norm_0"
    trace_name: str  # the name the profiler records (C++: "graph_0_<name>"; Triton: the name)
    backend: str  # async_compile method: "cpp_pybinding", "triton", ...
    source: str
    kernel_path: str | None  # Triton: the "# kernel path:" of the log
    source_nodes: list[str]  # from the comment above the definition (Triton), else empty
    aten_ops: list[str]
    ops_from_name: list[str]  # the fused-op part of the name (a hint: Inductor truncates long names)
    line_number: int  # of the definition in the log


@dataclasses.dataclass(frozen=True, eq=False)
class Call:
    """One line of a graph's ``call()``, in execution order."""

    kind: str  # "kernel" (a kernel of this graph) or "extern" (an extern kernel, ATen op or custom op)
    target: str  # kernel name, or the op as the profiler shows it ("aten::addmm", "my_lib::scaled_tanh")
    source_nodes: list[str]
    aten_ops: list[str]
    code: str  # the stripped line
    line_number: int
    subgraph: str | None = (
        None  # the subgraph function it is in ("true_graph_0"); None in call() / partition_N()
    )


@dataclasses.dataclass(frozen=True, eq=False)
class CompiledGraph:
    """One output-code module: a compiled forward, backward or inference graph."""

    aot_id: str | None  # "0_forward"
    graph_kind: str  # "forward", "backward", "inference" or "unknown"
    compile_id: str | None  # dynamo's "0/0"
    output_code_path: str | None  # the "Output code written to:" file
    kernels: dict[str, Kernel]  # by name in the output code
    calls: list[Call]
    line_number: int  # of the record in the log
    rank: int | None = None  # the rank that printed it (rank prefix or TORCH_TRACE metadata), if any

    @property
    def label(self) -> str:
        return f"{self.aot_id or '?'} (log line {self.line_number})"


def read_compiled_graphs(log_path: str, *, strict: bool = False) -> list[CompiledGraph]:
    """The compiled graphs of a ``TORCH_LOGS=output_code`` log (any format) or TORCH_TRACE folder.

    Malformed parts are skipped with a warning naming the line; ``strict=True`` raises ``ValueError``.
    """
    from pytorch_scripts_common.inductor_log import read_inductor_log

    return compiled_graphs(read_inductor_log(log_path, strict=strict))


def compiled_graphs(log: InductorLog) -> list[CompiledGraph]:
    """The output-code modules of a parsed log as ``CompiledGraph`` records, in log order."""
    return [_from_parsed(module) for module in log.modules]


def _from_parsed(module: OutputCodeModule) -> CompiledGraph:

    kernels = {
        name: Kernel(
            name=kernel.name,
            trace_name=kernel.profile_name or kernel.name,
            backend=kernel.backend,
            source=kernel.source,
            kernel_path=kernel.kernel_path,
            source_nodes=list(kernel.source_nodes),
            aten_ops=list(kernel.aten_ops),
            ops_from_name=ops_from_kernel_name(kernel.name),
            line_number=kernel.line_number,
        )
        for name, kernel in module.kernels.items()
    }
    calls = [
        Call(
            call.kind,
            call.target,
            list(call.source_nodes),
            list(call.aten_ops),
            call.code,
            call.line_number,
            None if MAIN_FUNCTION_RE.match(call.function) else call.function,
        )
        for call in module.calls
    ]
    return CompiledGraph(
        aot_id=module.aot_id,
        graph_kind=module.graph_kind,
        compile_id=module.compile_id,
        output_code_path=module.output_code_path,
        kernels=kernels,
        calls=calls,
        line_number=module.line_number,
        rank=int(rank[1]) if (rank := _RANK_RE.search(module.stream)) else None,
    )

"""Lookups over the log's compiled graphs that the enrichment uses for every event and span.

Built once per run (``LogIndex.build``): kernels by the name the profiler records and by kernel file,
each graph's call() sequence, and ``candidate_patterns``, the bytes that pick the events worth
decoding out of the trace.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re

from perf_traces.log_kernels import Call, CompiledGraph, Kernel

__all__ = [
    "BACKWARD_SPAN",
    "CALL_SPAN_PREFIX",
    "FORWARD_SPAN",
    "INDUCTOR_KERNEL_NAME_RE",
    "KERNEL_TABLE_CATEGORY",
    "KERNEL_TABLE_EVENT_PREFIX",
    "GraphIndex",
    "LogIndex",
    "NameKind",
]

FORWARD_SPAN = "CompiledFunction"
BACKWARD_SPAN = "CompiledFunctionBackward"
CALL_SPAN_PREFIX = "## Call CompiledFxGraph"
_KERNEL_NAME_PREFIXES = ("graph_", "cpp_", "triton_")
# Names Inductor gives kernels, with the C++ profile prefix: "graph_0_cpp_fused_relu_1",
# "triton_poi_fused_relu_0", "triton_red_fused_sum_3", "cpp_CppMicroGemmFP32Vec_0" ...
INDUCTOR_KERNEL_NAME_RE = re.compile(r"^(?:graph_\d+_)?(?:cpp_|triton_)\w+$")
# the category and name prefix of the enrichment's kernel-table events (see kernel_table)
KERNEL_TABLE_CATEGORY = "inductor_kernel_table"
KERNEL_TABLE_EVENT_PREFIX = "inductor kernel k"


class NameKind:
    """What a CPU event's name makes it, for matching."""

    OTHER, KERNEL, EXTERN_OP, FORWARD, BACKWARD, CALL = range(6)
    SPANS = {FORWARD: "forward", BACKWARD: "backward", CALL: "call"}


@dataclasses.dataclass
class GraphIndex:
    """Per-graph lookups used for every Call span."""

    kernels: dict[str, Kernel]  # by the name the trace shows
    trace_names: set[str]
    kernel_paths: set[str]
    kernel_calls: dict[str, list[Call]]  # kernel name -> its call sites, in order
    extern_calls: list[Call]
    extern_names: tuple[str, ...]
    call_positions: dict[str, list[int]]  # kernel name / extern op -> its positions in graph.calls

    @classmethod
    def of(cls, graph: CompiledGraph) -> GraphIndex:
        kernels = {kernel.trace_name: kernel for kernel in graph.kernels.values()}
        kernel_calls: dict[str, list[Call]] = collections.defaultdict(list)
        for call in graph.calls:
            if call.kind == "kernel":
                kernel_calls[call.target].append(call)
        extern_calls = [call for call in graph.calls if call.kind == "extern"]
        call_positions: dict[str, list[int]] = collections.defaultdict(list)
        for position, call in enumerate(graph.calls):
            call_positions[call.target].append(position)
        return cls(
            kernels=kernels,
            trace_names=set(kernels),
            kernel_paths={kernel.kernel_path for kernel in graph.kernels.values() if kernel.kernel_path},
            kernel_calls=dict(kernel_calls),
            extern_calls=extern_calls,
            extern_names=tuple(call.target for call in extern_calls),
            call_positions=dict(call_positions),
        )


@dataclasses.dataclass
class LogIndex:
    graphs: list[CompiledGraph]
    by_trace_name: dict[str, list[tuple[CompiledGraph, Kernel]]]
    by_kernel_path: dict[str, list[tuple[CompiledGraph, Kernel]]]
    kernel_path_by_hash: dict[str, str]  # stem of a "# kernel path:" -> the path (Triton kernel_hash)
    # Only the ops that some call() runs as an extern call (e.g. aten::mm, not the aten::resolve_conj
    # inside it; a custom op's my_lib::scaled_tanh): fewer records, and nested ops cannot shadow the call.
    extern_targets: set[str]
    graph_index: dict[int, GraphIndex]  # id(graph) ->
    graphs_by_externs: dict[tuple[str, ...], list[CompiledGraph]]
    candidate_patterns: list[re.Pattern[bytes] | bytes]

    @classmethod
    def build(cls, graphs: list[CompiledGraph]) -> LogIndex:
        by_trace_name: dict[str, list] = collections.defaultdict(list)
        by_kernel_path: dict[str, list] = collections.defaultdict(list)
        for graph in graphs:
            for kernel in graph.kernels.values():
                by_trace_name[kernel.trace_name].append((graph, kernel))
                if kernel.kernel_path:
                    by_kernel_path[kernel.kernel_path].append((graph, kernel))
        extern_targets = {call.target for graph in graphs for call in graph.calls if call.kind == "extern"}
        graph_index = {id(graph): GraphIndex.of(graph) for graph in graphs}
        graphs_by_externs: dict[tuple[str, ...], list] = collections.defaultdict(list)
        for graph in graphs:
            if graph_index[id(graph)].extern_names:
                graphs_by_externs[graph_index[id(graph)].extern_names].append(graph)
        return cls(
            graphs=graphs,
            by_trace_name=dict(by_trace_name),
            by_kernel_path=dict(by_kernel_path),
            kernel_path_by_hash={
                os.path.splitext(os.path.basename(path))[0]: path for path in by_kernel_path
            },
            extern_targets=extern_targets,
            graph_index=graph_index,
            graphs_by_externs=dict(graphs_by_externs),
            candidate_patterns=_candidate_patterns(set(by_trace_name) | extern_targets),
        )

    def is_kernel_name(self, name: str) -> bool:
        return name in self.by_trace_name or (
            name.startswith(_KERNEL_NAME_PREFIXES) and INDUCTOR_KERNEL_NAME_RE.match(name) is not None
        )

    def name_kind(self, name: str) -> int:
        if name == FORWARD_SPAN:
            return NameKind.FORWARD
        if name == BACKWARD_SPAN:
            return NameKind.BACKWARD
        if name.startswith(CALL_SPAN_PREFIX):
            return NameKind.CALL
        if self.is_kernel_name(name):
            return NameKind.KERNEL
        return NameKind.EXTERN_OP if name in self.extern_targets else NameKind.OTHER


def _candidate_patterns(exact_names: set[str]) -> list[re.Pattern[bytes] | bytes]:
    """Bytes that every event worth decoding contains (a superset: the decoded event is checked).

    A 'name": "<value>' (the key "name", or another ending so) whose value starts like an Inductor
    kernel name, is a kernel or extern op of the log, is one of the spans or of the kernel table of an
    earlier enrichment; or 'kernel"', the end of the category of GPU kernels ('k' is rare in traces,
    so the regex engine finds it faster than bytes.find finds '"kernel"'). Names written with JSON escapes
    in them are not found (profilers do not write those for these ASCII names).
    """
    kernel_prefixes = [rb"graph_\d", rb"cpp_", rb"triton_"]
    generic = [
        *kernel_prefixes,
        rb"CompiledFunction",
        re.escape(CALL_SPAN_PREFIX.encode()),
        re.escape(KERNEL_TABLE_EVENT_PREFIX.encode()),
    ]
    # names the kernel prefixes already find are left out; others are not, even when they start
    # alike (a custom op "graph_viz_sample::scaled_tanh")
    covered = re.compile(b"|".join(kernel_prefixes))
    exact = [
        re.escape(json.dumps(name)[1:].encode())
        for name in sorted(exact_names)
        if not covered.match(name.encode())
    ]
    # without the key's opening quote: the regex engine scans for the first byte of the literal prefix
    # one byte at a time, and '"' is one byte in seven of a trace, 'n' one in forty (a third faster)
    names = re.compile(rb'name"[ \t\n\r]*:[ \t\n\r]*"(?:' + b"|".join(generic + exact) + rb")")
    return [names, re.compile(rb'kernel"')]

"""Match a profiler trace's kernel events to the Inductor output code that generated them.

Two streaming passes over the trace (see ``trace_stream``):

1. Collect compact records of the events that matter: the ``CompiledFunction`` /
   ``CompiledFunctionBackward`` spans (forward vs backward), the ``## Call CompiledFxGraph <key> ##``
   spans (one run of one output-code module), events named like a kernel of the log (C++ kernels
   profile as ``graph_<graph id>_<kernel>``, Triton launches as ``<kernel>`` with ``kernel_file``
   args), ``aten::*`` CPU ops (``extern_kernels.*`` calls) and GPU ``kernel`` events.
2. Copy the trace, re-encoding only matched events with metadata added to their ``args``.

Matching, per ``## Call CompiledFxGraph`` span: its direct children in time order are the kernels and
extern ops that ``call()`` ran. The span's module is the one of the right kind (forward / backward /
inference, from the enclosing span) whose kernel names best cover the children (ties broken by the
extern-op sequence; a tie that remains is noted in ``args``). Kernel children then match by name;
``aten::*`` children match the module's ``extern_kernels.*`` calls in order (n-th to n-th). GPU
``kernel`` events inherit the match of the CPU launch op with the same ``External id``. Kernel events
outside any ``Call`` span match by name only when that is unambiguous. Everything else is left as is.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import json
import os
import re
import tempfile
from array import array
from typing import Any

from perf_traces.trace_stream import TraceFormatError, iter_trace, rewrite_events
from pytorch_scripts_common.inductor_log import (
    CallSite,
    KernelDefinition,
    OutputCodeModule,
    ops_from_kernel_name,
)

__all__ = ["EnrichSummary", "NoMatchError", "enrich_trace"]

_FORWARD_SPAN = "CompiledFunction"
_BACKWARD_SPAN = "CompiledFunctionBackward"
_CALL_SPAN_PREFIX = "## Call CompiledFxGraph"
_MODE_SPANS = (_FORWARD_SPAN, _BACKWARD_SPAN)
_KERNEL_NAME_PREFIXES = ("graph_", "cpp_", "triton_")
# Names Inductor gives kernels, with the C++ profile prefix: "graph_0_cpp_fused_relu_1",
# "triton_poi_fused_relu_0", "triton_red_fused_sum_3", "cpp_CppMicroGemmFP32Vec_0" ...
_INDUCTOR_KERNEL_NAME_RE = re.compile(r"^(?:graph_\d+_)?(?:cpp_|triton_)\w+$")
_TIME_EPSILON_US = 1e-3  # Chrome traces round ts/dur to 1 ns; containment tests allow that slack
_MAX_MODE_SPAN_LOOKBACK = 16
_ARGS_PLACEHOLDER = "\x00ARGS\x00"
_ARGS_PLACEHOLDER_JSON = json.dumps(_ARGS_PLACEHOLDER)


@dataclasses.dataclass
class EnrichSummary:
    """What ``enrich_trace`` did; ``lines()`` is the printed summary."""

    num_events: int = 0
    num_matched: int = 0
    matched_by_kind: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unmatched_by_name: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    log_kernels_not_in_trace: list[str] = dataclasses.field(default_factory=list)
    num_ambiguous_spans: int = 0
    num_modules: int = 0
    num_log_kernels: int = 0
    zero_match_reason: str | None = None

    def lines(self) -> list[str]:
        out = [
            f"trace events: {self.num_events}; output-code modules in log: {self.num_modules} "
            f"({self.num_log_kernels} kernels)",
            f"events matched: {self.num_matched} ("
            + ", ".join(f"{kind}: {count}" for kind, count in sorted(self.matched_by_kind.items()))
            + ")",
        ]
        if self.num_ambiguous_spans:
            out.append(
                f"graph calls matched to one of several equally good modules: {self.num_ambiguous_spans}"
            )
        unmatched_total = sum(self.unmatched_by_name.values())
        out.append(f"kernel-like events unmatched: {unmatched_total}")
        for name, count in self.unmatched_by_name.most_common(20):
            out.append(f"  {count:6d}  {name}")
        if len(self.unmatched_by_name) > 20:
            out.append(f"  ... and {len(self.unmatched_by_name) - 20} more names")
        out.append(f"kernels in the log never seen in the trace: {len(self.log_kernels_not_in_trace)}")
        for label in self.log_kernels_not_in_trace[:20]:
            out.append(f"  {label}")
        if len(self.log_kernels_not_in_trace) > 20:
            out.append(f"  ... and {len(self.log_kernels_not_in_trace) - 20} more")
        if self.zero_match_reason:
            out.append(f"0 events matched: {self.zero_match_reason}")
        return out


@dataclasses.dataclass
class _Span:
    thread: int
    ts: float
    end: float
    kind: str  # "forward", "backward", "call"
    name: str


class _Candidates:
    """Column store of candidate CPU events (kernel-named ops and aten::* ops): ~50 bytes per event."""

    def __init__(self) -> None:
        self.thread = array("l")
        self.ts = array("d")
        self.end = array("d")
        self.index = array("q")
        self.start_offset = array("q")
        self.end_offset = array("q")
        self.name_id = array("l")
        self.external_id = array("q")

    def add(
        self, thread: int, ts: float, end: float, index: int, span: tuple[int, int], name_id: int, ext: int
    ) -> None:
        self.thread.append(thread)
        self.ts.append(ts)
        self.end.append(end)
        self.index.append(index)
        self.start_offset.append(span[0])
        self.end_offset.append(span[1])
        self.name_id.append(name_id)
        self.external_id.append(ext)

    def __len__(self) -> int:
        return len(self.index)


@dataclasses.dataclass
class _ModuleIndex:
    """Per-module lookups used for every Call span (built once)."""

    kernels: dict[str, KernelDefinition]  # by the name the trace shows
    trace_names: set[str]
    kernel_paths: set[str]
    kernel_calls: dict[str, list[CallSite]]  # kernel name -> its call sites, in order
    extern_calls: list[CallSite]
    extern_names: tuple[str, ...]

    @classmethod
    def of(cls, module: OutputCodeModule) -> _ModuleIndex:
        kernels = {_trace_name(module, kernel): kernel for kernel in module.kernels.values()}
        kernel_calls: dict[str, list[CallSite]] = collections.defaultdict(list)
        for call in module.calls:
            if call.kind == "kernel":
                kernel_calls[call.target].append(call)
        extern_calls = [call for call in module.calls if call.kind == "extern"]
        return cls(
            kernels=kernels,
            trace_names=set(kernels),
            kernel_paths={kernel.kernel_path for kernel in module.kernels.values() if kernel.kernel_path},
            kernel_calls=dict(kernel_calls),
            extern_calls=extern_calls,
            extern_names=tuple(call.target for call in extern_calls),
        )


def _annotation_for_kernel(
    module: OutputCodeModule, kernel: KernelDefinition, call: CallSite | None, note: str | None
) -> dict[str, Any]:
    source_nodes = call.source_nodes if call and call.source_nodes else kernel.source_nodes
    aten_ops = call.aten_ops if call and call.aten_ops else kernel.aten_ops
    annotation: dict[str, Any] = {
        "inductor_kernel": kernel.name,
        "inductor_kernel_backend": kernel.backend,
        "inductor_aot_id": module.aot_id,
        "inductor_graph_kind": module.graph_kind,
        "inductor_compile_id": module.compile_id,
        "inductor_output_code_path": module.output_code_path,
        "inductor_kernel_path": kernel.kernel_path,
        "inductor_source_nodes": source_nodes,
        "inductor_aten_ops": aten_ops,
        "inductor_ops_from_kernel_name": ops_from_kernel_name(kernel.name),
        "inductor_call": call.code if call else None,
        "inductor_log_line": kernel.line_number,
        "inductor_kernel_source": kernel.source,
    }
    if note:
        annotation["inductor_match_note"] = note
    return {key: value for key, value in annotation.items() if value not in (None, [])}


def _annotation_for_extern(module: OutputCodeModule, call: CallSite, note: str | None) -> dict[str, Any]:
    annotation: dict[str, Any] = {
        "inductor_extern_call": call.code,
        "inductor_aot_id": module.aot_id,
        "inductor_graph_kind": module.graph_kind,
        "inductor_compile_id": module.compile_id,
        "inductor_output_code_path": module.output_code_path,
        "inductor_source_nodes": call.source_nodes,
        "inductor_aten_ops": call.aten_ops,
        "inductor_log_line": call.line_number,
    }
    if note:
        annotation["inductor_match_note"] = note
    return {key: value for key, value in annotation.items() if value not in (None, [])}


def _trace_name(module: OutputCodeModule, kernel: KernelDefinition) -> str:
    """The name the CPU profiler records for this kernel (C++: "graph_<id>_<name>"; Triton: the name)."""
    return kernel.profile_name or kernel.name


class NoMatchError(ValueError):
    """No event of the trace matched the log; ``summary`` says why. Nothing was written."""

    def __init__(self, summary: EnrichSummary) -> None:
        super().__init__(f"0 events matched: {summary.zero_match_reason}")
        self.summary = summary


def enrich_trace(
    trace_path: str,
    modules: list[OutputCodeModule],
    output_path: str | None,
    *,
    in_memory: bool = False,
    allow_no_match: bool = True,
) -> EnrichSummary:
    """Match ``trace_path``'s events to ``modules``; write the enriched trace to ``output_path``.

    ``output_path=None`` only matches and summarises. Raises ``TraceFormatError`` for malformed
    traces, and ``NoMatchError`` when nothing matched and ``allow_no_match`` is False, before anything
    is written. ``in_memory=True`` is the plain ``json.load`` / ``json.dump``
    implementation (same matching), kept as the benchmark's baseline.
    """
    loaded = None
    if in_memory:
        loaded = _load_whole(trace_path)
        event_source = ((index, event, index, index + 1) for index, event in enumerate(loaded["traceEvents"]))
    else:
        event_source = iter_trace(trace_path)
    summary = EnrichSummary(num_modules=len(modules))
    # Kernel names as the trace shows them -> [(module, kernel)]
    by_trace_name: dict[str, list[tuple[OutputCodeModule, KernelDefinition]]] = collections.defaultdict(list)
    by_kernel_path: dict[str, list[tuple[OutputCodeModule, KernelDefinition]]] = collections.defaultdict(list)
    for module in modules:
        for kernel in module.kernels.values():
            by_trace_name[_trace_name(module, kernel)].append((module, kernel))
            if kernel.kernel_path:
                by_kernel_path[kernel.kernel_path].append((module, kernel))
            summary.num_log_kernels += 1

    # ---- pass 1: compact records of the events that matter
    # Only the aten:: ops that some call() runs as an extern kernel are kept (e.g. aten::mm, not the
    # aten::resolve_conj inside it): fewer records, and nested ops cannot shadow the real call.
    extern_targets = {call.target for module in modules for call in module.calls if call.kind == "extern"}
    kernel_path_by_hash = {os.path.splitext(os.path.basename(path))[0]: path for path in by_kernel_path}
    threads: dict[Any, int] = {}
    names: dict[str, int] = {}
    name_list: list[str] = []
    spans: list[_Span] = []
    candidates = _Candidates()
    kernel_file_by_candidate: dict[int, str] = {}  # candidate row -> args["kernel_file"] (Triton launches)
    gpu_kernels: list[tuple[int, int, int, int, str]] = []  # (index, External id, start, end, name)
    # (one tuple per GPU kernel event: ~150 bytes each; GPU kernels are a minority of a trace's events)
    num_events = 0
    for index, event, start, end in event_source:
        if index is None:
            continue
        num_events += 1
        if not isinstance(event, dict) or event.get("ph") != "X":
            continue
        name = event.get("name")
        if not isinstance(name, str):
            continue
        category = event.get("cat")
        args = event.get("args")
        args = args if isinstance(args, dict) else {}
        if category == "kernel":
            ext = args.get("External id")
            if isinstance(ext, int):
                gpu_kernels.append((index, ext, start, end, name))
            continue
        if category not in ("cpu_op", "user_annotation"):
            continue
        is_kernel_name = name in by_trace_name or (
            name.startswith(_KERNEL_NAME_PREFIXES) and _INDUCTOR_KERNEL_NAME_RE.match(name) is not None
        )
        if not (is_kernel_name or name in extern_targets or name in _MODE_SPANS) and not name.startswith(
            _CALL_SPAN_PREFIX
        ):
            continue
        ts, dur = event.get("ts"), event.get("dur")
        if not isinstance(ts, int | float) or not isinstance(dur, int | float):
            continue
        try:
            thread = threads.setdefault((event.get("pid"), event.get("tid")), len(threads))
        except TypeError:  # unhashable pid/tid (a list or object): not a profiler event
            continue
        if name == _FORWARD_SPAN:
            spans.append(_Span(thread, ts, ts + dur, "forward", name))
        elif name == _BACKWARD_SPAN:
            spans.append(_Span(thread, ts, ts + dur, "backward", name))
        elif name.startswith(_CALL_SPAN_PREFIX):
            spans.append(_Span(thread, ts, ts + dur, "call", name))
        else:
            name_id = names.get(name)
            if name_id is None:
                name_id = names[name] = len(name_list)
                name_list.append(name)
            ext = args.get("External id")
            if is_kernel_name and isinstance(args.get("kernel_file"), str) and args["kernel_file"]:
                kernel_file_by_candidate[len(candidates)] = args["kernel_file"]
            elif is_kernel_name and args.get("kernel_hash") in kernel_path_by_hash:
                # a launch with kernel_hash only: the hash is the stem of the log's "# kernel path:"
                kernel_file_by_candidate[len(candidates)] = kernel_path_by_hash[args["kernel_hash"]]
            candidates.add(
                thread, ts, ts + dur, index, (start, end), name_id, ext if isinstance(ext, int) else -1
            )
    summary.num_events = num_events

    # ---- resolve: which span each candidate is a direct child of
    mode_spans: dict[int, list[_Span]] = collections.defaultdict(list)
    call_spans: dict[int, list[_Span]] = collections.defaultdict(list)
    for span in spans:
        (call_spans if span.kind == "call" else mode_spans)[span.thread].append(span)
    for thread_spans in list(call_spans.values()) + list(mode_spans.values()):
        thread_spans.sort(key=lambda span: span.ts)
    call_starts = {thread: [span.ts for span in items] for thread, items in call_spans.items()}
    mode_starts = {thread: [span.ts for span in items] for thread, items in mode_spans.items()}

    def enclosing_mode(thread: int, ts: float, end: float) -> str:
        """Innermost CompiledFunction(Backward) span around [ts, end]; 'inference' when there is none.

        Walks back from the latest span starting before ``ts``: the enclosing span is that one or one
        of the few before it (these spans nest only a few deep), so the walk is capped.
        """
        starts = mode_starts.get(thread)
        if not starts:
            return "inference"
        position = bisect.bisect_right(starts, ts + _TIME_EPSILON_US) - 1
        for span in reversed(mode_spans[thread][max(0, position - _MAX_MODE_SPAN_LOOKBACK) : position + 1]):
            if span.end + _TIME_EPSILON_US >= end:
                return span.kind
        return "inference"

    children: dict[tuple[int, int], list[int]] = collections.defaultdict(list)  # (thread, call #) -> rows
    outside_rows: list[int] = []
    for row in range(len(candidates)):
        thread, ts, end = candidates.thread[row], candidates.ts[row], candidates.end[row]
        starts = call_starts.get(thread)
        position = bisect.bisect_right(starts, ts + _TIME_EPSILON_US) - 1 if starts else -1
        if position >= 0 and call_spans[thread][position].end + _TIME_EPSILON_US >= end:
            children[(thread, position)].append(row)
        elif _INDUCTOR_KERNEL_NAME_RE.match(name_list[candidates.name_id[row]]) or (
            name_list[candidates.name_id[row]] in by_trace_name
        ):
            outside_rows.append(row)

    annotations: dict[int, dict[str, Any]] = {}  # candidate row -> args to add (shared dicts)
    annotation_cache: dict[tuple, dict[str, Any]] = {}

    def cached_annotation(
        module: OutputCodeModule, kernel: KernelDefinition | None, call: CallSite | None, note: str | None
    ) -> dict[str, Any]:
        key = (id(module), id(kernel), id(call), note)
        if key not in annotation_cache:
            if kernel is None:
                annotation_cache[key] = _annotation_for_extern(module, call, note)
            else:
                annotation_cache[key] = _annotation_for_kernel(module, kernel, call, note)
        return annotation_cache[key]

    seen_kernels: set[tuple[int, str]] = set()  # (id(module), kernel name)
    module_index = {id(module): _ModuleIndex.of(module) for module in modules}
    modules_by_externs: dict[tuple[str, ...], list[OutputCodeModule]] = collections.defaultdict(list)
    for module in modules:
        if module_index[id(module)].extern_names:
            modules_by_externs[module_index[id(module)].extern_names].append(module)

    for (thread, position), rows in children.items():
        span = call_spans[thread][position]
        rows.sort(key=lambda row: (candidates.ts[row], -candidates.end[row]))
        direct: list[int] = []
        direct_end = float("-inf")
        for row in rows:
            if candidates.ts[row] + _TIME_EPSILON_US >= direct_end:
                direct.append(row)
                direct_end = candidates.end[row]
        child_names = [name_list[candidates.name_id[row]] for row in direct]
        kernel_children = {name for name in child_names if name in by_trace_name}
        extern_children = [name for name in child_names if name.startswith("aten::")]
        kind = enclosing_mode(thread, span.ts, span.end)
        files = {kernel_file_by_candidate[row] for row in direct if row in kernel_file_by_candidate}
        best_score, best_modules = None, []
        # only modules sharing a kernel name / kernel file with the children, or their extern sequence
        options = {id(module): module for name in kernel_children for module, _ in by_trace_name[name]}
        options.update((id(module), module) for path in files for module, _ in by_kernel_path.get(path, ()))
        options.update((id(module), module) for module in modules_by_externs.get(tuple(extern_children), ()))
        for module in modules:  # in log order, so that ties resolve to the first module of the log
            if id(module) not in options:
                continue
            lookup = module_index[id(module)]
            if kind == "inference" and module.graph_kind not in ("inference", "unknown"):
                continue
            if kind != "inference" and module.graph_kind not in (kind, "unknown"):
                continue
            kernel_score = len(kernel_children & lookup.trace_names)
            file_score = len(files & lookup.kernel_paths)
            extern_score = 1 if lookup.extern_names == tuple(extern_children) else 0
            if kernel_score == 0 and file_score == 0 and not (extern_score and lookup.extern_names):
                continue
            score = (file_score, kernel_score, extern_score)
            if best_score is None or score > best_score:
                best_score, best_modules = score, [module]
            elif score == best_score:
                best_modules.append(module)
        if not best_modules:
            continue
        module = best_modules[0]
        note = None
        if len(best_modules) > 1:
            summary.num_ambiguous_spans += 1
            note = (
                f"ambiguous: {len(best_modules)} output-code modules match this call equally "
                f"({', '.join(candidate.label for candidate in best_modules[:4])}); took the first"
            )
        lookup = module_index[id(module)]
        kernel_by_trace_name, kernel_calls, extern_calls = (
            lookup.kernels,
            lookup.kernel_calls,
            lookup.extern_calls,
        )
        kernel_call_counts: collections.Counter = collections.Counter()
        extern_position = 0
        for row, name in zip(direct, child_names, strict=True):
            if name in kernel_by_trace_name:
                kernel = kernel_by_trace_name[name]
                calls = kernel_calls.get(kernel.name, [])
                call = calls[min(kernel_call_counts[kernel.name], len(calls) - 1)] if calls else None
                kernel_call_counts[kernel.name] += 1
                annotations[row] = cached_annotation(module, kernel, call, note)
                seen_kernels.add((id(module), kernel.name))
                summary.matched_by_kind[
                    "cpu kernel op" if kernel.backend.startswith("cpp") else "kernel launch op"
                ] += 1
            elif name.startswith("aten::"):
                # n-th aten::<op> child <-> the next extern call of the same op (skips ops call() ran
                # that are not extern kernels, e.g. an aten::empty from a fallback allocation).
                for offset in range(extern_position, len(extern_calls)):
                    if extern_calls[offset].target == name:
                        annotations[row] = cached_annotation(module, None, extern_calls[offset], note)
                        summary.matched_by_kind["extern aten op"] += 1
                        extern_position = offset + 1
                        break

    # Kernel-named events outside any Call span (e.g. CUDA graphs, a trace window cutting a call):
    # match by name when exactly one (module, kernel) of the enclosing forward/backward kind has it.
    for row in outside_rows:
        name = name_list[candidates.name_id[row]]
        options = by_trace_name.get(name, [])
        kernel_file = kernel_file_by_candidate.get(row)
        if kernel_file and by_kernel_path.get(kernel_file):
            options = [
                option for option in options if option[1].kernel_path == kernel_file
            ] or by_kernel_path[kernel_file]
        kind = enclosing_mode(candidates.thread[row], candidates.ts[row], candidates.end[row])
        of_kind = [option for option in options if option[0].graph_kind in (kind, "unknown")]
        options = of_kind or options
        if len(options) == 1:
            module, kernel = options[0]
            annotations[row] = cached_annotation(module, kernel, None, "matched by name outside a Call span")
            seen_kernels.add((id(module), kernel.name))
            summary.matched_by_kind[
                "cpu kernel op" if kernel.backend.startswith("cpp") else "kernel launch op"
            ] += 1

    # GPU kernels inherit the annotation of their launch op or extern aten op (same External id)
    launch_by_external_id = {
        candidates.external_id[row]: row for row in annotations if candidates.external_id[row] >= 0
    }
    replacements: list[tuple[int, int, int, dict[str, Any]]] = []  # (start, end, index, annotation)
    for row, annotation in annotations.items():
        replacements.append(
            (candidates.start_offset[row], candidates.end_offset[row], candidates.index[row], annotation)
        )
    matched_names = {name_list[candidates.name_id[row]] for row in annotations}
    gpu_annotations: dict[int, dict[str, Any]] = {}  # id(launch annotation) -> GPU kernel annotation
    for index, ext, start, end, name in gpu_kernels:
        row = launch_by_external_id.get(ext)
        if row is not None:
            launch_annotation = annotations[row]
            annotation = gpu_annotations.get(id(launch_annotation))
            if annotation is None:
                annotation = {"inductor_launch_op": name_list[candidates.name_id[row]], **launch_annotation}
                gpu_annotations[id(launch_annotation)] = annotation
            replacements.append((start, end, index, annotation))
            summary.matched_by_kind[
                "gpu kernel" if "inductor_kernel" in annotation else "gpu kernel of extern op"
            ] += 1
        elif name in by_trace_name or _INDUCTOR_KERNEL_NAME_RE.match(name):
            summary.unmatched_by_name[name] += 1

    matched_rows = set(annotations)
    for row in range(len(candidates)):
        name = name_list[candidates.name_id[row]]
        if row not in matched_rows and (name in by_trace_name or _INDUCTOR_KERNEL_NAME_RE.match(name)):
            summary.unmatched_by_name[name] += 1
    summary.num_matched = len(replacements)
    for module in modules:
        for kernel in module.kernels.values():
            if (id(module), kernel.name) not in seen_kernels:
                summary.log_kernels_not_in_trace.append(f"{_trace_name(module, kernel)} [{module.label}]")

    if summary.num_matched == 0:
        summary.zero_match_reason = _zero_match_reason(summary, modules, matched_names, name_list, spans)
        if not allow_no_match:
            raise NoMatchError(summary)

    if output_path is not None and loaded is not None:
        for _, _, index, annotation in replacements:
            event = loaded["traceEvents"][index]
            if not isinstance(event.get("args"), dict):
                event["args"] = {}
            event["args"].update(annotation)
        _dump_atomically(loaded, output_path)
    elif output_path is not None:
        replacements.sort()

        encoders: dict[int, Any] = {}  # id(annotation) -> encode function (annotations are shared)
        for _, _, _, annotation in replacements:
            if id(annotation) not in encoders:
                encoders[id(annotation)] = _make_encoder(annotation)
        rewrite_events(
            trace_path,
            output_path,
            ((start, end, encoders[id(annotation)]) for start, end, _, annotation in replacements),
        )
    return summary


def _make_encoder(annotation: dict[str, Any]):
    """A function adding ``annotation`` to an event's args; encodes the annotation (kernel source) once."""
    fragment = json.dumps(annotation, ensure_ascii=False)[1:-1]

    def encode(original: str) -> str:
        event = json.loads(original)
        args = event.get("args")
        if not isinstance(args, dict) or any(key in args for key in annotation):  # rare: re-enrichment
            event["args"] = {**(args if isinstance(args, dict) else {}), **annotation}
            return json.dumps(event, ensure_ascii=False)
        event["args"] = _ARGS_PLACEHOLDER
        args_json = json.dumps(args, ensure_ascii=False)
        merged = args_json[:-1] + (", " if args else "") + fragment + "}"
        return json.dumps(event, ensure_ascii=False).replace(_ARGS_PLACEHOLDER_JSON, merged, 1)

    return encode


def _zero_match_reason(
    summary: EnrichSummary,
    modules: list[OutputCodeModule],
    matched_names: set[str],
    name_list: list[str],
    spans: list[_Span],
) -> str:
    if not modules:
        return "the log has no output code (was it captured with TORCH_LOGS=output_code?)"
    kernel_like = [name for name in name_list if _INDUCTOR_KERNEL_NAME_RE.match(name)]
    if not kernel_like and not any(span.kind == "call" for span in spans):
        return (
            "the trace has no compiled-graph calls or Inductor kernel events (profile the compiled "
            "model; on CPU set TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE=1 so C++ kernels are recorded)"
        )
    log_names = {_trace_name(module, kernel) for module in modules for kernel in module.kernels.values()}
    in_log = [name for name in kernel_like if name in log_names]
    if kernel_like and not in_log:
        return (
            f"none of the trace's {len(kernel_like)} Inductor-kernel names (e.g. {kernel_like[0]!r}) occurs "
            "in the log: the log and the trace are probably from different runs (C++ kernel names "
            "carry the graph id, which differs between runs that compile different graphs)"
        )
    if in_log:
        kinds = sorted({module.graph_kind for module in modules})
        return (
            f"{len(in_log)} of the trace's Inductor-kernel names occur in the log (e.g. {in_log[0]!r}) but "
            f"not in a module of the kind that ran them (the log has only {', '.join(kinds)} graphs): "
            "the log and the trace are probably from different runs"
        )
    return "no compiled-graph call in the trace ran the kernels or extern ops of a module in the log"


def _load_whole(trace_path: str) -> dict[str, Any]:
    try:
        with open(trace_path, encoding="utf-8") as trace_file:
            loaded = json.load(trace_file)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceFormatError(f"{trace_path}: not valid JSON ({exc})") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("traceEvents"), list):
        raise TraceFormatError(f"{trace_path}: no 'traceEvents' list")
    return loaded


def _dump_atomically(trace: dict[str, Any], output_path: str) -> None:
    target_dir = os.path.dirname(os.path.abspath(output_path))
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(output_path), dir=target_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as target:
            json.dump(trace, target, ensure_ascii=False)
        os.replace(tmp_path, output_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise

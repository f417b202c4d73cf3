"""Steps 3-5 of the enrichment: which compiled graph, kernel and call() line each candidate event ran.

- Per ``## Call CompiledFxGraph`` span, its direct children in time order are what ``call()`` ran.
  The span's graph is the one of the right kind (forward / backward / inference, from the enclosing
  ``CompiledFunction`` / ``CompiledFunctionBackward`` span) whose kernels (``kernel_file`` paths
  first, then names, then the extern-op sequence) best cover the children; a tie that remains is
  noted. Kernel children match by name; op children (``aten::addmm``, a custom op's
  ``my_lib::scaled_tanh``) match the graph's extern calls (``extern_kernels.*``, ``torch.ops.*``) of
  that op. Each child takes a call() line of its kernel / op in execution order (``_CallAligner``:
  the call sites of a ``torch.cond`` branch that did not run are skipped). Spans with the same
  children, kind and kernel files (every step of a training loop) are matched once and the result
  reused.
- Kernel events outside any Call span match by name when exactly one kernel of the enclosing kind
  has it.
- GPU ``kernel`` events inherit their launch op's match through ``External id``.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
from array import array

import numpy as np

from perf_traces.log_index import INDUCTOR_KERNEL_NAME_RE, LogIndex
from perf_traces.log_kernels import Call, CompiledGraph, Kernel
from perf_traces.trace_records import Span, TraceRecords

__all__ = ["OUTSIDE_SPAN_NOTE", "KernelMatch", "Matcher"]

_TIME_EPSILON_US = 1e-3  # Chrome traces round ts/dur to 1 ns; containment tests allow that slack
_MAX_MODE_SPAN_LOOKBACK = 16
_OP_SUMMARY_CHARS = 60
_NO_FILES: frozenset[str] = frozenset()
OUTSIDE_SPAN_NOTE = "matched by name outside a Call span"


@dataclasses.dataclass(frozen=True, eq=False)
class KernelMatch:
    """What one matched event ran: a kernel of ``graph`` (``kernel`` set) or one of its extern calls."""

    graph: CompiledGraph
    kernel: Kernel | None
    call: Call | None  # the call() line (None for kernels matched outside a Call span)
    note: str | None

    @property
    def source_nodes(self) -> list[str]:
        if self.kernel is None:
            return self.call.source_nodes if self.call else []
        return self.call.source_nodes if self.call and self.call.source_nodes else self.kernel.source_nodes

    @property
    def aten_ops(self) -> list[str]:
        if self.kernel is None:
            return self.call.aten_ops if self.call else []
        return self.call.aten_ops if self.call and self.call.aten_ops else self.kernel.aten_ops

    @property
    def op_summary(self) -> str:
        """The ATen ops without 'aten.' / '.default', else the ops in the kernel name; at most 60 chars."""
        ops = [op.removeprefix("aten.").removesuffix(".default") for op in self.aten_ops]
        if not ops and self.kernel is not None:
            ops = self.kernel.ops_from_name
        text = ", ".join(dict.fromkeys(ops))
        return text if len(text) <= _OP_SUMMARY_CHARS else text[: _OP_SUMMARY_CHARS - 1] + "…"

    @property
    def kind(self) -> str:
        """How the summary counts it."""
        if self.kernel is None:
            return "extern aten op" if self.call.target.startswith("aten::") else "extern custom op"
        return "cpu kernel op" if self.kernel.backend.startswith("cpp") else "kernel launch op"


class _SpanIndex:
    """The spans per thread, sorted by start, for containment queries."""

    def __init__(self, spans: list[Span]) -> None:
        self.mode_spans: dict[int, list[Span]] = collections.defaultdict(list)
        self.call_spans: dict[int, list[Span]] = collections.defaultdict(list)
        for span in spans:
            (self.call_spans if span.kind == "call" else self.mode_spans)[span.thread].append(span)
        for thread_spans in list(self.call_spans.values()) + list(self.mode_spans.values()):
            thread_spans.sort(key=lambda span: span.ts)
        self.mode_starts = {thread: [span.ts for span in items] for thread, items in self.mode_spans.items()}

    def enclosing_mode(self, thread: int, ts: float, end: float) -> str:
        """Innermost CompiledFunction(Backward) span around [ts, end]; 'inference' when there is none.

        Walks back from the latest span starting before ``ts``: the enclosing span is that one or one
        of the few before it (these spans nest only a few deep), so the walk is capped.
        """
        starts = self.mode_starts.get(thread)
        if not starts:
            return "inference"
        position = bisect.bisect_right(starts, ts + _TIME_EPSILON_US) - 1
        for span in reversed(
            self.mode_spans[thread][max(0, position - _MAX_MODE_SPAN_LOOKBACK) : position + 1]
        ):
            if span.end + _TIME_EPSILON_US >= end:
                return span.kind
        return "inference"


@dataclasses.dataclass
class _SpanResult:
    """How one kind of Call span matched: per direct child, the code of its match (or -1)."""

    codes: list[int]
    counts: collections.Counter
    ambiguous: bool
    uses: int = 0


class _CallAligner:
    """Which call() line each child of a Call span ran: the children, in time order, against the graph's
    call sites in execution order (subgraph bodies after the statement that calls them).

    A child takes the first untaken call site of its kernel / op at or after the position of the last
    one taken, so that the call sites of a ``torch.cond`` branch that did not run are skipped; failing
    that, the first untaken one before it (bodies whose order in the log is not their execution order).
    """

    def __init__(self, calls: list[Call], positions: dict[str, list[int]]) -> None:
        self.calls = calls
        self.positions = positions
        self.position = 0
        self.taken: set[int] = set()

    def take(self, target: str) -> Call | None:
        """The call site the next child named ``target`` ran, or None when every one is taken."""
        positions = self.positions.get(target, ())
        start = bisect.bisect_left(positions, self.position)
        for position in itertools.chain(positions[start:], positions[:start]):
            if position not in self.taken:
                self.taken.add(position)
                self.position = max(self.position, position + 1)
                return self.calls[position]
        return None


class Matcher:
    """Assigns a ``KernelMatch`` to candidate rows (``run``); keeps the summary counts.

    Per row, ``row_code`` is the index of its match in ``objects`` (few, shared: one per kernel /
    extern call / note), -1 if none; ``launch_of`` is, for a GPU kernel row, the launch op row it
    inherited its match from, else -1. Arrays, not dicts: a 1 GB trace has ~900k rows.
    """

    def __init__(self, records: TraceRecords, log: LogIndex) -> None:
        self.records = records
        self.log = log
        self.spans = _SpanIndex(records.spans)
        self.objects: list[KernelMatch] = []
        self.row_code = array("q", [-1]) * len(records)
        self.launch_of = array("q", [-1]) * len(records)
        self.num_matched = 0
        self.matched_by_kind: collections.Counter = collections.Counter()
        self.unmatched_by_name: collections.Counter = collections.Counter()
        self.num_ambiguous_spans = 0
        self.seen_kernels: set[tuple[int, str]] = set()  # (id(graph), kernel name)
        self.seen_graphs: set[int] = set()  # id(graph) of every graph with a matched event
        self._code_of: dict[tuple, int] = {}
        self._span_results: dict[tuple, _SpanResult] = {}

    def _match(self, graph: CompiledGraph, kernel: Kernel | None, call: Call | None, note: str | None) -> int:
        key = (id(graph), id(kernel), id(call), note)
        code = self._code_of.get(key)
        if code is None:
            code = self._code_of[key] = len(self.objects)
            self.objects.append(KernelMatch(graph, kernel, call, note))
            self.seen_graphs.add(id(graph))
            if kernel is not None:
                self.seen_kernels.add((id(graph), kernel.name))
        return code

    def run(self) -> None:
        outside_rows = []
        for span, rows in self._children_of_call_spans(outside_rows):
            self._match_call_span(span, rows)
        for result in self._span_results.values():
            for kind, count in result.counts.items():
                self.matched_by_kind[kind] += count * result.uses
            self.num_ambiguous_spans += result.ambiguous * result.uses
        self._match_outside_spans(outside_rows)
        self._link_gpu_kernels()
        self._count_unmatched()

    def _children_of_call_spans(self, outside_rows: list[int]):  # noqa: ANN202 (a generator of (Span, rows))
        """(Call span, its CPU rows sorted by start, longest first) per span with rows; appends the
        kernel-named rows outside every Call span to ``outside_rows``. Vectorised over rows."""
        records = self.records
        rows = np.flatnonzero(np.frombuffer(records.is_gpu, np.int8) == 0)
        threads = np.frombuffer(records.thread, np.int64)[rows]
        starts = np.frombuffer(records.ts, np.float64)[rows]
        ends = np.frombuffer(records.end, np.float64)[rows]
        span_of_row = np.full(rows.size, -1, np.int64)
        span_list: list[Span] = []
        for thread, spans in self.spans.call_spans.items():
            on_thread = np.flatnonzero(threads == thread)
            span_starts = np.array([span.ts for span in spans])
            span_ends = np.array([span.end for span in spans])
            position = np.searchsorted(span_starts, starts[on_thread] + _TIME_EPSILON_US, side="right") - 1
            inside = position >= 0
            inside[inside] = span_ends[position[inside]] + _TIME_EPSILON_US >= ends[on_thread][inside]
            span_of_row[on_thread[inside]] = position[inside] + len(span_list)
            span_list.extend(spans)
        outside = rows[span_of_row < 0]
        kernel_name_ids = [
            name_id for name_id, name in enumerate(records.names) if self.log.is_kernel_name(name)
        ]
        name_ids = np.frombuffer(records.name_id, np.int64)
        outside_rows.extend(outside[np.isin(name_ids[outside], kernel_name_ids)].tolist())
        inside = span_of_row >= 0
        order = np.lexsort((-ends[inside], starts[inside], span_of_row[inside]))
        grouped_rows = rows[inside][order]
        grouped_spans = span_of_row[inside][order]
        bounds = np.flatnonzero(np.diff(grouped_spans)) + 1
        for group_rows, group_span in zip(
            np.split(grouped_rows, bounds),
            grouped_spans[np.concatenate(([0], bounds))].tolist(),
            strict=False,
        ):
            if group_rows.size:
                yield span_list[group_span], group_rows.tolist()

    def _direct_children(self, rows: list[int]) -> list[int]:
        """The rows (sorted by start, longest first) not nested in an earlier one: what call() ran."""
        ts, end = self.records.ts, self.records.end
        direct: list[int] = []
        direct_end = float("-inf")
        for row in rows:
            if ts[row] + _TIME_EPSILON_US >= direct_end:
                direct.append(row)
                direct_end = end[row]
        return direct

    def _match_call_span(self, span: Span, rows: list[int]) -> None:
        records = self.records
        direct = self._direct_children(rows)
        name_id = records.name_id
        name_ids = tuple([name_id[row] for row in direct])
        kind = self.spans.enclosing_mode(span.thread, span.ts, span.end)
        kernel_file = records.kernel_file
        files = (
            frozenset([kernel_file[row] for row in direct if row in kernel_file])
            if kernel_file
            else _NO_FILES
        )
        key = (kind, name_ids, files)
        result = self._span_results.get(key)
        if result is None:
            result = self._span_results[key] = self._resolve_span(
                kind, [records.names[i] for i in name_ids], files
            )
        result.uses += 1  # its counts are added once per use at the end of run()
        row_code = self.row_code
        for row, code in zip(direct, result.codes, strict=True):
            if code >= 0:
                row_code[row] = code

    def _best_graphs(self, kind: str, child_names: list[str], files: frozenset[str]) -> list[CompiledGraph]:
        """The graphs of the span's kind that best cover its children (files, then names, then externs)."""
        log = self.log
        kernel_children = {name for name in child_names if name in log.by_trace_name}
        extern_children = tuple(name for name in child_names if name in log.extern_targets)
        # only graphs sharing a kernel name / kernel file with the children, or their extern sequence
        options = {id(graph) for name in kernel_children for graph, _ in log.by_trace_name[name]}
        options.update(id(graph) for path in files for graph, _ in log.by_kernel_path.get(path, ()))
        options.update(id(graph) for graph in log.graphs_by_externs.get(extern_children, ()))
        best_score, best_graphs = None, []
        for graph in log.graphs:  # in log order, so that ties resolve to the first graph of the log
            if id(graph) not in options:
                continue
            if kind == "inference" and graph.graph_kind not in ("inference", "unknown"):
                continue
            if kind != "inference" and graph.graph_kind not in (kind, "unknown"):
                continue
            lookup = log.graph_index[id(graph)]
            kernel_score = len(kernel_children & lookup.trace_names)
            file_score = len(files & lookup.kernel_paths)
            extern_score = 1 if lookup.extern_names == extern_children else 0
            if kernel_score == 0 and file_score == 0 and not (extern_score and lookup.extern_names):
                continue
            score = (file_score, kernel_score, extern_score)
            if best_score is None or score > best_score:
                best_score, best_graphs = score, [graph]
            elif score == best_score:
                best_graphs.append(graph)
        return best_graphs

    def _resolve_span(self, kind: str, child_names: list[str], files: frozenset[str]) -> _SpanResult:
        codes = [-1] * len(child_names)
        counts: collections.Counter = collections.Counter()
        best_graphs = self._best_graphs(kind, child_names, files)
        if not best_graphs:
            return _SpanResult(codes, counts, ambiguous=False)
        graph = best_graphs[0]
        note = None
        if len(best_graphs) > 1:
            note = (
                f"ambiguous: {len(best_graphs)} output-code modules match this call equally "
                f"({', '.join(candidate.label for candidate in best_graphs[:4])}); took the first"
            )
        lookup = self.log.graph_index[id(graph)]
        kernel_call_counts: collections.Counter = collections.Counter()
        aligner = _CallAligner(graph.calls, lookup.call_positions)
        for child, name in enumerate(child_names):
            if name in lookup.kernels:
                kernel = lookup.kernels[name]
                call = aligner.take(kernel.name)
                if call is None:  # each call site taken (a loop body run again): the n-th call, or the last
                    calls = lookup.kernel_calls.get(kernel.name, [])
                    call = calls[min(kernel_call_counts[kernel.name], len(calls) - 1)] if calls else None
                kernel_call_counts[kernel.name] += 1
                codes[child] = self._match(graph, kernel, call, note)
            elif name in self.log.extern_targets:
                # an op child without a call site left stays unmatched (e.g. an aten::empty from a
                # fallback allocation when the graph also calls aten::empty as an extern)
                call = aligner.take(name)
                if call is not None:
                    codes[child] = self._match(graph, None, call, note)
        counts.update(self.objects[code].kind for code in codes if code >= 0)
        return _SpanResult(codes, counts, ambiguous=len(best_graphs) > 1)

    def _match_outside_spans(self, outside_rows: list[int]) -> None:
        """Kernel-named events outside any Call span (e.g. CUDA graphs, a trace window cutting a call):
        matched by name when exactly one (graph, kernel) of the enclosing forward/backward kind has it."""
        records, log = self.records, self.log
        for row in outside_rows:
            options = log.by_trace_name.get(records.name(row), [])
            kernel_file = records.kernel_file.get(row)
            if kernel_file and log.by_kernel_path.get(kernel_file):
                options = [
                    option for option in options if option[1].kernel_path == kernel_file
                ] or log.by_kernel_path[kernel_file]
            kind = self.spans.enclosing_mode(records.thread[row], records.ts[row], records.end[row])
            options = [option for option in options if option[0].graph_kind in (kind, "unknown")] or options
            if len(options) == 1:
                graph, kernel = options[0]
                self.row_code[row] = code = self._match(graph, kernel, None, OUTSIDE_SPAN_NOTE)
                self.matched_by_kind[self.objects[code].kind] += 1

    def _link_gpu_kernels(self) -> None:
        """GPU kernels inherit the match of their launch op or extern aten op (same External id)."""
        records = self.records
        row_code = np.frombuffer(self.row_code, np.int64)
        external_ids = np.frombuffer(records.external_id, np.int64)
        launches = np.flatnonzero((row_code >= 0) & (external_ids >= 0))
        launch_by_external_id = dict(zip(external_ids[launches].tolist(), launches.tolist(), strict=True))
        for row in np.flatnonzero(np.frombuffer(records.is_gpu, np.int8)).tolist():
            launch = launch_by_external_id.get(records.external_id[row])
            if launch is not None:
                self.launch_of[row] = launch
                launched = self.objects[self.row_code[launch]]
                self.matched_by_kind[
                    "gpu kernel" if launched.kernel is not None else "gpu kernel of extern op"
                ] += 1

    def _count_unmatched(self) -> None:
        """Unmatched rows named like a kernel (of the log, or like Inductor names them), by name."""
        records = self.records
        matched = (np.frombuffer(self.row_code, np.int64) >= 0) | (
            np.frombuffer(self.launch_of, np.int64) >= 0
        )
        self.num_matched = int(matched.sum())
        counts = np.bincount(np.frombuffer(records.name_id, np.int64)[~matched], minlength=len(records.names))
        for name_id in np.flatnonzero(counts).tolist():
            name = records.names[name_id]
            if name in self.log.by_trace_name or INDUCTOR_KERNEL_NAME_RE.match(name):
                self.unmatched_by_name[name] += int(counts[name_id])

    def matched_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every matched row as arrays: (rows, codes into ``objects``, launch rows: -1 for CPU rows)."""
        row_code = np.frombuffer(self.row_code, np.int64)
        launch_of = np.frombuffer(self.launch_of, np.int64)
        cpu_rows = np.flatnonzero(row_code >= 0)
        gpu_rows = np.flatnonzero(launch_of >= 0)
        rows = np.concatenate([cpu_rows, gpu_rows])
        codes = np.concatenate([row_code[cpu_rows], row_code[launch_of[gpu_rows]]])
        launch_rows = np.concatenate([np.full(cpu_rows.size, -1, np.int64), launch_of[gpu_rows]])
        return rows, codes, launch_rows

    def log_kernels_not_in_trace(self) -> tuple[list[str], list[str]]:
        """The log's kernels no event matched, as labels: (never seen, in subgraph branches that did not run).

        A kernel goes to the second list when its graph ran (some event matched it) and every call
        site of the kernel is in a subgraph function (``true_graph_0``: a ``torch.cond`` branch, a loop
        body) — expected, not a failure to match.
        """
        never_seen: list[str] = []
        in_branches_not_run: list[str] = []
        for graph in self.log.graphs:
            calls = self.log.graph_index[id(graph)].kernel_calls
            for kernel in graph.kernels.values():
                if (id(graph), kernel.name) in self.seen_kernels:
                    continue
                label = f"{kernel.trace_name} [{graph.label}]"
                subgraphs = [call.subgraph for call in calls.get(kernel.name, [])]
                if id(graph) in self.seen_graphs and subgraphs and all(subgraphs):
                    in_branches_not_run.append(f"{label} in {', '.join(dict.fromkeys(subgraphs))}")
                else:
                    never_seen.append(label)
        return never_seen, in_branches_not_run

    def zero_match_reason(self) -> str:
        graphs, records = self.log.graphs, self.records
        if not graphs:
            return "the log has no output code (was it captured with TORCH_LOGS=output_code?)"
        cpu_name_ids = np.unique(
            np.frombuffer(records.name_id, np.int64)[np.frombuffer(records.is_gpu, np.int8) == 0]
        )
        kernel_like = [
            records.names[i] for i in cpu_name_ids.tolist() if INDUCTOR_KERNEL_NAME_RE.match(records.names[i])
        ]
        if not kernel_like and not any(span.kind == "call" for span in records.spans):
            return (
                "the trace has no compiled-graph calls or Inductor kernel events (profile the compiled "
                "model; on CPU set TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE=1 so C++ kernels are recorded)"
            )
        in_log = [name for name in kernel_like if name in self.log.by_trace_name]
        if kernel_like and not in_log:
            return (
                f"none of the trace's {len(kernel_like)} Inductor-kernel names (e.g. {kernel_like[0]!r}) "
                "occurs in the log: the log and the trace are probably from different runs (C++ kernel names "
                "carry the graph id, which differs between runs that compile different graphs)"
            )
        if in_log:
            kinds = sorted({graph.graph_kind for graph in graphs})
            return (
                f"{len(in_log)} of the trace's Inductor-kernel names occur in the log (e.g. {in_log[0]!r}) "
                "but not in a module of the kind that ran them (the log has only "
                f"{', '.join(kinds)} graphs): the log and the trace are probably from different runs"
            )
        return "no compiled-graph call in the trace ran the kernels or extern ops of a module in the log"

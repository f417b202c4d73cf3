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

from perf_traces.log_index import INDUCTOR_KERNEL_NAME_RE, LogIndex, NameKind
from perf_traces.log_kernels import Call, CompiledGraph, Kernel
from perf_traces.trace_records import TraceRecords

__all__ = ["OUTSIDE_SPAN_NOTE", "KernelMatch", "Matcher"]

_TIME_EPSILON_US = 1e-3  # Chrome traces round ts/dur to 1 ns; containment tests allow that slack
_MAX_MODE_SPAN_LOOKBACK = 16
_OP_SUMMARY_CHARS = 60
_MODE_NAMES = {NameKind.FORWARD: "forward", NameKind.BACKWARD: "backward"}
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


def _segmented_exclusive_max(values: np.ndarray, first_of_group: np.ndarray) -> np.ndarray:
    """Per position, the largest of the values before it in its group (groups are contiguous, each
    starting where ``first_of_group``), -inf for a group's first. Exact: each value is replaced by its
    rank, offset per group so that one running maximum never crosses into the next group."""
    if not values.size:
        return values.copy()
    distinct, rank = np.unique(values, return_inverse=True)
    floor = (np.cumsum(first_of_group) - 1) * (distinct.size + 1)
    previous = np.r_[-1, np.maximum.accumulate(floor + rank + 1)[:-1]]
    return np.where(previous > floor, distinct[np.maximum(previous - floor - 1, 0)], -np.inf)


class _SortedSpans:
    """Spans of one family (forward / backward, or Call) sorted by thread, then start (file order
    among equal starts); the threads in the order of their first span in the file."""

    def __init__(self, thread: np.ndarray, ts: np.ndarray, end: np.ndarray, kind: np.ndarray) -> None:
        threads, first = np.unique(thread, return_index=True)
        self.threads = threads[np.argsort(first)]
        rank = np.empty(threads.size, np.int64)
        rank[np.argsort(first)] = np.arange(threads.size)
        thread_rank = rank[np.searchsorted(threads, thread)]
        order = np.lexsort((ts, thread_rank))
        self.thread, self.ts, self.end, self.kind = thread[order], ts[order], end[order], kind[order]
        bounds = np.searchsorted(thread_rank[order], np.arange(threads.size + 1))
        self.bounds = {
            thread: (int(bounds[position]), int(bounds[position + 1]))
            for position, thread in enumerate(self.threads.tolist())
        }

    def latest_before(self, thread: int, times: np.ndarray) -> tuple[int, np.ndarray]:
        """(first index of the thread's spans, the index of the last span of ``thread`` starting at or
        before each time + epsilon, -1 where none): indexes into the sorted arrays."""
        begin, end = self.bounds.get(thread, (0, 0))
        position = np.searchsorted(self.ts[begin:end], times + _TIME_EPSILON_US, side="right") - 1
        return begin, np.where(position >= 0, position + begin, -1)


class _SpanIndex:
    """The spans per thread, sorted by start, for containment queries (arrays)."""

    def __init__(self, records: TraceRecords) -> None:
        thread = np.frombuffer(records.span_thread, np.int64)
        ts = np.frombuffer(records.span_ts, np.float64)
        end = np.frombuffer(records.span_end, np.float64)
        kind = np.frombuffer(records.span_kind, np.int8)
        call = kind == NameKind.CALL
        self.mode_spans = _SortedSpans(thread[~call], ts[~call], end[~call], kind[~call])
        self.call_spans = _SortedSpans(thread[call], ts[call], end[call], kind[call])

    def enclosing_modes(self, threads: np.ndarray, ts: np.ndarray, ends: np.ndarray) -> list[str]:
        """Per interval: its innermost CompiledFunction(Backward) span's kind; 'inference' when none.

        Walks back from the latest span starting before ``ts``: the enclosing span is that one or one
        of the few before it (these spans nest only a few deep), so the walk is capped.
        """
        spans = self.mode_spans
        kinds = np.zeros(threads.size, np.int8)  # 0: inference
        for thread in np.unique(threads).tolist():
            queries = np.flatnonzero(threads == thread)
            begin, latest = spans.latest_before(thread, ts[queries])
            found = np.zeros(queries.size, bool)
            for back in range(_MAX_MODE_SPAN_LOOKBACK + 1):
                position = latest - back
                candidate = np.flatnonzero(~found & (latest >= 0) & (position >= begin))
                encloses = spans.end[position[candidate]] + _TIME_EPSILON_US >= ends[queries[candidate]]
                chosen = candidate[encloses]
                kinds[queries[chosen]] = spans.kind[position[chosen]]
                found[chosen] = True
        return [_MODE_NAMES.get(kind, "inference") for kind in kinds.tolist()]


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
        self.spans = _SpanIndex(records)
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
        span_of_row, outside_rows = self._call_span_of_rows()
        direct_rows, spans, bounds = self._direct_children(span_of_row)
        self._match_call_spans(direct_rows, spans, bounds)
        for result in self._span_results.values():
            for kind, count in result.counts.items():
                self.matched_by_kind[kind] += count * result.uses
            self.num_ambiguous_spans += result.ambiguous * result.uses
        self._match_outside_spans(outside_rows)
        self._link_gpu_kernels()
        self._count_unmatched()

    def _call_span_of_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The Call span around each CPU row (an index of ``spans.call_spans``; -1: none, and for GPU
        rows), and the kernel-named rows outside every Call span."""
        records, call_spans = self.records, self.spans.call_spans
        is_cpu = np.frombuffer(records.is_gpu, np.int8) == 0
        threads = np.frombuffer(records.thread, np.int64)
        starts = np.frombuffer(records.ts, np.float64)
        ends = np.frombuffer(records.end, np.float64)
        span_of_row = np.full(len(records), -1, np.int64)
        for thread in call_spans.threads.tolist():
            on_thread = np.flatnonzero(is_cpu & (threads == thread))
            _, position = call_spans.latest_before(thread, starts[on_thread])
            inside = position >= 0
            inside[inside] = call_spans.end[position[inside]] + _TIME_EPSILON_US >= ends[on_thread][inside]
            span_of_row[on_thread[inside]] = position[inside]
        kernel_name_ids = [
            name_id for name_id, name in enumerate(records.names) if self.log.is_kernel_name(name)
        ]
        outside = np.flatnonzero(is_cpu & (span_of_row < 0))
        name_ids = np.frombuffer(records.name_id, np.int64)
        return span_of_row, outside[np.isin(name_ids[outside], kernel_name_ids)]

    def _direct_children(self, span_of_row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows of each Call span not nested in an earlier one of it (what call() ran), in time order.

        Returns (the direct rows, span after span; the spans with rows, in order; where each span's rows
        start in the first array, and its end). Within a span the rows are sorted by start, longest
        first, and a row is direct when it starts (within epsilon) after the end of the last direct row.
        That is computed in bulk as "after the end of every earlier row" and then checked row by row
        against the rule; the spans where the two differ (a child ending after its parent) are redone
        one row at a time.
        """
        records = self.records
        starts = np.frombuffer(records.ts, np.float64)
        ends = np.frombuffer(records.end, np.float64)
        rows = np.flatnonzero(span_of_row >= 0)
        rows = rows[np.lexsort((-ends[rows], starts[rows], span_of_row[rows]))]
        group = span_of_row[rows]
        first_of_group = np.r_[True, group[1:] != group[:-1]] if rows.size else np.zeros(0, bool)
        earlier_end = _segmented_exclusive_max(ends[rows], first_of_group)
        direct = starts[rows] + _TIME_EPSILON_US >= earlier_end
        # check: the end of the last direct row before each row, within its span
        last_direct = np.maximum.accumulate(np.where(direct, np.arange(rows.size), -1))
        previous = np.r_[-1, last_direct[:-1]] if rows.size else last_direct
        group_start = np.maximum.accumulate(np.where(first_of_group, np.arange(rows.size), 0))
        previous_end = np.where(previous >= group_start, ends[rows[np.maximum(previous, 0)]], -np.inf)
        wrong = direct != (starts[rows] + _TIME_EPSILON_US >= previous_end)
        for span in np.unique(group[wrong]).tolist():
            members = np.flatnonzero(group == span)
            direct[members] = self._direct_one_by_one(rows[members])
        direct_rows = rows[direct]
        spans = group[direct]
        if not spans.size:
            return direct_rows, spans, np.zeros(1, np.int64)
        firsts = np.flatnonzero(np.r_[True, spans[1:] != spans[:-1]])
        return direct_rows, spans[firsts], np.r_[firsts, spans.size]

    def _direct_one_by_one(self, rows: np.ndarray) -> np.ndarray:
        """``_direct_children``'s rule applied row after row, to one span's sorted rows."""
        ts, end = self.records.ts, self.records.end
        direct = np.zeros(rows.size, bool)
        direct_end = float("-inf")
        for position, row in enumerate(rows.tolist()):
            if ts[row] + _TIME_EPSILON_US >= direct_end:
                direct[position] = True
                direct_end = end[row]
        return direct

    def _match_call_spans(self, direct_rows: np.ndarray, spans: np.ndarray, bounds: np.ndarray) -> None:
        """Match the direct children of each Call span; spans with the same children, kind and kernel
        files (every step of a loop) are matched once (``_resolve_span``) and the result reused."""
        records, call_spans = self.records, self.spans.call_spans
        kinds = self.spans.enclosing_modes(
            call_spans.thread[spans], call_spans.ts[spans], call_spans.end[spans]
        )
        names = np.frombuffer(records.name_id, np.int64)[direct_rows].tobytes()
        kernel_file = records.kernel_file
        spans_of_key: dict[tuple, list[int]] = {}
        for position, (begin, end) in enumerate(itertools.pairwise(bounds.tolist())):
            files = (
                frozenset([kernel_file[row] for row in direct_rows[begin:end].tolist() if row in kernel_file])
                if kernel_file
                else _NO_FILES
            )
            spans_of_key.setdefault((kinds[position], names[8 * begin : 8 * end], files), []).append(position)
        row_code = np.frombuffer(self.row_code, np.int64)
        for key, positions in spans_of_key.items():
            result = self._span_results.get(key)
            if result is None:
                kind, child_names, files = key
                name_ids = np.frombuffer(child_names, np.int64).tolist()
                result = self._span_results[key] = self._resolve_span(
                    kind, [records.names[name_id] for name_id in name_ids], files
                )
            result.uses += len(positions)  # its counts are added once per use at the end of run()
            codes = np.array(result.codes, np.int64)
            matched = np.flatnonzero(codes >= 0)
            children = direct_rows[bounds[positions][:, None] + matched]  # (spans, matched children)
            row_code[children] = codes[matched]

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

    def _match_outside_spans(self, outside_rows: np.ndarray) -> None:
        """Kernel-named events outside any Call span (e.g. CUDA graphs, a trace window cutting a call):
        matched by name when exactly one (graph, kernel) of the enclosing forward/backward kind has it."""
        records, log = self.records, self.log
        kinds = self.spans.enclosing_modes(
            np.frombuffer(records.thread, np.int64)[outside_rows],
            np.frombuffer(records.ts, np.float64)[outside_rows],
            np.frombuffer(records.end, np.float64)[outside_rows],
        )
        for row, kind in zip(outside_rows.tolist(), kinds, strict=True):
            options = log.by_trace_name.get(records.name(row), [])
            kernel_file = records.kernel_file.get(row)
            if kernel_file and log.by_kernel_path.get(kernel_file):
                options = [
                    option for option in options if option[1].kernel_path == kernel_file
                ] or log.by_kernel_path[kernel_file]
            options = [option for option in options if option[0].graph_kind in (kind, "unknown")] or options
            if len(options) == 1:
                graph, kernel = options[0]
                self.row_code[row] = code = self._match(graph, kernel, None, OUTSIDE_SPAN_NOTE)
                self.matched_by_kind[self.objects[code].kind] += 1

    def _link_gpu_kernels(self) -> None:
        """GPU kernels inherit the match of their launch op or extern aten op (same External id; of
        several, the last in the file)."""
        records = self.records
        row_code = np.frombuffer(self.row_code, np.int64)
        external_ids = np.frombuffer(records.external_id, np.int64)
        launches = np.flatnonzero((row_code >= 0) & (external_ids >= 0))
        launches = launches[np.argsort(external_ids[launches], kind="stable")]
        launch_ids = external_ids[launches]
        gpu_rows = np.flatnonzero(np.frombuffer(records.is_gpu, np.int8))
        position = np.searchsorted(launch_ids, external_ids[gpu_rows], side="right") - 1
        found = position >= 0
        found[found] = launch_ids[position[found]] == external_ids[gpu_rows[found]]
        launch_of = np.frombuffer(self.launch_of, np.int64)
        launch_of[gpu_rows[found]] = launches[position[found]]
        launches_kernel = np.array([match.kernel is not None for match in self.objects] or [False], bool)
        of_kernel = launches_kernel[row_code[launches[position[found]]]]
        if of_kernel.any():
            self.matched_by_kind["gpu kernel"] += int(of_kernel.sum())
        if not of_kernel.all():
            self.matched_by_kind["gpu kernel of extern op"] += int((~of_kernel).sum())

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
        if not kernel_like and not (np.frombuffer(records.span_kind, np.int8) == NameKind.CALL).any():
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

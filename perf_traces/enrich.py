"""Add Inductor kernel metadata to a profiler trace: the steps, tied together.

``match_trace`` (everything but the output) reads as its steps:

1. ``LogIndex.build``: lookups over the log's compiled graphs, and the bytes that pick the candidate
   events (named like a kernel or extern op of the log, the forward / backward and
   ``## Call CompiledFxGraph`` spans, GPU ``kernel`` events).
2. ``collect_records`` (pass 1, ``trace_records``): only the candidates are decoded
   (``trace_candidates``), a batch at a time into columns; the rest of the trace is validated and
   skipped unparsed.
3. ``Matcher.run`` (``matching``): which graph, kernel and call() line each candidate ran.
4. ``KernelTable`` (``kernel_table``): a short id per matched kernel, and its table event.

``EnrichPlan.write`` (pass 2) copies the trace as bytes, inserting into each matched event its kernel
id, graph kind, nodes and op summary, and appending the table events to ``traceEvents``.
``EnrichPlan.kernel_stats`` gives the per-kernel CPU / device times (``kernel_summary``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing.pool
import os
from typing import Any

import numpy as np

from perf_traces.kernel_summary import KernelStats
from perf_traces.kernel_table import KernelTable, event_args
from perf_traces.log_index import KERNEL_TABLE_CATEGORY, LogIndex
from perf_traces.log_kernels import CompiledGraph
from perf_traces.matching import Matcher
from perf_traces.trace_candidates import KEEP, REENCODE
from perf_traces.trace_records import TraceRecords, collect_records
from perf_traces.trace_stream import (
    Edits,
    TraceLayout,
    helper_process,
    readable_trace,
    wants_helper,
    write_spliced,
)

__all__ = ["EnrichPlan", "EnrichSummary", "NoMatchError", "enrich_trace", "match_trace"]


@dataclasses.dataclass
class EnrichSummary:
    """What the enrichment did; ``lines()`` is the printed summary."""

    num_events: int = 0
    num_matched: int = 0
    matched_by_kind: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unmatched_by_name: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    log_kernels_not_in_trace: list[str] = dataclasses.field(default_factory=list)
    # kernels called only in subgraph functions (a torch.cond branch) that did not run in this trace
    log_kernels_in_branches_not_run: list[str] = dataclasses.field(default_factory=list)
    num_ambiguous_spans: int = 0
    num_modules: int = 0
    num_log_kernels: int = 0
    num_kernel_table_entries: int = 0
    # matched events whose args is a list, a string ...: there is nowhere to add keys, so left as they are
    not_annotated_by_name: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    zero_match_reason: str | None = None
    rank_note: str | None = None  # the modules of the trace's rank, when the log holds several ranks

    def lines(self) -> list[str]:
        out = [
            f"trace events: {self.num_events}; output-code modules in log: {self.num_modules} "
            f"({self.num_log_kernels} kernels)" + (f"; {self.rank_note}" if self.rank_note else ""),
            f"events matched: {self.num_matched} ("
            + ", ".join(f"{kind}: {count}" for kind, count in sorted(self.matched_by_kind.items()))
            + f"); kernel table: {self.num_kernel_table_entries} entries",
        ]
        if self.num_ambiguous_spans:
            out.append(
                f"graph calls matched to one of several equally good modules: {self.num_ambiguous_spans}"
            )
        if self.not_annotated_by_name:
            out.append(
                "matched events left unchanged because their args is not an object: "
                f"{sum(self.not_annotated_by_name.values())} ("
                + ", ".join(f"{name}: {count}" for name, count in self.not_annotated_by_name.most_common(5))
                + ")"
            )
        unmatched_total = sum(self.unmatched_by_name.values())
        out.append(f"kernel-like events unmatched: {unmatched_total}")
        for name, count in self.unmatched_by_name.most_common(20):
            out.append(f"  {count:6d}  {name}")
        if len(self.unmatched_by_name) > 20:
            out.append(f"  ... and {len(self.unmatched_by_name) - 20} more names")
        out.append(f"kernels in the log never seen in the trace: {len(self.log_kernels_not_in_trace)}")
        out.extend(_first_lines(self.log_kernels_not_in_trace))
        if self.log_kernels_in_branches_not_run:
            out.append(
                "kernels of subgraph branches that did not run (e.g. the torch.cond branch not taken): "
                f"{len(self.log_kernels_in_branches_not_run)}"
            )
            out.extend(_first_lines(self.log_kernels_in_branches_not_run))
        if self.zero_match_reason:
            out.append(f"0 events matched: {self.zero_match_reason}")
        return out


def _first_lines(labels: list[str], limit: int = 20) -> list[str]:
    """The first ``limit`` labels, indented, and how many more there are."""
    lines = [f"  {label}" for label in labels[:limit]]
    if len(labels) > limit:
        lines.append(f"  ... and {len(labels) - limit} more")
    return lines


class NoMatchError(ValueError):
    """No event of the trace matched the log; ``summary`` says why. Nothing was written."""

    def __init__(self, summary: EnrichSummary) -> None:
        super().__init__(f"0 events matched: {summary.zero_match_reason}")
        self.summary = summary


@dataclasses.dataclass
class EnrichPlan:
    """The matches of a trace (pass 1 and the matching), ready to be written (pass 2)."""

    trace_path: str
    summary: EnrichSummary
    layout: TraceLayout
    records: TraceRecords
    matcher: Matcher
    table: KernelTable

    def kernel_stats(self) -> list[KernelStats]:
        """Per kernel id: count and total duration of its CPU events and of its GPU kernels (µs)."""
        records, table = self.records, self.table
        stats = [KernelStats.of(kernel_id, match) for kernel_id, match, _ in table.entries]
        entries = table.key_of_code[table.codes]
        durations = np.frombuffer(records.end)[table.rows] - np.frombuffer(records.ts)[table.rows]
        on_device = np.frombuffer(records.is_gpu, np.int8)[table.rows] == 1
        timed = ~np.isnan(durations)  # a GPU kernel without ts / dur counts for nothing
        for device in (False, True):
            chosen = timed & (on_device == device)
            counts = np.bincount(entries[chosen], minlength=len(stats)).tolist()
            totals = np.bincount(entries[chosen], weights=durations[chosen], minlength=len(stats)).tolist()
            for row, count, total in zip(stats, counts, totals, strict=True):
                row.add_many(count, total, on_device=device)
        return sorted(stats, key=KernelStats.sort_key)

    def _edits(self) -> Edits:
        """The insertions into the matched events (and the rare re-encoded events), in file order, then
        the kernel-table events before the end of traceEvents."""
        records, table = self.records, self.table
        modes = np.frombuffer(records.insert_mode, np.int8)[table.rows]
        kept = modes == KEEP
        if kept.any():
            name_ids = np.frombuffer(records.name_id, np.int64)[table.rows[kept]]
            for name_id, count in enumerate(np.bincount(name_ids).tolist()):
                if count:
                    self.summary.not_annotated_by_name[records.names[name_id]] += count
        # one text per (match, launch op): the fragment, indexed by mode (APPEND, FIRST, NEW_ARGS, REENCODE)
        launch_names = np.where(
            table.launch_rows >= 0,
            np.frombuffer(records.name_id, np.int64)[np.maximum(table.launch_rows, 0)],
            -1,
        )
        pairs, pair_of_row = np.unique(
            table.codes * (len(records.names) + 1) + launch_names + 1, return_inverse=True
        )
        texts = []
        for pair in pairs.tolist():
            code, launch_name = divmod(pair, len(records.names) + 1)
            launch_op = records.names[launch_name - 1] if launch_name else None
            args = event_args(table, table.objects[code], launch_op)
            fragment = json.dumps(args, ensure_ascii=False)[1:-1].encode()
            texts.append((b", " + fragment, fragment, b', "args": {' + fragment + b"}", fragment))
        inserted = ~kept & (modes != REENCODE)
        starts = np.frombuffer(records.insert_at, np.int64)[table.rows[inserted]]
        ends = starts
        replacement_ids = pair_of_row[inserted] * 4 + modes[inserted]
        replacements = [text for pair_texts in texts for text in pair_texts]
        reencoded = np.flatnonzero(modes == REENCODE)
        if reencoded.size:
            extra_starts, extra_ends, extra_ids = [], [], []
            with open(self.trace_path, "rb") as trace_file:
                for position in reencoded.tolist():
                    row = int(table.rows[position])
                    start, end = records.start_offset[row], records.end_offset[row]
                    trace_file.seek(start)
                    added = json.loads(b"{" + texts[pair_of_row[position]][3] + b"}")
                    extra_starts.append(start)
                    extra_ends.append(end)
                    extra_ids.append(len(replacements))
                    replacements.append(_reencoded(trace_file.read(end - start), added))
            starts = np.concatenate([starts, extra_starts])
            ends = np.concatenate([ends, extra_ends])
            replacement_ids = np.concatenate([replacement_ids, extra_ids])
        table_events = b",\n".join(table.events_json())
        separator = b",\n" if self.layout.num_events else b"\n"
        replacements.append(separator + table_events + b"\n")
        order = np.argsort(starts, kind="stable")
        return Edits(
            starts=np.append(starts[order], self.layout.events_end).astype(np.int64),
            ends=np.append(ends[order], self.layout.events_end).astype(np.int64),
            replacement_ids=np.append(replacement_ids[order], len(replacements) - 1).astype(np.int64),
            replacements=replacements,
        )

    def write(self, target_path: str, *, helper: multiprocessing.pool.Pool | None = None) -> None:
        """Pass 2: the trace as bytes, with the matched events' args and the kernel table added
        (half of it by ``helper``, if given: see ``trace_stream.helper_process``)."""
        write_spliced(self.trace_path, target_path, self._edits(), helper=helper)


def _reencoded(original: bytes, added: dict[str, Any]) -> bytes:
    """The rare event whose args cannot take an insertion (not last, null, inductor_* already)."""
    event = json.loads(original)
    args = event.get("args")
    event["args"] = {**(args if isinstance(args, dict) else {}), **added}
    try:
        return json.dumps(event, ensure_ascii=False, allow_nan=False).encode()
    except ValueError:  # a non-finite number (1e999) has no JSON spelling: leave the event as it is
        return original


def match_trace(
    trace_path: str,
    graphs: list[CompiledGraph],
    *,
    chunk_bytes: int | None = None,
    helper: multiprocessing.pool.Pool | None = None,
) -> EnrichPlan:
    """Pass 1 and the matching: what ``EnrichPlan.write`` will add to the trace.

    Raises ``TraceFormatError`` for malformed traces and ``ValueError`` for an already enriched one.
    """
    log = LogIndex.build(graphs)
    records, layout = collect_records(trace_path, log, chunk_bytes, helper=helper)
    if records.has_kernel_table:
        raise ValueError(
            f"{trace_path} is already enriched (it has '{KERNEL_TABLE_CATEGORY}' events): pass the original "
            "profiler trace"
        )
    # A log of several ranks: the trace of one rank ran that rank's modules (their sizes, and so
    # their code, can differ per rank even when names agree)
    rank = trace_rank(layout.other_keys)
    of_rank = [graph for graph in graphs if graph.rank == rank] if rank is not None else []
    all_graphs, rank_note = graphs, None
    if of_rank and len(of_rank) < len(graphs):
        rank_note = f"{len(of_rank)} of rank {rank} (the trace's distributedInfo.rank) matched"
        graphs, log = of_rank, LogIndex.build(of_rank)
    matcher = Matcher(records, log)
    matcher.run()
    table = KernelTable(matcher)
    never_seen, in_branches_not_run = matcher.log_kernels_not_in_trace()
    summary = EnrichSummary(
        num_events=layout.num_events,
        num_matched=matcher.num_matched,
        matched_by_kind=matcher.matched_by_kind,
        unmatched_by_name=matcher.unmatched_by_name,
        log_kernels_not_in_trace=never_seen,
        log_kernels_in_branches_not_run=in_branches_not_run,
        num_ambiguous_spans=matcher.num_ambiguous_spans,
        num_modules=len(all_graphs),
        num_log_kernels=sum(len(graph.kernels) for graph in all_graphs),
        num_kernel_table_entries=len(table),
        rank_note=rank_note,
    )
    if summary.num_matched == 0:
        summary.zero_match_reason = matcher.zero_match_reason()
    return EnrichPlan(trace_path, summary, layout, records, matcher, table)


def trace_rank(other_keys: dict[str, Any]) -> int | None:
    """The rank torch.profiler records for a distributed run (``"distributedInfo": {"rank": 1}``)."""
    info = other_keys.get("distributedInfo")
    rank = info.get("rank") if isinstance(info, dict) else None
    return rank if isinstance(rank, int) and not isinstance(rank, bool) else None


def enrich_trace(
    trace_path: str,
    graphs: list[CompiledGraph],
    output_path: str | None,
    *,
    allow_no_match: bool = True,
    chunk_bytes: int | None = None,
) -> EnrichSummary:
    """Match ``trace_path``'s events (a gzip-compressed trace is decompressed next to the output first)
    to ``graphs``; write the enriched trace to ``output_path``.

    ``output_path=None`` only matches and summarises. Raises ``TraceFormatError`` for malformed
    traces, and ``NoMatchError`` when nothing matched and ``allow_no_match`` is False, before anything
    is written. The output appears only complete (temp file, then rename).
    """
    from pytorch_scripts_common.outputs import staged_file

    work_parent = None if output_path is None else os.path.dirname(os.path.abspath(output_path))
    with (
        helper_process(wants_helper(trace_path)) as helper,
        readable_trace(trace_path, work_parent) as readable_path,
    ):
        plan = match_trace(readable_path, graphs, chunk_bytes=chunk_bytes, helper=helper)
        if plan.summary.num_matched == 0 and not allow_no_match:
            raise NoMatchError(plan.summary)
        if output_path is not None:
            with staged_file(output_path) as staging:
                plan.write(str(staging), helper=helper)
    return plan.summary

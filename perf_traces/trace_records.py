"""Pass 1 of the enrichment: the candidate events of a trace, decoded into compact columns.

``collect_records`` scans the trace (``trace_stream.TraceScanner``) for the candidates that
``LogIndex.candidate_patterns`` picks, decodes each batch of them (``trace_candidates``: only the
members matching reads), and keeps per row, a batch at a time with numpy: GPU or CPU, thread,
start / end time, event index, byte span, name, ``External id``, and where the enrichment's args
will go (``trace_candidates.insertions``). The forward / backward / ``## Call CompiledFxGraph``
spans go to columns of their own. About 75 bytes per row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import multiprocessing.pool
import operator
import resource
from array import array
from collections.abc import Iterator
from itertools import compress, repeat
from typing import Any

import numpy as np

from perf_traces.log_index import KERNEL_TABLE_CATEGORY, LogIndex, NameKind
from perf_traces.trace_candidates import Candidates, decode_candidates, insertions
from perf_traces.trace_stream import CHUNK_BYTES, CandidateBatch, TraceFormatError, TraceLayout, TraceScanner

__all__ = ["Span", "TraceRecords", "collect_records"]

# the category codes of add_batch
_GPU_KERNEL, _CPU_OP = 1, 2
_CATEGORY_CODES = {"kernel": _GPU_KERNEL, "cpu_op": _CPU_OP, "user_annotation": _CPU_OP}


@dataclasses.dataclass(slots=True)
class Span:
    thread: int
    ts: float
    end: float
    kind: str  # "forward", "backward", "call"


class TraceRecords:
    """Column store of the candidate events: ~75 bytes each (CPU ops named like kernels or extern
    ops, and GPU kernels); the spans and the per-row extras are few."""

    def __init__(self) -> None:
        self.is_gpu = array("b")
        self.thread = array("q")
        self.ts = array("d")
        self.end = array("d")
        self.index = array("q")  # event index in traceEvents
        self.start_offset = array("q")  # byte span of the event in the file
        self.end_offset = array("q")
        self.name_id = array("q")
        self.external_id = array("q")  # -1: none
        self.insert_at = array("q")  # where its args are added (see insertion)
        self.insert_mode = array("b")
        self.names: list[str] = []  # by name id
        self.name_kinds = array("b")  # NameKind by name id
        self.name_ids: dict[str, int] = {}
        self.threads: dict[Any, int] = {}
        self.kernel_file: dict[int, str] = {}  # row -> args["kernel_file"] (Triton launches)
        # the forward / backward / Call spans, in file order
        self.span_thread = array("q")
        self.span_ts = array("d")
        self.span_end = array("d")
        self.span_kind = array("b")  # NameKind.FORWARD, BACKWARD or CALL
        self.num_events = 0
        self.has_kernel_table = False  # the trace was enriched before
        self.peak_rss_mb = 0.0  # of the forked reader, when there was one (see collect_records)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def spans(self) -> list[Span]:
        """The spans as objects, in file order."""
        kinds = [NameKind.SPANS[kind] for kind in self.span_kind]
        return list(map(Span, self.span_thread, self.span_ts, self.span_end, kinds))

    def extend(self, later: TraceRecords) -> None:
        """Append the records of the events that follow these in the file (from a second reader)."""
        first_row, first_event = len(self), self.num_events
        name_map = np.empty(len(later.names), np.int64)
        for local, name in enumerate(later.names):
            if name not in self.name_ids:
                self._add_name(name, later.name_kinds[local])
            name_map[local] = self.name_ids[name]
        thread_map = np.full(len(later.threads) + 1, -1, np.int64)  # the last entry: GPU rows (-1)
        for key, local in later.threads.items():
            thread_map[local] = self.threads.setdefault(key, len(self.threads))

        def shifted(column: array, mapping: np.ndarray | None = None, offset: int = 0) -> bytes:
            values = np.frombuffer(column, np.int64)
            return (mapping[values] if mapping is not None else values + offset).tobytes()

        self.is_gpu.extend(later.is_gpu)
        self.thread.frombytes(shifted(later.thread, thread_map))
        self.ts.extend(later.ts)
        self.end.extend(later.end)
        self.index.frombytes(shifted(later.index, offset=first_event))
        self.start_offset.extend(later.start_offset)
        self.end_offset.extend(later.end_offset)
        self.name_id.frombytes(shifted(later.name_id, name_map))
        self.external_id.extend(later.external_id)
        self.insert_at.extend(later.insert_at)
        self.insert_mode.extend(later.insert_mode)
        self.kernel_file.update((row + first_row, path) for row, path in later.kernel_file.items())
        self.span_thread.frombytes(shifted(later.span_thread, thread_map))
        self.span_ts.extend(later.span_ts)
        self.span_end.extend(later.span_end)
        self.span_kind.extend(later.span_kind)
        self.num_events += later.num_events
        self.has_kernel_table |= later.has_kernel_table
        self.peak_rss_mb = max(self.peak_rss_mb, later.peak_rss_mb)

    def name(self, row: int) -> str:
        return self.names[self.name_id[row]]

    def _add_name(self, name: str, kind: int) -> None:
        self.name_ids[name] = len(self.names)
        self.names.append(name)
        self.name_kinds.append(kind)

    def add_batch(self, batch: CandidateBatch, candidates: Candidates, log: LogIndex) -> None:
        """Keep the candidates that matching reads, a batch at a time (in bulk over the batch).

        Rows: GPU ``kernel`` events with an integer ``External id``; ``cpu_op`` / ``user_annotation``
        events named like a kernel or an extern op of the log, with numeric ts / dur. The
        forward / backward / Call spans go to the ``span_*`` columns; a kernel-table event marks the
        trace enriched.
        """
        count = len(candidates)
        names, phases = candidates.names, candidates.phases
        if phases.count("X") == count and None not in names:  # the usual batch
            named = np.ones(count, bool)
        else:
            named = np.fromiter(map(operator.eq, phases, repeat("X")), bool, count)
            named &= np.fromiter(map(operator.is_not, names, repeat(None)), bool, count)
        categories = candidates.categories
        if not named.all():
            self.has_kernel_table |= KERNEL_TABLE_CATEGORY in compress(categories, ~named)
        category = np.fromiter(map(_CATEGORY_CODES.get, categories, repeat(0)), np.int8, count)
        name_ids = self._name_ids(names, named, log)
        kinds = np.where(
            named, np.frombuffer(self.name_kinds, np.int8)[np.maximum(name_ids, 0)], NameKind.OTHER
        )
        starts, durations = candidates.ts, candidates.dur
        timed = ~np.isnan(starts) & ~np.isnan(durations)
        has_external_id, external_ids = _external_ids(candidates.member("external_id"), candidates.typed)
        gpu = named & (category == _GPU_KERNEL) & has_external_id
        cpu = named & (category == _CPU_OP) & timed & candidates.hashable & (kinds != NameKind.OTHER)
        threads = self._thread_ids(candidates, cpu)
        spans = cpu & np.isin(kinds, list(NameKind.SPANS))
        self._add_spans(threads[spans], starts[spans], starts[spans] + durations[spans], kinds[spans])
        rows = np.flatnonzero(gpu | (cpu & ~spans))
        if not rows.size:
            return
        self._add_kernel_files(candidates, rows[(kinds[rows] == NameKind.KERNEL) & cpu[rows]], rows, log)
        # NaN for GPU kernels without ts / dur
        starts, ends = np.where(timed, starts, np.nan), np.where(timed, starts + durations, np.nan)
        external_ids[cpu & (external_ids < 0)] = -1
        at, modes = insertions(candidates, rows)
        offsets = batch.offsets[rows]
        for column, values in (
            (self.is_gpu, gpu[rows]),
            (self.thread, threads[rows]),
            (self.ts, starts[rows]),
            (self.end, ends[rows]),
            (self.index, batch.indexes[rows]),
            (self.start_offset, offsets),
            (self.end_offset, offsets + candidates.lengths[rows]),
            (self.name_id, name_ids[rows]),
            (self.external_id, np.where(has_external_id, external_ids, -1)[rows]),
            (self.insert_at, offsets + at),
            (self.insert_mode, modes),
        ):
            column.frombytes(values.astype(column.typecode).tobytes())

    def _name_ids(self, names: list[Any], named: np.ndarray, log: LogIndex) -> np.ndarray:
        """The name id of each named item (-1 for the others); new names get theirs in the order they
        first occur."""
        for name in dict.fromkeys(names if named.all() else compress(names, named)):
            if name not in self.name_ids:
                self._add_name(name, log.name_kind(name))
        chosen = names if named.all() else compress(names, named)
        name_ids = np.full(len(names), -1, np.int64)
        name_ids[named] = np.fromiter(map(self.name_ids.__getitem__, chosen), np.int64, int(named.sum()))
        return name_ids

    def _thread_ids(self, candidates: Candidates, chosen: np.ndarray) -> np.ndarray:
        """The thread id of each chosen item's (pid, tid) (-1 for the others); new pairs get theirs in
        the order they first occur."""
        keys = list(zip(candidates.pids, candidates.tids, strict=True))
        for key in dict.fromkeys(compress(keys, chosen)):
            self.threads.setdefault(key, len(self.threads))
        threads = np.full(len(keys), -1, np.int64)
        threads[chosen] = np.fromiter(
            map(self.threads.__getitem__, compress(keys, chosen)), np.int64, int(chosen.sum())
        )
        return threads

    def _add_spans(
        self, threads: np.ndarray, starts: np.ndarray, ends: np.ndarray, kinds: np.ndarray
    ) -> None:
        self.span_thread.frombytes(threads.tobytes())
        self.span_ts.frombytes(starts.tobytes())
        self.span_end.frombytes(ends.tobytes())
        self.span_kind.frombytes(kinds.astype(np.int8).tobytes())

    def _add_kernel_files(
        self, candidates: Candidates, kernel_items: np.ndarray, rows: np.ndarray, log: LogIndex
    ) -> None:
        """``kernel_file`` of the CPU kernel rows (``kernel_items``, of the batch's ``rows``) whose
        args name one, or a ``kernel_hash`` of the log."""
        files = candidates.member("kernel_file", kernel_items)
        hashes = candidates.member("kernel_hash", kernel_items)
        if not any(files) and not any(hashes):  # CPU traces: neither
            return
        row_numbers = len(self) + np.searchsorted(rows, kernel_items)
        for row, path, kernel_hash in zip(row_numbers.tolist(), files, hashes, strict=True):
            if isinstance(path, str) and path:
                self.kernel_file[row] = path
            elif isinstance(kernel_hash, str) and kernel_hash in log.kernel_path_by_hash:
                # a launch with kernel_hash only: the hash is the stem of the log's "# kernel path:"
                self.kernel_file[row] = log.kernel_path_by_hash[kernel_hash]


def _external_ids(values: list[Any], typed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(whether each value is an integer that fits in 64 bits, its value or 0). ``typed``: each value
    is an int or None."""
    if typed and None not in values:  # the usual batch: all integers
        try:
            return np.ones(len(values), bool), np.fromiter(values, np.int64, len(values))
        except OverflowError:  # some beyond 64 bits
            pass
    valid = np.fromiter(map(operator.is_, map(type, values), repeat(int)), bool, len(values))
    external_ids = np.zeros(len(values), np.int64)
    try:
        external_ids[valid] = np.fromiter(compress(values, valid), np.int64, int(valid.sum()))
    except OverflowError:  # some beyond 64 bits
        for item in np.flatnonzero(valid).tolist():
            valid[item] = -(1 << 63) <= values[item] < 1 << 63
            external_ids[item] = values[item] if valid[item] else 0
    return valid, external_ids


def collect_records(
    trace_path: str,
    log: LogIndex,
    chunk_bytes: int | None = None,
    *,
    helper: multiprocessing.pool.Pool | None = None,
) -> tuple[TraceRecords, TraceLayout]:
    """Pass 1: the compact records of the candidate events and the layout of the file.

    With a ``helper`` process (``trace_stream.helper_process``) it reads the first half of the
    events while this one reads the rest; the halves meet at a guessed boundary that the first
    half's parse confirms. If it does not (or anything fails), the trace is read again in one pass,
    which also reports the error of a malformed trace.
    """
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    with _gc_paused():
        if helper is not None:
            try:
                return _collect_in_two(trace_path, log, chunk_bytes, helper)
            except (TraceFormatError, _NoSplit):
                pass
        scanner = TraceScanner(trace_path, log.candidate_patterns, chunk_bytes=chunk_bytes)
        records = TraceRecords()
        for batch in scanner:
            records.add_batch(batch, decode_candidates(batch, trace_path), log)
    assert scanner.layout is not None
    records.num_events = scanner.layout.num_events
    return records, scanner.layout


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: reading a trace allocates millions of short-lived objects
    and makes no reference cycles, and each full collection would walk every live object."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _NoSplit(Exception):  # noqa: N818 (internal signal, never shown)
    """The trace has no likely item boundary to split it at."""


def _records_of(
    scanner: TraceScanner, batches: Iterator[CandidateBatch], log: LogIndex
) -> tuple[TraceRecords, int]:
    """Drain ``scan``'s batches into records; return them and where the scan ended."""
    records = TraceRecords()
    while True:
        try:
            batch = next(batches)
        except StopIteration as stop:
            records.num_events, end = stop.value
            return records, end
        records.add_batch(batch, decode_candidates(batch, scanner.path), log)


def _first_half(trace_path: str, log: LogIndex, chunk_bytes: int, start: int, stop: int) -> TraceRecords:
    """In the helper process: the records of the events in [start, stop)."""
    with _gc_paused(), TraceScanner(trace_path, log.candidate_patterns, chunk_bytes=chunk_bytes) as scanner:
        records, _ = _records_of(scanner, scanner.scan(start, stop), log)
    records.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return records


def _collect_in_two(
    trace_path: str, log: LogIndex, chunk_bytes: int, helper: multiprocessing.pool.Pool
) -> tuple[TraceRecords, TraceLayout]:
    with TraceScanner(trace_path, log.candidate_patterns, chunk_bytes=chunk_bytes) as scanner:
        start = scanner.prologue()
        split = scanner.split_point(start, 0.53)  # the main process has the merge and the matching after it
        if split is None:
            raise _NoSplit
        first = helper.apply_async(_first_half, (trace_path, log, chunk_bytes, start, split))
        second, events_end = _records_of(scanner, scanner.scan(split + 1), log)
        first_records = first.get()
        other_keys = scanner.epilogue(events_end)
        layout = TraceLayout(
            events_start=scanner.events_start,
            events_end=events_end,
            num_events=first_records.num_events + second.num_events,
            other_keys={**scanner.keys_before, **other_keys},
        )
    first_records.extend(second)
    return first_records, layout

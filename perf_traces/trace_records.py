"""Pass 1 of the enrichment: the candidate events of a trace, decoded into compact columns.

``collect_records`` scans the trace (``trace_stream.TraceScanner``) for the candidates that
``LogIndex.candidate_patterns`` picks, decodes each batch of them with msgspec (only the members
matching reads), and keeps per row: GPU or CPU, thread, start / end time, event index, byte span,
name, ``External id``, and where the enrichment's args will go (``insertion``). The forward /
backward / ``## Call CompiledFxGraph`` spans are kept apart. About 75 bytes per row.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing.pool
import resource
from array import array
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np

from perf_traces.log_index import KERNEL_TABLE_CATEGORY, LogIndex, NameKind
from perf_traces.trace_stream import (
    CHUNK_BYTES,
    CandidateBatch,
    TraceFormatError,
    TraceLayout,
    TraceScanner,
    format_error,
)

__all__ = [
    "APPEND",
    "FIRST",
    "KEEP",
    "NEW_ARGS",
    "REENCODE",
    "Span",
    "TraceRecords",
    "collect_records",
    "insertion",
]

# How the args of a matched event are added (see insertion)
APPEND = 0  # into its args object, after the last member
FIRST = 1  # into its empty args object
NEW_ARGS = 2  # a new "args" member at the end of the event
REENCODE = 3  # args not last, null, or already holding inductor_* keys: decode, merge, re-encode
KEEP = 4  # args is not an object (a list, a string ...): left as it is, counted


class _Event(msgspec.Struct):
    """The members of an event that matching reads; the decoder skips the others."""

    ph: Any = None
    cat: Any = None
    name: Any = None
    ts: Any = None
    dur: Any = None
    pid: Any = None
    tid: Any = None
    args: msgspec.Raw = msgspec.Raw(b"")  # empty: no "args" member


class _Args(msgspec.Struct):
    """The members of an event's args that matching reads."""

    external_id: Any = msgspec.field(name="External id", default=None)
    kernel_file: Any = None
    kernel_hash: Any = None


_ARGS_KEYS = {"external_id": "External id", "kernel_file": "kernel_file", "kernel_hash": "kernel_hash"}
_NON_OBJECTS = list | str | float | int | bool | None
_EVENTS = msgspec.json.Decoder(list[_Event | _NON_OBJECTS])
_ARGS_LIST = msgspec.json.Decoder(list[_Args])


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
        self.name_info: dict[str, tuple[int, int]] = {}  # name -> (NameKind, name id)
        self.threads: dict[Any, int] = {}
        self.kernel_file: dict[int, str] = {}  # row -> args["kernel_file"] (Triton launches)
        self.spans: list[Span] = []
        self.num_events = 0
        self.has_kernel_table = False  # the trace was enriched before
        self.peak_rss_mb = 0.0  # of the forked reader, when there was one (see collect_records)

    def __len__(self) -> int:
        return len(self.index)

    def extend(self, later: TraceRecords) -> None:
        """Append the records of the events that follow these in the file (from a second reader)."""
        first_row, first_event = len(self), self.num_events
        name_map = np.empty(len(later.names), np.int64)
        for local, name in enumerate(later.names):
            if name not in self.name_info:
                self.name_info[name] = (later.name_info[name][0], len(self.names))
                self.names.append(name)
            name_map[local] = self.name_info[name][1]
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
        self.spans.extend(
            dataclasses.replace(span, thread=int(thread_map[span.thread])) for span in later.spans
        )
        self.num_events += later.num_events
        self.has_kernel_table |= later.has_kernel_table
        self.peak_rss_mb = max(self.peak_rss_mb, later.peak_rss_mb)

    def name(self, row: int) -> str:
        return self.names[self.name_id[row]]

    def add_batch(
        self,
        batch: CandidateBatch,
        events: list[Any],
        args_bytes: list[bytes],
        all_args: list[Any],
        log: LogIndex,
    ) -> None:
        """Keep the candidates that matching reads, a batch at a time.

        Rows: GPU ``kernel`` events with an integer ``External id``; ``cpu_op`` / ``user_annotation``
        events named like a kernel or an extern op of the log, with numeric ts / dur. The
        forward / backward / Call spans go to ``spans``; a kernel-table event marks the trace enriched.
        One loop with its checks inlined: it runs once per candidate, ~900k times for a 1 GB trace.
        """
        rows: list[tuple] = []  # one tuple per row, in the order of _COLUMNS
        kernel_files: list[tuple[int, str]] = []
        first_row = len(self)
        name_info = self.name_info
        for event, event_args_bytes, args, index, offset, raw in zip(
            events, args_bytes, all_args, batch.indexes, batch.offsets, batch.raws, strict=True
        ):
            if event.__class__ is not _Event:
                continue
            name, category = event.name, event.cat
            if name.__class__ is not str or event.ph != "X":
                if category == KERNEL_TABLE_CATEGORY:
                    self.has_kernel_table = True
                continue
            ts, dur = event.ts, event.dur
            if ts.__class__ is float and dur.__class__ is float:  # the usual case: both written with decimals
                times = (ts, ts + dur)
            else:
                times = _start_end(ts, dur)
            info = name_info.get(name)
            if info is None:
                info = name_info[name] = (log.name_kind(name), len(name_info))
                self.names.append(name)
            kind, name_id = info
            external_id = args.external_id if args is not None else None
            if external_id.__class__ is not int or not -(1 << 63) <= external_id < 1 << 63:
                external_id = None
            if category == "kernel":
                if external_id is None:
                    continue
                start, end = times or (float("nan"), float("nan"))
                thread = -1
            else:
                if (category != "cpu_op" and category != "user_annotation") or times is None or not kind:
                    continue  # kind 0: NameKind.OTHER
                try:
                    thread = self.threads.setdefault((event.pid, event.tid), len(self.threads))
                except TypeError:  # unhashable pid/tid (a list or object): not a profiler event
                    continue
                start, end = times
                if kind in NameKind.SPANS:
                    self.spans.append(Span(thread, start, end, NameKind.SPANS[kind]))
                    continue
                if kind == NameKind.KERNEL and args is not None:
                    if isinstance(args.kernel_file, str) and args.kernel_file:
                        kernel_files.append((first_row + len(rows), args.kernel_file))
                    elif isinstance(args.kernel_hash, str) and args.kernel_hash in log.kernel_path_by_hash:
                        # a launch with kernel_hash only: the hash is the stem of the log's "# kernel path:"
                        path = log.kernel_path_by_hash[args.kernel_hash]
                        kernel_files.append((first_row + len(rows), path))
                if external_id is not None and external_id < 0:
                    external_id = None
            event_bytes = bytes(raw)
            at, mode = insertion(event_bytes, event_args_bytes)
            rows.append(
                (
                    category == "kernel",
                    thread,
                    start,
                    end,
                    index,
                    offset,
                    offset + len(event_bytes),
                    name_id,
                    -1 if external_id is None else external_id,
                    offset + at,
                    mode,
                )
            )
        if rows:
            for store, column in zip(self._columns(), zip(*rows, strict=True), strict=True):
                store.extend(column)
        self.kernel_file.update(kernel_files)

    def _columns(self) -> tuple[array, ...]:
        return (
            self.is_gpu,
            self.thread,
            self.ts,
            self.end,
            self.index,
            self.start_offset,
            self.end_offset,
            self.name_id,
            self.external_id,
            self.insert_at,
            self.insert_mode,
        )


def _start_end(ts: Any, dur: Any) -> tuple[float, float] | None:
    """(start, end) in the trace's time unit, or None when ts / dur are not (representable) numbers."""
    if not (isinstance(ts, int | float) and isinstance(dur, int | float)):
        return None
    try:
        start = float(ts)
        return start, start + float(dur)
    except OverflowError:  # an integer beyond float range
        return None


def insertion(event: bytes, args: bytes) -> tuple[int, int]:
    """(offset in ``event``, mode) at which matched-event args are added, without decoding the event.

    Profilers write ``args`` as the event's last member, so the usual place is just before the
    closing brace of ``args``. That is checked exactly: the last '}' before the event's own is
    followed only by whitespace and ends a copy of ``args``'s bytes, which the key ``"args"`` and a
    ':' precede (a real key: its opening quote is not escaped). Such a member, right before the
    event's closing brace, is the event's last top-level member. Anything else is re-encoded
    (``REENCODE``) or, for non-object args, left alone (``KEEP``).
    """
    if not args:
        return len(event) - 1, NEW_ARGS
    if args[0] != 0x7B:  # '{'
        return 0, (REENCODE if args == b"null" else KEEP)
    if b'"inductor_' in args:
        return 0, REENCODE
    args_close = event.rfind(b"}", 0, len(event) - 1)
    args_start = args_close + 1 - len(args)
    if args_start > 0 and not event[args_close + 1 : -1].strip() and event.endswith(args, 0, args_close + 1):
        key = event.rfind(b'"args"', 0, args_start)
        if key > 0 and event[key - 1] != 0x5C and event[key + 6 : args_start].strip() == b":":
            empty = not args[1:-1].strip()
            return args_close, (FIRST if empty else APPEND)
    return 0, REENCODE


def _decode_candidates(batch: CandidateBatch, trace_path: str) -> tuple[list[Any], list[bytes], list[Any]]:
    """The batch's events (the members matching reads), their args' bytes and the members of the
    object args, decoded in one call each; one at a time with a stdlib fallback if that fails
    (numbers msgspec refuses, lone surrogates)."""
    try:
        events = _EVENTS.decode(b"[" + b",".join(batch.raws) + b"]")
        args = [bytes(event.args) if event.__class__ is _Event else b"" for event in events]
        members = iter(_ARGS_LIST.decode(b"[" + b",".join([raw for raw in args if raw[:1] == b"{"]) + b"]"))
        return events, args, [next(members) if raw[:1] == b"{" else None for raw in args]
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    decoded = [
        _decode_one(bytes(raw), offset, trace_path)
        for raw, offset in zip(batch.raws, batch.offsets, strict=True)
    ]
    events = [event for event, _ in decoded]
    args = [bytes(event.args) if event.__class__ is _Event else b"" for event in events]
    return events, args, [members for _, members in decoded]


def _decode_one(raw: bytes, offset: int, trace_path: str) -> tuple[Any, _Args | None]:
    try:
        event = _EVENTS.decode(b"[" + raw + b"]")[0]
        args = bytes(event.args) if event.__class__ is _Event else b""
        return event, (_ARGS_LIST.decode(b"[" + args + b"]")[0] if args[:1] == b"{" else None)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    try:  # what msgspec refuses and json.load accepts: 1e999, integers over 64 bits, lone surrogates
        value = json.loads(raw)
    except RecursionError:
        raise format_error(
            trace_path, offset, "an event nested too deeply to decode (over ~1000 levels)"
        ) from None
    if not isinstance(value, dict):
        return value, None
    args = value.get("args")
    members = (
        _Args(**{field: args.get(key) for field, key in _ARGS_KEYS.items()})
        if isinstance(args, dict)
        else None
    )
    # args re-encoded this way differ from the original bytes, so insertion() picks REENCODE
    raw_args = msgspec.Raw(msgspec.json.encode(args)) if "args" in value else msgspec.Raw(b"")
    event = _Event(
        **{key: value.get(key) for key in ("ph", "cat", "name", "ts", "dur", "pid", "tid")}, args=raw_args
    )
    return event, members


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
    if helper is not None:
        try:
            return _collect_in_two(trace_path, log, chunk_bytes, helper)
        except (TraceFormatError, _NoSplit):
            pass
    scanner = TraceScanner(trace_path, log.candidate_patterns, chunk_bytes=chunk_bytes)
    records = TraceRecords()
    for batch in scanner:
        records.add_batch(batch, *_decode_candidates(batch, trace_path), log)
    assert scanner.layout is not None
    records.num_events = scanner.layout.num_events
    return records, scanner.layout


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
        records.add_batch(batch, *_decode_candidates(batch, scanner.path), log)


def _first_half(trace_path: str, log: LogIndex, chunk_bytes: int, start: int, stop: int) -> TraceRecords:
    """In the helper process: the records of the events in [start, stop)."""
    with TraceScanner(trace_path, log.candidate_patterns, chunk_bytes=chunk_bytes) as scanner:
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

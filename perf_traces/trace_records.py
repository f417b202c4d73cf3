"""Pass 1 of the enrichment: the candidate events of a trace, decoded into compact columns.

``collect_records`` scans the trace (``trace_stream.TraceScanner``) for the candidates that
``LogIndex.candidate_patterns`` picks, decodes each batch of them with msgspec (only the members
matching reads), and keeps per row: GPU or CPU, thread, start / end time, event index, byte span,
name, ``External id``, and where the enrichment's args will go (``insertion``). The forward /
backward / ``## Call CompiledFxGraph`` spans are kept apart. About 75 bytes per row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
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
    """The members of an event that matching reads, as any JSON value (the general path); the
    decoder skips the others."""

    ph: Any = None
    cat: Any = None
    name: Any = None
    ts: Any = None
    dur: Any = None
    pid: Any = None
    tid: Any = None
    args: msgspec.Raw = msgspec.Raw(b"")  # empty: no "args" member


class _ProfilerEvent(msgspec.Struct, gc=False):
    """The same members with the types profilers write (the fast path): a batch whose candidates all
    decode as these skips the per-event checks of ``_general_columns``."""

    ph: str | None = None
    cat: str | None = None
    name: str | None = None
    ts: float | None = None  # a JSON integer is read as a float, as float() would convert it
    dur: float | None = None
    pid: int | str | None = None
    tid: int | str | None = None
    args: msgspec.Raw = msgspec.Raw(b"")


class _Args(msgspec.Struct):
    """The members of an event's args that matching reads."""

    external_id: Any = msgspec.field(name="External id", default=None)
    kernel_file: Any = None
    kernel_hash: Any = None


_ARGS_KEYS = {"external_id": "External id", "kernel_file": "kernel_file", "kernel_hash": "kernel_hash"}
_NON_OBJECTS = list | str | float | int | bool | None
_EVENTS = msgspec.json.Decoder(list[_Event | _NON_OBJECTS])
_PROFILER_EVENTS = msgspec.json.Decoder(list[_ProfilerEvent])
_ARGS_LIST = msgspec.json.Decoder(list[_Args | _NON_OBJECTS])
# the category codes of add_batch
_GPU_KERNEL, _CPU_OP = 1, 2
_CATEGORY_CODES = {"kernel": _GPU_KERNEL, "cpu_op": _CPU_OP, "user_annotation": _CPU_OP}
# how profilers write the key of args (the fast path of _insertions checks for exactly this)
_ARGS_KEY = np.frombuffer(b'"args": ', np.uint8)


@dataclasses.dataclass(slots=True)
class Span:
    thread: int
    ts: float
    end: float
    kind: str  # "forward", "backward", "call"


@dataclasses.dataclass
class _Candidates:
    """A batch's candidates decoded into columns, one item per candidate.

    A non-string ``name`` / ``cat`` reads as None (so does every member of an item that is not an
    object); ``timed`` says whether ts and dur are numbers (then ``ts`` / ``dur`` hold them as floats);
    ``hashable`` whether (pid, tid) can key a dict. ``args`` are the bytes of each args member (empty:
    none) and ``members`` its decoded members (None when it is not an object). ``joined`` is
    '[' + the candidates joined by ',' + ']' (where ``_insertions`` looks at their bytes).
    """

    ph_x: np.ndarray  # bool: ph == "X"
    category: list[Any]
    name: list[Any]
    ts: np.ndarray  # float64
    dur: np.ndarray
    timed: np.ndarray  # bool
    pid: list[Any]
    tid: list[Any]
    hashable: np.ndarray  # bool
    args: list[Any]  # bytes or msgspec.Raw
    members: list[_Args | None]
    joined: bytes

    @classmethod
    def of_profiler_events(
        cls, events: list[_ProfilerEvent], members: list[_Args | None], joined: bytes
    ) -> _Candidates:
        ts, dur = [event.ts for event in events], [event.dur for event in events]
        timed = np.array(
            [start is not None and length is not None for start, length in zip(ts, dur, strict=True)], bool
        )
        return cls(
            ph_x=np.array([event.ph == "X" for event in events], bool),
            category=[event.cat for event in events],
            name=[event.name for event in events],
            ts=np.where(timed, np.array(ts, np.float64), 0.0),  # None reads as nan first
            dur=np.where(timed, np.array(dur, np.float64), 0.0),
            timed=timed,
            pid=[event.pid for event in events],
            tid=[event.tid for event in events],
            hashable=np.ones(len(events), bool),
            args=[event.args for event in events],
            members=members,
            joined=joined,
        )

    @classmethod
    def of_any_events(cls, events: list[Any], members: list[_Args | None], joined: bytes) -> _Candidates:
        """From events decoded as ``_Event`` (or not objects), with any member types."""
        rows = [_normalized(event) for event in events]
        (ph_x, category, name, ts, dur, timed, pid, tid, hashable, args) = (
            zip(*rows, strict=True) if rows else ([],) * 10
        )
        return cls(
            ph_x=np.array(ph_x, bool),
            category=list(category),
            name=list(name),
            ts=np.array(ts, np.float64),
            dur=np.array(dur, np.float64),
            timed=np.array(timed, bool),
            pid=list(pid),
            tid=list(tid),
            hashable=np.array(hashable, bool),
            args=list(args),
            members=members,
            joined=joined,
        )


def _normalized(event: Any) -> tuple:
    """One ``_Candidates`` row of an event of the general path (see ``_Candidates``)."""
    if event.__class__ is not _Event:
        return (False, None, None, 0.0, 0.0, False, None, None, False, b"")
    times = _as_floats(event.ts, event.dur)
    try:
        hash((event.pid, event.tid))
        hashable = True
    except TypeError:  # a list or object: not a profiler event
        hashable = False
    return (
        event.ph == "X",
        event.cat if event.cat.__class__ is str else None,
        event.name if event.name.__class__ is str else None,
        times[0] if times else 0.0,
        times[1] if times else 0.0,
        times is not None,
        event.pid,
        event.tid,
        hashable,
        bytes(event.args),
    )


def _as_floats(ts: Any, dur: Any) -> tuple[float, float] | None:
    """(ts, dur) as floats, or None when they are not (representable) numbers."""
    if not (isinstance(ts, int | float) and isinstance(dur, int | float)):
        return None
    try:
        return float(ts), float(dur)
    except OverflowError:  # an integer beyond float range
        return None


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
        self.spans.extend(
            dataclasses.replace(span, thread=int(thread_map[span.thread])) for span in later.spans
        )
        self.num_events += later.num_events
        self.has_kernel_table |= later.has_kernel_table
        self.peak_rss_mb = max(self.peak_rss_mb, later.peak_rss_mb)

    def name(self, row: int) -> str:
        return self.names[self.name_id[row]]

    def _add_name(self, name: str, kind: int) -> None:
        self.name_ids[name] = len(self.names)
        self.names.append(name)
        self.name_kinds.append(kind)

    def add_batch(self, batch: CandidateBatch, candidates: _Candidates, log: LogIndex) -> None:
        """Keep the candidates that matching reads, a batch at a time (vectorised over the batch).

        Rows: GPU ``kernel`` events with an integer ``External id``; ``cpu_op`` / ``user_annotation``
        events named like a kernel or an extern op of the log, with numeric ts / dur. The
        forward / backward / Call spans go to ``spans``; a kernel-table event marks the trace enriched.
        """
        named = candidates.ph_x & np.array([name is not None for name in candidates.name], bool)
        categories = np.array([_CATEGORY_CODES.get(cat, 0) for cat in candidates.category], np.int8)
        if not named.all():
            self.has_kernel_table |= KERNEL_TABLE_CATEGORY in [
                candidates.category[item] for item in np.flatnonzero(~named).tolist()
            ]
        name_ids = np.zeros(len(named), np.int64)
        name_ids[named] = self._name_ids([candidates.name[item] for item in np.flatnonzero(named)], log)
        kinds = np.frombuffer(self.name_kinds, np.int8)[name_ids]
        has_external_id, external_ids = _external_ids(candidates.members)
        gpu = named & (categories == _GPU_KERNEL) & has_external_id
        cpu = (
            named
            & (categories == _CPU_OP)
            & candidates.timed
            & candidates.hashable
            & (kinds != NameKind.OTHER)
        )
        threads = np.full(len(named), -1, np.int64)
        threads[cpu] = self._thread_ids(candidates, np.flatnonzero(cpu))
        spans = cpu & np.isin(kinds, list(NameKind.SPANS))
        self._add_spans(candidates, np.flatnonzero(spans), threads, kinds)
        rows = np.flatnonzero(gpu | (cpu & ~spans))
        if not rows.size:
            return
        self._add_kernel_files(candidates, rows, (kinds[rows] == NameKind.KERNEL) & ~gpu[rows], log)
        starts = candidates.ts[rows]
        ends = starts + candidates.dur[rows]
        untimed = ~candidates.timed[rows]  # GPU kernels without ts / dur
        starts[untimed], ends[untimed] = np.nan, np.nan
        external_ids = np.where(has_external_id, external_ids, -1)[rows]
        external_ids[(categories[rows] == _CPU_OP) & (external_ids < 0)] = -1
        lengths = np.fromiter(map(len, batch.raws), np.int64, len(batch.raws))
        at, modes = _insertions(candidates, lengths, rows)
        offsets = np.asarray(batch.offsets, np.int64)[rows]
        for column, values in (
            (self.is_gpu, gpu[rows].astype(np.int8)),
            (self.thread, threads[rows]),
            (self.ts, starts),
            (self.end, ends),
            (self.index, np.asarray(batch.indexes, np.int64)[rows]),
            (self.start_offset, offsets),
            (self.end_offset, offsets + lengths[rows]),
            (self.name_id, name_ids[rows]),
            (self.external_id, external_ids),
            (self.insert_at, offsets + at),
            (self.insert_mode, modes),
        ):
            column.frombytes(values.astype(column.typecode).tobytes())

    def _name_ids(self, names: list[str], log: LogIndex) -> np.ndarray:
        """The name id of each name; new names get theirs in the order they first occur."""
        for name in dict.fromkeys(names):
            if name not in self.name_ids:
                self._add_name(name, log.name_kind(name))
        return np.fromiter(map(self.name_ids.__getitem__, names), np.int64, len(names))

    def _thread_ids(self, candidates: _Candidates, items: np.ndarray) -> np.ndarray:
        """The thread id of each item's (pid, tid); new pairs get theirs in the order they first occur."""
        items_list = items.tolist()
        keys = list(
            zip([candidates.pid[i] for i in items_list], [candidates.tid[i] for i in items_list], strict=True)
        )
        for key in dict.fromkeys(keys):
            self.threads.setdefault(key, len(self.threads))
        return np.fromiter(map(self.threads.__getitem__, keys), np.int64, len(keys))

    def _add_spans(
        self, candidates: _Candidates, items: np.ndarray, threads: np.ndarray, kinds: np.ndarray
    ) -> None:
        starts = candidates.ts[items]
        self.spans.extend(
            map(
                Span,
                threads[items].tolist(),
                starts.tolist(),
                (starts + candidates.dur[items]).tolist(),
                [NameKind.SPANS[kind] for kind in kinds[items].tolist()],
            )
        )

    def _add_kernel_files(
        self, candidates: _Candidates, rows: np.ndarray, cpu_kernels: np.ndarray, log: LogIndex
    ) -> None:
        """``kernel_file`` of the CPU kernel rows (``cpu_kernels`` of ``rows``) whose args name one, or
        a ``kernel_hash`` of the log."""
        first_row = len(self)
        for row in np.flatnonzero(cpu_kernels).tolist():
            args = candidates.members[rows[row]]
            if args is None:
                continue
            if isinstance(args.kernel_file, str) and args.kernel_file:
                self.kernel_file[first_row + row] = args.kernel_file
            elif isinstance(args.kernel_hash, str) and args.kernel_hash in log.kernel_path_by_hash:
                # a launch with kernel_hash only: the hash is the stem of the log's "# kernel path:"
                self.kernel_file[first_row + row] = log.kernel_path_by_hash[args.kernel_hash]


def _external_ids(members: list[_Args | None]) -> tuple[np.ndarray, np.ndarray]:
    """(whether each args has an integer ``External id`` that fits in 64 bits, its value or 0)."""
    values = [None if args is None else args.external_id for args in members]
    valid = [value.__class__ is int and -(1 << 63) <= value < 1 << 63 for value in values]
    return (
        np.array(valid, bool),
        np.array([value if ok else 0 for value, ok in zip(values, valid, strict=True)], np.int64),
    )


def _insertions(
    candidates: _Candidates, lengths: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``insertion`` of each of ``rows`` (offsets in the event, modes), vectorised for the layout
    profilers write: no args (``NEW_ARGS``), or args the last member, written ``"args": {...}}`` with
    its first key right after the '{' (``APPEND``) or empty (``FIRST``). The other events go through
    ``insertion`` one by one."""
    joined = candidates.joined
    view = np.frombuffer(joined, np.uint8)
    starts = 1 + np.concatenate(([0], np.cumsum(lengths[:-1] + 1)))[rows]  # of the events in joined
    ends = starts + lengths[rows]
    args_lengths = np.fromiter(map(len, candidates.args), np.int64, len(candidates.args))[rows]
    at = lengths[rows] - 2  # just before the '}' of args
    modes = np.full(rows.size, -1, np.int8)
    modes[args_lengths == 0] = NEW_ARGS
    at[args_lengths == 0] += 1  # before the event's '}'
    args_starts = ends - 1 - args_lengths
    objects = np.flatnonzero(
        (args_lengths >= 2)
        & (args_starts - 9 >= starts)
        & np.array([candidates.members[item].__class__ is _Args for item in rows.tolist()], bool)
    )
    layout = (view[ends[objects] - 2] == ord("}")) & (view[args_starts[objects]] == ord("{"))
    key_at = args_starts[objects][:, None] - len(_ARGS_KEY) + np.arange(len(_ARGS_KEY))
    layout &= (view[key_at] == _ARGS_KEY).all(axis=1) & (view[args_starts[objects] - 9] != ord("\\"))
    fast = objects[layout]
    fast = fast[_equal_to_args(candidates, rows[fast], joined, args_starts[fast], ends[fast] - 1)]
    first_key = view[args_starts[fast] + 1]
    modes[fast[args_lengths[fast] == 2]] = FIRST
    modes[fast[(args_lengths[fast] > 2) & (first_key == ord('"'))]] = APPEND
    for position in np.flatnonzero(modes < 0).tolist():
        item = int(rows[position])
        event = joined[starts[position] : ends[position]]
        at[position], modes[position] = insertion(event, bytes(candidates.args[item]))
    return at, modes


def _equal_to_args(
    candidates: _Candidates, items: np.ndarray, joined: bytes, begins: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Whether ``joined[begins[i]:ends[i]]`` is the args of ``items[i]`` (without ``"inductor_``
    keys, which take the slow path), for each i."""
    args = [candidates.args[item] for item in items.tolist()]
    ours = b"".join(args)
    there = b"".join(map(joined.__getitem__, map(slice, begins.tolist(), ends.tolist())))
    if ours == there and b'"inductor_' not in ours:
        return np.ones(items.size, bool)
    return np.array(
        [
            joined[begin:end] == bytes(text) and b'"inductor_' not in bytes(text)
            for text, begin, end in zip(args, begins.tolist(), ends.tolist(), strict=True)
        ],
        bool,
    )


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


def decode_candidates(batch: CandidateBatch, trace_path: str) -> _Candidates:
    """The batch's candidates as columns: decoded with the profiler's member types in one call (the
    fast path), else with any types (one call, or one per event with a stdlib fallback for numbers
    msgspec refuses and lone surrogates)."""
    joined = b"[" + b",".join(batch.raws) + b"]"
    try:
        events = _PROFILER_EVENTS.decode(joined)
        return _Candidates.of_profiler_events(events, _args_members([event.args for event in events]), joined)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    try:
        events = _EVENTS.decode(joined)
        members = _args_members([event.args if event.__class__ is _Event else b"" for event in events])
        return _Candidates.of_any_events(events, members, joined)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    decoded = [
        _decode_one(bytes(raw), offset, trace_path)
        for raw, offset in zip(batch.raws, batch.offsets.tolist(), strict=True)
    ]
    return _Candidates.of_any_events([event for event, _ in decoded], [args for _, args in decoded], joined)


def _args_members(args: list[Any]) -> list[_Args | None]:
    """The members of each args (bytes or Raw; empty: none) that is an object, else None; one call."""
    decoded = _ARGS_LIST.decode(b"[" + b",".join([text if len(text) else b"null" for text in args]) + b"]")
    return [value if value.__class__ is _Args else None for value in decoded]


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
    with gc_paused():
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
def gc_paused() -> Iterator[None]:
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
    with gc_paused(), TraceScanner(trace_path, log.candidate_patterns, chunk_bytes=chunk_bytes) as scanner:
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

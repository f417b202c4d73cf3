"""A batch of candidate events (``trace_stream.CandidateBatch``) decoded into what pass 1 keeps.

``decode_candidates`` decodes the batch in one msgspec call with the member types profilers write
(``_ProfilerEvent``: the fast path). A batch where that fails (a list pid, a string ts, an item
that is not an object, args that is not an object) is decoded with any member types and each event
normalised to the same shape (``_normalized``), one at a time with a stdlib fallback for what
msgspec refuses. Either way the result is a ``Candidates``: the events, the members of their args
that matching reads, and the bytes they came from, read column-wise with C-level ``map``s.

``insertions`` says where the enrichment's args go in each event without decoding it again: for the
layout profilers write (``"args": {...}}``) checked in bulk on the bytes, else by ``insertion``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
from itertools import compress, repeat
from typing import Any

import msgspec
import numpy as np

from perf_traces.trace_stream import CandidateBatch, format_error

__all__ = [
    "APPEND",
    "FIRST",
    "KEEP",
    "NEW_ARGS",
    "REENCODE",
    "Candidates",
    "decode_candidates",
    "insertion",
    "insertions",
]

# How the args of a matched event are added (see insertion)
APPEND = 0  # into its args object, after the last member
FIRST = 1  # into its empty args object
NEW_ARGS = 2  # a new "args" member at the end of the event
REENCODE = 3  # args not last, null, or already holding inductor_* keys: decode, merge, re-encode
KEEP = 4  # args is not an object (a list, a string ...): left as it is, counted


class _ProfilerEvent(msgspec.Struct, gc=False):
    """The members of an event that matching reads, with the types profilers write; the decoder
    skips the other members. A missing ts / dur reads as NaN (no JSON number is NaN)."""

    ph: str | None = None
    cat: str | None = None
    name: str | None = None
    ts: float = math.nan  # a JSON integer is read as a float, as float() would convert it
    dur: float = math.nan
    pid: int | str | None = None
    tid: int | str | None = None
    args: msgspec.Raw = msgspec.Raw(b"")  # empty: no "args" member


class _Event(msgspec.Struct):
    """The same members as any JSON value (the general path)."""

    ph: Any = None
    cat: Any = None
    name: Any = None
    ts: Any = None
    dur: Any = None
    pid: Any = None
    tid: Any = None
    args: msgspec.Raw = msgspec.Raw(b"")


class _ProfilerArgs(msgspec.Struct, gc=False):
    """The members of an event's args that matching reads, with the types profilers write."""

    external_id: int | None = msgspec.field(name="External id", default=None)
    kernel_file: str | None = None
    kernel_hash: str | None = None


class _Args(msgspec.Struct, gc=False):
    """The same members as any JSON value (the general path)."""

    external_id: Any = msgspec.field(name="External id", default=None)
    kernel_file: Any = None
    kernel_hash: Any = None


_NO_ARGS = _Args()  # the members of an event without args, or whose args is not an object
_ARGS_KEYS = {"external_id": "External id", "kernel_file": "kernel_file", "kernel_hash": "kernel_hash"}
_NON_OBJECTS = list | str | float | int | bool | None
_PROFILER_EVENTS = msgspec.json.Decoder(list[_ProfilerEvent])
_EVENTS = msgspec.json.Decoder(list[_Event | _NON_OBJECTS])
_PROFILER_ARGS = msgspec.json.Decoder(list[_ProfilerArgs])
_ARGS_ANY = msgspec.json.Decoder(list[_Args | _NON_OBJECTS])
# how profilers write the key of args (what the bulk check of insertions looks for)
_ARGS_KEY = np.frombuffer(b'"args": ', np.uint8)
_INDUCTOR_KEY = b'"inductor_'


@dataclasses.dataclass
class Candidates:
    """A batch's candidates, decoded into columns: one item per candidate in each.

    ``phases``, ``categories``, ``names``, ``pids``, ``tids``: the members as decoded (in the general
    path a non-string name / category reads as None); ``ts`` / ``dur``: NaN unless both are numbers;
    ``hashable``: whether (pid, tid) can key a dict; ``args``: the bytes of each args member (empty:
    none) and ``members``: the members of each args object (``_NO_ARGS`` for none); ``typed``: from
    the fast path (``External id`` is an int or None); ``joined``: '[' + the candidates' bytes joined
    by ',' + ']', where ``insertions`` looks, ``lengths``: those of the candidates.
    """

    phases: list[Any]
    categories: list[str | None]
    names: list[str | None]
    ts: np.ndarray  # float64
    dur: np.ndarray  # float64
    pids: list[Any]
    tids: list[Any]
    hashable: np.ndarray  # bool
    args: list[Any]  # bytes or msgspec.Raw
    args_lengths: np.ndarray  # int64
    args_is_object: np.ndarray  # bool
    members: list[Any]  # _ProfilerArgs or _Args
    typed: bool
    joined: bytes
    lengths: np.ndarray  # int64

    @classmethod
    def of(cls, events: list[_ProfilerEvent], args: list[Any], **others: Any) -> Candidates:
        """The columns of ``events`` (list comprehensions: faster than attrgetter maps)."""
        return cls(
            phases=[event.ph for event in events],
            categories=[event.cat for event in events],
            names=[event.name for event in events],
            ts=np.fromiter([event.ts for event in events], np.float64, len(events)),
            dur=np.fromiter([event.dur for event in events], np.float64, len(events)),
            pids=[event.pid for event in events],
            tids=[event.tid for event in events],
            args=args,
            args_lengths=np.fromiter(map(len, args), np.int64, len(args)),
            **others,
        )

    def __len__(self) -> int:
        return len(self.names)

    def member(self, name: str, items: np.ndarray | None = None) -> list[Any]:
        """A member of the args of every candidate (or of ``items``), None where it has none."""
        members = self.members if items is None else list(map(self.members.__getitem__, items.tolist()))
        return list(map(operator.attrgetter(name), members))


def decode_candidates(batch: CandidateBatch, trace_path: str) -> Candidates:
    """The batch's candidates, decoded in one call with the profiler's member types (the fast path),
    else with any member types: in one call, or one event at a time with a stdlib fallback."""
    joined = b"[" + b",".join(batch.raws) + b"]"
    lengths = batch.lengths
    try:
        return _decode_profiler_events(joined, lengths)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    try:
        events = _EVENTS.decode(joined)
        members = _ARGS_ANY.decode(
            _joined([event.args if event.__class__ is _Event else b"" for event in events])
        )
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        decoded = [
            _decode_one(bytes(raw), offset, trace_path)
            for raw, offset in zip(batch.raws, batch.offsets.tolist(), strict=True)
        ]
        events, members = [event for event, _ in decoded], [args for _, args in decoded]
    normalized = [_normalized(event) for event in events]
    return Candidates.of(
        [event for event, _ in normalized],
        [event.args for event, _ in normalized],
        hashable=np.array([hashable for _, hashable in normalized], bool),
        args_is_object=np.array([value.__class__ is _Args for value in members], bool),
        members=[value if value.__class__ is _Args else _NO_ARGS for value in members],
        typed=False,
        joined=joined,
        lengths=lengths,
    )


def _joined(args: list[Any]) -> bytes:
    """The args (bytes or Raw; empty: none, read as null) as one JSON list."""
    return b"[" + b",".join([text if len(text) else b"null" for text in args]) + b"]"


def _decode_profiler_events(joined: bytes, lengths: np.ndarray) -> Candidates:
    """The fast path: every member of the profiler's type and every args absent or an object."""
    events = _PROFILER_EVENTS.decode(joined)
    args = [event.args for event in events]
    present = np.fromiter(map(len, args), np.int64, len(args)) > 0
    if present.all():
        members = _PROFILER_ARGS.decode(b"[" + b",".join(args) + b"]")
    else:
        members = [_NO_ARGS] * len(events)
        for item, value in zip(
            np.flatnonzero(present).tolist(),
            _PROFILER_ARGS.decode(b"[" + b",".join(compress(args, present)) + b"]"),
            strict=True,
        ):
            members[item] = value
    return Candidates.of(
        events,
        args,
        hashable=np.ones(len(events), bool),
        args_is_object=present,
        members=members,
        typed=True,
        joined=joined,
        lengths=lengths,
    )


def _normalized(event: Any) -> tuple[_ProfilerEvent, bool]:
    """An event of the general path in the fast path's shape, and whether its (pid, tid) is hashable."""
    if event.__class__ is not _Event:
        return _ProfilerEvent(), False
    times = _as_floats(event.ts, event.dur)
    try:
        hash((event.pid, event.tid))
        hashable = True
    except TypeError:  # a list or object: not a profiler event
        hashable = False
    normalized = _ProfilerEvent(
        ph=event.ph,
        cat=event.cat if event.cat.__class__ is str else None,
        name=event.name if event.name.__class__ is str else None,
        ts=times[0] if times else math.nan,
        dur=times[1] if times else math.nan,
        pid=event.pid,
        tid=event.tid,
        args=event.args,
    )
    return normalized, hashable


def _as_floats(ts: Any, dur: Any) -> tuple[float, float] | None:
    """(ts, dur) as floats, or None when they are not (representable) numbers."""
    if not (isinstance(ts, int | float) and isinstance(dur, int | float)):
        return None
    try:
        return float(ts), float(dur)
    except OverflowError:  # an integer beyond float range
        return None


def _decode_one(raw: bytes, offset: int, trace_path: str) -> tuple[Any, Any]:
    """One event and its args' members (``_Args``, or None / another value when args is not an object)."""
    try:
        event = _EVENTS.decode(b"[" + raw + b"]")[0]
        args = bytes(event.args) if event.__class__ is _Event else b""
        return event, (_ARGS_ANY.decode(b"[" + args + b"]")[0] if args else None)
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


def insertions(candidates: Candidates, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``insertion`` of each of ``items`` (offset in the event, mode), in bulk for the layout profilers
    write: no args (``NEW_ARGS``), or args the last member, written ``"args": {...}}`` with its first
    key right after the '{' (``APPEND``) or empty (``FIRST``), and holding no ``"inductor_`` key. The
    other events go through ``insertion`` one at a time."""
    joined, args = candidates.joined, candidates.args
    view = np.frombuffer(joined, np.uint8)
    event_lengths = candidates.lengths
    starts = (1 + np.concatenate(([0], np.cumsum(event_lengths[:-1] + 1))))[items]  # in joined
    ends = starts + event_lengths[items]
    args_lengths = candidates.args_lengths[items]
    at = event_lengths[items] - 2  # just before the '}' of args
    modes = np.full(items.size, -1, np.int8)
    modes[args_lengths == 0] = NEW_ARGS
    at[args_lengths == 0] += 1  # before the event's '}'
    args_starts = ends - 1 - args_lengths
    objects = np.flatnonzero(
        (args_lengths >= 2) & (args_starts - len(_ARGS_KEY) > starts) & candidates.args_is_object[items]
    )
    key_at = args_starts[objects][:, None] - len(_ARGS_KEY) + np.arange(len(_ARGS_KEY))
    layout = (
        (view[ends[objects] - 2] == ord("}"))
        & (view[args_starts[objects]] == ord("{"))
        & (view[key_at] == _ARGS_KEY).all(axis=1)
        & (view[args_starts[objects] - len(_ARGS_KEY) - 1] != ord("\\"))  # the key's quote is not escaped
    )
    fast = objects[layout]
    fast = fast[_args_there(args, items[fast], joined, args_starts[fast], ends[fast] - 1)]
    modes[fast[args_lengths[fast] == 2]] = FIRST
    modes[fast[(args_lengths[fast] > 2) & (view[args_starts[fast] + 1] == ord('"'))]] = APPEND
    for position in np.flatnonzero(modes < 0).tolist():
        event = joined[starts[position] : ends[position]]
        at[position], modes[position] = insertion(event, bytes(args[items[position]]))
    return at, modes


def _args_there(
    args: list[Any], items: np.ndarray, joined: bytes, begins: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Whether ``joined[begins[i]:ends[i]]`` is the args of ``items[i]`` and holds no ``"inductor_``
    key (those take ``insertion``'s path), for each i."""
    ours = list(map(args.__getitem__, items.tolist()))
    theirs = list(map(joined.__getitem__, map(slice, begins.tolist(), ends.tolist())))
    if b"".join(ours) == b"".join(theirs):  # the usual case: all of them (the lengths are equal)
        same = np.ones(items.size, bool)
    else:
        same = np.fromiter(map(operator.eq, map(bytes, ours), theirs), bool, items.size)
    if _INDUCTOR_KEY in joined:
        same &= np.fromiter(map(operator.not_, map(operator.contains, theirs, repeat(_INDUCTOR_KEY))), bool)
    return same


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
    if _INDUCTOR_KEY in args:
        return 0, REENCODE
    args_close = event.rfind(b"}", 0, len(event) - 1)
    args_start = args_close + 1 - len(args)
    if args_start > 0 and not event[args_close + 1 : -1].strip() and event.endswith(args, 0, args_close + 1):
        key = event.rfind(b'"args"', 0, args_start)
        if key > 0 and event[key - 1] != 0x5C and event[key + 6 : args_start].strip() == b":":
            empty = not args[1:-1].strip()
            return args_close, (FIRST if empty else APPEND)
    return 0, REENCODE

"""Read a Chrome trace at I/O speed and write a copy with a few byte ranges edited.

Reading (``TraceScanner``): the file is read in chunks of ``chunk_bytes``. The ``traceEvents`` array
is cut into pieces at a ``},`` near the end of each chunk, and each piece is parsed by msgspec as a
list of ``msgspec.Raw`` values: a validating skip parser (~1 GB/s) that returns each event's exact
bytes without decoding it. The events' byte offsets follow from their lengths and the separators
between them. A caller-supplied regex, run over the piece, picks the candidate events (e.g. those
whose ``"name"`` starts like a kernel name); only those are handed out, with their offsets, to be
decoded. A cut that lands inside an event (a ``},`` in a string or a nested object) fails to parse
and is replaced by an exact one from ``_exact_cut`` (a vectorised scan of strings and nesting).
Memory is a few chunks, whatever the file size.

Writing (``write_spliced``): the output is the source's bytes between the edits (views of the
mapped file) and the replacement texts, handed to ``pwritev`` a thousand buffers at a time, so
that the kernel copies them and nothing is joined in Python; each block of the source is mapped in
one call before it is copied and dropped from memory after. With a ``helper_process`` (files of
64 MB and more on 2+ cores), a second process reads or writes one half while this one does the other.

Malformed input (not JSON, truncated, not UTF-8, no ``traceEvents`` list) raises
``TraceFormatError`` (a ``ValueError``) naming the line and byte offset.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import gzip
import mmap
import multiprocessing
import multiprocessing.pool
import os
import re
import shutil
import signal
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import msgspec
import numpy as np

from pytorch_scripts_common.cli import signals_deferred
from pytorch_scripts_common.inductor_log.records import is_log_line

__all__ = [
    "CandidateBatch",
    "Edits",
    "TraceFormatError",
    "TraceLayout",
    "TraceScanner",
    "helper_process",
    "wants_helper",
    "write_spliced",
]

# Linux's MADV_POPULATE_READ (5.14+): map a range's pages in one call rather than one page fault per
# few pages as they are touched (in a VM that saves the writer a third of its time)
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform.startswith("linux") else None)
CHUNK_BYTES = 16 << 20  # per read: large enough to amortise per-piece costs, small next to the RSS budget
_WHITESPACE = b" \t\n\r"
GZIP_MAGIC = b"\x1f\x8b"
_WHITESPACE_RE = re.compile(rb"[ \t\n\r]*")
_SEPARATOR_RE = re.compile(rb"[ \t\n\r]*,[ \t\n\r]*")
# the last item's '}' and the ']' after it, near the end of a well-formed trace ('  }\n  ],"traceName": ...}')
# between two events of a profiler trace: '},' + newline + '{' (a raw newline is never inside a string)
_LIKELY_SEPARATOR_RE = re.compile(rb"\}[ \t\r]*,[ \t\r]*\n[ \t\n\r]*\{")
_ARRAY_END_RE = re.compile(rb"\}[ \t\n\r]*\][ \t\n\r]*(?:,[^\]]*)?\}[ \t\n\r]*\Z")
# '"traceEvents": [' as a key; whether it is a top-level key is checked by parsing what precedes it
_TRACE_EVENTS_KEY_RE = re.compile(rb'"traceEvents"[ \t\n\r]*:[ \t\n\r]*')
_BYTE_POSITION_RE = re.compile(r"\(byte (\d+)\)")
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
_ANY = msgspec.json.Decoder()

# _exact_cut's byte classes: +1 opens a level, -1 closes one, 2 is a comma
_STRUCTURE_DELTA = np.zeros(256, np.int8)
_STRUCTURE_DELTA[[ord("{"), ord("[")]] = 1
_STRUCTURE_DELTA[[ord("}"), ord("]")]] = -1
_STRUCTURE_DELTA[ord(",")] = 2
_IS_WHITESPACE = np.zeros(256, bool)
_IS_WHITESPACE[list(_WHITESPACE)] = True


class TraceFormatError(ValueError):
    """The trace file is not a Chrome trace JSON object with a ``traceEvents`` list."""


@dataclasses.dataclass
class TraceLayout:
    """Where the parts of the trace file are (byte offsets), known once the scan has finished."""

    events_start: int  # just after the '[' of traceEvents
    events_end: int  # the ']' closing traceEvents
    num_events: int
    other_keys: dict[str, Any]  # the top-level keys other than traceEvents, decoded


@dataclasses.dataclass
class CandidateBatch:
    """The candidate events of one piece: event indexes, byte offsets in the file, raw JSON bytes
    and their lengths."""

    indexes: np.ndarray  # int64
    offsets: np.ndarray  # int64
    raws: list[msgspec.Raw]
    lengths: np.ndarray  # int64


def _line_of(path: str, offset: int) -> int:
    """1-based line number of byte ``offset`` (for error messages only: reads the file up to it)."""
    newlines = 0
    with open(path, "rb") as trace_file:
        remaining = offset
        while remaining > 0:
            block = trace_file.read(min(CHUNK_BYTES, remaining))
            if not block:
                break
            newlines += block.count(b"\n")
            remaining -= len(block)
    return newlines + 1


def format_error(path: str, offset: int, message: str) -> TraceFormatError:
    return TraceFormatError(
        f"{path}: {message} at line {_line_of(path, offset)} (byte {offset}); expected a Chrome trace JSON "
        "object with a 'traceEvents' list (is the file complete? re-export it with torch.profiler's "
        "export_chrome_trace)"
    )


def is_gzip(path: str) -> bool:
    """Whether ``path`` starts with the gzip magic bytes (torch.profiler's ``export_chrome_trace`` and
    ``tensorboard_trace_handler(use_gzip=True)`` compress what they write to a ``.gz`` name)."""
    with open(path, "rb") as trace_file:
        return trace_file.read(2) == GZIP_MAGIC


@contextlib.contextmanager
def readable_trace(path: str, work_parent: str | None) -> Iterator[str]:
    """``path`` itself, or for a gzip-compressed trace a decompressed copy in a temporary folder under
    ``work_parent`` (created if missing; None: the system's temp folder). The scanner maps the file,
    and a gzip stream cannot be mapped. Errors that name the copy name ``path`` instead,
    "(decompressed)"; the copy is removed when the block ends."""
    if not is_gzip(path):
        yield path
        return
    if work_parent is not None:
        os.makedirs(work_parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(path)}.", dir=work_parent) as work_dir:
        copy = os.path.join(work_dir, os.path.basename(path).removesuffix(".gz") or "trace.json")
        try:
            with gzip.open(path, "rb") as source, open(copy, "wb") as target:
                shutil.copyfileobj(source, target, CHUNK_BYTES)
        except (EOFError, OSError, zlib.error) as error:
            if isinstance(error, OSError) and error.errno is not None:
                raise  # a disk or permission error, not the trace's (gzip.BadGzipFile has no errno)
            raise TraceFormatError(
                f"{path}: damaged gzip data ({error}) after {os.path.getsize(copy)} decompressed bytes: "
                "re-export the trace, or pass the part that decompresses (gunzip -c > trace.json)"
            ) from None
        try:
            yield copy
        except ValueError as error:  # TraceFormatError, and "already enriched"
            error.args = (str(error).replace(copy, f"{path} (decompressed)"), *error.args[1:])
            raise


def _decode_error_offset(error: Exception, default: int) -> int:
    """The byte position msgspec names in its message ('... (byte 57)'), else ``default``."""
    match = _BYTE_POSITION_RE.search(str(error))
    return int(match.group(1)) if match else default


def _describe(error: Exception) -> str:
    text = _BYTE_POSITION_RE.sub("", str(error)).strip()
    text = text.removeprefix("JSON is malformed: ")
    return text.replace("Input data was truncated", "truncated JSON")


def _check_utf8(path: str, data: bytes | memoryview, base: int) -> None:
    if not len(data) or np.frombuffer(data, np.uint8).max() < 0x80:  # ASCII, the usual case
        return
    try:
        codecs.utf_8_decode(data, "strict", True)
    except UnicodeDecodeError as error:
        raise format_error(path, base + error.start, f"not UTF-8 text ({error.reason})") from None


def _populate(data: mmap.mmap, start: int, length: int) -> None:
    """Map the pages of ``data[start:start + length]`` now (a hint: nothing happens where unsupported)."""
    if _MADV_POPULATE_READ is None:
        return
    first_page = start // mmap.PAGESIZE * mmap.PAGESIZE
    length = min(start + length, len(data)) - first_page
    if length > 0:
        with contextlib.suppress(OSError):  # an older kernel
            data.madvise(_MADV_POPULATE_READ, first_page, length)


def _structure(data: bytes, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The structural characters of ``data[start:end]`` outside strings: (positions, kinds, depths).

    ``data[start]`` must be outside any string. Kinds: +1 for '{' '[', -1 for '}' ']', 2 for ','.
    Depths: the nesting depth after each character, relative to ``start``. Vectorised (numpy), so a
    chunk costs a few passes over its bytes.
    """
    view = np.frombuffer(data, np.uint8, end - start, start)
    backslashes = np.flatnonzero(view == 0x5C)
    quotes = np.flatnonzero(view == 0x22)
    if backslashes.size:
        # in a run of backslashes, the 1st, 3rd, ... escape the character after them
        run_start = np.ones(backslashes.size, bool)
        run_start[1:] = backslashes[1:] != backslashes[:-1] + 1
        first_of_run = np.maximum.accumulate(np.where(run_start, backslashes, 0))
        escaped = backslashes[(backslashes - first_of_run) % 2 == 0] + 1
        quotes = np.setdiff1d(quotes, escaped, assume_unique=True)
    delta = _STRUCTURE_DELTA[view]
    structural = np.flatnonzero(delta)
    positions = structural[np.searchsorted(quotes, structural) % 2 == 0]
    kinds = delta[positions].astype(np.int64)
    depths = np.cumsum(np.where(kinds == 2, 0, kinds))
    return positions + start, kinds, depths


def _exact_cut(data: bytes, start: int, end: int) -> tuple[str, int]:
    """Where the array items in ``data[start:end]`` can be cut (``data[start]`` at depth 0 of the array).

    Returns ``("end", i)`` when ``data[i]`` is the ']' closing the array, ``("comma", i)`` for the
    last comma at depth 0, or ``("more", end)`` when the range lies inside one item. For malformed
    JSON the answer may be wrong; the parse of the piece it delimits then reports the error.
    """
    positions, kinds, depths = _structure(data, start, end)
    closing = np.flatnonzero(depths < 0)
    if closing.size:
        return "end", int(positions[closing[0]])
    commas = np.flatnonzero((kinds == 2) & (depths == 0))
    if commas.size:
        return "comma", int(positions[commas[-1]])
    return "more", end


def _deepest(data: bytes, start: int, end: int) -> tuple[int, int]:
    """(depth, index) of the first deepest point of ``data[start:end]``, for the too-deep error."""
    positions, _, depths = _structure(data, start, end)
    deepest = int(np.argmax(depths))
    return int(depths[deepest]), int(positions[deepest])


def _event_offsets(document: bytes, raws: list[msgspec.Raw]) -> tuple[np.ndarray, np.ndarray]:
    """Offsets in ``document`` ('[' + items + ']') of each raw item, exact, and their lengths.

    Items are separated by whitespace, one comma, whitespace. The separator after the first item is
    assumed for all and checked in bulk (every separator equal, every item starting on a non-space);
    if that fails, the separators are measured one by one.
    """
    lengths = np.fromiter(map(len, raws), np.int64, len(raws))
    first = _WHITESPACE_RE.match(document, 1).end()
    if len(raws) == 1:
        return np.array([first], np.int64), lengths
    separator = _SEPARATOR_RE.match(document, first + int(lengths[0]))
    assert separator is not None, "the parse guarantees a separator after each item"
    separator_bytes = separator.group()
    offsets = np.empty(len(raws), np.int64)
    offsets[0] = first
    np.cumsum(lengths[:-1] + len(separator_bytes), out=offsets[1:])
    offsets[1:] += first
    ends = offsets + lengths
    if ends[-1] <= len(document) - 1:
        view = np.frombuffer(document, np.uint8)
        uniform = not _IS_WHITESPACE[view[offsets[1:]]].any()
        for position, byte in enumerate(separator_bytes):
            uniform = uniform and bool((view[ends[:-1] + position] == byte).all())
        if uniform and _WHITESPACE_RE.match(document, int(ends[-1])).end() == len(document) - 1:
            return offsets, lengths
    offset = first
    for item, length in enumerate(lengths[:-1].tolist()):
        offsets[item] = offset
        offset = _SEPARATOR_RE.match(document, offset + length).end()
    offsets[-1] = offset
    return offsets, lengths


class TraceScanner:
    """Iterate over the candidate events of a trace (see the module doc); ``layout`` is set at the end.

    An item of ``traceEvents`` is a candidate when one of ``candidate_patterns`` occurs in its raw
    bytes: a compiled regex, or a bytes literal (found with ``find``: faster when it is rare); the
    caller decodes the candidates and decides. The file is memory-mapped copy-on-write (the scanner
    writes the '[' / ']' that make a piece a list; the file is not changed) and the pages behind the
    scan are dropped from memory as it goes. A batch's ``raws`` are views of the mapping: use them
    before asking for the next batch.
    """

    def __init__(
        self,
        path: str,
        candidate_patterns: Iterable[re.Pattern[bytes] | bytes],
        *,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.path = path
        self.candidate_patterns = list(candidate_patterns)
        self.chunk_bytes = chunk_bytes
        self.layout: TraceLayout | None = None
        self._data: Any = b""
        self._released = 0  # the pages before this offset were dropped

    def __iter__(self) -> Iterator[CandidateBatch]:
        """The whole trace, in one pass; sets ``layout``."""
        with self:
            start = self.prologue()
            num_events, events_end = yield from self.scan(start)
            other_keys = self.epilogue(events_end)
        self.layout = TraceLayout(
            events_start=self.events_start,
            events_end=events_end,
            num_events=num_events,
            other_keys={**self.keys_before, **other_keys},
        )

    def __enter__(self) -> TraceScanner:
        with open(self.path, "rb") as trace_file:
            if os.fstat(trace_file.fileno()).st_size == 0:
                raise format_error(self.path, 0, "empty file")
            self._data = mmap.mmap(trace_file.fileno(), 0, access=mmap.ACCESS_COPY)
        self._data.madvise(mmap.MADV_SEQUENTIAL)
        return self

    def __exit__(self, *exc_info: object) -> None:
        data, self._data = self._data, b""
        with contextlib.suppress(BufferError):  # raws still held by the caller: closed when they are freed
            data.close()

    def split_point(self, start: int, fraction: float) -> int | None:
        """A likely item boundary about ``fraction`` into the events after ``start``: the ',' of a
        '},' followed by a newline and '{' (a raw newline cannot be inside a JSON string); None if
        none is near. Only a guess: ``scan(start, stop)`` parses up to it and fails if it is not one."""
        size = len(self._data)
        target = start + int((size - start) * fraction)
        match = _LIKELY_SEPARATOR_RE.search(self._data, target, min(size, target + (1 << 20)))
        return None if match is None else match.start() + match.group().index(b",")

    def _release(self, offset: int) -> None:
        """Drop the mapped pages before ``offset`` from memory (they are not read again)."""
        page_end = offset // mmap.PAGESIZE * mmap.PAGESIZE
        if page_end - self._released >= self.chunk_bytes:
            self._data.madvise(mmap.MADV_DONTNEED, self._released, page_end - self._released)
            self._released = page_end

    # ---- the top-level object around the array

    def prologue(self) -> int:
        """Find the top-level '"traceEvents": [' and decode the keys before it; return the index after '['."""
        data = self._data
        if data[:2] == GZIP_MAGIC:  # the CLI decompresses first (readable_trace)
            raise TraceFormatError(
                f"{self.path} is gzip-compressed: open it with readable_trace(), which decompresses it"
            )
        opening = _WHITESPACE_RE.match(data).end()
        if opening == len(data) or data[opening] != ord("{"):
            first_line = bytes(data[opening : opening + 4096]).split(b"\n", 1)[0].decode("utf-8", "replace")
            if is_log_line(first_line):
                raise TraceFormatError(
                    f"{self.path} is a torch logging text file (line 1: {first_line[:60]!r}), not a trace: "
                    "pass the .json that torch.profiler's export_chrome_trace wrote, and the log as the "
                    "other input"
                )
            found = data[opening : opening + 1].decode("utf-8", "replace")
            raise format_error(
                self.path, opening, f"expected '{{', found {found!r}" if found else "empty file"
            )
        search_from = opening
        while True:
            match = _TRACE_EVENTS_KEY_RE.search(data, search_from)
            if match is None:
                self._raise_for_object(opening)
            try:
                before = _ANY.decode(data[opening : match.end()] + b"null}")
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                before = None
            if (
                isinstance(before, dict)
                and list(before)[-1:] == ["traceEvents"]
                and before["traceEvents"] is None
            ):
                break  # a top-level key: what precedes it is a complete object prefix
            search_from = match.start() + 1
        _check_utf8(self.path, data[: match.end()], 0)
        if data[match.end() : match.end() + 1] != b"[":
            raise format_error(self.path, match.end(), "'traceEvents' is not a list")
        del before["traceEvents"]
        self.keys_before: dict[str, Any] = before
        self.events_start = match.end() + 1
        return match.end() + 1

    def _raise_for_object(self, opening: int) -> NoReturn:
        """No top-level traceEvents key in the file: say what is wrong with it."""
        try:
            value = _ANY.decode(memoryview(self._data)[opening:])
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as error:
            offset = opening + _decode_error_offset(error, len(self._data) - opening)
            raise format_error(self.path, offset, f"invalid JSON ({_describe(error)})") from None
        assert isinstance(value, dict)
        raise TraceFormatError(
            f"{self.path}: no 'traceEvents' key; expected a Chrome trace JSON object such as "
            "torch.profiler's export_chrome_trace writes"
        )

    def epilogue(self, events_end: int) -> dict[str, Any]:
        """Decode what follows the array: ', "key": value ... }' and nothing but whitespace after it."""
        base = events_end + 1
        rest = self._data[base:]  # a few bytes in profiler traces
        position = _WHITESPACE_RE.match(rest).end()
        if rest[position : position + 1] == b"}":
            after = _WHITESPACE_RE.match(rest, position + 1).end()
            if after != len(rest):
                raise format_error(self.path, base + after, "trailing data after the top-level object")
            return {}
        if rest[position : position + 1] != b",":
            found = (
                repr(rest[position : position + 1].decode("utf-8", "replace"))
                if position < len(rest)
                else "end of file"
            )
            raise format_error(
                self.path, base + position, f"expected ',' or '}}' after the events, found {found}"
            )
        try:
            keys = _ANY.decode(b"{" + rest[position + 1 :])
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as error:
            offset = position + _decode_error_offset(error, len(rest) - position)
            message = _describe(error)
            if message.startswith("trailing characters"):
                message = "trailing data after the top-level object"
            raise format_error(self.path, base + offset, message) from None
        if not keys:
            raise format_error(self.path, base + position, "a ',' after the events but no key")
        if "traceEvents" in keys:
            raise format_error(self.path, base + position, "a second 'traceEvents' key")
        return keys

    # ---- the events

    def scan(self, start: int, stop: int | None = None) -> Iterator[CandidateBatch]:
        """Yield the candidates of the items from ``start`` (an item's first byte, or whitespace before
        it) to the array's end, or to the ',' at ``stop``; return (number of items, where it ended).

        A piece is ``data[start:cut]``, the next ``chunk_bytes`` or so; the byte before it (the '['
        or the separating ',') and the one after it are overwritten with '[' and ']' so that msgspec
        parses it in place as a list.
        """
        data, size = self._data, len(self._data)
        limit = size if stop is None else stop
        num_events = 0
        window = self.chunk_bytes
        while True:
            end = min(limit, start + window)
            if end == stop:  # a segment's last piece: it must end exactly there
                raws = self._parse_exact(start, stop, first=False, last=False)
                cut, last = stop, True
            else:
                piece = self._fast_piece(start, end)
                if piece is None:
                    kind, cut = _exact_cut(data, start, end)
                    if kind == "more":
                        if end == size:
                            raise format_error(
                                self.path, size, "truncated JSON: the events array is not closed"
                            )
                        window *= 2  # one item longer than the window: look further
                        continue
                    if kind == "end" and stop is not None:
                        raise format_error(self.path, cut, "the events array ends before the segment does")
                    last = kind == "end"
                    raws = self._parse_exact(start, cut, first=num_events == 0, last=last)
                else:
                    raws, cut, last = piece
            window = self.chunk_bytes
            document = memoryview(data)[start - 1 : cut + 1]
            _check_utf8(self.path, document, start - 1)
            if raws:
                yield self._candidates(document, raws, num_events, start - 1)
            document.release()
            num_events += len(raws)
            if last:
                return num_events, cut
            start = cut + 1
            self._release(start)

    def _fast_piece(self, start: int, end: int) -> tuple[list[msgspec.Raw], int, bool] | None:
        """Parse ``data[start:]`` up to a guessed cut near ``end``: (raws, index of the ',' or ']' after
        them, whether it is the array's ']'), or None when there is no guess or it was wrong."""
        data = self._data
        brace, closing = self._fast_cut(start, end)
        if brace < 0:
            return None
        saved = data[brace + 1]
        data[start - 1], data[brace + 1] = ord("["), ord("]")
        try:
            raws = _RAW_LIST.decode(memoryview(data)[start - 1 : brace + 2])
        except (msgspec.DecodeError, RecursionError):
            data[brace + 1] = saved
            return None
        # a piece that parses ends at the top level, so the ',' or ']' after it is the array's
        cut = brace + 1 if saved in b",]" else _WHITESPACE_RE.match(data, brace + 2).end()
        data[cut] = ord("]")  # the document of the piece ends there
        if saved not in b",]":
            data[brace + 1] = saved
        return raws, cut, closing

    def _parse_exact(self, start: int, cut: int, *, first: bool, last: bool) -> list[msgspec.Raw]:
        data = self._data
        if not data[start:cut].strip(_WHITESPACE) and not (last and first):
            raise format_error(self.path, cut, "expected a value before this ',' or ']'")
        data[start - 1], data[cut] = ord("["), ord("]")
        try:
            return _RAW_LIST.decode(memoryview(data)[start - 1 : cut + 1])
        except RecursionError:
            depth, offset = _deepest(data, start, cut)
            raise format_error(
                self.path, offset, f"JSON nested {depth} levels deep (the decoder allows ~1000)"
            ) from None
        except msgspec.DecodeError as error:
            offset = start + _decode_error_offset(error, cut - start + 1) - 1
            raise format_error(self.path, offset, f"invalid JSON ({_describe(error)})") from None

    def _fast_cut(self, start: int, end: int) -> tuple[int, bool]:
        """(index of a '}' followed by ',' near the end of ``data[start:end]``, False), or, where the
        array ends in that range, (the last '}' before the ']', True); (-1, False) if none in a few tries."""
        data = self._data
        closing = _ARRAY_END_RE.search(data, max(start, end - 4096), end) if end == len(data) else None
        if closing is not None:
            return closing.start(), True
        brace = end
        for _ in range(4):
            brace = data.rfind(b"}", start, brace)
            if brace < 0:
                return -1, False
            after = _WHITESPACE_RE.match(data, brace + 1, end).end()
            if after < end and data[after] == ord(","):
                return brace, False
        return -1, False

    def _candidates(
        self, document: memoryview, raws: list[msgspec.Raw], first_index: int, base: int
    ) -> CandidateBatch:
        """The items of ``document`` (a piece, at file offset ``base``) that the patterns occur in."""
        positions: list[int] = []
        for pattern in self.candidate_patterns:
            if isinstance(pattern, bytes):
                found = self._data.find(pattern, base, base + len(document))
                while found >= 0:
                    positions.append(found - base)
                    found = self._data.find(pattern, found + 1, base + len(document))
            else:
                positions += map(re.Match.start, pattern.finditer(document))
        if not positions:
            return CandidateBatch(np.zeros(0, np.int64), np.zeros(0, np.int64), [], np.zeros(0, np.int64))
        offsets, lengths = _event_offsets(document, raws)
        items = np.unique(np.searchsorted(offsets, positions, side="right") - 1)
        items = items[items >= 0]
        return CandidateBatch(
            indexes=first_index + items,
            offsets=offsets[items] + base,
            raws=list(map(raws.__getitem__, items.tolist())),
            lengths=lengths[items],
        )


@dataclasses.dataclass
class Edits:
    """Byte ranges of a file to replace, sorted and disjoint: ``source[starts[i]:ends[i]]`` (empty
    for an insertion) becomes ``replacements[replacement_ids[i]]``. Arrays, because a 1 GB trace has
    ~700k of them, most sharing a few replacement texts."""

    starts: np.ndarray  # int64
    ends: np.ndarray  # int64
    replacement_ids: np.ndarray  # int64
    replacements: list[bytes]

    @classmethod
    def of(cls, edits: list[tuple[int, int, bytes]]) -> Edits:
        """From (start, end, replacement) tuples (each replacement its own text)."""
        return cls(
            starts=np.array([edit[0] for edit in edits], np.int64),
            ends=np.array([edit[1] for edit in edits], np.int64),
            replacement_ids=np.arange(len(edits), dtype=np.int64),
            replacements=[edit[2] for edit in edits],
        )

    def __len__(self) -> int:
        return len(self.starts)

    def grown_bytes(self) -> int:
        """How much longer the output is than the source."""
        lengths = np.array([len(text) for text in self.replacements] or [0], np.int64)
        return int(lengths[self.replacement_ids].sum() - (self.ends - self.starts).sum())

    def part(self, begin: int, end: int) -> Edits:
        return Edits(
            self.starts[begin:end], self.ends[begin:end], self.replacement_ids[begin:end], self.replacements
        )


_HELPER_MIN_BYTES = 64 << 20  # below this, a second process costs more than the second core saves


def wants_helper(path: str) -> bool:
    """Whether reading / writing ``path`` in two halves pays: 2+ cores and a trace of 64 MB or more
    (of a gzip file, its decompressed size: the trailer's last 4 bytes hold it modulo 2^32)."""
    size = os.path.getsize(path)
    if size >= 6 and is_gzip(path):
        with open(path, "rb") as trace_file:
            trace_file.seek(-4, os.SEEK_END)
            size = max(size, int.from_bytes(trace_file.read(4), "little"))
    return (os.cpu_count() or 1) > 1 and size >= _HELPER_MIN_BYTES


_HELPER_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def helper_process(enabled: bool = True) -> Iterator[multiprocessing.pool.Pool | None]:
    """A second process that reads or writes one half of a large trace while this one does the other.

    Fork it first thing, while this process is small: it gets its work (and returns its results)
    pickled, so its memory is its own half's. Yields None when ``enabled`` is False. Ended on exit.
    """
    if not enabled:
        yield None
        return
    pool = None
    try:
        # A signal while the pool starts is delivered once it exists, so that it is ended below.
        # Blocked, not only deferred: the helper inherits the mask, so the SIGTERM that ends it stays
        # pending until its own handlers are set (the inherited deferring handler would swallow it,
        # and pool.join() would wait forever).
        with signals_deferred():
            previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELPER_SIGNALS)
            try:
                pool = multiprocessing.get_context("fork").Pool(1, initializer=_quiet_helper)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        yield pool
        pool.close()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _quiet_helper() -> None:
    """In the helper: the main process handles Ctrl-C and ends the helper with SIGTERM, which
    therefore just ends it (no handler inherited from the main process, no traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELPER_SIGNALS)  # a pending SIGTERM ends it now


def write_spliced(
    source_path: str,
    target_path: str,
    edits: Edits,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    helper: multiprocessing.pool.Pool | None = None,
) -> None:
    """Write ``source_path`` to ``target_path`` with the byte ranges of ``edits`` replaced.

    The source is memory-mapped; the output is assembled from views of it and written about
    ``chunk_bytes`` at a time at its final offset, and the pages already written are dropped from
    memory. With a ``helper`` process (``helper_process``), it writes the first half while this one
    writes the second, each at its own offset of the output.
    """
    size = os.path.getsize(source_path)
    with open(target_path, "wb"):  # created (or emptied) here; the halves are written at offsets
        pass
    if size == 0:
        assert not len(edits), "no edits in an empty file"
        return
    split = len(edits) // 2
    if helper is None or split == 0:
        _write_part(source_path, target_path, edits, 0, size, 0, chunk_bytes)
        return
    # no edit straddles the start of edit number `split`; the second half's output offset follows
    # from the first half's edits
    first, second = edits.part(0, split), edits.part(split, len(edits))
    middle = int(edits.starts[split])
    first_done = helper.apply_async(_write_part, (source_path, target_path, first, 0, middle, 0, chunk_bytes))
    _write_part(source_path, target_path, second, middle, size, middle + first.grown_bytes(), chunk_bytes)
    first_done.get()


def _write_part(
    source_path: str, target_path: str, edits: Edits, start: int, stop: int, out_offset: int, chunk_bytes: int
) -> None:
    """Write ``source[start:stop]`` with ``edits`` (all inside it) at ``out_offset`` of the target."""
    with open(source_path, "rb") as source, open(target_path, "r+b") as target:
        data = mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(data)
        try:
            data.madvise(mmap.MADV_SEQUENTIAL)
            _write_range(data, view, target.fileno(), start, stop, edits, out_offset, chunk_bytes)
        finally:
            view.release()
            data.close()


def _write_range(
    data: mmap.mmap,
    view: memoryview,
    fd: int,
    start: int,
    stop: int,
    edits: Edits,
    out_offset: int,
    chunk_bytes: int,
) -> None:
    """Write ``view[start:stop]`` with ``edits`` (all inside it) at ``out_offset`` of ``fd``.

    The output is a list of buffers, views of the source between edits and the replacement texts,
    handed to ``pwritev`` ``_IOV_MAX`` at a time: the kernel copies them, nothing is joined here. Empty
    insertions every ``chunk_bytes`` keep each view that short, and the source pages written are
    dropped from memory every ``chunk_bytes``.
    """
    assert (
        (edits.ends >= edits.starts).all()
        and (edits.starts[1:] >= edits.ends[:-1]).all()
        and (not len(edits) or (edits.starts[0] >= start and edits.ends[-1] <= stop))
    ), "edits must be sorted, disjoint and inside the range"
    edits = _with_cuts(edits, start, stop, chunk_bytes)
    replacements = edits.replacements
    released = start // mmap.PAGESIZE * mmap.PAGESIZE
    cursor = start
    _populate(data, start, chunk_bytes)
    step = _IOV_MAX // 2  # edits per call: a view and a replacement each
    for first in range(0, len(edits), step):
        starts = edits.starts[first : first + step].tolist()
        ends = edits.ends[first : first + step].tolist()
        buffers: list[Any] = [b""] * (2 * len(starts))
        buffers[0::2] = map(view.__getitem__, map(slice, [cursor, *ends[:-1]], starts))
        buffers[1::2] = map(replacements.__getitem__, edits.replacement_ids[first : first + step].tolist())
        out_offset = _pwritev_all(fd, buffers, out_offset)
        cursor = ends[-1]
        if cursor - released >= chunk_bytes:
            page_end = cursor // mmap.PAGESIZE * mmap.PAGESIZE
            data.madvise(mmap.MADV_DONTNEED, released, page_end - released)
            released = page_end
            _populate(data, page_end, chunk_bytes)
    _pwritev_all(fd, [view[cursor:stop]], out_offset)


_IOV_MAX = 1024  # buffers per pwritev call (Linux's UIO_MAXIOV)


def _with_cuts(edits: Edits, start: int, stop: int, chunk_bytes: int) -> Edits:
    """``edits`` with an empty insertion every ``chunk_bytes`` from ``start``, except inside a
    replaced range."""
    cuts = np.arange(start + chunk_bytes, stop, chunk_bytes, dtype=np.int64)
    before = np.searchsorted(edits.starts, cuts, side="left") - 1  # the last edit starting before a cut
    if len(edits):
        cuts = cuts[(before < 0) | (edits.ends[np.maximum(before, 0)] <= cuts)]
    starts = np.concatenate([cuts, edits.starts])  # cuts first: before an edit at the same offset
    order = np.argsort(starts, kind="stable")
    return Edits(
        starts=starts[order],
        ends=np.concatenate([cuts, edits.ends])[order],
        replacement_ids=np.concatenate(
            [np.full(cuts.size, len(edits.replacements), np.int64), edits.replacement_ids]
        )[order],
        replacements=[*edits.replacements, b""],
    )


def _pwritev_all(fd: int, buffers: list[Any], offset: int) -> int:
    """Write all of ``buffers`` at ``offset`` of ``fd`` (joined where there is no ``pwritev``, and
    again from where a short write stopped); return the offset after them."""
    total = sum(map(len, buffers))
    written = os.pwritev(fd, buffers, offset) if hasattr(os, "pwritev") else 0
    if written < total:  # a short write (a signal, a full disk): the rest one block at a time
        rest = memoryview(b"".join(buffers))[written:]
        while rest:
            count = os.pwrite(fd, rest, offset + written)
            written += count
            rest = rest[count:]
    return offset + total

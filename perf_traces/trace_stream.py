"""Stream a Chrome trace's ``traceEvents`` without loading the file, and rewrite selected events.

Reading: ``iter_trace`` walks the top-level JSON object with the C-accelerated
``json.JSONDecoder.raw_decode`` one value at a time from a bounded text buffer (a few MB), so memory
does not grow with the trace. It yields each event with its character span in the file; the other
top-level keys (``deviceProperties`` …) are decoded whole (they are small).

Writing: ``rewrite_events`` copies the file text verbatim and replaces only the given events' spans
by re-encoded JSON, into a temporary file next to the target that is renamed over it at the end, so
a failure never leaves a partial output. Unchanged events keep their exact bytes.

Malformed input (not JSON, truncated, no ``traceEvents`` list) raises ``TraceFormatError`` (a
``ValueError``) naming the character offset.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["TraceEvent", "TraceFormatError", "iter_trace", "rewrite_events"]

_CHUNK_CHARS = 1 << 22  # 4 Mi characters per read: large enough to amortise, small next to the RSS budget
_WHITESPACE_RE = re.compile(r"[ \t\n\r]*")


class TraceFormatError(ValueError):
    """The trace file is not a Chrome trace JSON object with a ``traceEvents`` list."""


# (event index, event, start char offset, end char offset) or (None, key, value, None) for other keys
TraceEvent = tuple[int | None, Any, Any, int | None]


class _Reader:
    def __init__(self, path: str, chunk_chars: int) -> None:
        self.path = path
        self.file = open(path, encoding="utf-8", newline="")  # noqa: SIM115 (closed in close())
        self.chunk_chars = chunk_chars
        self.text = ""
        self.pos = 0
        self.base = 0  # file offset (characters) of self.text[0]
        self.eof = False
        self.decoder = json.JSONDecoder()

    def close(self) -> None:
        self.file.close()

    def error(self, message: str) -> TraceFormatError:
        return TraceFormatError(
            f"{self.path}: {message} at character {self.base + self.pos}; expected a Chrome trace "
            "JSON object with a 'traceEvents' list (is the file complete? re-export it with "
            "torch.profiler's export_chrome_trace)"
        )

    def _read_more(self) -> None:
        """Drop the consumed text and append one chunk, or as much as the unconsumed tail (so an item
        longer than a chunk is re-decoded only O(log) times and the buffer stays ~2x the item)."""
        if self.pos:
            self.base += self.pos
            self.text = self.text[self.pos :]
            self.pos = 0
        try:
            chunk = self.file.read(max(self.chunk_chars, len(self.text)))
        except UnicodeDecodeError as exc:
            raise TraceFormatError(f"{self.path}: not UTF-8 text ({exc})") from exc
        if not chunk:
            self.eof = True
        self.text += chunk

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file)."""
        while True:
            pos = _WHITESPACE_RE.match(self.text, self.pos).end()
            self.pos = pos
            if pos < len(self.text):
                return self.text[pos]
            if self.eof:
                return ""
            self._read_more()

    def expect(self, chars: str) -> str:
        char = self.peek()
        if char == "" or char not in chars:
            found = repr(char) if char else "end of file"
            raise self.error(f"expected one of {list(chars)}, found {found}")
        self.pos += 1
        return char

    def array_items(self) -> Iterator[tuple[Any, int, int]]:
        """Decode the items of the array whose '[' was consumed, through its ']' (the hot loop)."""
        raw_decode = self.decoder.raw_decode
        separator = _SEPARATOR_RE.match
        self.peek()
        while True:
            text, pos = self.text, self.pos
            try:
                value, end = raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                if self.eof:
                    raise self.error(f"invalid or truncated JSON value ({exc.msg})") from None
                self._read_more()
                continue
            match = separator(text, end)
            if match is None or match.end() == len(text):  # separator or what follows may be cut off
                if not self.eof:
                    self._read_more()
                    continue
                if match is None:
                    self.pos = end
                    raise self.error("expected ',' or ']' after an array item")
            yield value, self.base + pos, self.base + end
            self.pos = match.end()
            if match.group(1) == "]":
                return

    def value(self) -> tuple[Any, int, int]:
        """Decode the next JSON value; return it with its file character span."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                if self.eof:
                    raise self.error(f"invalid or truncated JSON value ({exc.msg})") from None
                self._read_more()
                continue
            if end == len(self.text) and not self.eof:  # a number cut at the buffer end decodes too
                self._read_more()
                continue
            start = self.base + self.pos
            self.pos = end
            return value, start, self.base + end


_SEPARATOR_RE = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")


def iter_trace(path: str, *, chunk_chars: int = _CHUNK_CHARS) -> Iterator[TraceEvent]:
    """Yield ``(index, event, start, end)`` per trace event and ``(None, key, value, None)`` per other key.

    Events are yielded in file order; ``start``/``end`` are character offsets usable by
    ``rewrite_events``. Raises ``TraceFormatError`` on malformed or truncated input (possibly after
    yielding earlier events: consumers must not write output before the iteration completes).
    """
    reader = _Reader(path, chunk_chars)
    try:
        reader.expect("{")
        saw_events = False
        if reader.peek() == "}":
            reader.pos += 1
        else:
            while True:
                key, _, _ = reader.value()
                if not isinstance(key, str):
                    raise reader.error("object key is not a string")
                reader.expect(":")
                if key == "traceEvents":
                    if reader.peek() != "[":
                        raise reader.error("'traceEvents' is not a list")
                    reader.pos += 1
                    saw_events = True
                    index = 0
                    if reader.peek() == "]":
                        reader.pos += 1
                    else:
                        for index, (event, start, end) in enumerate(reader.array_items()):
                            yield index, event, start, end
                else:
                    value, _, _ = reader.value()
                    yield None, key, value, None
                if reader.expect(",}") == "}":
                    break
        if reader.peek() != "":
            raise reader.error("trailing data after the top-level object")
        if not saw_events:
            raise TraceFormatError(
                f"{path}: no 'traceEvents' key; expected a Chrome trace JSON object such as "
                "torch.profiler's export_chrome_trace writes"
            )
    finally:
        reader.close()


def rewrite_events(
    source_path: str,
    target_path: str,
    replacements: Iterator[tuple[int, int, Callable[[str], str]]],
    *,
    chunk_chars: int = _CHUNK_CHARS,
) -> None:
    """Copy ``source_path`` to ``target_path`` atomically, replacing character spans.

    ``replacements`` yields ``(start, end, fn)`` in increasing, non-overlapping order; the text
    ``source[start:end]`` is replaced by ``fn(source[start:end])``. The output is written to a
    temporary file in the target's directory and renamed onto ``target_path`` only after
    everything was written and flushed.
    """
    target_dir = os.path.dirname(os.path.abspath(target_path))
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(target_path), dir=target_dir)
    try:
        with (
            open(source_path, encoding="utf-8", newline="") as source,
            os.fdopen(handle, "w", encoding="utf-8", newline="") as target,
        ):
            position = 0  # characters of source consumed so far

            def copy_until(offset: int) -> None:
                nonlocal position
                while position < offset:
                    chunk = source.read(min(chunk_chars, offset - position))
                    if not chunk:
                        raise TraceFormatError(f"{source_path} changed while it was being rewritten")
                    target.write(chunk)
                    position += len(chunk)

            for start, end, fn in replacements:
                assert start >= position and end > start, "replacements must be sorted and disjoint"
                copy_until(start)
                original = source.read(end - start)
                position += len(original)
                target.write(fn(original))
            while chunk := source.read(chunk_chars):
                target.write(chunk)
            target.flush()
            os.fsync(target.fileno())
        os.replace(tmp_path, target_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise

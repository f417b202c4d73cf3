"""Byte-level trace reader and splicer: exact spans, tiny windows, odd layouts, truncated, hostile and
fuzzed traces (a clean ``TraceFormatError`` naming line and byte, never a traceback)."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import random
import re
import subprocess
import sys

import pytest

from perf_traces.log_kernels import read_compiled_graphs
from perf_traces.trace_stream import (
    Edits,
    TraceFormatError,
    TraceScanner,
    helper_process,
    is_gzip,
    readable_trace,
    write_spliced,
)
from tests.perf_traces.helpers import REPO_ROOT, fixture

_EVERY_ITEM = [re.compile(rb'["\[\]{}0-9a-z]')]  # some byte of any JSON value: every item is a candidate


def _write(tmp_path, text: str | bytes, name: str = "trace.json") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def _scan(path: str, chunk_bytes: int = 1 << 20) -> tuple[list[tuple[int, int, bytes]], TraceScanner]:
    scanner = TraceScanner(path, _EVERY_ITEM, chunk_bytes=chunk_bytes)
    items = []
    for batch in scanner:
        items.extend(zip(batch.indexes, batch.offsets, (bytes(raw) for raw in batch.raws), strict=True))
    return items, scanner


@pytest.mark.parametrize("name", ["cpu_train", "cuda_handwritten"])
@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 4096, 1 << 24])
def test_events_and_offsets_match_json_load(name, chunk_bytes):
    """Windows of 1 byte to 16 MB: every event, at its exact byte offset; the other keys."""
    path = fixture(name, "trace.json")
    with open(path, "rb") as trace_file:
        data = trace_file.read()
    loaded = json.loads(data)
    items, scanner = _scan(path, chunk_bytes)
    assert [index for index, _, _ in items] == list(range(len(loaded["traceEvents"])))
    for _, offset, raw in items:
        assert data[offset : offset + len(raw)] == raw
    assert [json.loads(raw) for _, _, raw in items] == loaded["traceEvents"]
    assert scanner.layout.num_events == len(loaded["traceEvents"])
    assert data[scanner.layout.events_end : scanner.layout.events_end + 1] == b"]"
    assert scanner.layout.other_keys == {key: value for key, value in loaded.items() if key != "traceEvents"}


def test_any_whitespace_and_nesting_around_events(tmp_path):
    """Separators with spaces, tabs, CR, newlines before or after the comma; '},{' and ']' inside
    strings and nested objects; keys after the array: seeded layouts, all read exactly."""
    rng = random.Random(1)
    events = [
        {"name": f"e{i}", "args": {"x": [{"a": "},{"}, {"b": "]"}]}} if i % 3 else {"name": "s}, ]", "n": i}
        for i in range(200)
    ]
    spaces = [" ", "\n", "\t", "\r\n  ", ""]
    for trial in range(20):
        text = (
            "{"
            + rng.choice(spaces)
            + '"a": 1,"traceEvents"'
            + rng.choice(spaces)
            + ":"
            + rng.choice(spaces)
            + "["
        )
        for i, event in enumerate(events):
            text += rng.choice(spaces) + json.dumps(event, indent=rng.choice([None, 1])) + rng.choice(spaces)
            text += "," if i < len(events) - 1 else ""
        text += (
            rng.choice(spaces) + "]" + rng.choice(spaces) + rng.choice(["", ', "z": [1, {"q": "]}"}]']) + "}"
        )
        path = _write(tmp_path, text)
        data = text.encode()
        for chunk_bytes in (5, 50, 1000, 1 << 20):
            items, scanner = _scan(path, chunk_bytes)
            assert [json.loads(raw) for _, _, raw in items] == events, (trial, chunk_bytes)
            assert all(data[offset : offset + len(raw)] == raw for _, offset, raw in items)
            assert scanner.layout.other_keys == {
                k: v for k, v in json.loads(text).items() if k != "traceEvents"
            }


def test_only_candidates_are_returned(tmp_path):
    path = _write(
        tmp_path, '{"traceEvents": [{"name": "a"}, {"name": "kernel_x"}, 3, {"name": "b", "k": "kernel"}]}'
    )
    scanner = TraceScanner(path, [re.compile(rb'"name": "kernel'), b'"kernel"'])
    found = [
        (index, bytes(raw)) for batch in scanner for index, raw in zip(batch.indexes, batch.raws, strict=True)
    ]
    assert found == [(1, b'{"name": "kernel_x"}'), (3, b'{"name": "b", "k": "kernel"}')]
    assert scanner.layout.num_events == 4


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("not json", "expected '{', found 'n' at line 1 (byte 0)"),
        (gzip.compress(b'{"traceEvents": []}', mtime=0), "is gzip-compressed: open it with readable_trace()"),
        ("[1, 2]", "expected '{'"),
        ('{"traceEvents": {}}', "'traceEvents' is not a list at line 1 (byte 16)"),
        ('{"other": 1}', "no 'traceEvents' key"),
        ("{}", "no 'traceEvents' key"),
        ('{"traceEvents": [{"a": 1},]}', "at line 1"),
        ('{"traceEvents": [{"a": 1} {"b": 2}]}', "expected ',' or ']'"),
        ('{"traceEvents": []} trailing', "trailing data after the top-level object"),
        ('{"traceEvents": [], }', "a ',' after the events but no key"),
        ('{1: 2, "traceEvents": []}', "object keys must be strings"),
        ('{"traceEvents": [', "truncated JSON"),
        ('{"traceEvents": [{"a": 1}', "truncated JSON"),
        ('{"traceEvents": [{"a": 1}]', "found end of file"),
        ('{"traceEvents": [1], "traceEvents": [2]}', "a second 'traceEvents' key"),
        ('{"traceEvents": [{"a": NaN}]}', "invalid JSON"),
        ('{\n"traceEvents": [\n{"a": 1},\n{"b": }\n]}', "at line 4"),
    ],
)
@pytest.mark.parametrize("chunk_bytes", [3, 1 << 20])
def test_malformed_traces_raise_trace_format_error(tmp_path, text, message, chunk_bytes):
    path = _write(tmp_path, text)
    with pytest.raises(TraceFormatError, match=re.escape(message)) as error:
        _scan(path, chunk_bytes)
    assert "\n" not in str(error.value)


def test_not_utf8(tmp_path):
    path = _write(tmp_path, b'{"traceEvents": [{"name": "\xff\xfe"}]}')
    with pytest.raises(TraceFormatError, match=r"not UTF-8 .* at line 1 \(byte 27\)"):
        _scan(path)


def test_200k_deep_nesting_is_a_one_line_error(tmp_path):
    """The 200,000-deep array of issue 14 (a RecursionError before): one line, with line and byte."""
    depth = 200_000
    path = _write(tmp_path, '{"traceEvents": [\n' + "[" * depth + "]" * depth + "]}")
    with pytest.raises(TraceFormatError, match=r"nested 200000 levels deep .* at line 2 \(byte \d+\)"):
        _scan(path)


def test_keys_ending_like_trace_events_are_not_it(tmp_path):
    path = _write(tmp_path, '{"a\\"traceEvents": [9], "x": {"traceEvents": [8]}, "traceEvents": [{"y": 1}]}')
    items, scanner = _scan(path)
    assert [json.loads(raw) for _, _, raw in items] == [{"y": 1}]
    assert scanner.layout.other_keys == {'a"traceEvents': [9], "x": {"traceEvents": [8]}}


def test_every_truncation_of_a_real_trace_raises_trace_format_error(tmp_path):
    """Cut the real trace at 300 places (and at every one of its last 50 bytes): always a clean error."""
    with open(fixture("cpu_train", "trace.json"), "rb") as trace_file:
        data = trace_file.read().rstrip()
    cuts = sorted(set(range(0, len(data), max(1, len(data) // 300))) | set(range(len(data) - 50, len(data))))
    for cut in cuts:
        path = _write(tmp_path, data[:cut])
        with pytest.raises(TraceFormatError):
            _scan(path, 4096)


@pytest.mark.parametrize("processes", [1, 2])
def test_write_spliced_replaces_and_inserts(tmp_path, processes):
    """Small blocks, one or two writers (each half at its own offset): the exact expected bytes."""
    source = _write(tmp_path, '{"x": 1,\n "traceEvents": [ {"a": 1},\n  {"b": 2} , {"c": 3}]\n, "y": "é"}\n')
    items, _ = _scan(source)
    (_, first, _), (_, second, raw), (_, third, _) = items
    target = tmp_path / "out.json"
    edits = [
        (first + 1, first + 1, b'"z": 0, '),
        (second, second + len(raw), b'{"B": 22}'),
        (third, third, b""),
    ]
    with helper_process(enabled=processes == 2) as helper:
        write_spliced(source, str(target), Edits.of(edits), chunk_bytes=4, helper=helper)
    assert target.read_text(encoding="utf-8") == (
        '{"x": 1,\n "traceEvents": [ {"z": 0, "a": 1},\n  {"B": 22} , {"c": 3}]\n, "y": "é"}\n'
    )


def test_write_spliced_two_writers_on_a_large_trace(tmp_path):
    """Two writers against one, on 2 MB with 20k insertions of varying lengths."""
    rng = random.Random(3)
    data = json.dumps({"traceEvents": [{"name": f"e{i}", "args": {"i": i}} for i in range(60_000)]}).encode()
    source = _write(tmp_path, data)
    positions = sorted(rng.sample(range(len(data)), 20_000))
    edits = [(at, at, b"x" * rng.randint(0, 40)) for at in positions]
    outputs = []
    for processes in (1, 2):
        target = tmp_path / f"out{processes}.json"
        with helper_process(enabled=processes == 2) as helper:
            write_spliced(source, str(target), Edits.of(edits), chunk_bytes=1 << 16, helper=helper)
        outputs.append(target.read_bytes())
    expected, copied = [], 0
    for at, _, text in edits:
        expected += [data[copied:at], text]
        copied = at
    assert outputs[0] == outputs[1] == b"".join(expected) + data[copied:]


_MUTATIONS = [
    "truncate",
    "flip byte",
    "delete run",
    "insert token",
    "deep nesting",
    "odd args",
    "odd event",
]


def _mutate(rng: random.Random, data: bytes, events: list) -> bytes:
    operation = rng.choice(_MUTATIONS)
    position = rng.randrange(len(data))
    if operation == "truncate":
        return data[:position]
    if operation == "flip byte":
        return data[:position] + bytes([data[position] ^ (1 << rng.randrange(8))]) + data[position + 1 :]
    if operation == "delete run":
        return data[:position] + data[position + rng.randint(1, 200) :]
    if operation == "insert token":
        token = rng.choice(
            [b'{"', b"]", b",", b'"x":', b"\\", b"1e999", b"-", b"\xff", b"\x00", b"}", b"null"]
        )
        return data[:position] + token + data[position:]
    mutated = [dict(event) if isinstance(event, dict) else event for event in events]
    target = rng.randrange(len(mutated))
    if operation == "deep nesting":
        depth = rng.choice([50, 1500, 20_000])
        nested = "[" * depth + "]" * depth
        text = json.dumps({**mutated[target], "args": "NESTED"}) if isinstance(mutated[target], dict) else "0"
        mutated[target] = "REPLACE"
        return (
            json.dumps({"traceEvents": mutated})
            .replace('"REPLACE"', text.replace('"NESTED"', nested))
            .encode()
        )
    if operation == "odd args" and isinstance(mutated[target], dict):
        mutated[target]["args"] = rng.choice(
            [[1, 2], "s", 3, None, True, {"inductor_x": 1}, {"External id": [1]}, {}]
        )
    elif operation == "odd event":
        mutated[target] = rng.choice(
            [None, "event", [1, 2], 12, {"ph": "X", "name": 5}, {"name": "triton_x"}]
        )
    return json.dumps({"traceEvents": mutated}).encode()


def test_fuzz_mutated_traces_through_enrichment(tmp_path):
    """Seeded mutations of a real trace (truncation, byte flips, deleted runs, stray tokens, deep
    nesting, odd args and events): the enrichment either succeeds with complete JSON (and the events
    it did not match unchanged) or raises a one-line TraceFormatError / ValueError, never anything
    else, and leaves no partial output."""
    from perf_traces.enrich import enrich_trace

    rng = random.Random(14)
    graphs = read_compiled_graphs(fixture("cuda_handwritten", "output_code.log"))
    with open(fixture("cuda_handwritten", "trace.json"), "rb") as trace_file:
        original = trace_file.read()
    events = json.loads(original)["traceEvents"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    outcomes = {"ok": 0, "error": 0}
    for _ in range(150):
        data = original
        for _ in range(rng.randint(1, 3)):
            data = _mutate(rng, data, events) if data else data
        trace_path = _write(tmp_path, data)
        output = str(out_dir / "enriched.json")
        try:
            enrich_trace(
                trace_path, graphs, output, allow_no_match=True, chunk_bytes=rng.choice([64, 4096, 1 << 20])
            )
        except ValueError as error:  # TraceFormatError, or an already enriched trace
            assert "\n" not in str(error)
            assert not os.path.exists(output)
            outcomes["error"] += 1
        else:
            with open(output, encoding="utf-8") as enriched:
                written = json.load(enriched)["traceEvents"]
            source = json.loads(data)["traceEvents"]
            for before, after in zip(source, written, strict=False):
                args = after.get("args") if isinstance(after, dict) else None
                if not (isinstance(args, dict) and any(key.startswith("inductor_") for key in args)):
                    assert after == before  # events it did not annotate are unchanged
            os.unlink(output)
            outcomes["ok"] += 1
        assert os.listdir(out_dir) == []
    assert outcomes["ok"] > 10 and outcomes["error"] > 10, outcomes  # the fuzz reaches both outcomes


@pytest.mark.parametrize("pwritev", ["short writes", "missing"])
def test_write_spliced_after_short_writes_or_without_pwritev(tmp_path, monkeypatch, pwritev):
    """A pwritev that writes only its first buffer, or none at all: the rest is written after it."""
    data = json.dumps({"traceEvents": [{"name": f"e{i}", "args": {"i": i}} for i in range(3000)]}).encode()
    source = _write(tmp_path, data)
    edits = [(at, at, b"<%d>" % at) for at in range(5, len(data), 97)]
    if pwritev == "missing":
        monkeypatch.delattr(os, "pwritev")
    else:
        monkeypatch.setattr(os, "pwritev", lambda fd, buffers, offset: os.pwrite(fd, buffers[0], offset))
    target = tmp_path / "out.json"
    write_spliced(source, str(target), Edits.of(edits), chunk_bytes=1 << 12)
    expected, copied = [], 0
    for at, _, text in edits:
        expected += [data[copied:at], text]
        copied = at
    assert target.read_bytes() == b"".join(expected) + data[copied:]


def test_a_signal_while_the_helper_starts_ends_the_helper(monkeypatch):
    """Ctrl-C while the helper pool is starting is delivered once the pool exists, and the pool is
    ended: no helper process outlives the interrupted command."""
    import multiprocessing
    import signal

    context = multiprocessing.get_context("fork")
    started = []

    def interrupted_while_starting(*args, **kwargs):
        pool = type(context).Pool(context, *args, **kwargs)
        started.append(pool)
        signal.raise_signal(signal.SIGINT)  # the workers run, and Pool() has not returned yet
        return pool

    monkeypatch.setattr(context, "Pool", interrupted_while_starting)
    with pytest.raises(KeyboardInterrupt), helper_process():
        pytest.fail("the interrupt must arrive before the body runs")
    (pool,) = started
    assert pool._pool and not any(worker.is_alive() for worker in pool._pool)


def test_a_signal_while_a_slow_helper_starts_still_ends_it():
    """The helper that has not yet run its initializer (a loaded machine) when the interrupted main
    process ends it with SIGTERM: it must die, not swallow the signal with the main process's
    deferring handler while the main process waits for it forever. In a subprocess, for its timeout."""
    code = """if True:
        import multiprocessing, signal, time
        from perf_traces import trace_stream
        quiet = trace_stream._quiet_helper
        trace_stream._quiet_helper = lambda: (time.sleep(1.0), quiet())
        context = multiprocessing.get_context("fork")
        def interrupted_while_starting(*args, **kwargs):
            pool = type(context).Pool(context, *args, **kwargs)
            signal.raise_signal(signal.SIGINT)
            return pool
        context.Pool = interrupted_while_starting
        try:
            with trace_stream.helper_process():
                print("body ran")
        except KeyboardInterrupt:
            print("interrupted")
    """
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT
    )
    assert result.returncode == 0 and result.stdout == "interrupted\n", (result.stdout, result.stderr)


def test_readable_trace_opens_torch_profilers_own_gzip_export(tmp_path):
    """export_chrome_trace to a .gz name (torch's own gzip writer): the decompressed copy is the
    trace, the scanner reads it, and the copy is gone after the block."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        torch.ones(8, 8).mm(torch.ones(8, 8)).relu()
    compressed = tmp_path / "trace.json.gz"
    profiler.export_chrome_trace(str(compressed))  # torch writes gzip for this name (once per profile)
    text = gzip.decompress(compressed.read_bytes())
    plain = tmp_path / "trace.json"
    plain.write_bytes(text)
    assert is_gzip(str(compressed)) and not is_gzip(str(plain))
    work = tmp_path / "work"
    work.mkdir()
    with readable_trace(str(compressed), str(work)) as path:
        assert pathlib.Path(path).read_bytes() == text
        scanner = TraceScanner(path, [b'"aten::mm"'])
        found = [bytes(raw) for batch in scanner for raw in batch.raws]
    assert scanner.layout.num_events == len(json.loads(text)["traceEvents"]) > 0
    assert len(found) == 1 and b'"aten::mm"' in found[0]
    assert list(work.iterdir()) == []
    with readable_trace(str(plain), str(work)) as path:
        assert path == str(plain)


def test_wants_helper_sizes_a_gzip_trace_by_its_decompressed_size(tmp_path, monkeypatch):
    from perf_traces import trace_stream

    monkeypatch.setattr(trace_stream.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(trace_stream, "_HELPER_MIN_BYTES", 100_000)
    compressed = tmp_path / "trace.json.gz"
    compressed.write_bytes(gzip.compress(b'{"traceEvents": [' + b" " * 200_000 + b"]}"))
    assert compressed.stat().st_size < 100_000 and trace_stream.wants_helper(str(compressed))
    small = tmp_path / "small.json.gz"
    small.write_bytes(gzip.compress(b'{"traceEvents": []}'))
    assert not trace_stream.wants_helper(str(small))

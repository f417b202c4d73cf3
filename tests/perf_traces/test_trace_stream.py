"""Streaming trace reader and atomic rewriter: exact spans, tiny buffers, truncated and hostile traces."""

from __future__ import annotations

import json
import os

import pytest

from perf_traces.trace_stream import TraceFormatError, iter_trace, rewrite_events
from tests.perf_traces.helpers import fixture


def _write(tmp_path, text: str, name: str = "trace.json") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name", ["cpu_train", "cuda_handwritten"])
def test_events_and_spans_match_json_load(name):
    path = fixture(name, "trace.json")
    with open(path, encoding="utf-8", newline="") as trace_file:
        text = trace_file.read()
    loaded = json.loads(text)
    events, others = [], {}
    for index, item, start, end in iter_trace(path):
        if index is None:
            others[item] = start
        else:
            assert index == len(events)
            assert json.loads(text[start:end]) == item  # the span is exactly the event's text
            events.append(item)
    assert events == loaded["traceEvents"]
    assert others == {key: value for key, value in loaded.items() if key != "traceEvents"}


@pytest.mark.parametrize("chunk_chars", [1, 3, 7, 64])
def test_tiny_buffers_give_identical_results(chunk_chars):
    """Refills in the middle of events, separators and top-level numbers (e.g. baseTimeNanoseconds)."""
    path = fixture("cpu_train", "trace.json")
    assert list(iter_trace(path, chunk_chars=chunk_chars)) == list(iter_trace(path))


def test_number_cut_at_buffer_end_is_not_shortened(tmp_path):
    path = _write(tmp_path, '{"a": 1234567890, "traceEvents": [{"ts": 12345.678}], "b": 98765}')
    items = list(iter_trace(path, chunk_chars=2))
    assert (None, "a", 1234567890, None) in items and (None, "b", 98765, None) in items
    assert items[1][1] == {"ts": 12345.678}


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "expected one of"),
        ("not json", "expected one of"),
        ("[1, 2]", "expected one of"),
        ('{"traceEvents": {}}', "not a list"),
        ('{"other": 1}', "no 'traceEvents' key"),
        ("{}", "no 'traceEvents' key"),
        ('{"traceEvents": [{"a": 1},]}', "invalid or truncated"),
        ('{"traceEvents": [{"a": 1} {"b": 2}]}', "expected ',' or ']'"),
        ('{"traceEvents": []} trailing', "trailing data"),
        ('{"traceEvents": [], }', "invalid or truncated"),
        ('{1: 2, "traceEvents": []}', "key is not a string"),
    ],
)
def test_malformed_traces_raise_trace_format_error(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(TraceFormatError, match=message):
        list(iter_trace(path, chunk_chars=5))


def test_non_utf8_trace(tmp_path):
    path = tmp_path / "trace.json"
    path.write_bytes(b'{"traceEvents": [{"name": "\xff\xfe"}]}')
    with pytest.raises(TraceFormatError, match="not UTF-8"):
        list(iter_trace(str(path)))


def test_every_truncation_of_a_real_trace_raises_trace_format_error(tmp_path):
    """Cut the real trace at 300 places (and at every one of its last 50 characters): always a clean error."""
    with open(fixture("cpu_train", "trace.json"), encoding="utf-8") as trace_file:
        text = trace_file.read().rstrip()
    cuts = sorted(set(range(0, len(text), max(1, len(text) // 300))) | set(range(len(text) - 50, len(text))))
    path = str(tmp_path / "cut.json")
    for cut in cuts:
        with open(path, "w", encoding="utf-8") as cut_file:
            cut_file.write(text[:cut])
        with pytest.raises(TraceFormatError):
            list(iter_trace(path, chunk_chars=4096))


def test_rewrite_events_replaces_only_given_spans_atomically(tmp_path):
    source = _write(tmp_path, '{"x": 1,\n "traceEvents": [ {"a": 1},\n  {"b": 2} , {"c": 3}]\n, "y": "é"}\n')
    items = [item for item in iter_trace(source) if item[0] is not None]
    target = str(tmp_path / "out.json")
    rewrite_events(source, target, iter([(items[1][2], items[1][3], lambda text: text.upper())]))
    with open(target, encoding="utf-8") as out:
        assert out.read() == '{"x": 1,\n "traceEvents": [ {"a": 1},\n  {"B": 2} , {"c": 3}]\n, "y": "é"}\n'
    assert sorted(os.listdir(tmp_path)) == ["out.json", "trace.json"]


def test_rewrite_events_failure_leaves_no_output(tmp_path):
    source = _write(tmp_path, '{"traceEvents": [{"a": 1}]}')
    items = [item for item in iter_trace(source) if item[0] is not None]

    def explode(_: str) -> str:
        raise RuntimeError("boom")

    target = str(tmp_path / "out.json")
    with pytest.raises(RuntimeError, match="boom"):
        rewrite_events(source, target, iter([(items[0][2], items[0][3], explode)]))
    assert sorted(os.listdir(tmp_path)) == ["trace.json"]


def test_fuzz_corrupted_traces_through_enrichment(tmp_path):
    """Seeded random cuts, deletions, garbage in a real trace: TraceFormatError or success, never partial."""
    import random

    from perf_traces.enrich import enrich_trace
    from pytorch_scripts_common.inductor_log import read_inductor_log

    rng = random.Random(0)
    modules = read_inductor_log(fixture("cuda_handwritten", "output_code.log")).modules
    with open(fixture("cuda_handwritten", "trace.json"), encoding="utf-8") as trace_file:
        text = trace_file.read()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    trace_path = str(tmp_path / "trace.json")
    for _ in range(60):
        mutated = text
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(mutated))
            operation = rng.randrange(3)
            if operation == 0:
                mutated = mutated[:position]
            elif operation == 1:
                mutated = mutated[:position] + mutated[position + rng.randint(1, 200) :]
            else:
                mutated = (
                    mutated[:position]
                    + rng.choice(['{"', "]", ",", '"x":', "\\", "1e999"])
                    + mutated[position:]
                )
        with open(trace_path, "w", encoding="utf-8") as trace_file:
            trace_file.write(mutated)
        output = str(out_dir / "enriched.json")
        try:
            enrich_trace(trace_path, modules, output, allow_no_match=True)
        except TraceFormatError:
            assert not os.path.exists(output)
        else:
            with open(output, encoding="utf-8") as enriched:
                json.load(enriched)  # what was written is complete JSON
            os.unlink(output)
        assert os.listdir(out_dir) == []

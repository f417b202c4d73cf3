"""The enrichment against an independent reference, event by event.

The reference ``json.load``s the whole trace, picks the records with a plain loop over the decoded
events (the rules of the README's "How events are matched", step 1), runs the same matching and
kernel table on them, and adds each matched event's args to the decoded event. The enrichment reads
the trace as bytes (pieces, candidates, two readers) and writes it by byte insertions; decoded, its
output must equal the reference's. Run on every committed fixture and on awkward re-serialisations
of two of them: random whitespace between tokens (tabs, CR, newlines), ``traceEvents`` among other
keys, escaped quotes / braces / backslashes and non-ASCII text (raw and ``\\u`` escaped) in strings,
nested args, args first / null / empty / absent / a list / holding ``inductor_`` keys, kernel names
inside strings of other events, and pieces of 61 bytes to 1 MB so that events straddle them.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
from array import array
from typing import Any

import numpy as np
import pytest

from perf_traces.enrich import EnrichPlan, match_trace
from perf_traces.kernel_table import KernelTable, event_args
from perf_traces.log_index import KERNEL_TABLE_CATEGORY, LogIndex, NameKind
from perf_traces.log_kernels import CompiledGraph, read_compiled_graphs
from perf_traces.matching import Matcher
from perf_traces.trace_candidates import APPEND, FIRST, KEEP, NEW_ARGS, REENCODE
from perf_traces.trace_records import TraceRecords
from perf_traces.trace_stream import helper_process
from tests.perf_traces.helpers import FIXTURES, fixture

_FIXTURES = sorted(name for name in os.listdir(FIXTURES) if os.path.isdir(os.path.join(FIXTURES, name)))
_CATEGORIES = {"kernel": "gpu", "cpu_op": "cpu", "user_annotation": "cpu"}
_SPAN_KINDS = {NameKind.FORWARD, NameKind.BACKWARD, NameKind.CALL}


def _log_path(name: str) -> str:
    folder = fixture(name, "torch_trace")
    return folder if os.path.isdir(folder) else fixture(name, "output_code.log")


def _times(event: dict) -> tuple[float, float] | None:
    ts, dur = event.get("ts"), event.get("dur")
    if not (isinstance(ts, int | float) and isinstance(dur, int | float)):
        return None
    try:
        return float(ts), float(ts) + float(dur)
    except OverflowError:
        return None


def _reference_records(events: list[Any], log: LogIndex) -> TraceRecords:
    """The records of the decoded events, one event at a time."""
    records = TraceRecords()
    rows: list[tuple] = []
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            continue
        name, category = event.get("name"), event.get("cat")
        if not isinstance(name, str) or event.get("ph") != "X":
            records.has_kernel_table |= category == KERNEL_TABLE_CATEGORY
            continue
        if name not in records.name_ids:
            records.name_ids[name] = len(records.names)
            records.names.append(name)
            records.name_kinds.append(log.name_kind(name))
        kind = records.name_kinds[records.name_ids[name]]
        args = event.get("args")
        external_id = args.get("External id") if isinstance(args, dict) else None
        if type(external_id) is not int or not -(1 << 63) <= external_id < 1 << 63:
            external_id = None
        times = _times(event)
        where = _CATEGORIES.get(category) if isinstance(category, str) else None
        if where == "gpu" and external_id is not None:
            start, end = times or (math.nan, math.nan)
            rows.append((1, -1, start, end, index, name, external_id))
            continue
        if where != "cpu" or times is None or kind == NameKind.OTHER:
            continue
        try:
            thread = records.threads.setdefault((event.get("pid"), event.get("tid")), len(records.threads))
        except TypeError:
            continue
        if kind in _SPAN_KINDS:
            for column, value in zip(
                (records.span_thread, records.span_ts, records.span_end, records.span_kind),
                (thread, *times, kind),
                strict=True,
            ):
                column.append(value)
            continue
        if kind == NameKind.KERNEL and isinstance(args, dict):
            path, kernel_hash = args.get("kernel_file"), args.get("kernel_hash")
            if isinstance(path, str) and path:
                records.kernel_file[len(rows)] = path
            elif isinstance(kernel_hash, str) and kernel_hash in log.kernel_path_by_hash:
                records.kernel_file[len(rows)] = log.kernel_path_by_hash[kernel_hash]
        external_id = external_id if external_id is not None and external_id >= 0 else -1
        rows.append((0, thread, *times, index, name, external_id))
    for is_gpu, thread, start, end, index, name, external_id in rows:
        records.is_gpu.append(is_gpu)
        records.thread.append(thread)
        records.ts.append(start)
        records.end.append(end)
        records.index.append(index)
        records.name_id.append(records.name_ids[name])
        records.external_id.append(external_id)
    for column in (records.start_offset, records.end_offset, records.insert_at):
        column.extend(array("q", [0]) * len(rows))
    records.insert_mode.extend(array("b", [0]) * len(rows))
    records.num_events = len(events)
    return records


def _reference_enrichment(trace: dict, graphs: list[CompiledGraph]) -> tuple[dict, TraceRecords, int]:
    """The enriched trace as the reference computes it, its records and the number of matched events."""
    log = LogIndex.build(graphs)
    records = _reference_records(trace["traceEvents"], log)
    matcher = Matcher(records, log)
    matcher.run()
    table = KernelTable(matcher)
    enriched = copy.deepcopy(trace)
    events = enriched["traceEvents"]
    for row, code, launch_row in zip(
        table.rows.tolist(), table.codes.tolist(), table.launch_rows.tolist(), strict=True
    ):
        launch_op = records.name(launch_row) if launch_row >= 0 else None
        added = event_args(table, table.objects[code], launch_op)
        event = events[records.index[row]]
        args = event.get("args")
        if args is None:  # absent or null
            event["args"] = added
        elif isinstance(args, dict):
            event["args"] = {**args, **added}  # an earlier enrichment's keys are replaced
    events.extend(json.loads(text) for text in table.events_json())
    return enriched, records, matcher.num_matched


def _fast_enrichment(
    path: str, graphs: list[CompiledGraph], output: str, chunk_bytes: int, two_processes: bool
) -> tuple[dict, EnrichPlan]:
    with helper_process(two_processes) as helper:
        plan = match_trace(path, graphs, chunk_bytes=chunk_bytes, helper=helper)
        plan.write(output, helper=helper)
    with open(output, encoding="utf-8") as enriched:
        return json.load(enriched), plan


def _assert_same_records(fast: TraceRecords, reference: TraceRecords) -> None:
    assert len(fast) == len(reference) and fast.num_events == reference.num_events
    for column in ("is_gpu", "index", "external_id"):
        assert getattr(fast, column) == getattr(reference, column), column
    for column in ("ts", "end"):  # NaN for GPU kernels without times: compared as arrays
        np.testing.assert_array_equal(
            np.frombuffer(getattr(fast, column)), np.frombuffer(getattr(reference, column))
        )
    assert [fast.name(row) for row in range(len(fast))] == [
        reference.name(row) for row in range(len(reference))
    ]
    threads = {local: key for key, local in fast.threads.items()}
    reference_threads = {local: key for key, local in reference.threads.items()}
    assert [threads.get(t) for t in fast.thread] == [reference_threads.get(t) for t in reference.thread]
    assert fast.kernel_file == reference.kernel_file
    assert [(threads[s.thread], s.ts, s.end, s.kind) for s in fast.spans] == [
        (reference_threads[s.thread], s.ts, s.end, s.kind) for s in reference.spans
    ]
    assert fast.has_kernel_table == reference.has_kernel_table


def _assert_same_enrichment(
    trace_path: str,
    trace: dict,
    graphs: list[CompiledGraph],
    output: str,
    chunk_bytes: int,
    two_processes: bool,
) -> EnrichPlan:
    fast, plan = _fast_enrichment(trace_path, graphs, output, chunk_bytes, two_processes)
    expected, records, matched = _reference_enrichment(trace, graphs)
    _assert_same_records(plan.records, records)
    assert plan.summary.num_matched == matched > 0
    assert fast.keys() == expected.keys()
    assert len(fast["traceEvents"]) == len(expected["traceEvents"])
    for index, (event, expected_event) in enumerate(
        zip(fast["traceEvents"], expected["traceEvents"], strict=True)
    ):
        assert event == expected_event, index
    assert {key: value for key, value in fast.items() if key != "traceEvents"} == {
        key: value for key, value in expected.items() if key != "traceEvents"
    }
    return plan


@pytest.mark.parametrize("name", _FIXTURES)
def test_every_fixture_against_the_reference(tmp_path, name):
    path = fixture(name, "trace.json")
    with open(path, encoding="utf-8") as trace_file:
        trace = json.load(trace_file)
    graphs = read_compiled_graphs(_log_path(name))
    _assert_same_enrichment(path, trace, graphs, str(tmp_path / "out.json"), 1 << 20, False)


_WHITESPACE = ["", " ", "  ", "\n", "\t", "\r\n", " \n\t "]
_AWKWARD_TEXT = [
    'he said "}, {\\"name\\": \\"graph_0_cpp_x\\"}" ] [ \\ /',
    "é, 中文, 🙂, \u2028",
    '{"name": "graph_0_cpp_fused_native_layer_norm_0", "ph": "X"}',
    '\\u0000 \\\\" }}}',
]


def _dumps(value: Any, rng: random.Random, ensure_ascii: bool) -> str:
    """JSON with random whitespace between every two tokens."""

    def space() -> str:
        return rng.choice(_WHITESPACE)

    if isinstance(value, dict):
        members = [
            space()
            + json.dumps(key, ensure_ascii=ensure_ascii)
            + space()
            + ":"
            + space()
            + _dumps(item, rng, ensure_ascii)
            for key, item in value.items()
        ]
        return "{" + ",".join(member + space() for member in members) + (space() if not members else "") + "}"
    if isinstance(value, list):
        items = [space() + _dumps(item, rng, ensure_ascii) + space() for item in value]
        return "[" + ",".join(items) + (space() if not items else "") + "]"
    return json.dumps(value, ensure_ascii=ensure_ascii)


def _likely_matched(event: dict) -> bool:
    """A kernel event, a GPU kernel or an extern op of the pairs' logs."""
    name = event.get("name")
    return event.get("ph") == "X" and (
        event.get("cat") == "kernel"
        or str(name).startswith(("graph_", "triton_"))
        or name in ("aten::mm", "aten::addmm")
    )


def _awkward_events(events: list[Any], rng: random.Random) -> list[Any]:
    """The events with odd args (each likely matched event in turn gets the next kind of change), and
    decoys: kernel names in nested objects and strings of other events, non-ASCII names."""
    result = []
    complete_events = 0
    for event in copy.deepcopy(events):
        if isinstance(event, dict) and _likely_matched(event):
            args = event.get("args") if isinstance(event.get("args"), dict) else {}
            change = complete_events % 8
            complete_events += 1
            text = rng.choice(_AWKWARD_TEXT)
            if change == 0:  # args first, with escaped text and nesting
                odd_args = {**args, "note": text, "deep": [{"a": [1, {"b": "}"}]}]}
                event = {"args": odd_args, **{key: value for key, value in event.items() if key != "args"}}
            elif change == 1:
                event["args"] = None
            elif change == 2:
                event.pop("args", None)
            elif change == 3:
                event["args"] = {}
            elif change == 4:
                event["args"] = {**args, "inductor_kernel_id": "old", "text": text}
            elif change == 5:
                event["args"] = [1, {"x": text}]
            elif change == 6:
                event["args"] = {**args, "nested": {"name": "graph_0_cpp_fused_relu_1", "s": text}}
        result.append(event)
        if rng.random() < 0.2:
            result.append(
                {
                    "ph": rng.choice(["X", "i", "s"]),
                    "cat": "cpu_op",
                    "name": rng.choice([*_AWKWARD_TEXT, "réseau ünïcode", "aten::mm "]),
                    "pid": 1,
                    "tid": 2,
                    "ts": rng.random() * 1e6,
                    "dur": 1.5,
                    "args": {"text": rng.choice(_AWKWARD_TEXT)},
                }
            )
    return result


def _awkward_trace(trace: dict, rng: random.Random) -> dict:
    """The trace with its events made awkward and traceEvents between other keys."""
    others = {key: value for key, value in trace.items() if key != "traceEvents"}
    before = {"before": {"traceEvents": [1], "s": '}], "traceEvents": ['}} if rng.random() < 0.7 else {}
    after = {"zz": [1, {"q": "]}"}]} if rng.random() < 0.7 else {}
    return {**before, **others, "traceEvents": _awkward_events(trace["traceEvents"], rng), **after}


@pytest.mark.parametrize("name", ["cpu_train", "cuda_handwritten"])
@pytest.mark.parametrize("seed", range(6))
def test_awkward_traces_against_the_reference(tmp_path, name, seed):
    """Seeds 0 and 3 are written as profilers write (', ' and ': '), 1 and 4 indented, 2 and 5 with
    random whitespace; even seeds escape non-ASCII text."""
    rng = random.Random(seed)
    with open(fixture(name, "trace.json"), encoding="utf-8") as trace_file:
        trace = _awkward_trace(json.load(trace_file), rng)
    path = tmp_path / "awkward.json"
    ensure_ascii = seed % 2 == 0
    if seed % 3 == 0:
        text = json.dumps(trace, ensure_ascii=ensure_ascii)
    elif seed % 3 == 1:
        text = json.dumps(trace, ensure_ascii=ensure_ascii, indent=1)
    else:
        text = _dumps(trace, rng, ensure_ascii)
    path.write_text(text, encoding="utf-8")
    graphs = read_compiled_graphs(fixture(name, "output_code.log"))
    for chunk_bytes in (61, 4096, 1 << 20):
        for two_processes in (False, True):
            plan = _assert_same_enrichment(
                str(path), json.loads(text), graphs, str(tmp_path / "out.json"), chunk_bytes, two_processes
            )
    if name == "cpu_train":  # its matched events are matched by name, whatever their args: each change occurs
        modes = set(np.frombuffer(plan.records.insert_mode, np.int8)[plan.table.rows].tolist())
        assert modes == {APPEND, FIRST, NEW_ARGS, REENCODE, KEEP}, modes

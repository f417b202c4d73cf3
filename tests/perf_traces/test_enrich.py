"""Matching on real CPU pairs (fwd+bwd, inference, graph break) and the hand-written CUDA fixture;
the kernel table; the per-event args equal those the enrichment wrote before the table."""

from __future__ import annotations

import json
import os
import re
import tempfile

import pytest

from perf_traces.enrich import NoMatchError, enrich_trace, match_trace
from perf_traces.log_kernels import read_compiled_graphs
from tests.perf_traces.helpers import (
    CPU_FIXTURES,
    FIXTURES,
    enclosing_kind,
    expected_annotation_cases,
    fixture,
    full_annotation,
    kernel_table,
    load_events,
)

_CPP_KERNEL_RE = re.compile(r"^graph_(\d+)_(cpp_\w+)$")


def _enrich(tmp_path, name: str, log_name: str | None = None, **kwargs):
    graphs = read_compiled_graphs(fixture(log_name or name, "output_code.log"), strict=True)
    output = str(tmp_path / f"{name}_enriched.json")
    summary = enrich_trace(fixture(name, "trace.json"), graphs, output, **kwargs)
    return summary, output, graphs


def _full_args(events: list[dict]) -> list[dict]:
    """Each event's args with its kernel-table entry folded in (the args before the kernel table)."""
    table = kernel_table(events)
    result = []
    for event in events:
        args = event.get("args") if isinstance(event, dict) else None
        if (
            isinstance(args, dict)
            and "inductor_kernel_id" in args
            and event.get("cat") != "inductor_kernel_table"
        ):
            plain = {key: value for key, value in args.items() if not key.startswith("inductor_")}
            result.append({**plain, **full_annotation(args, table)})
        else:
            result.append(args)
    return result


@pytest.mark.parametrize("name", CPU_FIXTURES)
def test_every_inductor_kernel_event_matched_to_its_module(tmp_path, name):
    summary, output, modules = _enrich(tmp_path, name)
    events = load_events(output)
    full_args = _full_args(events)
    kernel_events = [
        (e, full)
        for e, full in zip(events, full_args, strict=True)
        if e.get("cat") == "cpu_op" and _CPP_KERNEL_RE.match(e["name"])
    ]
    assert kernel_events, "the fixture must contain C++ kernel events"
    for event, args in kernel_events:
        graph_id, kernel_name = _CPP_KERNEL_RE.match(event["name"]).groups()
        # independent expectations: the graph id in the profiled name, the kind from the enclosing span
        assert args["inductor_kernel"] == kernel_name
        assert args["inductor_aot_id"] == f"{graph_id}_{enclosing_kind(events, event)}", event["name"]
        assert event["args"]["inductor_graph_kind"] == enclosing_kind(events, event)
        module = next(m for m in modules if m.aot_id == args["inductor_aot_id"])
        assert args["inductor_kernel_source"] == module.kernels[kernel_name].source
        assert f'"{event["name"]}"' in args["inductor_kernel_source"]  # the source records this very name
        assert args["inductor_output_code_path"] == module.output_code_path
        assert "inductor_match_note" not in args
    assert summary.unmatched_by_name == {}
    assert summary.log_kernels_not_in_trace == []
    assert summary.matched_by_kind["cpu kernel op"] == len(kernel_events)
    # every extern call of every module that ran was matched to an aten:: event
    assert summary.matched_by_kind["extern aten op"] == sum(
        1 for module in modules for call in module.calls if call.kind == "extern"
    )


def test_train_pair_hand_checked_events(tmp_path):
    _, output, _ = _enrich(tmp_path, "cpu_train")
    events = load_events(output)
    by_name = {}
    for event, args in zip(events, _full_args(events), strict=True):
        by_name.setdefault(event["name"], []).append({**event, "args": args})
    layer_norm = by_name["graph_0_cpp_fused_native_layer_norm_0"][0]["args"]
    assert layer_norm["inductor_aot_id"] == "0_forward" and layer_norm["inductor_graph_kind"] == "forward"
    assert layer_norm["inductor_compile_id"] == "0/0"
    assert layer_norm["inductor_ops_from_kernel_name"] == ["native_layer_norm"]
    assert layer_norm["inductor_call"].startswith("cpp_fused_native_layer_norm_0(")
    backward = by_name["graph_0_cpp_fused_threshold_backward_0"][0]["args"]
    assert backward["inductor_aot_id"] == "0_backward"
    addmms = [e["args"] for e in by_name["aten::addmm"]]
    assert [a["inductor_source_nodes"] for a in addmms] == [["input_2"], ["input_5"]]
    assert all(a["inductor_extern_call"].startswith("extern_kernels.addmm(") for a in addmms)
    mms = [e["args"] for e in by_name["aten::mm"]]
    assert [a["inductor_source_nodes"] for a in mms] == [
        ["input_5", "permute_2", "mm"],
        ["permute_3", "mm_1"],
        ["input_2", "permute_6", "mm_2"],
        ["permute_7", "mm_3"],
    ]
    assert all(a["inductor_aot_id"] == "0_backward" for a in mms)
    # ops nested inside the extern calls are not matched
    assert all("inductor_aot_id" not in e["args"] for e in by_name["aten::resolve_conj"])


def test_inference_pair_kind(tmp_path):
    _, output, _ = _enrich(tmp_path, "cpu_inference")
    events = load_events(output)
    kernel_args = [
        args for e, args in zip(events, _full_args(events), strict=True) if _CPP_KERNEL_RE.match(e["name"])
    ]
    assert {a["inductor_aot_id"] for a in kernel_args} == {"0_inference"}
    assert {a["inductor_graph_kind"] for a in kernel_args} == {"inference"}


def test_graph_break_repeated_names_disambiguated(tmp_path):
    _, output, _ = _enrich(tmp_path, "cpu_graph_break")
    events = load_events(output)
    seen = {
        (e["name"], args["inductor_aot_id"])
        for e, args in zip(events, _full_args(events), strict=True)
        if _CPP_KERNEL_RE.match(e["name"])
    }
    assert ("graph_0_cpp_fused_native_layer_norm_0", "0_forward") in seen
    assert ("graph_1_cpp_fused_native_layer_norm_0", "1_forward") in seen
    assert ("graph_0_cpp_fused_threshold_backward_0", "0_backward") in seen
    assert ("graph_1_cpp_fused_threshold_backward_0", "1_backward") in seen


def test_cuda_fixture_launches_gpu_kernels_and_extern_kernels(tmp_path):
    """HAND-WRITTEN fixture (see perf_traces/fixtures/cuda_handwritten/make_fixture.py)."""
    summary, output, _ = _enrich(tmp_path, "cuda_handwritten")
    events = [
        {**e, "args": args}
        for e, args in zip(load_events(output), _full_args(load_events(output)), strict=True)
    ]
    events = [
        e
        for e in events
        if e.get("cat") != "inductor_kernel_table" and e.get("ph") != "M" or e.get("pid") != 1 << 30
    ]
    launches = [
        e for e in events if e.get("cat") == "cpu_op" and e["name"].startswith("triton_per_fused_native")
    ]
    for event in launches:
        # expectation from the trace itself: the kernel_file arg names the right module's kernel
        assert event["args"]["inductor_kernel_path"] == event["args"]["kernel_file"]
    width_by_graph = {"0": "64", "1": "128"}
    for event in events:
        args = event.get("args") or {}
        if (
            event.get("cat") == "kernel"
            and event["name"].startswith("triton_")
            and "user_library" not in event["name"]
        ):
            graph = args["inductor_aot_id"].split("_")[0]
            assert args["inductor_launch_op"] == event["name"]
            assert f"r0_numel = {width_by_graph[graph]}" in args["inductor_kernel_source"] or (
                f"% {width_by_graph[graph]}" in args["inductor_kernel_source"]
                or "threshold_backward" in event["name"]
            )
        if event.get("cat") == "kernel" and event["name"].startswith("sm90_"):
            assert args["inductor_extern_call"].startswith("extern_kernels.mm(")
    forward_kinds = [
        (e["args"]["inductor_aot_id"], e["args"]["inductor_kernel_path"])
        for e in events
        if e.get("cat") == "kernel" and e["name"] == "triton_per_fused_native_layer_norm_0"
    ]
    assert forward_kinds == [
        ("0_forward", "/tmp/torchinductor_user/ab/cab0ln.py"),
        ("1_forward", "/tmp/torchinductor_user/ef/cef1ln.py"),
    ]
    backward_order = [
        e["args"]["inductor_aot_id"]
        for e in events
        if e.get("cat") == "kernel" and e["name"] == "triton_poi_fused_threshold_backward_0"
    ]
    assert backward_order == ["1_backward", "0_backward"]
    assert summary.matched_by_kind == {
        "kernel launch op": 8,
        "gpu kernel": 8,
        "extern aten op": 6,
        "gpu kernel of extern op": 6,
    }
    assert dict(summary.unmatched_by_name) == {"triton_user_library_kernel": 2}
    user_kernel = [e for e in events if e["name"] == "triton_user_library_kernel"]
    assert all(not any(k.startswith("inductor_") for k in e.get("args") or {}) for e in user_kernel)


def test_cuda_without_kernel_file_args_notes_ambiguity(tmp_path):
    """Older launches carry no kernel_file/kernel_hash: graphs 0 and 1 share kernel names, so say so."""
    with open(fixture("cuda_handwritten", "trace.json"), encoding="utf-8") as trace_file:
        trace = json.load(trace_file)
    for event in trace["traceEvents"]:
        event.get("args", {}).pop("kernel_file", None)
        event.get("args", {}).pop("kernel_hash", None)
    stripped = tmp_path / "trace.json"
    stripped.write_text(json.dumps(trace), encoding="utf-8")
    graphs = read_compiled_graphs(fixture("cuda_handwritten", "output_code.log"))
    summary = enrich_trace(str(stripped), graphs, str(tmp_path / "out.json"))
    assert summary.num_ambiguous_spans == 4
    notes = [
        (e.get("args") or {}).get("inductor_match_note", "") for e in load_events(str(tmp_path / "out.json"))
    ]
    assert sum("ambiguous" in note for note in notes) == summary.num_matched


def test_cuda_kernel_hash_without_kernel_file_still_disambiguates(tmp_path):
    with open(fixture("cuda_handwritten", "trace.json"), encoding="utf-8") as trace_file:
        trace = json.load(trace_file)
    for event in trace["traceEvents"]:
        if "kernel_file" in event.get("args", {}):
            event["args"]["kernel_file"] = ""  # kernel_hash ("cab0ln" ...) is left
    stripped = tmp_path / "trace.json"
    stripped.write_text(json.dumps(trace), encoding="utf-8")
    graphs = read_compiled_graphs(fixture("cuda_handwritten", "output_code.log"))
    summary = enrich_trace(str(stripped), graphs, str(tmp_path / "out.json"))
    assert summary.num_ambiguous_spans == 0 and summary.num_matched == 28
    events = load_events(str(tmp_path / "out.json"))
    for args in _full_args(events):
        args = args or {}
        if args.get("kernel_hash"):
            assert args["inductor_kernel_path"].endswith(f"/{args['kernel_hash']}.py")


def _expected_cases() -> dict:
    with open(os.path.join(FIXTURES, "expected_annotations.json"), encoding="utf-8") as expected_file:
        return json.load(expected_file)


@pytest.mark.parametrize("case", sorted(_expected_cases()["cases"]))
def test_matched_events_carry_what_the_enrichment_wrote_before_the_kernel_table(case):
    """Per event, id + kernel-table entry = the args written before the table (committed expectation,
    made by the earlier implementation: perf_traces/fixtures/expected_annotations.json), and every
    other event is byte-for-byte unchanged apart from the added args."""
    expected = _expected_cases()
    with tempfile.TemporaryDirectory() as tmp:
        trace, log_fixture = expected_annotation_cases(tmp)[case]
        graphs = read_compiled_graphs(fixture(log_fixture, "output_code.log"), strict=True)
        output = os.path.join(tmp, "out.json")
        summary = enrich_trace(trace, graphs, output, chunk_bytes=4096)
        with open(trace, encoding="utf-8") as source:
            original = json.load(source)
        enriched = load_events(output)
    case_expected = expected["cases"][case]
    assert dict(summary.matched_by_kind) == case_expected["matched_by_kind"]
    assert len(enriched) == case_expected["num_events"] + 2 + summary.num_kernel_table_entries
    table = kernel_table(enriched)
    assert len(table) == summary.num_kernel_table_entries
    got = {}
    for index, (before, after) in enumerate(zip(original["traceEvents"], enriched, strict=False)):
        added = {
            key: value for key, value in (after.get("args") or {}).items() if key.startswith("inductor_")
        }
        if added:
            got[str(index)] = full_annotation(added, table)
            after = {
                **after,
                "args": {k: v for k, v in after["args"].items() if not k.startswith("inductor_")},
            }
        assert after == before
    want = {}
    for index, annotation_index in case_expected["events"].items():
        annotation = dict(expected["annotations"][annotation_index])
        if "inductor_kernel_source" in annotation:
            annotation["inductor_kernel_source"] = expected["sources"][
                annotation["inductor_kernel_source"]["source_index"]
            ]
        want[index] = annotation
    assert got == want


def test_kernel_source_stored_once_per_kernel(tmp_path):
    """The synthetic 4-copy CUDA trace: 112 matched events, 14 table entries, each source once."""
    from perf_traces.make_synthetic_trace import make_synthetic_trace

    synthetic = str(tmp_path / "synthetic.json")
    make_synthetic_trace(fixture("cuda_handwritten", "trace.json"), synthetic, 60_000)
    graphs = read_compiled_graphs(fixture("cuda_handwritten", "output_code.log"))
    output = str(tmp_path / "out.json")
    summary = enrich_trace(synthetic, graphs, output)
    with open(output, encoding="utf-8") as enriched:
        text = enriched.read()
    events = json.loads(text)["traceEvents"]
    table = kernel_table(events)
    assert summary.num_matched == 112 and len(table) == summary.num_kernel_table_entries == 14
    for graph in graphs:
        for kernel in graph.kernels.values():
            assert text.count(json.dumps(kernel.source)[1:-1]) == 1, kernel.name
    matched = [
        e
        for e in events
        if "inductor_kernel_id" in (e.get("args") or {}) and e.get("cat") != "inductor_kernel_table"
    ]
    assert len(matched) == 112
    assert all(
        {"inductor_kernel_id", "inductor_graph_kind", "inductor_op_summary"} <= set(e["args"])
        for e in matched
    )


def test_output_at_most_1_1x_the_benchmark_trace(tmp_path):
    """The benchmark's input (cpu_train repeated; 12 of 97 events matched): the enriched trace is at
    most 1.1x it (issue 17), here at 5 MB, where the kernel table adds ~0.4 %."""
    from perf_traces.make_synthetic_trace import make_synthetic_trace

    synthetic = str(tmp_path / "synthetic.json")
    make_synthetic_trace(fixture("cpu_train", "trace.json"), synthetic, 5_000_000)
    output = str(tmp_path / "out.json")
    summary = enrich_trace(synthetic, read_compiled_graphs(fixture("cpu_train", "output_code.log")), output)
    assert summary.num_matched > 3000
    assert os.path.getsize(output) <= 1.1 * os.path.getsize(synthetic)


def test_list_args_are_kept(tmp_path):
    """Issue 14: a matched event whose args is a list kept them (and is reported), never dropped."""
    with open(fixture("cpu_train", "trace.json"), encoding="utf-8") as trace_file:
        trace = json.load(trace_file)
    kernel = next(e for e in trace["traceEvents"] if e.get("name") == "graph_0_cpp_fused_native_layer_norm_0")
    kernel["args"] = [1, {"x": 2}]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(trace), encoding="utf-8")
    graphs = read_compiled_graphs(fixture("cpu_train", "output_code.log"))
    summary = enrich_trace(str(path), graphs, str(tmp_path / "out.json"))
    assert summary.num_matched == 12
    assert dict(summary.not_annotated_by_name) == {"graph_0_cpp_fused_native_layer_norm_0": 1}
    assert any("args is not an object: 1" in line for line in summary.lines())
    out = load_events(str(tmp_path / "out.json"))
    assert [e for e in out if e.get("name") == kernel["name"]][0] == kernel


@pytest.mark.parametrize(
    "args_text, expected",
    [
        ('"args": {"a": 1}, "z": 2', {"a": 1}),  # args not last: re-encoded
        ('"args": null', {}),
        ('"args": {"inductor_kernel_id": "old", "b": 3}', {"b": 3}),  # an earlier enrichment's keys replaced
        ('"args": {}', {}),
        ('"x": 1', {}),  # no args at all
        ('"args": {\n    "a": [1, {"b": "}"}]\n  }\n', {"a": [1, {"b": "}"}]}),
    ],
)
def test_args_layouts(tmp_path, args_text, expected):
    """Wherever args is (or is not), the added keys end up in it and nothing else changes."""
    with open(fixture("cpu_train", "trace.json"), encoding="utf-8") as trace_file:
        text = trace_file.read()
    name = "graph_0_cpp_fused_native_layer_norm_0"
    events = json.loads(text)["traceEvents"]
    index = next(i for i, e in enumerate(events) if e.get("name") == name)
    event = events[index]
    replacement = (
        f'{{"ph": "X", "cat": "cpu_op", "name": "{name}", "pid": {event["pid"]}, "tid": {event["tid"]}, '
        f'"ts": {event["ts"]}, "dur": {event["dur"]}, {args_text}}}'
    )
    events[index] = "REPLACE"
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}).replace('"REPLACE"', replacement), encoding="utf-8")
    graphs = read_compiled_graphs(fixture("cpu_train", "output_code.log"))
    summary = enrich_trace(str(path), graphs, str(tmp_path / "out.json"))
    assert summary.num_matched == 12
    out = load_events(str(tmp_path / "out.json"))[index]
    assert {k: v for k, v in out["args"].items() if not k.startswith("inductor_")} == expected
    assert out["args"]["inductor_graph_kind"] == "forward" and out["args"]["inductor_kernel_id"].startswith(
        "k"
    )
    assert {k: v for k, v in out.items() if k != "args"} == {
        k: v for k, v in json.loads(replacement).items() if k != "args"
    }


def test_enriched_trace_is_refused_as_input(tmp_path):
    summary, output, graphs = _enrich(tmp_path, "cpu_train")
    with pytest.raises(ValueError, match="already enriched"):
        match_trace(output, graphs)


def test_kernel_stats(tmp_path):
    """CPU pair: per kernel the CPU time is the sum of its events' dur (from the trace itself)."""
    graphs = read_compiled_graphs(fixture("cpu_train", "output_code.log"))
    plan = match_trace(fixture("cpu_train", "trace.json"), graphs)
    stats = plan.kernel_stats()
    assert len(stats) == 12 and all(row.cpu_count == 1 and row.device_count == 0 for row in stats)
    events = load_events(fixture("cpu_train", "trace.json"))
    layer_norm = next(row for row in stats if row.name == "cpp_fused_native_layer_norm_0")
    event = next(e for e in events if e.get("name") == "graph_0_cpp_fused_native_layer_norm_0")
    # durations are end - start of timestamps ~4.6e12 us: float64 resolves them to ~1e-3 us
    assert layer_norm.cpu_total_us == pytest.approx(event["dur"], abs=1e-3)
    assert [row.cpu_total_us for row in stats] == sorted((row.cpu_total_us for row in stats), reverse=True)
    cuda = match_trace(
        fixture("cuda_handwritten", "trace.json"),
        read_compiled_graphs(fixture("cuda_handwritten", "output_code.log")),
    )
    cuda_stats = cuda.kernel_stats()
    # the hand-written GPU kernels: 4 (layer norm) / 9 (mm) / 2 (relu) / 5 (backward) us each, one per graph
    assert sum(row.device_total_us for row in cuda_stats) == pytest.approx(
        83.0 - 3.0
    )  # minus the eager kernel
    assert cuda_stats[0].device_total_us == 9.0 and cuda_stats[0].name == "aten::mm"


def test_log_and_trace_from_different_runs(tmp_path):
    with pytest.raises(NoMatchError, match="different runs") as error:
        _enrich(tmp_path, "cpu_train", log_name="cuda_handwritten", allow_no_match=False)
    assert error.value.summary.num_matched == 0
    assert not list(tmp_path.iterdir())
    with pytest.raises(NoMatchError, match="only inference graphs"):
        _enrich(tmp_path, "cpu_train", log_name="cpu_inference", allow_no_match=False)


def test_no_output_code_reason(tmp_path):
    summary = enrich_trace(fixture("cpu_train", "trace.json"), [], None)
    assert summary.num_matched == 0 and "no output code" in summary.zero_match_reason


def test_hostile_events_are_skipped_not_fatal(tmp_path):
    events = load_events(fixture("cpu_train", "trace.json"))
    kernel = next(e for e in events if e["name"] == "graph_0_cpp_fused_native_layer_norm_0")
    hostile = [
        {**kernel, "pid": [1, 2]},
        {**kernel, "tid": {"a": 1}},
        {**kernel, "name": 12},
        {**kernel, "args": [1, 2]},
        {**kernel, "ts": "soon"},
        {**kernel, "dur": None},
        {**kernel, "ph": None},
        "a string event",
        [1, 2, 3],
        None,
        {"ph": "X", "cat": "kernel", "name": "triton_x", "args": {"External id": [1]}},
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events + hostile}), encoding="utf-8")
    graphs = read_compiled_graphs(fixture("cpu_train", "output_code.log"))
    summary = enrich_trace(str(path), graphs, str(tmp_path / "out.json"))
    assert summary.num_matched == 12  # the real events still match; the hostile ones are left as they are
    assert load_events(str(tmp_path / "out.json"))[len(events) : len(events) + len(hostile)] == hostile


def test_two_readers_give_the_records_of_one(tmp_path):
    """The forked first-half reader (traces of 64 MB+) against the one-pass read, on 4 MB traces
    split by force, with small windows so that each half has many pieces."""
    from perf_traces.log_index import LogIndex
    from perf_traces.make_synthetic_trace import make_synthetic_trace
    from perf_traces.trace_records import collect_records
    from perf_traces.trace_stream import helper_process

    for name in ("cuda_handwritten", "cpu_graph_break"):
        trace = str(tmp_path / f"{name}.json")
        make_synthetic_trace(fixture(name, "trace.json"), trace, 4_000_000)
        log = LogIndex.build(read_compiled_graphs(fixture(name, "output_code.log")))
        one, one_layout = collect_records(trace, log, 65536)
        with helper_process() as helper:
            two, two_layout = collect_records(trace, log, 65536, helper=helper)
        assert two.peak_rss_mb > 0  # the second reader ran
        assert one_layout == two_layout and one.num_events == two.num_events and len(one) > 1000
        for column in ("is_gpu", "thread", "ts", "end", "index", "start_offset", "end_offset", "external_id"):
            assert getattr(one, column) == getattr(two, column), column
        assert one.insert_at == two.insert_at and one.insert_mode == two.insert_mode
        assert [one.names[i] for i in one.name_id] == [two.names[i] for i in two.name_id]
        assert one.kernel_file == two.kernel_file and one.spans == two.spans


@pytest.mark.parametrize("name", ["cpu_train", "cuda_handwritten"])
def test_output_is_the_input_with_insertions_only(tmp_path, name):
    """Byte level: every byte of the input is in the output, in order; only insertions were made
    (profilers write args last, so no event here needs re-encoding)."""
    output = tmp_path / "out.json"
    enrich_trace(
        fixture(name, "trace.json"), read_compiled_graphs(fixture(name, "output_code.log")), str(output)
    )
    with open(fixture(name, "trace.json"), "rb") as trace_file:
        source = trace_file.read()
    enriched = output.read_bytes()
    remaining = iter(enriched)
    assert all(byte in remaining for byte in source)  # a subsequence: 'in' consumes the iterator
    assert len(enriched) > len(source)


def test_trace_of_one_rank_matches_that_rank_of_a_log_of_two(tmp_path):
    """torchrun prints every rank's output code into one log; a rank's trace names its rank in
    distributedInfo. Its events take that rank's modules (shapes, so code, can differ per rank),
    also where the other rank's modules come first and have the same kernel names."""
    with open(fixture("cpu_train", "output_code.log"), encoding="utf-8") as log_file:
        lines = log_file.read().splitlines(keepends=True)
    log = tmp_path / "output_code.log"
    log.write_text("".join(f"[rank{rank}]:{line}" for rank in (1, 0) for line in lines), encoding="utf-8")
    rank_0_lines = range(len(lines) + 1, 2 * len(lines) + 1)
    with open(fixture("cpu_train", "trace.json"), encoding="utf-8") as trace_file:
        trace = json.load(trace_file)
    for rank in (0, 1):
        trace["distributedInfo"] = {"backend": "gloo", "rank": rank, "world_size": 2}
        path = tmp_path / f"trace_rank{rank}.json"
        path.write_text(json.dumps(trace), encoding="utf-8")
        output = str(tmp_path / f"rank{rank}_enriched.json")
        summary = enrich_trace(str(path), read_compiled_graphs(str(log), strict=True), output)
        assert (summary.num_matched, summary.num_ambiguous_spans) == (12, 0)
        assert summary.lines()[0].endswith(
            f"modules in log: 4 (12 kernels); 2 of rank {rank} (the trace's distributedInfo.rank) matched"
        )
        table = kernel_table(load_events(output))
        log_lines = [entry["inductor_log_line"] for entry in table.values()]
        assert len(log_lines) == 12
        assert all((line in rank_0_lines) == (rank == 0) for line in log_lines), log_lines

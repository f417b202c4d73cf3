"""Matching on real CPU pairs (fwd+bwd, inference, graph break) and the hand-written CUDA fixture."""

from __future__ import annotations

import json
import re

import pytest

from perf_traces.enrich import NoMatchError, enrich_trace
from pytorch_scripts_common.inductor_log import read_inductor_log
from tests.perf_traces.helpers import (
    CPU_FIXTURES,
    enclosing_kind,
    fixture,
    load_events,
    validate_chrome_trace,
)

_CPP_KERNEL_RE = re.compile(r"^graph_(\d+)_(cpp_\w+)$")


def _enrich(tmp_path, name: str, log_name: str | None = None, **kwargs):
    modules = read_inductor_log(fixture(log_name or name, "output_code.log"), strict=True).modules
    output = str(tmp_path / f"{name}_enriched.json")
    summary = enrich_trace(fixture(name, "trace.json"), modules, output, **kwargs)
    return summary, output, modules


@pytest.mark.parametrize("name", CPU_FIXTURES)
def test_every_inductor_kernel_event_matched_to_its_module(tmp_path, name):
    summary, output, modules = _enrich(tmp_path, name)
    events = load_events(output)
    kernel_events = [e for e in events if e.get("cat") == "cpu_op" and _CPP_KERNEL_RE.match(e["name"])]
    assert kernel_events, "the fixture must contain C++ kernel events"
    for event in kernel_events:
        args = event["args"]
        graph_id, kernel_name = _CPP_KERNEL_RE.match(event["name"]).groups()
        # independent expectations: the graph id in the profiled name, the kind from the enclosing span
        assert args["inductor_kernel"] == kernel_name
        assert args["inductor_aot_id"] == f"{graph_id}_{enclosing_kind(events, event)}", event["name"]
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
    for event in events:
        by_name.setdefault(event["name"], []).append(event)
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
    kernel_args = [e["args"] for e in load_events(output) if _CPP_KERNEL_RE.match(e["name"])]
    assert {a["inductor_aot_id"] for a in kernel_args} == {"0_inference"}
    assert {a["inductor_graph_kind"] for a in kernel_args} == {"inference"}


def test_graph_break_repeated_names_disambiguated(tmp_path):
    _, output, _ = _enrich(tmp_path, "cpu_graph_break")
    events = load_events(output)
    seen = {(e["name"], e["args"]["inductor_aot_id"]) for e in events if _CPP_KERNEL_RE.match(e["name"])}
    assert ("graph_0_cpp_fused_native_layer_norm_0", "0_forward") in seen
    assert ("graph_1_cpp_fused_native_layer_norm_0", "1_forward") in seen
    assert ("graph_0_cpp_fused_threshold_backward_0", "0_backward") in seen
    assert ("graph_1_cpp_fused_threshold_backward_0", "1_backward") in seen


def test_cuda_fixture_launches_gpu_kernels_and_extern_kernels(tmp_path):
    """HAND-WRITTEN fixture (see perf_traces/fixtures/cuda_handwritten/make_fixture.py)."""
    summary, output, _ = _enrich(tmp_path, "cuda_handwritten")
    events = load_events(output)
    launches = [
        e for e in events if e.get("cat") == "cpu_op" and e["name"].startswith("triton_per_fused_native")
    ]
    for event in launches:
        # expectation from the trace itself: the kernel_file arg names the right module's kernel
        assert event["args"]["inductor_kernel_path"] == event["args"]["kernel_file"]
    width_by_graph = {"0": "64", "1": "128"}
    for event in events:
        args = event.get("args", {})
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
    assert all(not any(k.startswith("inductor_") for k in e.get("args", {})) for e in user_kernel)


def test_cuda_without_kernel_file_args_notes_ambiguity(tmp_path):
    """Older launches carry no kernel_file/kernel_hash: graphs 0 and 1 share kernel names, so say so."""
    with open(fixture("cuda_handwritten", "trace.json"), encoding="utf-8") as trace_file:
        trace = json.load(trace_file)
    for event in trace["traceEvents"]:
        event.get("args", {}).pop("kernel_file", None)
        event.get("args", {}).pop("kernel_hash", None)
    stripped = tmp_path / "trace.json"
    stripped.write_text(json.dumps(trace), encoding="utf-8")
    modules = read_inductor_log(fixture("cuda_handwritten", "output_code.log")).modules
    summary = enrich_trace(str(stripped), modules, str(tmp_path / "out.json"))
    assert summary.num_ambiguous_spans == 4
    notes = [
        e.get("args", {}).get("inductor_match_note", "") for e in load_events(str(tmp_path / "out.json"))
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
    modules = read_inductor_log(fixture("cuda_handwritten", "output_code.log")).modules
    summary = enrich_trace(str(stripped), modules, str(tmp_path / "out.json"))
    assert summary.num_ambiguous_spans == 0 and summary.num_matched == 28
    for event in load_events(str(tmp_path / "out.json")):
        args = event.get("args", {})
        if args.get("kernel_hash"):
            assert args["inductor_kernel_path"].endswith(f"/{args['kernel_hash']}.py")


def test_streaming_equals_json_load_dump_and_unmatched_events_untouched(tmp_path):
    summary, output, _ = _enrich(tmp_path, "cuda_handwritten")
    modules = read_inductor_log(fixture("cuda_handwritten", "output_code.log")).modules
    in_memory = str(tmp_path / "in_memory.json")
    enrich_trace(fixture("cuda_handwritten", "trace.json"), modules, in_memory, in_memory=True)
    assert validate_chrome_trace(output) == validate_chrome_trace(in_memory)
    original = load_events(fixture("cuda_handwritten", "trace.json"))
    enriched = load_events(output)
    assert len(original) == len(enriched)
    changed = 0
    for before, after in zip(original, enriched, strict=True):
        extra = {k: v for k, v in after.get("args", {}).items() if k.startswith("inductor_")}
        if extra:
            changed += 1
            after = {
                **after,
                "args": {k: v for k, v in after["args"].items() if not k.startswith("inductor_")},
            }
        assert after == before
    assert changed == summary.num_matched


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
    modules = read_inductor_log(fixture("cpu_train", "output_code.log")).modules
    summary = enrich_trace(str(path), modules, str(tmp_path / "out.json"))
    assert summary.num_matched == 12  # the real events still match; the hostile ones are left as they are
    assert load_events(str(tmp_path / "out.json"))[len(events) :] == hostile

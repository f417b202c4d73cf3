"""Matching on real pairs of programs as users compile them: a torch.library custom op, torch.cond
(both branches taken in turn, and one branch that never runs), dynamic=True (symbolic sizes).

The pairs are perf_traces/fixtures/cpu_{custom_op,cond,cond_one_layer,dynamic} (commands in
perf_traces/README.md). Expectations come from the trace and the raw log text, not from the parser.
"""

from __future__ import annotations

import json
import re

import pytest

from perf_traces.enrich import enrich_trace
from perf_traces.log_kernels import read_compiled_graphs
from tests.perf_traces.helpers import enclosing_kind, fixture, kernel_table, load_events

PROGRAM_PAIRS = ("cpu_custom_op", "cpu_cond", "cpu_cond_one_layer", "cpu_dynamic")
# C++ kernel names as the profiler records them: "graph_0_cpp_fused_relu_1", and without the graph
# prefix for kernels of subgraph functions ("cpp_fused_mul_sin_2" in a torch.cond branch)
_CPP_KERNEL_RE = re.compile(r"^(?:graph_\d+_)?(cpp_\w+)$")
_CALL_SPAN_PREFIX = "## Call CompiledFxGraph"


def _enrich(tmp_path, name: str, trace_path: str | None = None):
    graphs = read_compiled_graphs(fixture(name, "output_code.log"), strict=True)
    output = str(tmp_path / f"{name}_enriched.json")
    summary = enrich_trace(trace_path or fixture(name, "trace.json"), graphs, output)
    return summary, load_events(output)


def _call_span_children(events: list[dict]) -> list[dict]:
    """The CPU ops that each ``## Call CompiledFxGraph`` span ran directly (not nested in another op)."""
    ops = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation")]
    children = []
    for span in (e for e in ops if e["name"].startswith(_CALL_SPAN_PREFIX)):
        inside = sorted(
            (
                e
                for e in ops
                if e is not span
                and (e["pid"], e["tid"]) == (span["pid"], span["tid"])
                and span["ts"] <= e["ts"]
                and e["ts"] + e["dur"] <= span["ts"] + span["dur"] + 1e-3
            ),
            key=lambda e: (e["ts"], -e["dur"]),
        )
        end = float("-inf")
        for event in inside:
            if event["ts"] >= end:
                children.append(event)
                end = event["ts"] + event["dur"]
    return children


def _is_extern_call_in_log(op_name: str, log_text: str) -> bool:
    """``aten::mm`` -> ``extern_kernels.mm(`` in the log; ``my_lib::op`` -> ``torch.ops.my_lib.op.``."""
    namespace, op = op_name.split("::")
    if namespace == "aten" and f"extern_kernels.{op}(" in log_text:
        return True
    return f"torch.ops.{namespace}.{op}." in log_text


def _call_of(args: dict, table: dict[str, dict]) -> str:
    entry = table[args["inductor_kernel_id"]]
    if "inductor_extern_call" in entry:
        return entry["inductor_extern_call"]
    return entry["inductor_calls"][args.get("inductor_call_index", 0)]["call"]


@pytest.mark.parametrize("name", PROGRAM_PAIRS)
def test_every_kernel_and_extern_event_matched(tmp_path, name):
    summary, events = _enrich(tmp_path, name)
    table = kernel_table(events)
    with open(fixture(name, "output_code.log"), encoding="utf-8") as log_file:
        log_text = log_file.read()
    kernels = [e for e in events if e.get("cat") == "cpu_op" and _CPP_KERNEL_RE.match(e["name"])]
    externs = [
        e
        for e in _call_span_children(events)
        if "::" in e["name"] and _is_extern_call_in_log(e["name"], log_text)
    ]
    assert kernels and externs
    for event in kernels:
        entry = table[event["args"]["inductor_kernel_id"]]
        assert entry["inductor_kernel"] == _CPP_KERNEL_RE.match(event["name"]).group(1)
        assert f'"{event["name"]}"' in entry["inductor_kernel_source"]  # the source records this very name
        assert (
            entry["inductor_graph_kind"]
            == enclosing_kind(events, event)
            == event["args"]["inductor_graph_kind"]
        )
    for event in externs:
        entry = table[event["args"]["inductor_kernel_id"]]
        op = event["name"].split("::")[1]
        assert re.search(rf"(extern_kernels|torch\.ops\.\w+)\.{op}\b", entry["inductor_extern_call"]), event[
            "name"
        ]
        assert entry["inductor_graph_kind"] == enclosing_kind(events, event)
    annotated = [e for e in events if "inductor_kernel_id" in e.get("args", {}) and e.get("ph") != "i"]
    assert len(annotated) == len(kernels) + len(externs) == summary.num_matched
    assert summary.unmatched_by_name == {} and summary.log_kernels_not_in_trace == []


def test_custom_op_events_carry_their_torch_ops_call(tmp_path):
    summary, events = _enrich(tmp_path, "cpu_custom_op")
    table = kernel_table(events)
    custom = [e for e in events if e["name"] == "perf_traces_sample::scaled_tanh"]
    assert [e["args"]["inductor_source_nodes"] for e in custom] == [["input_3"], ["input_6"]]
    calls = [_call_of(e["args"], table) for e in custom]
    assert calls == [
        "buf6 = torch.ops.perf_traces_sample.scaled_tanh.default(buf5, 0.5)",
        "buf14 = torch.ops.perf_traces_sample.scaled_tanh.default(buf13, 0.5)",
    ]
    assert all(e["args"]["inductor_graph_kind"] == "forward" for e in custom)
    assert summary.matched_by_kind["extern custom op"] == 2
    assert summary.matched_by_kind["extern aten op"] == 6


def test_custom_op_namespace_that_starts_like_a_kernel_name(tmp_path):
    """A custom op named "graph_viz_sample::scaled_tanh" (the graph_viz sample program's): its events
    start like a C++ kernel's ("graph_"), are no kernel, and are still picked and matched."""
    for file_name in ("trace.json", "output_code.log"):
        with open(fixture("cpu_custom_op", file_name), encoding="utf-8") as source:
            text = source.read().replace("perf_traces_sample", "graph_viz_sample")
        (tmp_path / file_name).write_text(text, encoding="utf-8")
    graphs = read_compiled_graphs(str(tmp_path / "output_code.log"), strict=True)
    summary = enrich_trace(str(tmp_path / "trace.json"), graphs, str(tmp_path / "enriched.json"))
    events = load_events(str(tmp_path / "enriched.json"))
    custom = [e for e in events if e["name"] == "graph_viz_sample::scaled_tanh"]
    assert len(custom) == 2 and all(e["args"]["inductor_graph_kind"] == "forward" for e in custom)
    assert summary.matched_by_kind["extern custom op"] == 2 and summary.unmatched_by_name == {}


def test_custom_op_module_matched_by_its_op_sequence_without_kernel_events(tmp_path):
    """Without C++ kernel profiling (no kernel events), a module is found by its extern-op sequence;
    a custom op is one of those ops, so the forward (addmm, scaled_tanh, addmm, scaled_tanh) matches."""
    with open(fixture("cpu_custom_op", "trace.json"), encoding="utf-8") as trace_file:
        trace = json.load(trace_file)
    trace["traceEvents"] = [e for e in trace["traceEvents"] if not _CPP_KERNEL_RE.match(e.get("name", ""))]
    trace_path = tmp_path / "no_kernel_profile.json"
    trace_path.write_text(json.dumps(trace))
    summary, events = _enrich(tmp_path, "cpu_custom_op", str(trace_path))
    table = kernel_table(events)
    forward = [
        (e["name"], _call_of(e["args"], table).split("(")[0])
        for e in events
        if e.get("args", {}).get("inductor_graph_kind") == "forward" and e.get("ph") == "X"
    ]
    assert forward == [
        ("aten::addmm", "extern_kernels.addmm"),
        ("perf_traces_sample::scaled_tanh", "buf6 = torch.ops.perf_traces_sample.scaled_tanh.default"),
        ("aten::addmm", "extern_kernels.addmm"),
        ("perf_traces_sample::scaled_tanh", "buf14 = torch.ops.perf_traces_sample.scaled_tanh.default"),
    ]
    assert summary.matched_by_kind == {"extern aten op": 6, "extern custom op": 2}


def test_cond_branch_kernels_get_the_call_of_the_branch_that_ran(tmp_path):
    """Two torch.cond calls per graph share their branch kernels; the first took one branch, the
    second the other. Each kernel event's call() line is in the subgraph of its own cond call: the
    n-th branch event of a graph is in the n-th cond's subgraph (``<true|false>_graph_<n>``)."""
    _, events = _enrich(tmp_path, "cpu_cond")
    table = kernel_table(events)
    branch_calls = {"forward": [], "backward": []}
    for event in events:
        if event.get("cat") == "cpu_op" and re.match(
            r"^cpp_", event["name"]
        ):  # no graph prefix: a subgraph's
            branch_calls[event["args"]["inductor_graph_kind"]].append(
                (event["name"], _call_of(event["args"], table).split("(")[1].split("_arg")[0])
            )
    # the log numbers the forward's subgraphs 0, 1 and the backward's 2, 3 (the backward's first cond
    # is the forward's second)
    assert branch_calls == {
        "forward": [("cpp_fused_mul_sin_2", "true_graph_0"), ("cpp_fused_add_cos_3", "false_graph_1")],
        "backward": [("cpp_fused_mul_neg_sin_1", "false_graph_2"), ("cpp_fused_cos_mul_0", "true_graph_3")],
    }


def test_kernels_of_a_cond_branch_not_taken_are_reported_as_such(tmp_path):
    summary, events = _enrich(tmp_path, "cpu_cond_one_layer")
    with open(fixture("cpu_cond_one_layer", "output_code.log"), encoding="utf-8") as log_file:
        defined = set(re.findall(r"\] (cpp_fused_\w+) = async_compile", log_file.read()))
    ran = {
        _CPP_KERNEL_RE.match(e["name"]).group(1) for e in events if _CPP_KERNEL_RE.match(e.get("name", ""))
    }
    not_run = sorted(defined - ran)
    assert not_run == ["cpp_fused_cos_mul_0", "cpp_fused_mul_sin_2"]  # the true branch, forward and backward
    assert summary.log_kernels_not_in_trace == []
    assert [label.split(" [")[0] for label in summary.log_kernels_in_branches_not_run] == [
        "cpp_fused_mul_sin_2",
        "cpp_fused_cos_mul_0",
    ]
    assert all(" in true_graph_" in label for label in summary.log_kernels_in_branches_not_run)
    lines = summary.lines()
    assert "kernels in the log never seen in the trace: 0" in lines
    assert "kernels of subgraph branches that did not run (e.g. the torch.cond branch not taken): 2" in lines


def test_branch_kernels_of_a_graph_that_did_not_run_are_never_seen(tmp_path):
    """A trace without the backward: its kernels, in subgraphs or not, were never seen (not 'a branch')."""
    with open(fixture("cpu_cond_one_layer", "trace.json"), encoding="utf-8") as trace_file:
        trace = json.load(trace_file)
    (backward,) = [e for e in trace["traceEvents"] if e.get("name") == "CompiledFunctionBackward"]
    end = backward["ts"] + backward["dur"]
    trace["traceEvents"] = [
        e
        for e in trace["traceEvents"]
        if not (e.get("ph") == "X" and e.get("tid") == backward["tid"] and backward["ts"] <= e["ts"] <= end)
    ]
    trace_path = tmp_path / "forward_only.json"
    trace_path.write_text(json.dumps(trace))
    summary, _ = _enrich(tmp_path, "cpu_cond_one_layer", str(trace_path))
    assert [label.split(" [")[0] for label in summary.log_kernels_in_branches_not_run] == [
        "cpp_fused_mul_sin_2"
    ]
    never_seen = [label.split(" [")[0] for label in summary.log_kernels_not_in_trace]
    assert "cpp_fused_cos_mul_0" in never_seen and "cpp_fused_mul_neg_sin_1" in never_seen
    assert all("0_backward" in label for label in summary.log_kernels_not_in_trace)


def test_dynamic_shapes_pair_has_symbolic_sizes(tmp_path):
    """dynamic=True: the calls pass symbolic sizes (s77) and matching is the same as with static ones."""
    _, events = _enrich(tmp_path, "cpu_dynamic")
    table = kernel_table(events)
    calls = [
        _call_of(e["args"], table)
        for e in events
        if "inductor_kernel_id" in e.get("args", {}) and e["ph"] == "X"
    ]
    assert any(re.search(r"\bs\d+\)$", call) for call in calls if call.startswith("cpp_fused"))
    assert any(re.search(r"\(16, s\d+\)", call) for call in calls if call.startswith("extern_kernels.mm"))

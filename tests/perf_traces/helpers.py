"""Shared helpers of the perf_traces tests: fixture paths and a Chrome-trace validator."""

from __future__ import annotations

import json
import os

import perf_traces

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(perf_traces.__file__)), "fixtures")
CPU_FIXTURES = ("cpu_train", "cpu_inference", "cpu_graph_break")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(perf_traces.__file__)))


def fixture(name: str, file_name: str) -> str:
    return os.path.join(FIXTURES, name, file_name)


def load_events(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as trace_file:
        return json.load(trace_file)["traceEvents"]


def validate_chrome_trace(path: str) -> dict:
    """Check the Chrome trace-event format's required fields (the JSON-object form); return the trace.

    From the Trace Event Format document: a JSON object with a ``traceEvents`` array; each event has a
    string ``ph``; complete events (``X``) carry numeric ``ts`` and ``dur``, ``pid``, ``tid`` and a
    string ``name``; ``args``, when present, is an object.
    """
    with open(path, encoding="utf-8") as trace_file:
        trace = json.load(trace_file)
    assert isinstance(trace, dict)
    assert isinstance(trace["traceEvents"], list)
    for event in trace["traceEvents"]:
        assert isinstance(event, dict), event
        assert isinstance(event.get("ph"), str), event
        if "args" in event:
            assert isinstance(event["args"], dict), event
        if event["ph"] == "X":
            assert isinstance(event.get("name"), str), event
            assert isinstance(event.get("ts"), int | float), event
            assert isinstance(event.get("dur"), int | float) and event["dur"] >= 0, event
            assert "pid" in event and "tid" in event, event
    return trace


def enclosing_kind(events: list[dict], event: dict) -> str:
    """forward / backward / inference from the CompiledFunction(Backward) span around ``event``."""
    for span in events:
        if span.get("name") in ("CompiledFunction", "CompiledFunctionBackward") and span.get("ph") == "X":
            same_thread = (span["pid"], span["tid"]) == (event["pid"], event["tid"])
            inside = (
                span["ts"] <= event["ts"] and event["ts"] + event["dur"] <= span["ts"] + span["dur"] + 1e-3
            )
            if same_thread and inside:
                return "backward" if span["name"].endswith("Backward") else "forward"
    return "inference"


KERNEL_TABLE_CATEGORY = "inductor_kernel_table"  # written out here: the tests read the format independently


def kernel_table(events: list[dict]) -> dict[str, dict]:
    """The enriched trace's kernel table: kernel id -> the args of its table event."""
    table = {}
    for event in events:
        if isinstance(event, dict) and event.get("cat") == KERNEL_TABLE_CATEGORY:
            assert event["ph"] == "i" and event["name"].startswith(
                f"inductor kernel {event['args']['inductor_kernel_id']}: "
            )
            assert event["args"]["inductor_kernel_id"] not in table
            table[event["args"]["inductor_kernel_id"]] = event["args"]
    return table


def full_annotation(args: dict, table: dict[str, dict]) -> dict:
    """An event's inductor_* args with its kernel-table entry folded in: the args that the enrichment
    wrote on every matched event before the kernel table (perf_traces/fixtures/expected_annotations.json)."""
    entry = table[args["inductor_kernel_id"]]
    note = args.get("inductor_match_note")
    common = {
        key: entry.get(key)
        for key in (
            "inductor_aot_id",
            "inductor_graph_kind",
            "inductor_compile_id",
            "inductor_output_code_path",
        )
    }
    if "inductor_kernel" in entry:
        calls = entry.get("inductor_calls", [])
        call = None
        if calls and note != "matched by name outside a Call span":
            call = calls[args.get("inductor_call_index", 0)]
        full = {
            "inductor_kernel": entry["inductor_kernel"],
            "inductor_kernel_backend": entry["inductor_kernel_backend"],
            **common,
            "inductor_kernel_path": entry.get("inductor_kernel_path"),
            "inductor_source_nodes": (call or {}).get("source_nodes") or entry.get("inductor_source_nodes"),
            "inductor_aten_ops": (call or {}).get("aten_ops") or entry.get("inductor_aten_ops"),
            "inductor_ops_from_kernel_name": entry.get("inductor_ops_from_kernel_name"),
            "inductor_call": call["call"] if call else None,
            "inductor_log_line": entry["inductor_log_line"],
            "inductor_kernel_source": entry["inductor_kernel_source"],
        }
    else:
        full = {
            "inductor_extern_call": entry["inductor_extern_call"],
            **common,
            "inductor_source_nodes": entry.get("inductor_source_nodes"),
            "inductor_aten_ops": entry.get("inductor_aten_ops"),
            "inductor_log_line": entry["inductor_log_line"],
        }
    full["inductor_match_note"] = note
    full["inductor_launch_op"] = args.get("inductor_launch_op")
    # what each event carries itself must agree with its entry
    assert args["inductor_graph_kind"] == entry["inductor_graph_kind"]
    assert args.get("inductor_source_nodes", []) == (full["inductor_source_nodes"] or [])
    return {key: value for key, value in full.items() if value not in (None, [])}


def expected_annotation_cases(tmp: str) -> dict[str, tuple[str, str]]:
    """The cases of perf_traces/fixtures/expected_annotations.json: name -> (trace path, fixture whose
    output_code.log goes with it). Two are the CUDA pair without kernel_file / kernel_hash args and
    with kernel_hash only, one a 4-copy synthetic trace of it (written into ``tmp``)."""
    from perf_traces.make_synthetic_trace import make_synthetic_trace

    result = {
        name: (fixture(name, "trace.json"), name)
        for name in ("cpu_train", "cpu_inference", "cpu_graph_break", "cuda_handwritten")
    }
    for kind in ("no_kernel_file", "kernel_hash_only"):
        with open(fixture("cuda_handwritten", "trace.json"), encoding="utf-8") as trace_file:
            trace = json.load(trace_file)
        for event in trace["traceEvents"]:
            args = event.get("args", {})
            if kind == "no_kernel_file":
                args.pop("kernel_file", None)
                args.pop("kernel_hash", None)
            elif "kernel_file" in args:
                args["kernel_file"] = ""
        path = os.path.join(tmp, f"{kind}.json")
        with open(path, "w", encoding="utf-8") as out:
            json.dump(trace, out)
        result[f"cuda_{kind}"] = (path, "cuda_handwritten")
    synthetic = os.path.join(tmp, "synthetic.json")
    make_synthetic_trace(fixture("cuda_handwritten", "trace.json"), synthetic, 60_000)
    result["cuda_synthetic_60kb"] = (synthetic, "cuda_handwritten")
    return result

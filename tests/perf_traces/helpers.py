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

"""Write perf_traces/fixtures/expected_annotations.json: the per-event args of the enrichment as it is now.

The enrichment is being rewritten (kernel table, byte-level scanning); this file records what this
version adds to every matched event of the fixtures, so that the rewrite can be checked against it.

    .venv/bin/python -m tests.perf_traces.make_expected_annotations

``cases[c].events`` maps an event index of case ``c`` to ``annotations[i]``; an
``inductor_kernel_source`` of ``{"source_index": j}`` is ``sources[j]``. Cases: the four fixture
pairs, the CUDA pair without ``kernel_file``/``kernel_hash`` args, with ``kernel_hash`` only, and a
4-copy synthetic trace of the CUDA pair (``make_synthetic_trace`` with 60,000 bytes).
"""

from __future__ import annotations

import json
import os
import tempfile

from perf_traces.enrich import enrich_trace
from perf_traces.log_parser import parse_output_code_log_file
from perf_traces.make_synthetic_trace import make_synthetic_trace
from tests.perf_traces.helpers import FIXTURES, fixture


def _stripped_cuda_trace(tmp: str, kind: str) -> str:
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
    return path


def cases(tmp: str) -> dict[str, tuple[str, str]]:
    """Case name -> (trace path, fixture whose output_code.log goes with it)."""
    result = {
        name: (fixture(name, "trace.json"), name)
        for name in ("cpu_train", "cpu_inference", "cpu_graph_break", "cuda_handwritten")
    }
    result["cuda_no_kernel_file"] = (_stripped_cuda_trace(tmp, "no_kernel_file"), "cuda_handwritten")
    result["cuda_kernel_hash_only"] = (_stripped_cuda_trace(tmp, "kernel_hash_only"), "cuda_handwritten")
    synthetic = os.path.join(tmp, "synthetic.json")
    make_synthetic_trace(fixture("cuda_handwritten", "trace.json"), synthetic, 60_000)
    result["cuda_synthetic_60kb"] = (synthetic, "cuda_handwritten")
    return result


def main() -> None:
    annotations: list[dict] = []
    annotation_ids: dict[str, int] = {}
    sources: list[str] = []
    result: dict = {"annotations": annotations, "cases": {}, "sources": sources}
    with tempfile.TemporaryDirectory() as tmp:
        for case, (trace, log_fixture) in cases(tmp).items():
            modules = parse_output_code_log_file(fixture(log_fixture, "output_code.log"), strict=True)
            output = os.path.join(tmp, f"{case}_enriched.json")
            summary = enrich_trace(trace, modules, output)
            with open(output, encoding="utf-8") as enriched:
                events = json.load(enriched)["traceEvents"]
            by_index = {}
            for index, event in enumerate(events):
                args = event.get("args") if isinstance(event, dict) else None
                added = {k: v for k, v in (args or {}).items() if k.startswith("inductor_")}
                if not added:
                    continue
                if "inductor_kernel_source" in added:
                    if added["inductor_kernel_source"] not in sources:
                        sources.append(added["inductor_kernel_source"])
                    added["inductor_kernel_source"] = {
                        "source_index": sources.index(added["inductor_kernel_source"])
                    }
                key = json.dumps(added, sort_keys=True)
                if key not in annotation_ids:
                    annotation_ids[key] = len(annotations)
                    annotations.append(added)
                by_index[str(index)] = annotation_ids[key]
            assert len(by_index) == summary.num_matched
            result["cases"][case] = {
                "log_fixture": log_fixture,
                "num_events": len(events),
                "matched_by_kind": dict(summary.matched_by_kind),
                "events": by_index,
            }
            print(f"{case}: {summary.num_matched} matched")
    path = os.path.join(FIXTURES, "expected_annotations.json")
    with open(path, "w", encoding="utf-8") as out:
        json.dump(result, out, indent=1, sort_keys=True)
        out.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

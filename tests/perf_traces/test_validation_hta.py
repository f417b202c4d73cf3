"""Enriched traces stay valid Chrome traces and still load in HolisticTraceAnalysis."""

from __future__ import annotations

import shutil

from perf_traces.enrich import enrich_trace
from pytorch_scripts_common.inductor_log import read_inductor_log
from tests.perf_traces.helpers import fixture, validate_chrome_trace


def test_enriched_cpu_trace_loads_in_hta(tmp_path):
    from hta.trace_analysis import TraceAnalysis

    modules = read_inductor_log(fixture("cpu_train", "output_code.log"), strict=True).modules
    trace_dir = tmp_path / "traces"
    trace_dir.mkdir()
    # HTA maps rank -> file from a '"rank": N' in the file (distributedInfo); without one it warns and
    # uses rank 0, which is what a single-process CPU trace is.
    output = trace_dir / "rank-0.json"
    summary = enrich_trace(fixture("cpu_train", "trace.json"), modules, str(output))
    assert summary.num_matched == 12
    validate_chrome_trace(str(output))
    analyzer = TraceAnalysis(trace_dir=str(trace_dir))
    frame = analyzer.t.get_trace(0)
    symbols = analyzer.t.symbol_table.get_sym_table()
    kernel_names = {symbols[index] for index in frame["name"]}
    assert "graph_0_cpp_fused_native_layer_norm_0" in kernel_names
    assert "graph_0_cpp_fused_threshold_backward_0" in kernel_names
    # the same number of events as HTA reads from the original trace
    original_dir = tmp_path / "original"
    original_dir.mkdir()
    shutil.copy(fixture("cpu_train", "trace.json"), original_dir / "rank-0.json")
    assert len(TraceAnalysis(trace_dir=str(original_dir)).t.get_trace(0)) == len(frame)

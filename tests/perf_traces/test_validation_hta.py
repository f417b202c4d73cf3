"""Enriched traces stay valid Chrome traces and still load in HolisticTraceAnalysis, per-event args
included (Perfetto's trace processor cannot run here: its Python package downloads a binary)."""

from __future__ import annotations

import shutil

from perf_traces.enrich import enrich_trace
from perf_traces.log_kernels import read_compiled_graphs
from tests.perf_traces.helpers import fixture, validate_chrome_trace


def test_enriched_cpu_trace_loads_in_hta(tmp_path):
    from hta.trace_analysis import TraceAnalysis

    graphs = read_compiled_graphs(fixture("cpu_train", "output_code.log"), strict=True)
    trace_dir = tmp_path / "traces"
    trace_dir.mkdir()
    # HTA maps rank -> file from a '"rank": N' in the file (distributedInfo); without one it warns and
    # uses rank 0, which is what a single-process CPU trace is.
    output = trace_dir / "rank-0.json"
    summary = enrich_trace(fixture("cpu_train", "trace.json"), graphs, str(output))
    assert summary.num_matched == 12
    validate_chrome_trace(str(output))
    analyzer = TraceAnalysis(trace_dir=str(trace_dir))
    frame = analyzer.t.get_trace(0)
    symbols = analyzer.t.symbol_table.get_sym_table()
    kernel_names = {symbols[index] for index in frame["name"]}
    assert "graph_0_cpp_fused_native_layer_norm_0" in kernel_names
    assert "graph_0_cpp_fused_threshold_backward_0" in kernel_names
    # the same events as HTA reads from the original trace: the kernel-table events are instants
    # without a duration, which HTA leaves out
    original_dir = tmp_path / "original"
    original_dir.mkdir()
    shutil.copy(fixture("cpu_train", "trace.json"), original_dir / "rank-0.json")
    assert len(TraceAnalysis(trace_dir=str(original_dir)).t.get_trace(0)) == len(frame)


def test_hta_keeps_the_per_event_args(tmp_path):
    """With parse_all_args, HTA's frame has the added args as columns on the matched events (the
    hand-written CUDA pair: HTA 0.5.0's parse_all_args needs GPU events; on a CPU-only trace it fails
    with KeyError 'stream', enriched or not)."""
    from hta.common.trace import Trace
    from hta.configs.parser_config import ParserConfig

    graphs = read_compiled_graphs(fixture("cuda_handwritten", "output_code.log"), strict=True)
    trace_dir = tmp_path / "traces"
    trace_dir.mkdir()
    enrich_trace(fixture("cuda_handwritten", "trace.json"), graphs, str(trace_dir / "rank-0.json"))
    config = ParserConfig.get_default_cfg()
    config.set_parse_all_args(True)
    trace = Trace(trace_dir=str(trace_dir), parser_config=config)
    trace.load_traces()
    frame = trace.get_trace(0)
    symbols = trace.symbol_table.get_sym_table()
    kernel_ids = [column for column in frame.columns if "inductor_kernel_id" in column]
    assert kernel_ids, f"no inductor_kernel_id column in HTA's frame: {sorted(frame.columns)}"
    names = frame["name"].map(lambda index: symbols[index])
    layer_norm = frame[names == "triton_per_fused_native_layer_norm_0"]
    assert len(layer_norm) == 4  # 2 launches + 2 GPU kernels
    assert all(str(value).startswith("k") for value in layer_norm[kernel_ids[0]])

"""profile_compiled_model: self-time arithmetic (hand-worked), argument checks, live CPU pairs (slow)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from perf_traces.enrich import enrich_trace
from perf_traces.log_kernels import compiled_graphs
from perf_traces.profile_compiled_model import check_self_times, main, self_times_from_trace
from pytorch_scripts_common.inductor_log import read_inductor_log
from tests.perf_traces.helpers import REPO_ROOT, enclosing_kind, kernel_table, load_events


def _op(name, ts, dur, tid=1):
    return {"ph": "X", "cat": "cpu_op", "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur}


def test_self_times_hand_worked():
    events = [
        _op("outer", 0.0, 100.0),
        _op("a", 10.0, 30.0),
        _op("a_child", 15.0, 5.0),
        _op("b", 50.0, 20.0),
        _op("other_thread", 0.0, 7.0, tid=2),
        {"ph": "X", "cat": "kernel", "name": "gpu", "pid": 0, "tid": 7, "ts": 0.0, "dur": 1000.0},
    ]
    times = self_times_from_trace(events)
    assert times == {
        "outer": (1, 50.0),  # 100 - 30 - 20
        "a": (1, 25.0),  # 30 - 5
        "a_child": (1, 5.0),
        "b": (1, 20.0),
        "other_thread": (1, 7.0),
    }
    ok, message = check_self_times(times, 107.0)
    assert ok, message
    ok, message = check_self_times(times, 120.0)  # 13 us off: beyond 0.5 % and the per-event slack
    assert not ok and "> tolerance" in message


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--mode is 'training': pass --mode=train or --mode=inference"):
        main(str(tmp_path), mode="training")
    with pytest.raises(ValueError, match="--hidden_dim is 0: pass an integer >= 1"):
        main(str(tmp_path), hidden_dim=0)
    with pytest.raises(ValueError, match="--num_layers is 1: pass --num_layers=2 or more"):
        main(str(tmp_path), num_layers=1, graph_break=True)
    with pytest.raises(ValueError, match="--activation is 'gelu': pass one of relu"):
        main(str(tmp_path), activation="gelu")
    (tmp_path / "trace.json").write_text("{}")
    with pytest.raises(ValueError, match="--overwrite"):
        main(str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, graph_break, log_format, activation, dynamic",
    [("train", True, "short", "relu", False), ("inference", False, "trace", "custom_op", True)],
)
def test_live_cpu_pair_every_kernel_matched(tmp_path, mode, graph_break, log_format, activation, dynamic):
    """Run the tool in a subprocess (fresh compile), then enrich what it wrote: all kernels match."""
    out_dir = tmp_path / "pair"
    args = ["--output_dir", str(out_dir), "--hidden_dim", "16", "--batch_size", "4", "--mode", mode]
    args += ["--log_format", log_format, "--activation", activation, "--dynamic", str(dynamic)]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "perf_traces.profile_compiled_model",
            *args,
            "--graph_break",
            str(graph_break),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Self CPU time total" in result.stdout and "<= tolerance" in result.stdout
    log_name = "torch_trace" if log_format == "trace" else "output_code.log"
    assert sorted(os.listdir(out_dir)) == sorted([".pytorch_scripts_output", log_name, "trace.json"])
    log = read_inductor_log(str(out_dir / log_name), strict=True)
    assert log.format == log_format
    modules = compiled_graphs(log)
    expected = {("train", True): 4, ("inference", False): 1}[(mode, graph_break)]
    assert len(modules) == expected
    summary = enrich_trace(str(out_dir / "trace.json"), modules, str(tmp_path / "enriched.json"))
    assert summary.unmatched_by_name == {} and summary.log_kernels_not_in_trace == []
    events = load_events(str(tmp_path / "enriched.json"))
    table = kernel_table(events)
    kernels = [e for e in events if re.match(r"^graph_\d+_cpp_", e["name"])]
    assert len(kernels) == sum(1 for m in modules for call in m.calls if call.kind == "kernel")
    if activation == "custom_op":
        custom = [e for e in events if e["name"] == "perf_traces_sample::scaled_tanh"]
        assert len(custom) == 2 and all("inductor_kernel_id" in e["args"] for e in custom)
    for event in kernels:
        graph_id = event["name"].split("_")[1]
        entry = table[event["args"]["inductor_kernel_id"]]
        assert entry["inductor_aot_id"] == f"{graph_id}_{enclosing_kind(events, event)}"


def test_device_table_on_hand_written_cuda_trace():
    """HAND-WRITTEN CUDA fixture: GPU time attributed to top-level ops through External id."""
    from perf_traces.profile_compiled_model import device_table
    from tests.perf_traces.helpers import fixture

    lines = device_table(load_events(fixture("cuda_handwritten", "trace.json")))
    rows = {line[:80].strip(): float(line[80:]) for line in lines[1:]}
    # per graph: forward 4 (layer norm) + 9 (mm) + 2 (relu); backward 2 + 9 + 9 + 5; eager kernel 3
    assert rows == {
        "CompiledFunction": 2 * 15.0,
        "CompiledFunctionBackward": 2 * 25.0,
        "triton_user_library_kernel": 3.0,
        "total GPU kernel time": 83.0,
    }

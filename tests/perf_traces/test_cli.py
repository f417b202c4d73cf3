"""Subprocess smoke tests of the CLIs into tmp_path, their artifacts inspected; bad input handling."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.perf_traces.helpers import REPO_ROOT, fixture, load_events, validate_chrome_trace

ENRICH_SCRIPT = os.path.join(REPO_ROOT, "add_inductor_metadata_to_perf_trace.py")


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, check=False
    )


def _enrich_args(trace: str, log: str, output: str, *extra: str) -> list[str]:
    return [
        ENRICH_SCRIPT,
        "--perf_trace_file",
        trace,
        "--torch_logs_file",
        log,
        "--modified_perf_trace_file",
        output,
        *extra,
    ]


def test_enrich_cli_on_real_pair(tmp_path):
    output = str(tmp_path / "enriched.json")
    result = _run(
        _enrich_args(fixture("cpu_train", "trace.json"), fixture("cpu_train", "output_code.log"), output)
    )
    assert result.returncode == 0, result.stderr
    assert "events matched: 12 (cpu kernel op: 6, extern aten op: 6)" in result.stdout
    assert "kernel-like events unmatched: 0" in result.stdout
    assert "kernels in the log never seen in the trace: 0" in result.stdout
    trace = validate_chrome_trace(output)
    matched = [e for e in trace["traceEvents"] if "inductor_aot_id" in e.get("args", {})]
    assert len(matched) == 12
    # refuses to overwrite, then overwrites with --overwrite
    again = _run(
        _enrich_args(fixture("cpu_train", "trace.json"), fixture("cpu_train", "output_code.log"), output)
    )
    assert again.returncode != 0 and "--overwrite" in again.stderr
    forced = _run(
        _enrich_args(
            fixture("cpu_train", "trace.json"), fixture("cpu_train", "output_code.log"), output, "--overwrite"
        )
    )
    assert forced.returncode == 0, forced.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ("this is not json", "expected one of"),
        ('{"traceEvents": [{"ph": "X", "name": "graph_0_cpp_fused', "invalid or truncated"),
        ('{"schemaVersion": 1}', "no 'traceEvents' key"),
    ],
)
def test_enrich_cli_bad_trace_leaves_no_output(tmp_path, content, message):
    trace = tmp_path / "bad.json"
    trace.write_text(content, encoding="utf-8")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _run(_enrich_args(str(trace), fixture("cpu_train", "output_code.log"), str(out_dir / "x.json")))
    assert result.returncode != 0
    assert message in result.stderr
    assert list(out_dir.iterdir()) == []  # no partial output, no temp file


def test_enrich_cli_unrelated_log_and_empty_log(tmp_path):
    output = tmp_path / "x.json"
    result = _run(
        _enrich_args(
            fixture("cpu_train", "trace.json"), fixture("cuda_handwritten", "output_code.log"), str(output)
        )
    )
    assert result.returncode != 0 and "different runs" in result.stderr and not output.exists()
    empty_log = tmp_path / "empty.log"
    empty_log.write_text("I0101 00:00:00.000000 1 /x.py:1] nothing compiled\n", encoding="utf-8")
    result = _run(_enrich_args(fixture("cpu_train", "trace.json"), str(empty_log), str(output)))
    assert result.returncode != 0 and "has no output code" in result.stdout and not output.exists()
    result = _run(
        _enrich_args(fixture("cpu_train", "trace.json"), str(empty_log), str(output), "--allow_no_match")
    )
    assert result.returncode == 0, result.stderr
    assert load_events(str(output)) == load_events(fixture("cpu_train", "trace.json"))


def test_enrich_cli_missing_inputs(tmp_path):
    result = _run(
        _enrich_args(str(tmp_path / "nope.json"), fixture("cpu_train", "output_code.log"), "x.json")
    )
    assert result.returncode != 0 and "perf_trace_file=" in result.stderr


def test_synthetic_trace_and_benchmark_cli(tmp_path):
    synthetic = str(tmp_path / "synthetic.json")
    result = _run(
        [
            "-m",
            "perf_traces.make_synthetic_trace",
            "--source_trace",
            fixture("cuda_handwritten", "trace.json"),
            "--output_file",
            synthetic,
            "--target_mb",
            "0.2",
        ]
    )
    assert result.returncode == 0, result.stderr
    copies = int(result.stdout.split("(")[1].split(" copies")[0].split(",")[-1])
    assert copies >= 2
    output = str(tmp_path / "enriched.json")
    result = _run(_enrich_args(synthetic, fixture("cuda_handwritten", "output_code.log"), output))
    assert result.returncode == 0, result.stderr
    # every copy of the step matches like the original: 28 events per copy, ids shifted consistently
    assert f"events matched: {28 * copies} " in result.stdout
    validate_chrome_trace(output)

    result = _run(
        [
            "-m",
            "perf_traces.benchmark",
            "--sizes_mb",
            "0.3",
            "--num_repeats",
            "1",
            "--work_dir",
            str(tmp_path),
        ]
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.strip().startswith("0.")]
    assert [row.split()[2] for row in rows] == ["streaming", "json_load_dump", "ijson_decode_only"]
    assert sorted(os.listdir(tmp_path)) == ["enriched.json", "synthetic.json"]  # benchmark cleaned up


def test_benchmark_refuses_work_dir_in_repository():
    result = _run(["-m", "perf_traces.benchmark", "--sizes_mb", "0.1", "--work_dir", REPO_ROOT])
    assert result.returncode != 0 and "inside the repository" in result.stderr

"""Subprocess smoke tests of the CLIs into tmp_path, their artifacts inspected; bad input handling."""

from __future__ import annotations

import gzip
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.perf_traces.helpers import REPO_ROOT, fixture, kernel_table, load_events, validate_chrome_trace

ENRICH = ("-m", "add_inductor_metadata_to_perf_trace")


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, check=False
    )


def _enrich_args(trace: str, log: str, output: str, *extra: str) -> list[str]:
    return [
        *ENRICH,
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
    assert (
        "events matched: 12 (cpu kernel op: 6, extern aten op: 6); kernel table: 12 entries" in result.stdout
    )
    assert "kernel-like events unmatched: 0" in result.stdout
    assert "kernels in the log never seen in the trace: 0" in result.stdout
    assert "time per kernel (top 12 of 12, sorted by time)" in result.stdout
    assert "cpp_fused_native_layer_norm_0" in result.stdout and "aten::addmm" in result.stdout
    trace = validate_chrome_trace(output)
    matched = [
        e for e in trace["traceEvents"] if "inductor_graph_kind" in e.get("args", {}) and e["ph"] == "X"
    ]
    assert len(matched) == 12
    assert len(kernel_table(trace["traceEvents"])) == 12
    html = (tmp_path / "enriched.kernels.html").read_text(encoding="utf-8")
    assert html.count('<div class="bar cpu"') == 12 and "cpp_fused_native_layer_norm_0" in html
    assert "http" not in html and "<script" not in html  # nothing loaded from the network, no code
    # refuses to overwrite, then overwrites with --overwrite
    again = _run(
        _enrich_args(fixture("cpu_train", "trace.json"), fixture("cpu_train", "output_code.log"), output)
    )
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    forced = _run(
        _enrich_args(
            fixture("cpu_train", "trace.json"),
            fixture("cpu_train", "output_code.log"),
            output,
            "--overwrite",
            "--top",
            "3",
        )
    )
    assert forced.returncode == 0, forced.stderr
    assert "time per kernel (top 3 of 12" in forced.stdout
    assert (tmp_path / "enriched.kernels.html").read_text(encoding="utf-8").count('<div class="bar cpu"') == 3


def test_kernel_summary_html_is_escaped(tmp_path):
    """Kernel names and nodes come from the (untrusted) log: the page shows them as text."""
    log = tmp_path / "output_code.log"
    with open(fixture("cpu_train", "output_code.log"), encoding="utf-8") as log_file:
        text = log_file.read()
    log.write_text(text.replace("input_2", "<img src=x onerror=alert(1)>"), encoding="utf-8")
    output = tmp_path / "enriched.json"
    result = _run(_enrich_args(fixture("cpu_train", "trace.json"), str(log), str(output)))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "enriched.kernels.html").read_text(encoding="utf-8")
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


@pytest.mark.parametrize("which", ["trace", "log"])
def test_enrich_cli_refuses_an_input_as_output(tmp_path, which):
    """Issue 14: output = the log (or the trace) was overwritten; now refused, inputs unchanged."""
    trace, log = tmp_path / "trace.json", tmp_path / "output_code.log"
    shutil.copy(fixture("cpu_train", "trace.json"), trace)
    shutil.copy(fixture("cpu_train", "output_code.log"), log)
    before = (trace.read_bytes(), log.read_bytes())
    target = trace if which == "trace" else log
    for extra in ((), ("--overwrite",)):
        result = _run(_enrich_args(str(trace), str(log), str(target), *extra))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "is the same path as the input" in result.stderr
        result = _run(
            _enrich_args(str(trace), str(log), str(tmp_path / "o.json"), "--kernel_summary_file", str(target))
        )
        assert result.returncode == 2 and "is the same path as the input" in result.stderr
    assert (trace.read_bytes(), log.read_bytes()) == before
    assert sorted(os.listdir(tmp_path)) == ["output_code.log", "trace.json"]


def test_enrich_cli_deep_nesting_is_one_line(tmp_path):
    """Issue 14: 200k-deep nesting raised a raw RecursionError; now one line with line and byte."""
    trace = tmp_path / "trace.json"
    trace.write_text('{"traceEvents": [\n' + "[" * 200_000 + "]" * 200_000 + "]}", encoding="utf-8")
    result = _run(
        _enrich_args(str(trace), fixture("cpu_train", "output_code.log"), str(tmp_path / "out.json"))
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "nested 200000 levels deep" in result.stderr and "at line 2 (byte" in result.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ("this is not json", "expected '{', found 't' at line 1 (byte 0)"),
        ('{"traceEvents": [{"ph": "X", "name": "graph_0_cpp_fused', "truncated JSON"),
        ('{"schemaVersion": 1}', "no 'traceEvents' key"),
    ],
)
def test_enrich_cli_bad_trace_leaves_no_output(tmp_path, content, message):
    trace = tmp_path / "bad.json"
    trace.write_text(content, encoding="utf-8")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _run(_enrich_args(str(trace), fixture("cpu_train", "output_code.log"), str(out_dir / "x.json")))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr
    assert list(out_dir.iterdir()) == []  # no partial output, no temp file


def test_enrich_cli_inputs_swapped_are_named(tmp_path):
    """The log given as the trace is a one-line error saying so; the trace given as the log, a warning."""
    output = tmp_path / "x.json"
    log, trace = fixture("cpu_train", "output_code.log"), fixture("cpu_train", "trace.json")
    result = _run(_enrich_args(log, trace, str(output)))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"error: {log} is a torch logging text file (line 1: 'V11" in result.stderr
    assert "not a trace: pass the .json" in result.stderr
    assert (
        f"warning: {trace}:1: this file is JSON (a torch.profiler trace?), not a compile log" in result.stdout
    )
    assert list(tmp_path.iterdir()) == []


def test_enrich_cli_log_folder_without_log_files_is_one_line(tmp_path):
    folder = tmp_path / "trace_dir"
    folder.mkdir()
    result = _run(_enrich_args(fixture("cpu_train", "trace.json"), str(folder), str(tmp_path / "x.json")))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"error: {folder} is a folder with no *.log file" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["trace_dir"]


def test_enrich_cli_unrelated_log_and_empty_log(tmp_path):
    output = tmp_path / "x.json"
    result = _run(
        _enrich_args(
            fixture("cpu_train", "trace.json"), fixture("cuda_handwritten", "output_code.log"), str(output)
        )
    )
    assert result.returncode == 2 and "different runs" in result.stderr and not output.exists()
    empty_log = tmp_path / "empty.log"
    empty_log.write_text("I0101 00:00:00.000000 1 /x.py:1] nothing compiled\n", encoding="utf-8")
    result = _run(_enrich_args(fixture("cpu_train", "trace.json"), str(empty_log), str(output)))
    assert result.returncode != 0 and "has no output code" in result.stdout and not output.exists()
    result = _run(
        _enrich_args(fixture("cpu_train", "trace.json"), str(empty_log), str(output), "--allow_no_match")
    )
    assert result.returncode == 0, result.stderr
    original = load_events(fixture("cpu_train", "trace.json"))
    assert load_events(str(output))[: len(original)] == original  # unchanged, plus the 2 empty-table events


def test_enrich_cli_missing_inputs(tmp_path):
    result = _run(
        _enrich_args(str(tmp_path / "nope.json"), fixture("cpu_train", "output_code.log"), "x.json")
    )
    assert (
        result.returncode == 2 and "--perf_trace_file" in result.stderr and "is not a file" in result.stderr
    )


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
            "0.3,0.2",
            "--num_repeats",
            "1",
            "--work_dir",
            str(tmp_path),
        ]
    )
    assert result.returncode == 0, result.stderr
    rows = [
        line.split("|")
        for line in result.stdout.splitlines()
        if line.startswith("| copy") or line.startswith("| enrich")
    ]
    assert [row[1].strip() for row in rows] == ["copy", "enrich", "copy", "enrich"]
    for copy_row, enrich_row in (rows[0:2], rows[2:4]):
        assert float(copy_row[9]) == 1.0 and float(enrich_row[9]) > 1.0  # wall x copy
        # output / input: at 0.2-0.3 MB the kernel table (~25 KB of sources) adds up to ~20 %
        assert float(copy_row[8]) == 1.0 and 1.0 < float(enrich_row[8]) < 1.5
    assert "load avg" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["enriched.json", "enriched.kernels.html", "synthetic.json"]


def test_benchmark_list_argument_forms():
    """Issue 14: '--sizes_mb 64,256' crashed (fire passes a tuple); it parses, bad values in one line."""
    from perf_traces import benchmark

    result = _run(["-m", "perf_traces.benchmark", "--sizes_mb", "abc"])
    assert result.returncode == 2 and "--sizes_mb" in result.stderr and "Traceback" not in result.stderr
    result = _run(["-m", "perf_traces.benchmark", "--sizes_mb", "64,256", "--num_repeats", "0"])
    assert result.returncode == 2 and "--num_repeats is 0" in result.stderr  # the sizes parsed, then this
    assert benchmark.IMPLEMENTATIONS == ("copy", "enrich")


def test_benchmark_refuses_work_dir_in_repository():
    result = _run(["-m", "perf_traces.benchmark", "--sizes_mb", "0.1", "--work_dir", REPO_ROOT])
    assert result.returncode == 2 and "inside the repository" in result.stderr


def test_enrich_cli_reads_a_gzip_trace_and_writes_gzip_to_a_gz_name(tmp_path):
    # torch.profiler writes gzip for a .json.gz name (export_chrome_trace, tensorboard_trace_handler)
    plain_trace = fixture("cpu_train", "trace.json")
    log = fixture("cpu_train", "output_code.log")
    trace = tmp_path / "trace.json.gz"
    trace.write_bytes(gzip.compress(pathlib.Path(plain_trace).read_bytes()))
    original = trace.read_bytes()
    reference = tmp_path / "reference.json"
    assert _run(_enrich_args(plain_trace, log, str(reference))).returncode == 0
    out_dir = tmp_path / "out"
    result = _run(_enrich_args(str(trace), log, str(out_dir / "enriched.json")))
    assert result.returncode == 0, result.stderr
    assert "events matched: 12 " in result.stdout
    assert (out_dir / "enriched.json").read_bytes() == reference.read_bytes()
    assert sorted(p.name for p in out_dir.iterdir()) == ["enriched.json", "enriched.kernels.html"]
    compressed = tmp_path / "gz_out" / "enriched.json.gz"
    result = _run(_enrich_args(str(trace), log, str(compressed)))
    assert result.returncode == 0, result.stderr
    assert gzip.decompress(compressed.read_bytes()) == reference.read_bytes()
    # the chart is named after the trace without .json.gz; the decompressed copies are gone
    written = sorted(p.name for p in compressed.parent.iterdir())
    assert written == ["enriched.json.gz", "enriched.kernels.html"]
    assert trace.read_bytes() == original  # the input is untouched


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], "damaged gzip data (Compressed file ended"),
        (lambda data: data[:-8] + bytes(8), "damaged gzip data (CRC check failed"),
        (lambda data: data[:20] + bytes(200) + data[220:], "damaged gzip data"),
    ],
    ids=["truncated", "bad checksum", "zeroed block"],
)
def test_enrich_cli_damaged_gzip_trace_is_one_line_and_writes_nothing(tmp_path, damage, message):
    data = gzip.compress(pathlib.Path(fixture("cpu_train", "trace.json")).read_bytes())
    trace = tmp_path / "trace.json.gz"
    trace.write_bytes(damage(data))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _run(_enrich_args(str(trace), fixture("cpu_train", "output_code.log"), str(out_dir / "x.json")))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {trace}: {message}"), result.stderr
    assert list(out_dir.iterdir()) == []


def test_enrich_cli_error_inside_a_gzip_trace_names_it_and_the_line(tmp_path):
    text = pathlib.Path(fixture("cpu_train", "trace.json")).read_text().splitlines(keepends=True)
    text[5] = "{ broken\n"
    trace = tmp_path / "trace.json.gz"
    trace.write_bytes(gzip.compress("".join(text).encode()))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _run(_enrich_args(str(trace), fixture("cpu_train", "output_code.log"), str(out_dir / "x.json")))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {trace} (decompressed): "), result.stderr
    assert "at line 6 " in result.stderr
    assert list(out_dir.iterdir()) == []

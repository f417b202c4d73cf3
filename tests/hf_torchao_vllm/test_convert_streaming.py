"""Streaming: converting a multi-shard checkpoint holds about one shard in memory, not the model."""

import json
import os
import re
import subprocess
import sys

import pytest

from hf_torchao_vllm import tiny_models
from hf_torchao_vllm.quantization.quantize import quantize_checkpoint

# Peak RSS growth during the shard loop must stay under 1.5x the largest source shard: the
# converted tensors of one shard (~1x) plus one parameter's source tensors and allocator slack.
MAX_PEAK_OVER_LARGEST_SHARD = 1.5

CHILD = """
import json, os, sys
os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
from hf_torchao_vllm.conversion.convert import convert_checkpoint
s = convert_checkpoint(sys.argv[1], sys.argv[2])
print(json.dumps({"delta": s.peak_rss_delta_bytes, "largest": s.largest_shard_bytes,
                  "shards": s.num_shards, "source": s.source_bytes}))
"""


@pytest.mark.slow
def test_peak_rss_of_multi_shard_conversion(tmp_path):
    # ~85 MB of int8 weights (hidden 1024, 8 layers) in shards of at most 24 MB; the largest single
    # tensor is 2 MB, so one parameter's transient copies are small next to a shard.
    bf16 = tiny_models.save_random_llama(
        str(tmp_path / "bf16"), hidden_size=1024, intermediate_size=2048, num_layers=8
    )
    source = str(tmp_path / "torchao")
    quantize_checkpoint(bf16, "int8_weight_only", source, max_shard_size="24MB")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, source, str(tmp_path / "ct")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TORCHAO_FORCE_SKIP_LOADING_SO_FILES": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shards"] >= 3
    # The whole model is several times the bound: holding it would fail the check below.
    assert result["source"] > 2 * MAX_PEAK_OVER_LARGEST_SHARD * result["largest"]
    ratio = result["delta"] / result["largest"]
    assert ratio <= MAX_PEAK_OVER_LARGEST_SHARD, (
        f"peak RSS grew by {result['delta'] / 1e6:.1f} MB = {ratio:.2f}x the largest shard "
        f"({result['largest'] / 1e6:.1f} MB) while converting {result['source'] / 1e6:.1f} MB"
    )


def test_benchmark_prints_the_ratio_to_copy_and_cleans_up(tmp_path):
    """The conversion benchmark's table (small size): every column, the load average, nothing left."""
    work_dir = tmp_path / "work"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_torchao_vllm.benchmark_conversion",
            "--recipes=int8_weight_only,fp8_per_row",
            "--size_mb=6",
            "--shard_mb=2",
            "--num_runs=2",
            f"--work_dir={work_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TORCHAO_FORCE_SKIP_LOADING_SO_FILES": "1", "COLUMNS": "250"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "1-minute load average" in out and "median of 2 alternating runs" in out
    for column in ("copy s (min-max)", "convert / copy speed", "CPU s copy / convert", "peak RSS growth"):
        assert column in out, out
    rows = [
        line
        for line in out.splitlines()
        if line.startswith("│ int8_weight_only") or line.startswith("│ fp8_per_row")
    ]
    assert len(rows) == 2, out
    for row in rows:
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert re.fullmatch(r"\d+ MB in [3-9] shards", cells[1]), cells
        assert float(cells[6]) > 0  # convert / copy speed
    assert os.listdir(work_dir) == []


def test_readme_converter_commands_use_real_arguments():
    """The README's part-2 commands of the converter, validator and benchmark name real arguments."""
    import pathlib

    from tests.hf_torchao_vllm.test_quantize_readme import entry_arguments
    from tests.readme_commands import bash_block_commands

    readme = (pathlib.Path(__file__).resolve().parents[2] / "hf_torchao_vllm" / "README.md").read_text()
    modules = {
        "hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors",
        "hf_torchao_vllm.validate_compressed_tensors_checkpoint",
        "hf_torchao_vllm.benchmark_conversion",
    }
    seen = set()
    for command in bash_block_commands(readme, ".venv/bin/python -m hf_torchao_vllm."):
        if command[2] not in modules:
            continue
        seen.add(command[2])
        parameters = entry_arguments(command[2])
        for flag in (word for word in command[3:] if word.startswith("--")):
            name = flag.removeprefix("--").split("=")[0]
            assert name in parameters, f"README: {command[2]} has no --{name}"
    assert seen == modules

"""Subprocess smoke tests of ``python -m test_ao``: exit codes, report.json contents, README commands."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

import test_ao
from tests.module_cli import run_module
from tests.readme_commands import bash_block_commands

REPO_ROOT = Path(test_ao.__file__).resolve().parent


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return run_module("test_ao", *args, timeout=timeout)


def load_report(output_dir: Path) -> dict:
    return json.loads((output_dir / "report.json").read_text())


def configs_by_name(report: dict) -> dict[str, dict]:
    return {config["name"]: config for config in report["configs"]}


def test_cli_reports_supported_and_unsupported_configs_and_autoquant(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli(
        "--configs=int8wo,float8dq_row,int4wo",
        "--use_autoquant",
        "--num_runs=1",
        "--batch_size=2",
        f"--output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "summary" in proc.stdout
    report = load_report(out)
    assert report["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert report["model"] == "small"
    configs = configs_by_name(report)
    assert list(configs) == ["int8wo", "float8dq_row", "int4wo"]
    int8 = configs["int8wo"]
    assert int8["status"] == "ok"
    assert int8["num_quantized"] == 3 and int8["num_linear"] == 3
    assert {m["weight_class"] for m in int8["modules"] if m["status"] == "quantized"} == {"Int8Tensor"}
    floor = test_ao.CONFIG_REGISTRY["int8wo"].min_layer_sqnr_db  # the recipe registry's
    assert min(m["layer_sqnr_db"] for m in int8["modules"] if m["status"] == "quantized") >= floor
    assert 0 < int8["eager"]["min_ms"] <= int8["eager"]["median_ms"] <= int8["eager"]["max_ms"]
    assert report["baseline"]["eager"]["median_ms"] > 0
    assert len(report["load_average"]) == 3
    if not torch.cuda.is_available():
        # "unsupported on this device" rows are findings, not failures: exit code 0 above
        assert configs["float8dq_row"]["status"] == "unsupported"
        assert "CUDA compute capability" in configs["float8dq_row"]["probe_errors"][0]
        # no Int4WeightOnlyConfig layout runs on CPU: the recipe falls back to the intx int4 tensor
        assert configs["int4wo"]["status"] == "ok" and configs["int4wo"]["variant"] == "intx"
        assert len(configs["int4wo"]["probe_errors"]) == 3
    autoquant = report["autoquant"]
    import torchao

    if hasattr(torchao, "autoquant"):
        assert autoquant["status"] in ("ok", "unsupported")
    else:
        assert autoquant["status"] == "unavailable"
        assert "has no torchao.autoquant" in autoquant["reason"]
        assert "autoquant: unavailable" in proc.stdout


def test_cli_refuses_to_overwrite_and_rejects_bad_arguments(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    proc = run_cli("--configs=int8wo", f"--output_dir={out}")
    assert_one_line_error(proc, "exists: pass --overwrite")
    assert (out / "report.json").read_text() == "{}"  # untouched

    assert_one_line_error(run_cli("--configs=int8wo,not_a_config"), "not_a_config")
    assert_one_line_error(run_cli("--device", "tpu"), "--device 'tpu': only cpu, cuda and cuda:<index>")
    assert_one_line_error(run_cli("--num_runs", "abc"), "--num_runs is 'abc': pass an integer")


def assert_one_line_error(proc: subprocess.CompletedProcess[str], message: str) -> None:
    """A user mistake: exit 2, one line ``error: ...`` on stderr, no traceback."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr[-2000:]


def test_cli_exclude_takes_a_number_like_regex(tmp_path: Path) -> None:
    # fire parses `--exclude=0` as the int 0; it must still filter module "0" out
    out = tmp_path / "out"
    proc = run_cli("--configs=int8wo", "--exclude=0", "--num_runs=1", "--batch_size=2", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {m["fqn"]: m for m in configs_by_name(load_report(out))["int8wo"]["modules"]}
    assert rows["0"]["status"] == "skipped"
    assert rows["0"]["reason"] == "filtered out: name matches --exclude='0'"
    assert rows["2"]["status"] == rows["5"]["status"] == "quantized"


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random LlamaForCausalLM saved in HF format (the Hub is not reachable here)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    return path


def _check_hf_report(report: dict) -> None:
    int8 = configs_by_name(report)["int8wo"]
    assert int8["status"] == "ok", int8["error"]
    rows = {m["fqn"]: m for m in int8["modules"]}
    assert rows["lm_head"]["status"] == "quantized" and rows["lm_head"]["weight_class"] == "Int8Tensor"
    assert rows["model.embed_tokens"]["status"] == "skipped"
    assert rows["model.embed_tokens"]["reason"].startswith("filtered out: Embedding is not nn.Linear")
    projections = [m for fqn, m in rows.items() if fqn.endswith("_proj")]
    assert projections and all(m["status"] == "quantized" for m in projections)
    norms = [m for m in rows.values() if m["module_type"].endswith("RMSNorm")]
    assert norms and all(m["reason"].startswith("filtered out:") for m in norms)


def test_cli_on_hf_model(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The embedded model when it is built (through the `embedded` alias), else a random tiny Llama folder."""
    if (test_ao.EMBEDDED_MODEL_DIR / "config.json").is_file():
        model = "embedded"
    else:
        model = str(request.getfixturevalue("tiny_llama_dir"))
    out = tmp_path / "out"
    proc = run_cli(
        f"--model={model}",
        "--configs=int8wo",
        "--num_runs=1",
        "--batch_size=1",
        "--seq_len=8",
        f"--output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = load_report(out)
    if model == "embedded":
        assert report["model"] == str(test_ao.EMBEDDED_MODEL_DIR)
    _check_hf_report(report)


@pytest.mark.slow
def test_cli_compile_times_compiled_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("--configs=int8wo", "--compile", "--num_runs=1", "--batch_size=2", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = load_report(out)
    assert report["baseline"]["compiled"]["median_ms"] > 0
    int8 = configs_by_name(report)["int8wo"]
    assert int8["compile_error"] == ""
    assert int8["compiled"]["median_ms"] > 0 and int8["compile_s"] > 0
    # compiled int8 weight-only is the same math as eager up to kernel choice: the measured value
    # (~40 dB, as eager) is far above this bound
    assert int8["compiled_sqnr_db"] >= 30.0


def _readme_section() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"^## test_ao\.py\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    assert match, "README.md has no '## test_ao.py' section"
    return match.group(1)


def test_readme_commands_use_real_flags_and_config_names() -> None:
    commands = bash_block_commands(_readme_section(), ".venv/bin/python -m test_ao")
    assert commands, "the README section shows no test_ao command"
    parameters = set(inspect.signature(test_ao.main).parameters)
    for command in commands:
        for arg in command[3:]:
            assert arg.startswith("--"), f"{command}: positional {arg!r}"
            name, _, value = arg[2:].partition("=")
            assert name.removeprefix("no") in parameters, f"{command}: unknown flag --{name}"
            if name == "configs":
                test_ao._parse_configs(value)
            if name == "model" and not value.startswith(("/", ".")):
                assert value in (*test_ao.TOY_MODELS, "embedded"), command

"""Keep the folder README's part-1 commands honest: every script exists and every --flag is an
argument of its fire entry point."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[2] / "hf_torchao_vllm"
PART1_SCRIPTS = {
    "quantize_hf_model_with_torchao",
    "inspect_checkpoint",
    "evaluate_quality",
    "benchmark_generation",
    "train_tiny_models",
}


def _commands() -> list[tuple[str, list[str]]]:
    text = (FOLDER / "README.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        match = re.search(r"\.venv/bin/python hf_torchao_vllm/(\w+)\.py(.*)", line)
        if match and match.group(1) in PART1_SCRIPTS:
            commands.append((match.group(1), re.findall(r"--(\w+)", match.group(2))))
    return commands


def test_readme_commands_use_real_arguments():
    commands = _commands()
    assert {script for script, _ in commands} == PART1_SCRIPTS
    for script, flags in commands:
        parameters = inspect.signature(importlib.import_module(f"hf_torchao_vllm.{script}").main).parameters
        for flag in flags:
            assert flag in parameters, f"README: {script}.py has no --{flag}"

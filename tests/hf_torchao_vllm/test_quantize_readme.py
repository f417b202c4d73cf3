"""Keep the folder README's commands honest: every `.venv/bin/python -m hf_torchao_vllm.<script>` command
names a module of the folder, and every --flag is an argument of its entry point or one of the
aliases its command line accepts (the original scripts' flag names)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from tests.readme_commands import bash_block_commands

FOLDER = Path(__file__).resolve().parents[2] / "hf_torchao_vllm"
ENTRY_SCRIPTS = {
    "quantize_hf_model_with_torchao",
    "inspect_checkpoint",
    "evaluate_quality",
    "benchmark_generation",
    "train_tiny_models",
    "run_pipeline",
    "convert_torchao_checkpoint_to_compressed_tensors",
    "validate_compressed_tensors_checkpoint",
    "run_quantized_model_in_vllm",
    "architecture_matrix",
    "benchmark_conversion",
}


def entry_arguments(module: str) -> set[str]:
    """The flags ``python -m <module>`` takes: its entry point's arguments and their aliases."""
    entry = importlib.import_module(module)
    return {
        *inspect.signature(entry.main).parameters,
        *getattr(entry, "FLAG_ALIASES", {}),
        *getattr(entry, "FIXED_FLAGS", {}),
    }


def test_readme_commands_use_real_modules_and_arguments():
    commands = bash_block_commands((FOLDER / "README.md").read_text(), ".venv/bin/python")
    assert all(command[1] == "-m" for command in commands), [c for c in commands if c[1] != "-m"]
    commands = [command for command in commands if command[2] != "pytest"]
    modules = {command[2].removeprefix("hf_torchao_vllm.") for command in commands}
    assert modules == ENTRY_SCRIPTS
    for command in commands:
        module = command[2].removeprefix("hf_torchao_vllm.")
        parameters = entry_arguments(f"hf_torchao_vllm.{module}")
        for arg in command[3:]:
            assert arg.startswith("--"), f"{command}: positional {arg!r}"
            name = arg[2:].partition("=")[0]
            assert name.removeprefix("no") in parameters, f"README: {module} has no --{name}"

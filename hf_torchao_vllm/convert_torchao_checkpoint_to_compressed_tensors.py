"""Convert a torchao checkpoint (``quant_method: torchao``) to a compressed-tensors checkpoint.

Reads config.json's torchao ``quantization_config`` and the safetensors shards one at a time,
maps every torchao tensor subclass to the compressed-tensors tensors vLLM loads (see
``conversion/schemes.py`` for the table), writes ``model*.safetensors`` (+ index when sharded), a
config.json whose ``quantization_config`` is a compressed-tensors config (one config group per
distinct scheme, an ``ignore`` list of the Linear modules left in high precision), and copies every
other file. Shards are memory-mapped; tensors that pass through unchanged are copied file to file
by the kernel and repacked ones go through one reused buffer, so memory stays near one shard.

Output safety: ``--output_dir`` may not be ``--model``, a folder containing it, or a path inside
it; an existing ``--output_dir`` is replaced only with ``--overwrite`` and only if this tool wrote it;
its location must be writable (all checked before any work). The output is written to a temp folder
next to ``--output_dir`` and moved there only after it passed validation (``--validate``, default on:
``validate_compressed_tensors_checkpoint``). SIGINT / SIGTERM remove the temp folder; a later run
removes one left by SIGKILL. Corrupted input is reported as one line naming the file.

    python -m hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors \\
        --model=outputs/quantized --output_dir=outputs/quantized_ct
"""

from __future__ import annotations

from hf_torchao_vllm.conversion.convert import convert_checkpoint, print_summary
from pytorch_scripts_common.cli import run


def main(model: str, output_dir: str, overwrite: bool = False, validate: bool = True) -> None:
    """Convert a torchao checkpoint directory to compressed-tensors (see the module docstring).

    Args:
        model: torchao checkpoint directory (config.json with quant_method torchao, safetensors or
            pytorch_model*.bin); also --dir_source.
        output_dir: directory to write the compressed-tensors checkpoint to (published only when
            complete); also --dir_target.
        overwrite: replace output_dir if an earlier run of this tool wrote it.
        validate: before publishing, compare every decompressed weight with torchao's dequantization
            and check that transformers loads the result (exits 1 on a mismatch, writing nothing).
    """
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    summary = convert_checkpoint(
        model, output_dir, overwrite=overwrite, validate=validate, report=print_summary
    )
    print(f"wrote {summary.dir_target}")


# The original script's flag names.
FLAG_ALIASES = {"dir_source": "model", "dir_target": "output_dir"}

if __name__ == "__main__":
    run(main, aliases=FLAG_ALIASES)

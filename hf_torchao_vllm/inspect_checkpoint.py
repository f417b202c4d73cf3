"""Read-only summary of a torchao or compressed-tensors (or plain) HF checkpoint directory.

Per stored tensor: name, stored type (``plain``, the torchao subclass a flattened component belongs
to, e.g. ``Int8Tensor:qdata``, or the compressed-tensors role such as ``weight_packed`` /
``weight_scale``), dtype, shape, bytes; per torchao weight one row with its subclass, component
shapes (qdata, scale) and total bytes. Also the ``quantization_config`` and totals.

Files are read by ``checkpoint_reader``, the converter's reader, only for reading: safetensors
headers (no tensor data is read), ``.bin`` files through ``torch.load(weights_only=True, mmap=True)``
(torchao tensors flattened as transformers stores them in safetensors), sharded checkpoints through
their ``*.index.json``, torchao metadata with the converter's parser. Dtypes are safetensors' names
for both formats. Problems (unreadable shard, index pointing at a missing file, malformed metadata)
are warnings and the rest is still summarized; ``--strict`` makes them errors.

    python -m hf_torchao_vllm.inspect_checkpoint \\
        --model=outputs/hf_torchao_vllm/dense-int8_weight_only
"""

from __future__ import annotations

import json

from hf_torchao_vllm.conversion.checkpoint_summary import TOOL, inspect_checkpoint, print_summary


def main(
    model: str,
    show_tensors: bool = False,
    json_output: str | None = None,
    strict: bool = False,
    overwrite: bool = False,
) -> None:
    """Print a read-only summary of a torchao / compressed-tensors / plain HF checkpoint directory.

    Args:
        model: checkpoint directory with config.json and *.safetensors or *.bin (sharded or not);
            also --checkpoint_dir.
        show_tensors: also list every stored tensor (flattened torchao components, compressed-tensors roles).
        json_output: also write the summary as JSON to this file (must be outside the model directory).
        strict: turn warnings (unreadable shard, missing shard, malformed metadata) into errors.
        overwrite: replace an existing json_output.
    """
    from pytorch_scripts_common.outputs import check_output, staged_file

    target = None
    if json_output is not None:
        target = check_output(
            json_output,
            inputs=[model],
            overwrite=overwrite,
            tool=TOOL,
            kind="file",
            flag="json_output",
        )
    summary = inspect_checkpoint(model, strict=strict)
    print_summary(summary, show_tensors)
    if target is not None:
        with staged_file(target) as staging:
            staging.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
        print(f"wrote {target}")


# This tool's former flag name.
FLAG_ALIASES = {"checkpoint_dir": "model"}

if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main, aliases=FLAG_ALIASES)

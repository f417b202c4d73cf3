"""Validate a compressed-tensors checkpoint converted from torchao, against the torchao source.

1. Weights: each target shard is decompressed by the compressed-tensors library itself
   (``CompressedTensorsDequantizer(dir).process(...)``) and compared with torchao's own
   ``dequantize()`` of the source tensors (3D experts split per expert): the key sets, dtypes and
   shapes must be equal, and the values bit-exact, except NVFP4 (tolerance below).
2. transformers: the converted checkpoint is loaded through transformers' compressed-tensors
   integration and the torchao source through its torchao integration; next-token distributions
   on fixed token ids must agree (KL below ``kl_threshold``, measured).

Any mismatch prints the offending tensors and exits non-zero.

    python -m hf_torchao_vllm.validate_compressed_tensors_checkpoint \\
        --model=outputs/quantized_ct --reference=outputs/quantized
"""

from __future__ import annotations

import os

from hf_torchao_vllm.conversion import checkpoint_reader
from hf_torchao_vllm.conversion.validate import (
    DEFAULT_KL_THRESHOLD,
    check_compressed_tensors_config,
    run_validation,
)
from pytorch_scripts_common.cli import run


def main(
    model: str,
    reference: str,
    check_transformers: bool = True,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
) -> None:
    """Validate a converted compressed-tensors checkpoint against its torchao source; exit 1 on mismatch.

    Args:
        model: the compressed-tensors checkpoint directory the conversion wrote; also --dir_target.
        reference: the torchao checkpoint directory the conversion read; also --dir_source.
        check_transformers: also load both checkpoints in transformers and compare next-token logits.
        kl_threshold: largest allowed mean KL(torchao || compressed-tensors), nats per token.
    """
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    for d, what in ((model, "model"), (reference, "reference")):
        if not os.path.isdir(d):
            raise ValueError(f"--{what} {d} is not a directory: pass a checkpoint directory")
    if not kl_threshold >= 0:
        raise ValueError(f"--kl_threshold is {kl_threshold}: pass a non-negative number of nats")
    checkpoint_reader.open_torchao_checkpoint(reference)
    check_compressed_tensors_config(model)
    run_validation(reference, model, check_transformers=check_transformers, kl_threshold=kl_threshold)


# The converter's flag names (the source it read, the target it wrote).
FLAG_ALIASES = {"dir_source": "reference", "dir_target": "model"}

if __name__ == "__main__":
    run(main, aliases=FLAG_ALIASES)

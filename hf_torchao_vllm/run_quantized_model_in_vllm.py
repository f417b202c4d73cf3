"""Run a bf16, torchao or compressed-tensors checkpoint with vLLM's offline ``LLM`` (CPU or GPU).

Prints the architecture, a per-layer-type quantization summary taken from the loaded vLLM model
(which linear layers got which quantization method / compressed-tensors scheme; vLLM does not
print this itself), and greedy generations for a few prompts. With ``compare_with_transformers``
the same checkpoint also runs in transformers and the next-token distributions are compared:
mean KL(transformers || vLLM) over the prompts and top-1 agreement.

    python -m hf_torchao_vllm.run_quantized_model_in_vllm --model=outputs/pipeline/compressed_tensors
"""

from __future__ import annotations

import os

from hf_torchao_vllm.serving.vllm_runner import print_result, run_in_vllm


def main(
    model: str,
    max_tokens: int = 16,
    compile: bool = False,
    tensor_parallel_size: int = 1,
    compare_with_transformers: bool = False,
    seed: int = 0,
) -> None:
    """Run a checkpoint (bf16, torchao or compressed-tensors) in vLLM and print what was loaded and generated.

    Args:
        model: checkpoint directory (config.json + safetensors; tokenizer optional); also --model_name,
            --model_path.
        max_tokens: tokens to generate per prompt (greedy).
        compile: let vLLM torch.compile the model (--no-compile runs eager, faster to start on CPU).
        tensor_parallel_size: vLLM tensor parallel size (GPUs, or CPU processes).
        compare_with_transformers: also run transformers and report KL / top-1 agreement of the
            next-token distribution after each prompt.
        seed: seed for vLLM and for the token-id prompts used when there is no tokenizer.
    """
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    if max_tokens < 1 or tensor_parallel_size < 1:
        raise ValueError(
            f"--max_tokens {max_tokens} / --tensor_parallel_size {tensor_parallel_size}: pass >= 1 / >= 1"
        )
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU; the models are tiny
    if tensor_parallel_size == 1:
        # One process: the engine core runs in this process (saves ~half of the CPU start-up time).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    result = run_in_vllm(
        model,
        max_tokens=max_tokens,
        compile=compile,
        tensor_parallel_size=tensor_parallel_size,
        compare_with_transformers=compare_with_transformers,
        seed=seed,
    )
    print_result(result)


# The original script's flag name, and this tool's former one.
FLAG_ALIASES = {"model_name": "model", "model_path": "model"}

if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main, aliases=FLAG_ALIASES)

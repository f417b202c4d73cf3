"""A bf16, torchao or compressed-tensors checkpoint in vLLM's offline ``LLM`` (``run_in_vllm``): what
vLLM loaded per layer, greedy generations, KL against transformers; the steps of
``python -m hf_torchao_vllm.run_quantized_model_in_vllm`` (described there)."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any

from hf_torchao_vllm.conversion import checkpoint_reader
from hf_torchao_vllm.serving import vllm_support

DEFAULT_PROMPTS = (
    "The Python interpreter",
    "A list comprehension is",
    "To open a file, use",
    "Exceptions are raised when",
)
TORCHAO_QUANT_METHOD = "torchao"


@dataclasses.dataclass
class VllmRunResult:
    architecture: str
    quantization: str
    layer_summary: list[tuple[str, str, str, int]]
    prompts: list[Any]
    generations: list[list[int]]
    texts: list[str] | None
    seconds_engine_start: float
    seconds_generate: float
    moe_path: str | None = None  # which MoE kernel vLLM ran, for MoE models
    kl: float | None = None
    top1_agreement: float | None = None


def read_config(model_path: str) -> dict[str, Any]:
    path = os.path.join(model_path, checkpoint_reader.CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"--model {model_path!r} has no config.json: pass a checkpoint directory")
    return checkpoint_reader.read_json_object(path, "config")


def torchao_quantized_params(model_path: str, config: dict[str, Any]) -> set[str]:
    """Names of the torchao-quantized parameters of a torchao checkpoint (from safetensors metadata)."""
    if (config.get("quantization_config") or {}).get("quant_method") != TORCHAO_QUANT_METHOD:
        return set()
    checkpoint = checkpoint_reader.open_torchao_checkpoint(model_path)
    return {name for name, meta in checkpoint.params.items() if meta["_type"] != "Tensor"}


def check_servable(model_path: str, config: dict[str, Any], device, measured: bool = True) -> None:
    """A one-line ``ValueError`` before vLLM starts when it cannot serve this checkpoint here
    (``measured``: also when the conformance matrix saw vLLM fail on it)."""
    quantized = torchao_quantized_params(model_path, config)
    problem = vllm_support.checkpoint_problem(config, quantized, device, measured=measured)
    if problem is not None:
        raise ValueError(f"vLLM cannot serve {model_path}: {problem}")


def describe_moe_path(layer_rows: list[tuple[str, str, str]], device_type: str) -> str | None:
    """Which fused-MoE method vLLM chose (None for dense models), and whether this CPU has AMX."""
    methods = sorted({how for _, cls, how in layer_rows if "MoE" in cls})
    if not methods:
        return None
    where = (
        f"CPU {'with' if vllm_support.has_amx() else 'without'} AMX" if device_type == "cpu" else device_type
    )
    return f"{', '.join(methods)} on {where}"


def summarize_vllm_layers(model) -> list[tuple[str, str, str]]:
    """(module name, layer class, quantization method or scheme) for every layer with a quant method."""
    rows = []
    for name, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if method is None:
            continue
        scheme = getattr(module, "scheme", None)
        how = type(scheme).__name__ if scheme is not None else type(method).__name__
        rows.append((name, type(module).__name__, how))
    return rows


def group_layer_summary(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str, int]]:
    """Collapse per-layer rows to (name pattern with indices as *, layer class, method, count)."""
    counts: dict[tuple[str, str, str], int] = {}
    for name, cls, how in rows:
        key = (re.sub(r"\.\d+(?=\.|$)", ".*", name), cls, how)
        counts[key] = counts.get(key, 0) + 1
    return [(*k, v) for k, v in counts.items()]


def has_tokenizer(model_path: str) -> bool:
    return any(os.path.isfile(os.path.join(model_path, f)) for f in ("tokenizer.json", "tokenizer.model"))


def token_id_prompts(vocab_size: int, num_prompts: int, length: int, seed: int) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (num_prompts, length), generator=generator).tolist()


def transformers_next_token_logprobs(model_path: str, prompt_ids: list[list[int]]):
    """log-softmax of transformers' next-token logits after each prompt, [num_prompts, vocab] float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16)
    rows = []
    with torch.no_grad():
        for ids in prompt_ids:
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            rows.append(torch.log_softmax(logits, dim=-1))
    return torch.stack(rows)


def run_in_vllm(
    model_path: str,
    prompts: list[str] | None = None,
    max_tokens: int = 16,
    compile: bool = False,
    tensor_parallel_size: int = 1,
    compare_with_transformers: bool = False,
    seed: int = 0,
    max_model_len: int = 512,
    refuse_measured_failures: bool = True,
) -> VllmRunResult:
    """Start one vLLM engine on ``model_path``, generate greedily, optionally compare with transformers.

    ``refuse_measured_failures=False`` runs vLLM even where the conformance matrix saw it fail (the
    matrix itself measures rather than trusting its previous run)."""
    from pytorch_scripts_common import get_device, set_seed

    config = read_config(model_path)
    device = get_device()
    check_servable(model_path, config, device, measured=refuse_measured_failures)
    checkpoint_reader.check_weight_files(model_path)
    max_model_len = min(max_model_len, int(config.get("max_position_embeddings") or max_model_len))
    set_seed(seed)
    text_prompts = list(prompts or DEFAULT_PROMPTS)
    use_tokenizer = has_tokenizer(model_path)
    start = time.perf_counter()
    llm = start_engine(
        model_path,
        max_model_len,
        compile,
        seed,
        tensor_parallel_size,
        use_tokenizer,
        compare_with_transformers,
    )
    seconds_start = time.perf_counter() - start
    layer_rows = llm.apply_model(summarize_vllm_layers)[0]
    if use_tokenizer:
        tokenizer = llm.get_tokenizer()
        prompt_ids = [tokenizer(p)["input_ids"] for p in text_prompts]
    else:
        vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
        prompt_ids = token_id_prompts(vocab, len(text_prompts), 8, seed)
    start = time.perf_counter()
    outputs = generate(
        llm, prompt_ids, max_tokens, seed, use_tokenizer, all_logprobs=compare_with_transformers
    )
    seconds_generate = time.perf_counter() - start
    result = VllmRunResult(
        architecture=(config.get("architectures") or ["?"])[0],
        quantization=(config.get("quantization_config") or {}).get("quant_method", "none (bf16)"),
        layer_summary=group_layer_summary(layer_rows),
        prompts=text_prompts if use_tokenizer else prompt_ids,
        generations=[list(o.outputs[0].token_ids) for o in outputs],
        texts=[o.outputs[0].text for o in outputs] if use_tokenizer else None,
        seconds_engine_start=seconds_start,
        seconds_generate=seconds_generate,
        moe_path=describe_moe_path(layer_rows, device.type),
    )
    if compare_with_transformers:
        result.kl, result.top1_agreement = compare_next_token(model_path, prompt_ids, outputs)
    return result


def start_engine(
    model_path: str,
    max_model_len: int,
    compile: bool,
    seed: int,
    tensor_parallel_size: int,
    use_tokenizer: bool,
    all_logprobs: bool,
):
    """A vLLM offline ``LLM`` on ``model_path`` in bf16 (eager unless ``compile``)."""
    from vllm import LLM

    from pytorch_scripts_common import get_device

    try:
        return LLM(
            model=model_path,
            dtype="bfloat16",
            max_model_len=max_model_len,
            enforce_eager=not compile,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            skip_tokenizer_init=not use_tokenizer,
            max_logprobs=-1 if all_logprobs else 20,
        )
    except (NotImplementedError, RuntimeError, ValueError) as e:
        # vLLM's own refusal (not predicted by vllm_support): a bug report for that module, not a user error
        raise RuntimeError(f"vLLM could not load {model_path!r} on {get_device().type}: {e}") from e


def generate(
    llm, prompt_ids: list[list[int]], max_tokens: int, seed: int, detokenize: bool, all_logprobs: bool
):
    """Greedy generations of ``prompt_ids`` (with every token's log-probability after the prompt when
    ``all_logprobs``)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        seed=seed,
        logprobs=-1 if all_logprobs else None,
        detokenize=detokenize,
    )
    return llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False)


def compare_next_token(model_path: str, prompt_ids: list[list[int]], outputs) -> tuple[float, float]:
    """Mean KL(transformers || vLLM) of the next-token distribution after each prompt, and top-1
    agreement; vLLM's distribution is read from its log-probabilities of the first generated token."""
    import torch

    hf = transformers_next_token_logprobs(model_path, prompt_ids)
    vllm_logprobs = torch.full_like(hf, -torch.inf)
    for row, out in enumerate(outputs):
        for token, logprob in out.outputs[0].logprobs[0].items():
            if token < hf.shape[1]:
                vllm_logprobs[row, token] = logprob.logprob
    kl = (hf.exp() * (hf - vllm_logprobs)).sum(-1)
    return kl.mean().item(), (hf.argmax(-1) == vllm_logprobs.argmax(-1)).float().mean().item()


def print_result(result: VllmRunResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    console.print(f"architecture: {result.architecture}; quantization: {result.quantization}")
    if result.moe_path is not None:
        console.print(f"MoE experts ran with: {result.moe_path}", markup=False)
    table = Table(title="vLLM layers and their quantization (as loaded)")
    for col in ("layers", "vLLM layer", "method / scheme", "count"):
        table.add_column(col)
    for pattern, cls, how, count in result.layer_summary:
        table.add_row(pattern, cls, how, str(count))
    console.print(table)
    gen = Table(
        title=f"greedy generations (engine start {result.seconds_engine_start:.1f} s, "
        f"generate {result.seconds_generate:.1f} s)"
    )
    gen.add_column("prompt")
    gen.add_column("completion")
    for i, prompt in enumerate(result.prompts):
        completion = result.texts[i] if result.texts is not None else str(result.generations[i])
        gen.add_row(str(prompt), completion)
    console.print(gen)
    if result.kl is not None:
        console.print(
            f"transformers vs vLLM next-token distribution: mean KL {result.kl:.3g} nats, "
            f"top-1 agreement {result.top1_agreement:.2f} over {len(result.prompts)} prompts"
        )

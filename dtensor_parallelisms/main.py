"""FSDP2 / tensor / sequence / 2D parallelism with DTensor, each checked against a single process.

Launch with torchrun (see README.md), for example on CPU:

    .venv/bin/torchrun --nproc_per_node 2 -m dtensor_parallelisms.main --mode=fsdp

Every rank runs the single-process reference itself (same seed everywhere) and the parallel version,
then compares the forward output, the input gradient, every parameter gradient and every parameter
after one AdamW step. Rank 0 prints one table per mode; the exit code is non-zero if any check failed
on any rank.
"""

from __future__ import annotations

import sys

from dtensor_parallelisms.model import ModelConfig
from dtensor_parallelisms.run import run_modes
from pytorch_scripts_common import distributed
from pytorch_scripts_common.cli import UsageError, parse_list

MODES = ("fsdp", "tp", "sp", "fsdp_tp")
EXAMPLE_COMMAND = ".venv/bin/torchrun --nproc_per_node 2 -m dtensor_parallelisms.main --mode=fsdp"


def parse_modes(mode: str | tuple | list) -> list[str]:
    """``"all"``, one mode, or several (``--mode=fsdp,tp``: fire passes a tuple) -> list of modes."""
    names = parse_list(mode, str, name="mode")
    if names == ["all"]:
        return list(MODES)
    unknown = [n for n in names if n not in MODES]
    if unknown or not names:
        raise UsageError(
            f"unknown mode {unknown or mode!r}: choose one of {', '.join(MODES)}, 'all', "
            "or a comma-separated list such as --mode=fsdp,tp"
        )
    return list(dict.fromkeys(names))


def _require_divisible(mode: str, what: str, value: int, degree: int, degree_name: str) -> None:
    if value % degree != 0:
        raise ValueError(
            f"mode {mode!r}: {what}={value} must be divisible by the tensor-parallel degree "
            f"{degree_name}={degree} (each rank holds {what} / {degree_name}); launch a world size "
            f"that divides {value} or change --{what}"
        )


def validate_world_size(modes: list[str], world_size: int, config: ModelConfig, tp_size: int) -> None:
    """Raise ``ValueError`` if a mode cannot run on ``world_size`` ranks with this model config.

    fsdp: any world size (FSDP2 pads uneven dim-0 shards). tp, sp: the tensor-parallel degree is the
    world size and must divide num_heads, hidden_dim (and for sp seq_len and vocab_size). fsdp_tp:
    world_size = dp_size * tp_size with dp_size >= 2, tp_size >= 2, and tp_size divides as for sp.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    for mode in modes:
        if mode in ("tp", "sp", "fsdp_tp"):
            if mode == "fsdp_tp":
                if tp_size < 2 or world_size % tp_size != 0 or world_size // tp_size < 2:
                    raise ValueError(
                        "mode 'fsdp_tp' needs world_size = dp_size * tp_size with dp_size >= 2 and "
                        f"tp_size >= 2; got world_size={world_size}, tp_size={tp_size}. Launch e.g. "
                        "--nproc_per_node 4 with --tp_size 2, or choose another mode"
                    )
                degree, degree_name = tp_size, "tp_size"
            else:
                degree, degree_name = world_size, "world_size"
            _require_divisible(mode, "num_heads", config.num_heads, degree, degree_name)
            _require_divisible(mode, "hidden_dim", config.hidden_dim, degree, degree_name)
            if mode in ("sp", "fsdp_tp"):  # both use the sequence-parallel plan with loss_parallel
                _require_divisible(mode, "seq_len", config.seq_len, degree, degree_name)
                _require_divisible(mode, "vocab_size", config.vocab_size, degree, degree_name)


def main(
    mode: str = "all",
    tp_size: int | None = None,
    dim: int = 64,
    num_heads: int = 4,
    hidden_dim: int = 128,
    vocab_size: int = 64,
    num_layers: int = 2,
    batch_size: int = 2,
    seq_len: int = 8,
    seed: int = 0,
    lr: float = 1e-2,
    mixed_precision: bool = False,
    timeout_s: int = 120,
    input_seed_per_rank: bool = False,
) -> None:
    """Run DTensor parallelisms under torchrun and check them against a single-process reference.

    Args:
        mode: fsdp | tp | sp | fsdp_tp | all, or a comma-separated list (fsdp_tp needs 4+ processes).
        tp_size: tensor-parallel degree of fsdp_tp, default 2 (data-parallel degree: world_size / tp_size).
        dim: model dim D.
        num_heads: attention heads N (D must be divisible by N; tp/sp need N divisible by the TP degree).
        hidden_dim: feed-forward hidden dim F (tp/sp need F divisible by the TP degree).
        vocab_size: output classes V (sp/fsdp_tp shard the logits on V for loss_parallel).
        num_layers: transformer blocks.
        batch_size: batch B (the same batch on every rank).
        seq_len: sequence length S (sp/fsdp_tp shard activations on S).
        seed: seed of the model and the inputs, the same on every rank.
        lr: AdamW learning rate of the one optimizer step that is checked.
        mixed_precision: fsdp with MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32).
        timeout_s: collective timeout of the process group (a hung rank fails instead of waiting forever).
        input_seed_per_rank: deliberate mistake (2+ ranks), inputs seeded with seed + rank: the checks fail.
    """
    config = ModelConfig(
        dim=dim,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        vocab_size=vocab_size,
        num_layers=num_layers,
        batch_size=batch_size,
        seq_len=seq_len,
    )
    modes, tp_size = validate_arguments(
        config, mode, tp_size, seed, lr, mixed_precision, timeout_s, input_seed_per_rank
    )
    with distributed.process_group(timeout_s) as device:
        num_failed = run_modes(
            modes,
            config,
            device=device,
            tp_size=tp_size,
            seed=seed,
            lr=lr,
            mixed_precision=mixed_precision,
            input_seed_per_rank=input_seed_per_rank,
        )
    if num_failed:
        sys.exit(1)


def validate_arguments(
    config: ModelConfig,
    mode: str,
    tp_size: int | None,
    seed: int,
    lr: float,
    mixed_precision: bool,
    timeout_s: int,
    input_seed_per_rank: bool = False,
) -> tuple[list[str], int]:
    """The modes to run and fsdp_tp's TP degree; ``UsageError`` for any mistake. Runs on every rank
    before the process group exists, so a bad request fails on every rank alike instead of leaving
    ranks waiting in a collective."""
    config.validate()
    modes = parse_modes(mode)
    if seed < 0:
        raise UsageError(f"--seed is {seed}: pass a non-negative integer")
    if lr <= 0:
        raise UsageError(f"--lr is {lr}: pass a learning rate > 0")
    distributed.check_timeout(timeout_s)
    if mixed_precision and "fsdp" not in modes:
        raise UsageError(f"--mixed_precision applies to mode fsdp only; modes requested: {', '.join(modes)}")
    if tp_size is not None and "fsdp_tp" not in modes:
        raise UsageError(f"--tp_size applies to mode fsdp_tp only; modes requested: {', '.join(modes)}")
    tp_size = 2 if tp_size is None else tp_size
    world_size = distributed.torchrun_world_size(EXAMPLE_COMMAND)
    if input_seed_per_rank and world_size < 2:
        raise UsageError(
            "--input_seed_per_rank needs 2 or more ranks (one rank has one seed, so nothing differs): "
            "launch with --nproc_per_node 2"
        )
    validate_world_size(modes, world_size, config, tp_size)
    return modes, tp_size


if __name__ == "__main__":
    distributed.run(main)

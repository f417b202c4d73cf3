"""The four parallelisms, each run against the single-process reference and checked.

Every rank builds the reference model and the inputs from the same seed, so every rank holds the same
reference without any communication and can compare its own shards against it. The same seed is also
what makes the parallel model correct: ``fully_shard`` keeps each rank's own slice of its own copy of
the parameters (it does not broadcast), so different initial weights per rank would silently make a
different model. (``parallelize_module`` does scatter from rank 0, but we rely on neither behaviour.)

All ranks feed the same batch. For FSDP this means the gradient average over ranks equals the single
process gradient; real data parallelism feeds different batches, which only changes which reference is
right (the mean loss over the concatenated batch), not the mechanics shown here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)

from dtensor_parallelisms.checks import Report
from dtensor_parallelisms.hand_tp import build_hand_tp_model, hand_tp_shard_dim
from dtensor_parallelisms.model import ModelConfig, Transformer, cross_entropy, make_inputs
from pytorch_scripts_common import set_seed
from pytorch_scripts_common.distributed import Tolerance


@dataclasses.dataclass(frozen=True)
class RunSettings:
    config: ModelConfig
    seed: int
    lr: float
    device: torch.device
    mixed_precision: bool
    # Deliberate mistake for demonstrating the checks: inputs seeded with seed + rank.
    input_seed_per_rank: bool


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One forward/backward/AdamW step, every tensor full-size (DTensors gathered with full_tensor)."""

    logits: torch.Tensor  # (B, S, V)
    loss: torch.Tensor  # ()
    x_grad: torch.Tensor  # (B, S, D)
    grads: dict[str, torch.Tensor]  # parameter name -> full gradient
    params_after: dict[str, torch.Tensor]  # parameter name -> full parameter after one AdamW step


@dataclasses.dataclass(frozen=True)
class StepTolerances:
    forward: Tolerance  # logits and loss
    grads: Tolerance  # input gradient and every parameter gradient
    params: Tolerance  # parameters after the AdamW step


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def _build_reference(settings: RunSettings) -> tuple[Transformer, torch.Tensor, torch.Tensor]:
    """The reference model and inputs; identical on every rank because every rank uses the same seed."""
    set_seed(settings.seed)
    model = Transformer(settings.config).to(settings.device)
    if settings.input_seed_per_rank:
        set_seed(settings.seed + 1000 + dist.get_rank())
    x, targets = make_inputs(settings.config, settings.device)
    return model, x, targets


def _make_optimizer(params, lr: float) -> torch.optim.Optimizer:
    # foreach=False: one kernel per parameter, so plain and DTensor parameters may share one optimizer
    # and the update of each element is the same arithmetic as in the reference.
    return torch.optim.AdamW(params, lr=lr, foreach=False)


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    lr: float,
    loss_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    gather: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> StepResult:
    """Forward, cross-entropy, backward, one AdamW step; ``gather(name, local)`` makes shards full."""
    gather = gather or (lambda _name, t: _full(t))
    x = x.detach().clone().requires_grad_(True)
    optimizer = _make_optimizer(model.parameters(), lr)
    with loss_context():  # loss_parallel must cover the backward too
        logits = model(x)
        loss = cross_entropy(logits, targets)
        loss.backward()
    grads = {name: gather(name, p.grad) for name, p in model.named_parameters()}
    optimizer.step()
    params_after = {name: gather(name, p) for name, p in model.named_parameters()}
    return StepResult(_full(logits), _full(loss), x.grad.detach().clone(), grads, params_after)


def mixed_precision_reference_step(
    model: Transformer, x: torch.Tensor, targets: torch.Tensor, lr: float, param_dtype: torch.dtype
) -> StepResult:
    """What FSDP2's MixedPrecisionPolicy(param_dtype, reduce_dtype=float32) does, without FSDP.

    Compute in a ``param_dtype`` copy of the float32 parameters (inputs cast to ``param_dtype`` at the
    model boundary), cast the gradients up to float32 and step AdamW on the float32 parameters.
    """
    compute_model = copy.deepcopy(model).to(param_dtype)
    x = x.detach().clone().requires_grad_(True)
    logits = compute_model(x.to(param_dtype))
    loss = cross_entropy(logits, targets)
    loss.backward()
    for param, compute_param in zip(model.parameters(), compute_model.parameters(), strict=True):
        param.grad = compute_param.grad.to(param.dtype)
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    _make_optimizer(model.parameters(), lr).step()
    params_after = {name: p.detach().clone() for name, p in model.named_parameters()}
    return StepResult(logits.detach(), loss.detach(), x.grad.detach().clone(), grads, params_after)


def compare_steps(report: Report, label: str, ref: StepResult, test: StepResult, tol: StepTolerances) -> None:
    report.check(f"{label}: logits", ref.logits, test.logits, tol.forward)
    report.check(f"{label}: loss", ref.loss, test.loss, tol.forward)
    report.check(f"{label}: input grad", ref.x_grad, test.x_grad, tol.grads)
    report.check_all(f"{label}: param grads", ref.grads, test.grads, tol.grads)
    report.check_all(f"{label}: params after AdamW", ref.params_after, test.params_after, tol.params)


# ---------------------------------------------------------------------------------------------------
# Plans. Module names are those of model.Transformer.


def tp_plan(config: ModelConfig) -> dict[str, object]:
    """Megatron-style TP: column-parallel wq/wk/wv/w1, row-parallel wo/w2; norms and output replicated."""
    plan: dict[str, object] = {}
    for i in range(config.num_layers):
        plan |= {
            f"layers.{i}.attention.wq": ColwiseParallel(),
            f"layers.{i}.attention.wk": ColwiseParallel(),
            f"layers.{i}.attention.wv": ColwiseParallel(),
            f"layers.{i}.attention.wo": RowwiseParallel(),
            f"layers.{i}.feed_forward.w1": ColwiseParallel(),
            f"layers.{i}.feed_forward.w2": RowwiseParallel(),
        }
    return plan


def sp_plan(config: ModelConfig) -> dict[str, object]:
    """TP plus sequence parallelism (torchtitan's plan) and a vocab-sharded output for loss_parallel.

    Between blocks the activations are sharded on the sequence dim, ``(B, S / P, D)`` per rank; the norms
    run on those shards (SequenceParallel). Before attention and the feed-forward, PrepareModuleInput
    all-gathers the sequence (Shard(1) -> Replicate); the row-parallel wo/w2 reduce-scatter back to
    Shard(1) instead of all-reducing. The output projection is column-parallel with vocab-sharded
    logits ``(B, S, V / P)`` that loss_parallel consumes without gathering them.
    """
    # The model input arrives replicated (B, S, D); keep this rank's sequence slice.
    plan: dict[str, object] = {
        "layers.0": PrepareModuleInput(
            input_layouts=(Replicate(),), desired_input_layouts=(Shard(1),), use_local_output=True
        ),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False),
    }
    for i in range(config.num_layers):
        gather_sequence = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
        plan |= {
            f"layers.{i}.attention_norm": SequenceParallel(),
            f"layers.{i}.attention": gather_sequence,
            f"layers.{i}.attention.wq": ColwiseParallel(),
            f"layers.{i}.attention.wk": ColwiseParallel(),
            f"layers.{i}.attention.wv": ColwiseParallel(),
            f"layers.{i}.attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            f"layers.{i}.ffn_norm": SequenceParallel(),
            f"layers.{i}.feed_forward": gather_sequence,
            f"layers.{i}.feed_forward.w1": ColwiseParallel(),
            f"layers.{i}.feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
        }
    return plan


def expected_fsdp_shard(full: torch.Tensor, world_size: int, rank: int) -> torch.Tensor:
    """FSDP2's local shard: ``torch.chunk`` on dim 0; ranks past the last chunk hold an empty tensor."""
    chunks = full.chunk(world_size, dim=0)
    return chunks[rank] if rank < len(chunks) else full[:0]


def apply_fsdp(model: Transformer, mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy) -> None:
    """FSDP2: each block is one all-gather/reduce-scatter unit; the root takes the remaining params."""
    for layer in model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp_policy)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy)


# ---------------------------------------------------------------------------------------------------
# Tolerances. Measured maxima are printed with every run; see README.md for the table.

EXACT_SAME_MATH = Tolerance.exact("same arithmetic in the same order as the reference")
# Row-parallel linears (wo, w2) sum P partial dot products across ranks instead of one long dot
# product, so results differ from the reference by float32 rounding of a different summation order.
# Measured maxima at P = 2 and 4 on CPU: logits ~5e-7, gradients ~5e-8 (see README.md).
TP_FORWARD = Tolerance.elementwise(1e-5, 5e-6, "float32 summation order of row-parallel sums (forward)")
TP_GRADS = Tolerance.elementwise(1e-5, 1e-6, "float32 summation order of row-parallel sums (gradients)")
# DTensor adds a row-parallel bias as bias / P on every rank before the all-reduce (Replicate -> Partial
# conversion); the hand-written TP adds the bias once after it. Measured ~6e-8 on a feed-forward output.
BIAS_SPLIT = Tolerance.elementwise(1e-5, 1e-6, "DTensor adds bias / P per rank before the sum, hand TP after")

# bfloat16 keeps 8 significant bits (relative rounding 2^-9 ~ 2e-3 per op), i.e. ~50 dB per rounding;
# errors compound through the layers. Measured lowest 39.6 dB (param grads, 2 layers); threshold 30 dB.
MIXED_VS_FP32 = Tolerance.sqnr(30.0, "bf16 compute (8 significant bits) vs float32 compute")


def adamw_tolerance(lr: float) -> Tolerance:
    """Parameters after one AdamW step when the gradients differ by rounding only.

    The first AdamW update is lr * g / (|g| + eps) (bias-corrected moments), about lr * sign(g): a
    gradient whose size is near eps = 1e-8 turns a rounding difference into an update difference up to
    ~lr. Measured ~1.5e-3 * lr at lr = 1e-2, so the tolerance is 1e-2 * lr.
    """
    return Tolerance.elementwise(
        1e-5, 1e-2 * lr, "AdamW's first step ~ lr*g/(|g|+eps) amplifies tiny-g rounding"
    )


def run_fsdp(settings: RunSettings, mesh: DeviceMesh, report: Report) -> None:
    ref_model, x, targets = _build_reference(settings)
    model = copy.deepcopy(ref_model)
    world_size, rank = mesh.size(), mesh.get_local_rank()
    if settings.mixed_precision:
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp_policy = MixedPrecisionPolicy()
    apply_fsdp(model, mesh, mp_policy)

    originals = {name: p.detach().clone() for name, p in ref_model.named_parameters()}
    params = dict(model.named_parameters())
    # FSDP2 shards every parameter on dim 0 with torch.chunk semantics (the last shards may be smaller,
    # even empty), and the local shard is a plain slice of the original tensor: exact.
    report.check_all(
        "fsdp: local shard = chunk(dim 0)[rank]",
        {name: expected_fsdp_shard(t, world_size, rank) for name, t in originals.items()},
        {name: p.to_local().detach() for name, p in params.items()},
        Tolerance.exact("copies, no arithmetic"),
    )
    report.check_all(
        "fsdp: full_tensor() = original",
        originals,
        {name: p.full_tensor().detach() for name, p in params.items()},
        Tolerance.exact("all-gather of copies, no arithmetic"),
    )

    fp32_model = copy.deepcopy(ref_model)
    test = train_step(model, x, targets, settings.lr)
    if settings.mixed_precision:
        ref = mixed_precision_reference_step(ref_model, x, targets, settings.lr, torch.bfloat16)
        label = "fsdp bf16 params / fp32 reduce"
        # How far bf16 compute is from float32 compute: a property of bf16, not of FSDP.
        fp32 = train_step(fp32_model, x, targets, settings.lr)
        report.check("bf16 vs fp32 reference: logits", fp32.logits, test.logits.float(), MIXED_VS_FP32)
        report.check("bf16 vs fp32 reference: input grad", fp32.x_grad, test.x_grad, MIXED_VS_FP32)
        report.check_all("bf16 vs fp32 reference: param grads", fp32.grads, test.grads, MIXED_VS_FP32)
    else:
        ref = train_step(ref_model, x, targets, settings.lr)
        label = "fsdp"
    if world_size & (world_size - 1) == 0:
        # Every rank has the same gradient g; the reduce-scatter sums P copies and divides by P. With P a
        # power of two, multiplying and dividing by P only changes the exponent: measured exact at
        # P = 1, 2 and 4 on gloo.
        grad_tol = Tolerance.exact("same input on every rank: average of P equal gradients, P a power of two")
    else:
        # Summing P equal values and dividing by P rounds when P is not a power of two
        # (measured max 1.5e-8 on the gradients for P = 3).
        grad_tol = Tolerance.elementwise(
            1e-6, 1e-7, "average of P equal float32 gradients rounds when P is not a power of 2"
        )
    param_tol = grad_tol if grad_tol.is_exact else adamw_tolerance(settings.lr)
    compare_steps(report, label, ref, test, StepTolerances(EXACT_SAME_MATH, grad_tol, param_tol))


def run_tp(settings: RunSettings, mesh: DeviceMesh, report: Report) -> None:
    ref_model, x, targets = _build_reference(settings)
    rank, tp_size = mesh.get_local_rank(), mesh.size()
    group = mesh.get_group()
    hand_model = build_hand_tp_model(ref_model, rank, tp_size, group)
    model = parallelize_module(copy.deepcopy(ref_model), mesh, tp_plan(settings.config))

    # Block by block on the same input, before any training: the attention block has no biases and is
    # the same arithmetic in both TP implementations; the feed-forward differs by where w2's bias is added.
    with torch.no_grad():
        block_input = ref_model.layers[0].attention_norm(x)
        report.check(
            "tp vs hand-written tp: layer 0 attention output",
            hand_model.layers[0].attention(block_input),
            model.layers[0].attention(block_input),
            EXACT_SAME_MATH,
        )
        report.check(
            "tp vs hand-written tp: layer 0 feed-forward output",
            hand_model.layers[0].feed_forward(block_input),
            model.layers[0].feed_forward(block_input),
            BIAS_SPLIT,
        )

    ref = train_step(ref_model, x, targets, settings.lr)

    def gather_hand_shards(name: str, local: torch.Tensor) -> torch.Tensor:
        dim = hand_tp_shard_dim(name)
        if dim is None:
            return local.detach().clone()
        parts = [torch.empty_like(local) for _ in range(tp_size)]
        dist.all_gather(parts, local.detach().contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    hand = train_step(hand_model, x, targets, settings.lr, gather=gather_hand_shards)
    test = train_step(model, x, targets, settings.lr)
    compare_steps(
        report,
        "hand-written tp",
        ref,
        hand,
        StepTolerances(TP_FORWARD, TP_GRADS, adamw_tolerance(settings.lr)),
    )
    compare_steps(
        report,
        "tp (parallelize_module)",
        ref,
        test,
        StepTolerances(TP_FORWARD, TP_GRADS, adamw_tolerance(settings.lr)),
    )
    compare_steps(
        report,
        "tp vs hand-written tp",
        hand,
        test,
        StepTolerances(BIAS_SPLIT, BIAS_SPLIT, adamw_tolerance(settings.lr)),
    )


def run_sp(settings: RunSettings, mesh: DeviceMesh, report: Report) -> None:
    ref_model, x, targets = _build_reference(settings)
    model = parallelize_module(copy.deepcopy(ref_model), mesh, sp_plan(settings.config))
    config, tp_size = settings.config, mesh.size()
    # Layouts are part of the lesson: look at what flows between blocks and into the loss.
    block_outputs: list[torch.Tensor] = []
    hook = model.layers[0].register_forward_hook(lambda _module, _inputs, out: block_outputs.append(out))
    with torch.no_grad():
        logits = model(x)
    hook.remove()
    local_shape = (config.batch_size, config.seq_len // tp_size, config.dim)
    report.check_true(
        "sp: block output is a plain (B, S/P, D) sequence shard",
        not isinstance(block_outputs[0], DTensor) and tuple(block_outputs[0].shape) == local_shape,
        f"expected a torch.Tensor of shape {local_shape}, got {type(block_outputs[0]).__name__} "
        f"{tuple(block_outputs[0].shape)}",
    )
    logits_local_shape = (config.batch_size, config.seq_len, config.vocab_size // tp_size)
    report.check_true(
        "sp: logits are a vocab-sharded DTensor, local (B, S, V/P)",
        isinstance(logits, DTensor)
        and logits.placements[0].is_shard()
        and tuple(logits.to_local().shape) == logits_local_shape,
        f"expected DTensor Shard(-1) with local shape {logits_local_shape}, got {logits!r:.200}",
    )
    ref = train_step(ref_model, x, targets, settings.lr)
    test = train_step(model, x, targets, settings.lr, loss_context=loss_parallel)
    compare_steps(
        report,
        "sp + loss_parallel",
        ref,
        test,
        StepTolerances(TP_FORWARD, TP_GRADS, adamw_tolerance(settings.lr)),
    )


def run_fsdp_tp(settings: RunSettings, mesh: DeviceMesh, report: Report) -> None:
    """2D: the sp plan on the ``tp`` mesh axis, then FSDP2 on the ``dp`` axis (torchtitan's order)."""
    ref_model, x, targets = _build_reference(settings)
    model = parallelize_module(copy.deepcopy(ref_model), mesh["tp"], sp_plan(settings.config))
    apply_fsdp(model, mesh["dp"], MixedPrecisionPolicy())
    dp_size, dp_rank = mesh["dp"].size(), mesh["dp"].get_local_rank()
    tp_size, tp_rank = mesh["tp"].size(), mesh["tp"].get_local_rank()

    def expected_2d_shard(name: str, full: torch.Tensor) -> torch.Tensor:
        # TP first (the output projection is column-parallel in the sp plan), then FSDP's dim-0 chunk
        # of the TP shard: FSDP2 records this order as _StridedShard on the dp axis.
        tp_dim = 0 if name == "output.weight" else hand_tp_shard_dim(name)
        tp_shard = full if tp_dim is None else full.chunk(tp_size, dim=tp_dim)[tp_rank]
        return expected_fsdp_shard(tp_shard, dp_size, dp_rank)

    report.check_all(
        "fsdp_tp: local shard = tp slice, then dp chunk(dim 0)",
        {name: expected_2d_shard(name, p.detach()) for name, p in ref_model.named_parameters()},
        {name: p.to_local().detach() for name, p in model.named_parameters()},
        Tolerance.exact("copies, no arithmetic"),
    )
    report.check_all(
        "fsdp_tp: full_tensor() = original",
        {name: p.detach() for name, p in ref_model.named_parameters()},
        {name: p.full_tensor().detach() for name, p in model.named_parameters()},
        Tolerance.exact("all-gather of copies, no arithmetic"),
    )
    ref = train_step(ref_model, x, targets, settings.lr)
    test = train_step(model, x, targets, settings.lr, loss_context=loss_parallel)
    compare_steps(
        report, "fsdp_tp", ref, test, StepTolerances(TP_FORWARD, TP_GRADS, adamw_tolerance(settings.lr))
    )

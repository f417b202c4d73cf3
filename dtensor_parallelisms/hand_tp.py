"""Tensor parallelism written by hand (Megatron-LM style): the second oracle for ``parallelize_module``.

Weights are sliced by hand and two autograd functions do the communication:

- ``copy_to_tp_region`` ("f" in the Megatron-LM paper): identity forward, all-reduce of the gradient
  in backward. It sits before a column-parallel linear: each rank uses the whole (replicated) input,
  so the input's gradient is the sum of the per-rank partial gradients.
- ``reduce_from_tp_region`` ("g"): all-reduce forward, identity backward. It sits after a row-parallel
  linear: each rank holds a partial sum of the output; the output's gradient is already replicated.

Column-parallel weights keep rows ``chunk(P, dim=0)[rank]`` (output features, so N / P heads or F / P
hidden units per rank); row-parallel weights keep columns ``chunk(P, dim=1)[rank]``. The row-parallel
bias is added once, after the all-reduce.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812 (the usual PyTorch alias)
from torch import nn

from dtensor_parallelisms.model import Attention, FeedForward, Transformer


class _CopyToTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def copy_to_tp_region(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _CopyToTensorParallelRegion.apply(x, group)


def reduce_from_tp_region(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _ReduceFromTensorParallelRegion.apply(x, group)


def _shard_linear(linear: nn.Linear, dim: int, rank: int, tp_size: int, shard_bias: bool) -> nn.Linear:
    """A new ``nn.Linear`` holding the rank's slice of ``linear.weight`` along ``dim`` (0 rows, 1 columns)."""
    weight = linear.weight.detach().chunk(tp_size, dim=dim)[rank].clone()
    local = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None, device=weight.device)
    with torch.no_grad():
        local.weight.copy_(weight)
        if linear.bias is not None:
            bias = linear.bias.detach()
            local.bias.copy_(bias.chunk(tp_size, dim=0)[rank] if shard_bias else bias)
    return local


class HandTPAttention(nn.Module):
    """wq/wk/wv column-parallel (N / P local heads), wo row-parallel, one all-reduce per forward."""

    def __init__(self, attention: Attention, rank: int, tp_size: int, group: dist.ProcessGroup) -> None:
        super().__init__()
        self.group = group
        self.head_dim = attention.head_dim
        self.wq = _shard_linear(attention.wq, 0, rank, tp_size, shard_bias=True)
        self.wk = _shard_linear(attention.wk, 0, rank, tp_size, shard_bias=True)
        self.wv = _shard_linear(attention.wv, 0, rank, tp_size, shard_bias=True)
        self.wo = _shard_linear(attention.wo, 1, rank, tp_size, shard_bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, _ = x.shape
        x = copy_to_tp_region(x, self.group)
        # (B, S, D) -> (B, N / P, S, Dh): this rank's heads only
        q, k, v = (
            w(x).view(batch_size, seq_len, -1, self.head_dim).transpose(1, 2)
            for w in (self.wq, self.wk, self.wv)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # (B, N / P, S, Dh) -> (B, S, D / P) @ (D / P, D) -> partial sums (B, S, D), summed across ranks
        return reduce_from_tp_region(
            self.wo(out.transpose(1, 2).reshape(batch_size, seq_len, -1)), self.group
        )


class HandTPFeedForward(nn.Module):
    """w1 column-parallel (F / P hidden units per rank, bias sliced), w2 row-parallel (bias after the sum)."""

    def __init__(self, feed_forward: FeedForward, rank: int, tp_size: int, group: dist.ProcessGroup) -> None:
        super().__init__()
        self.group = group
        self.w1 = _shard_linear(feed_forward.w1, 0, rank, tp_size, shard_bias=True)
        self.w2 = _shard_linear(feed_forward.w2, 1, rank, tp_size, shard_bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.w1(copy_to_tp_region(x, self.group)))  # (B, S, F / P)
        partial = F.linear(hidden, self.w2.weight)  # (B, S, D), this rank's share of the sum over F
        return reduce_from_tp_region(partial, self.group) + self.w2.bias


# Which dimension of each hand-sharded parameter is split across ranks (parameter name suffix -> dim).
HAND_TP_SHARD_DIMS = {
    "attention.wq.weight": 0,
    "attention.wk.weight": 0,
    "attention.wv.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w1.weight": 0,
    "feed_forward.w1.bias": 0,
    "feed_forward.w2.weight": 1,
}


def hand_tp_shard_dim(param_name: str) -> int | None:
    """The sharded dim of a parameter of ``build_hand_tp_model``'s model, ``None`` when replicated."""
    for suffix, dim in HAND_TP_SHARD_DIMS.items():
        if param_name.endswith(suffix):
            return dim
    return None


def build_hand_tp_model(
    reference: Transformer, rank: int, tp_size: int, group: dist.ProcessGroup
) -> Transformer:
    """A copy of ``reference`` whose attention and feed-forward blocks are hand-written TP modules.

    Norms and the output projection stay replicated: every rank computes them on the same full tensors,
    so their gradients are identical on every rank without communication.
    """
    model = copy.deepcopy(reference)
    for layer in model.layers:
        layer.attention = HandTPAttention(layer.attention, rank, tp_size, group)
        layer.feed_forward = HandTPFeedForward(layer.feed_forward, rank, tp_size, group)
    return model

"""A small mixture-of-experts layer: top-k router, SwiGLU routed experts, optional shared expert.

Shape legend: T tokens, D model dim, H expert hidden dim, E experts, K top-k, S = T * K routed
slots, N rows the experts process (S without expert parallelism; whatever the all-to-all delivered
with it), L local experts (E without EP, E // W with it). See ``dp2ep.indices`` for the slot order.

The routed experts are one module holding (E, D, H) / (E, H, D) weights, so ``ExpertParallel`` can
shard them on the expert axis (dim 0) and wrap their forward with token dispatch / combine hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
from torch import nn
from torch.distributed.tensor import DTensor

from dp2ep.indices import invert_permutation, sort_slots_by_expert

EXPERT_IMPLS = ("auto", "grouped_mm", "loop")


def grouped_mm_supported(dtype: torch.dtype, dim: int, hidden: int, device: torch.device) -> bool:
    """Whether ``torch._grouped_mm`` runs (x @ w1) and (h @ w2) for these shapes on this device.

    Measured on torch 2.13 CPU: float32, bfloat16 and float16 all work, offsets must be int32, and the
    contraction / output dims (D and H here) must be 16-byte aligned (D * itemsize % 16 == 0, same
    for H): float32 D=12 works, bfloat16 D=12 fails with "strides should be multiple of 16 bytes".
    On CUDA the kernel is bfloat16-only and needs compute capability >= 9.0 (Hopper), per torch's
    meta checks and CUDA kernel; not run here (no GPU).
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    aligned = (dim * itemsize) % 16 == 0 and (hidden * itemsize) % 16 == 0
    if device.type == "cuda":
        return aligned and dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) >= (9, 0)
    return aligned and dtype in (torch.float32, torch.bfloat16, torch.float16)


def _local(weight: torch.Tensor) -> torch.Tensor:
    """The local shard of an expert-parallel (DTensor) weight; the weight itself otherwise."""
    return weight.to_local() if isinstance(weight, DTensor) else weight


class Router(nn.Module):
    """Top-k token choice: softmax over E expert scores, pick K, gate with the chosen probabilities.

    ``expert_bias`` (E,) is a non-trained buffer added to the scores for *selection only* (as the
    load-balancing bias of DeepSeek-V3 / torchtitan); the gate values stay the unbiased softmax.
    dp2ep uses it to force skewed routing (some experts, and so some ranks, get no tokens).
    """

    def __init__(self, dim: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(dim, num_experts, bias=False)  # weight (E, D)
        self.register_buffer("expert_bias", torch.zeros(num_experts), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x (T, D) -> scores (T, E) in float32 so the softmax and top-k do not depend on the dtype
        scores = F.softmax(self.gate(x).float(), dim=-1)
        _, expert_indices = torch.topk(scores + self.expert_bias, k=self.top_k, dim=-1)  # (T, K)
        top_scores = scores.gather(dim=-1, index=expert_indices)  # (T, K)
        return top_scores.to(x.dtype), expert_indices


class GroupedExperts(nn.Module):
    """E SwiGLU experts: out_e = (silu(x @ w1[e]) * (x @ w3[e])) @ w2[e], rows grouped by expert.

    forward(x (N, D), num_tokens_per_expert (L,)) -> (N, D). Rows of ``x`` must be grouped by expert
    in ascending order: the first num_tokens_per_expert[0] rows go to expert 0, and so on.
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, expert_impl: str = "auto") -> None:
        super().__init__()
        if expert_impl not in EXPERT_IMPLS:
            raise ValueError(f"expert_impl={expert_impl!r} is not one of {EXPERT_IMPLS}")
        self.expert_impl = expert_impl
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))  # (E, D, H) gate projection
        self.w3 = nn.Parameter(torch.empty(num_experts, dim, hidden))  # (E, D, H) up projection
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))  # (E, H, D) down projection
        for weight, fan_in in ((self.w1, dim), (self.w3, dim), (self.w2, hidden)):
            nn.init.normal_(weight, std=fan_in**-0.5)

    def use_grouped_mm(self, x: torch.Tensor) -> bool:
        dim, hidden = self.w1.shape[1], self.w1.shape[2]
        supported = grouped_mm_supported(x.dtype, dim, hidden, x.device)
        if self.expert_impl == "grouped_mm" and not supported:
            raise ValueError(
                f"expert_impl='grouped_mm' cannot run dtype={x.dtype}, dim={dim}, hidden={hidden} on "
                f"{x.device.type}: dim and hidden must be multiples of {16 // x.element_size()} elements "
                "(16 bytes; bfloat16 only on CUDA sm90+); use expert_impl='auto' or 'loop'"
            )
        return self.expert_impl == "grouped_mm" or (self.expert_impl == "auto" and supported)

    def forward(self, x: torch.Tensor, num_tokens_per_expert: torch.Tensor) -> torch.Tensor:
        w1, w2, w3 = _local(self.w1), _local(self.w2), _local(self.w3)  # (L, D, H), (L, H, D), (L, D, H)
        assert num_tokens_per_expert.numel() == w1.shape[0], "one token count per local expert"
        if self.use_grouped_mm(x):
            # offsets[l] = end row of expert l; int32 is what the kernel accepts
            offsets = torch.cumsum(num_tokens_per_expert, dim=0, dtype=torch.int32)
            hidden = F.silu(torch._grouped_mm(x, w1, offs=offsets)) * torch._grouped_mm(x, w3, offs=offsets)
            return torch._grouped_mm(hidden, w2, offs=offsets)  # (N, D)
        outputs = []
        for x_e, w1_e, w2_e, w3_e in zip(
            torch.split(x, num_tokens_per_expert.tolist()), w1, w2, w3, strict=True
        ):
            outputs.append((F.silu(x_e @ w1_e) * (x_e @ w3_e)) @ w2_e)  # (N_e, D)
        return torch.cat(outputs)


class FeedForward(nn.Module):
    """The shared expert: a dense SwiGLU every token goes through, (T, D) -> (T, D)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MoE(nn.Module):
    """Token-choice MoE: out = sum_k gate[t, k] * expert_{e[t, k]}(x[t]) (+ shared_expert(x[t]))."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        num_experts: int,
        top_k: int,
        shared_expert: bool = True,
        expert_impl: str = "auto",
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
        self.num_experts = num_experts
        self.top_k = top_k
        self.router = Router(dim, num_experts, top_k)
        self.experts = GroupedExperts(dim, hidden, num_experts, expert_impl)
        self.shared_expert = FeedForward(dim, hidden) if shared_expert else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_tokens, dim = x.shape  # (T, D)
        top_scores, expert_indices = self.router(x)  # (T, K), (T, K)
        permutation, num_tokens_per_expert = sort_slots_by_expert(expert_indices, self.num_experts)
        # one slot per (token, choice); a permutation (not a gather with repeated token ids) keeps the
        # backward a plain scatter, and the K-way sum of the input grad happens in expand's backward
        slots = x.unsqueeze(1).expand(num_tokens, self.top_k, dim).reshape(-1, dim)  # (S, D)
        routed_output = self.experts(slots[permutation], num_tokens_per_expert)  # (S, D), by expert
        slot_output = routed_output[invert_permutation(permutation)].view(num_tokens, self.top_k, dim)
        weighted = slot_output * top_scores.unsqueeze(-1)  # (T, K, D)
        # explicit left-to-right sum over k: the same order for any T, so EP and reference agree bitwise
        out = weighted[:, 0]
        for k in range(1, self.top_k):
            out = out + weighted[:, k]
        if self.shared_expert is not None:
            out = out + self.shared_expert(x)
        return out  # (T, D)

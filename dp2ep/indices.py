"""Index and permutation logic of MoE token dispatch: pure tensor functions, no process group.

Shape legend (used in every dp2ep module):
    T  tokens on this rank            D  model dim            H  expert hidden dim
    E  experts in total               K  top-k experts per token
    W  ranks in the expert-parallel group (world size)
    L  experts owned by one rank, E // W
    S  routed slots on this rank, T * K (one slot per (token, choice) pair)
    N  tokens received by this rank's experts after the all-to-all

A slot ``s`` is the pair (token ``s // K``, choice ``s % K``). Sorting slots by expert id makes
every expert's tokens contiguous; a *stable* sort keeps them in token order within an expert, which
is what makes expert parallelism bit-identical to one process on the concatenated batch: expert
``e`` then sees rank 0's tokens, then rank 1's, ... in the same order in both runs.
"""

from __future__ import annotations

import torch


def sort_slots_by_expert(expert_indices: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable order of the T*K slots by expert id, and how many slots each expert gets.

    expert_indices: (T, K) int64 expert id of each (token, choice).
    Returns ``permutation`` (S,) with ``slots[permutation]`` grouped by expert (ascending), token
    order kept within an expert, and ``num_tokens_per_expert`` (E,) int64.
    """
    assert expert_indices.dim() == 2, f"expected (T, K) expert indices, got {tuple(expert_indices.shape)}"
    flat = expert_indices.reshape(-1)  # (S,)
    if flat.numel() > 0:
        assert int(flat.min()) >= 0 and int(flat.max()) < num_experts, "expert id out of range"
    permutation = torch.argsort(flat, stable=True)  # (S,)
    num_tokens_per_expert = torch.bincount(flat, minlength=num_experts)  # (E,)
    return permutation, num_tokens_per_expert


def invert_permutation(permutation: torch.Tensor) -> torch.Tensor:
    """``inverse`` with ``inverse[permutation[i]] = i``, so ``y[inverse]`` undoes ``y = x[permutation]``."""
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(permutation.numel(), device=permutation.device)
    return inverse


def split_sizes_per_rank(num_tokens_per_expert: torch.Tensor, world_size: int) -> torch.Tensor:
    """Tokens this rank sends to each rank: experts are owned in contiguous blocks of L = E // W.

    num_tokens_per_expert: (E,) -> (W,) where entry r sums experts [r * L, (r + 1) * L).
    """
    num_experts = num_tokens_per_expert.numel()
    assert num_experts % world_size == 0, f"{num_experts} experts do not split over {world_size} ranks"
    return num_tokens_per_expert.view(world_size, num_experts // world_size).sum(dim=1)


def rank_major_to_expert_major(num_tokens_per_rank_and_local_expert: torch.Tensor) -> torch.Tensor:
    """Permutation that regroups received tokens from (source rank, local expert) to (local expert, rank).

    After the all-to-all, rank r's buffer holds one chunk per (source rank w, local expert l), in
    rank-major order: (w=0, l=0), (w=0, l=1), ..., (w=1, l=0), ... The experts need expert-major
    order: (l=0, w=0), (l=0, w=1), ..., (l=1, w=0), ... so each local expert's rows are contiguous
    and, within an expert, ordered by source rank (= global token order of the concatenated batch).

    num_tokens_per_rank_and_local_expert: (W, L) int64 chunk sizes in the received (rank-major)
    buffer. Returns ``permutation`` (N,) int64 with ``expert_major = received[permutation]``.
    """
    counts = num_tokens_per_rank_and_local_expert
    assert counts.dim() == 2, f"expected (W, L) counts, got {tuple(counts.shape)}"
    world_size, num_local_experts = counts.shape
    flat_counts = counts.reshape(-1)  # (W*L,) chunk sizes, rank-major
    chunk_starts = torch.cumsum(flat_counts, dim=0) - flat_counts  # (W*L,) where each chunk begins
    # chunk id (w * L + l) of the expert-major order: l outer, w inner
    expert_major_chunks = torch.arange(world_size * num_local_experts, device=counts.device)
    expert_major_chunks = expert_major_chunks.view(world_size, num_local_experts).t().reshape(-1)
    sizes = flat_counts[expert_major_chunks]  # (W*L,) sizes in the new order
    starts = chunk_starts[expert_major_chunks]
    num_received = int(flat_counts.sum())
    # for output position i inside new chunk c: permutation[i] = starts[c] + (i - new_start[c])
    new_starts = torch.cumsum(sizes, dim=0) - sizes
    position = torch.arange(num_received, device=counts.device)
    return torch.repeat_interleave(starts - new_starts, sizes, output_size=num_received) + position


def num_tokens_per_local_expert(num_tokens_per_rank_and_local_expert: torch.Tensor) -> torch.Tensor:
    """(W, L) chunk sizes -> (L,) tokens each local expert processes (summed over source ranks)."""
    return num_tokens_per_rank_and_local_expert.sum(dim=0)

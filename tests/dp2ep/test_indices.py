"""Single-process tests of dp2ep's token permutation logic, with hand-worked expectations."""

import torch

from dp2ep.indices import (
    invert_permutation,
    num_tokens_per_local_expert,
    rank_major_to_expert_major,
    sort_slots_by_expert,
    split_sizes_per_rank,
)


def _long(values):
    return torch.tensor(values, dtype=torch.int64)


def test_sort_slots_by_expert_hand_worked():
    # 3 tokens, K=2: slots 0..5 = (t0,k0)=2 (t0,k1)=0 (t1,k0)=1 (t1,k1)=2 (t2,k0)=0 (t2,k1)=2
    expert_indices = _long([[2, 0], [1, 2], [0, 2]])
    permutation, counts = sort_slots_by_expert(expert_indices, num_experts=4)
    # expert 0: slots 1, 4; expert 1: slot 2; expert 2: slots 0, 3, 5 (token order kept); expert 3: none
    assert permutation.tolist() == [1, 4, 2, 0, 3, 5]
    assert counts.tolist() == [2, 1, 3, 0]


def test_sort_slots_by_expert_is_stable_for_many_equal_ids():
    # argsort without stable=True may reorder equal keys; the EP == reference guarantee needs token order
    expert_indices = torch.zeros(1000, 1, dtype=torch.int64)
    expert_indices[::3] = 1
    permutation, counts = sort_slots_by_expert(expert_indices, num_experts=2)
    zeros, ones = permutation[: counts[0]], permutation[counts[0] :]
    assert torch.all(zeros[1:] > zeros[:-1]) and torch.all(ones[1:] > ones[:-1])
    assert counts.tolist() == [666, 334]


def test_sort_slots_by_expert_zero_tokens():
    permutation, counts = sort_slots_by_expert(torch.empty(0, 2, dtype=torch.int64), num_experts=3)
    assert permutation.numel() == 0
    assert counts.tolist() == [0, 0, 0]


def test_invert_permutation_hand_worked_and_round_trip():
    assert invert_permutation(_long([2, 0, 1])).tolist() == [1, 2, 0]
    permutation = torch.randperm(17, generator=torch.Generator().manual_seed(0))
    x = torch.randn(17, 3)
    assert torch.equal(x[permutation][invert_permutation(permutation)], x)
    assert invert_permutation(_long([])).numel() == 0


def test_split_sizes_per_rank_hand_worked():
    counts = _long([2, 1, 3, 0])  # E=4
    assert split_sizes_per_rank(counts, 1).tolist() == [6]  # one rank owns everything
    assert split_sizes_per_rank(counts, 2).tolist() == [3, 3]  # experts {0,1} and {2,3}
    assert split_sizes_per_rank(counts, 4).tolist() == [2, 1, 3, 0]
    assert split_sizes_per_rank(_long([0, 0, 0, 0]), 2).tolist() == [0, 0]


def test_rank_major_to_expert_major_hand_worked():
    # W=2 ranks sent to my L=2 local experts: rank 0 -> (1 row for l0, 2 rows for l1),
    # rank 1 -> (3 rows for l0, 0 rows for l1). Received rows: [r0l0: 0 | r0l1: 1 2 | r1l0: 3 4 5 | r1l1: -]
    counts = _long([[1, 2], [3, 0]])
    # expert-major: l0 <- rank 0 (0), rank 1 (3 4 5); l1 <- rank 0 (1 2), rank 1 (none)
    assert rank_major_to_expert_major(counts).tolist() == [0, 3, 4, 5, 1, 2]
    assert num_tokens_per_local_expert(counts).tolist() == [4, 2]


def test_rank_major_to_expert_major_with_empty_chunks_three_ranks():
    # W=3, L=2: received [r0l0: - | r0l1: 0 1 | r1l0: 2 | r1l1: - | r2l0: - | r2l1: 3]
    counts = _long([[0, 2], [1, 0], [0, 1]])
    assert rank_major_to_expert_major(counts).tolist() == [2, 0, 1, 3]
    assert num_tokens_per_local_expert(counts).tolist() == [1, 3]


def test_rank_major_to_expert_major_edge_cases():
    assert rank_major_to_expert_major(_long([[3, 2]])).tolist() == [0, 1, 2, 3, 4]  # one rank: identity
    assert rank_major_to_expert_major(_long([[2], [1], [2]])).tolist() == [0, 1, 2, 3, 4]  # L=1: identity
    assert rank_major_to_expert_major(_long([[0, 0], [0, 0]])).numel() == 0  # nothing received
    assert num_tokens_per_local_expert(_long([[0, 0], [0, 0]])).tolist() == [0, 0]


def _simulated_dispatch(expert_indices_per_rank, num_experts, world_size):
    """Emulate the all-to-all on one process: what each rank's experts receive, as global slot ids.

    A global slot id is (offset of the source rank's slots) + local slot id, i.e. the slot's index in
    the concatenated batch, which is what the reference sorts.
    """
    num_local = num_experts // world_size
    sent = []  # per source rank: its slots grouped by expert, cut into W chunks
    counts = []
    offset = 0
    for expert_indices in expert_indices_per_rank:
        permutation, per_expert = sort_slots_by_expert(expert_indices, num_experts)
        global_slots = permutation + offset
        offset += expert_indices.numel()
        sent.append(torch.split(global_slots, split_sizes_per_rank(per_expert, world_size).tolist()))
        counts.append(per_expert.view(world_size, num_local))
    received = []
    for rank in range(world_size):
        buffer = torch.cat([sent[src][rank] for src in range(world_size)])  # rank-major, as all-to-all
        chunk_counts = torch.stack([counts[src][rank] for src in range(world_size)])  # (W, L)
        received.append((buffer[rank_major_to_expert_major(chunk_counts)], chunk_counts.sum(dim=0)))
    return received


def _check_dispatch_matches_reference(expert_indices_per_rank, num_experts, world_size):
    global_permutation, global_counts = sort_slots_by_expert(torch.cat(expert_indices_per_rank), num_experts)
    received = _simulated_dispatch(expert_indices_per_rank, num_experts, world_size)
    num_local = num_experts // world_size
    per_rank_reference = torch.split(
        global_permutation, split_sizes_per_rank(global_counts, world_size).tolist()
    )
    for rank, (slots, local_counts) in enumerate(received):
        # rank r's experts see exactly the reference's rows for experts [r*L, (r+1)*L), in the same order
        assert slots.tolist() == per_rank_reference[rank].tolist()
        assert local_counts.tolist() == global_counts[rank * num_local : (rank + 1) * num_local].tolist()


def test_simulated_dispatch_equals_global_stable_sort_hand_worked():
    # 2 ranks, E=4 (L=2), K=1. Rank 0 tokens -> experts [3, 0, 2], rank 1 -> [0, 3].
    # Global slots: 0:e3 1:e0 2:e2 | 3:e0 4:e3. Reference order: e0 [1, 3], e1 [], e2 [2], e3 [0, 4].
    per_rank = [_long([[3], [0], [2]]), _long([[0], [3]])]
    received = _simulated_dispatch(per_rank, num_experts=4, world_size=2)
    assert received[0][0].tolist() == [1, 3] and received[0][1].tolist() == [2, 0]
    assert received[1][0].tolist() == [2, 0, 4] and received[1][1].tolist() == [1, 2]
    _check_dispatch_matches_reference(per_rank, num_experts=4, world_size=2)


def test_simulated_dispatch_random_and_skewed_routing():
    generator = torch.Generator().manual_seed(0)
    for world_size, num_experts, top_k in [(1, 4, 1), (2, 4, 2), (4, 8, 2), (4, 16, 1), (3, 6, 3)]:
        tokens = [5, 0, 7, 1][:world_size] if world_size > 1 else [6]
        per_rank = [
            torch.stack([torch.randperm(num_experts, generator=generator)[:top_k] for _ in range(t)])
            if t
            else torch.empty(0, top_k, dtype=torch.int64)
            for t in tokens
        ]
        _check_dispatch_matches_reference(per_rank, num_experts, world_size)
        # skewed: every token picks the first top_k experts, all on rank 0 when L >= top_k
        skewed = [torch.arange(top_k).repeat(t, 1) for t in tokens]
        _check_dispatch_matches_reference(skewed, num_experts, world_size)

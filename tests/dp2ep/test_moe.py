"""Single-process tests of the MoE layer and of main's pure helpers (no process group)."""

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from dp2ep.main import build_cases, skewed_expert_bias, tokens_per_rank
from dp2ep.moe import GroupedExperts, MoE, grouped_mm_supported

CPU = torch.device("cpu")


def _expert_io(dtype, num_tokens_per_expert, dim=16, hidden=32, seed=0):
    torch.manual_seed(seed)
    experts = GroupedExperts(dim, hidden, len(num_tokens_per_expert)).to(dtype)
    x = torch.randn(sum(num_tokens_per_expert), dim, dtype=dtype)
    grad = torch.randn(sum(num_tokens_per_expert), dim, dtype=dtype)
    return experts, x, grad, torch.tensor(num_tokens_per_expert)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("counts", [[3, 0, 5, 2], [0, 0, 0, 0], [0, 7, 0, 0]])
def test_grouped_mm_and_loop_are_bitwise_equal(dtype, counts):
    experts, x, grad, num_tokens_per_expert = _expert_io(dtype, counts)
    results = {}
    for impl in ("grouped_mm", "loop"):
        experts.expert_impl = impl
        experts.zero_grad(set_to_none=True)
        x_impl = x.clone().requires_grad_()
        out = experts(x_impl, num_tokens_per_expert)
        out.backward(grad)
        results[impl] = [out.detach(), x_impl.grad] + [p.grad for p in (experts.w1, experts.w2, experts.w3)]
    for grouped, loop in zip(results["grouped_mm"], results["loop"], strict=True):
        assert torch.equal(grouped, loop)


def test_grouped_mm_supported_matches_measured_alignment():
    assert grouped_mm_supported(torch.float32, 16, 32, CPU)
    assert grouped_mm_supported(torch.float32, 12, 20, CPU)  # 48 and 80 bytes
    assert not grouped_mm_supported(torch.float32, 3, 5, CPU)
    assert grouped_mm_supported(torch.bfloat16, 8, 16, CPU)
    assert not grouped_mm_supported(torch.bfloat16, 12, 20, CPU)  # 24 bytes: not 16-byte aligned
    # the alignment claim is about the real kernel: an unaligned call must raise
    with pytest.raises(RuntimeError, match="16 bytes"):
        torch._grouped_mm(
            torch.randn(4, 12, dtype=torch.bfloat16),
            torch.randn(2, 12, 20, dtype=torch.bfloat16),
            offs=torch.tensor([1, 4], dtype=torch.int32),
        )


def test_forced_grouped_mm_on_unaligned_shapes_is_a_value_error():
    experts, x, _, counts = _expert_io(torch.bfloat16, [2, 2], dim=12, hidden=20)
    experts.expert_impl = "grouped_mm"
    with pytest.raises(ValueError, match="multiples of 8 elements"):
        experts(x, counts)
    experts.expert_impl = "auto"  # falls back to the loop
    assert experts(x, counts).shape == (4, 12)


def test_moe_matches_a_per_token_reference():
    torch.manual_seed(0)
    moe = MoE(dim=16, hidden=32, num_experts=4, top_k=2, shared_expert=True)
    x = torch.randn(9, 16)
    scores = F.softmax(x @ moe.router.gate.weight.t(), dim=-1)
    expected = []
    for t in range(x.shape[0]):
        gates, chosen = torch.topk(scores[t], k=2)
        row = moe.shared_expert(x[t : t + 1])[0]
        for gate, e in zip(gates, chosen.tolist(), strict=True):
            w1, w2, w3 = moe.experts.w1[e], moe.experts.w2[e], moe.experts.w3[e]
            row = row + gate * ((F.silu(x[t] @ w1) * (x[t] @ w3)) @ w2)
        expected.append(row)
    # same math, different summation order (per token vs grouped GEMMs): fp32 rounding only
    torch.testing.assert_close(moe(x), torch.stack(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["grouped_mm", "loop"])
def test_moe_zero_tokens_forward_and_backward(impl):
    moe = MoE(dim=16, hidden=32, num_experts=4, top_k=2, expert_impl=impl)
    x = torch.empty(0, 16, requires_grad=True)
    out = moe(x)
    out.backward(torch.empty(0, 16))
    assert out.shape == (0, 16)
    assert torch.equal(moe.experts.w1.grad, torch.zeros_like(moe.experts.w1))
    assert torch.equal(moe.router.gate.weight.grad, torch.zeros_like(moe.router.gate.weight))


def test_expert_bias_steers_selection_but_not_gates():
    torch.manual_seed(0)
    moe = MoE(dim=16, hidden=32, num_experts=8, top_k=2)
    x = torch.randn(5, 16)
    moe.router.expert_bias.copy_(skewed_expert_bias(num_experts=8, top_k=2, world_size=2))  # hot: 0, 1, 2
    gates, chosen = moe.router(x)
    assert set(chosen.flatten().tolist()) <= {0, 1, 2}
    unbiased = F.softmax(x @ moe.router.gate.weight.t(), dim=-1)
    assert torch.equal(gates, unbiased.gather(1, chosen))


def test_moe_rejects_bad_top_k():
    with pytest.raises(ValueError, match="top_k=0"):
        MoE(16, 32, num_experts=4, top_k=0)
    with pytest.raises(ValueError, match="top_k=5"):
        MoE(16, 32, num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="expert_impl='triton'"):
        MoE(16, 32, num_experts=4, top_k=1, expert_impl="triton")


def test_build_cases_validates_against_world_size():
    cases = build_cases((4, 8), (1, 2), ("float32",), ("random",), ("even",), ("auto",), world_size=4)
    assert len(cases) == 4
    with pytest.raises(ValueError, match="num_experts=6 is not divisible by the world size 4"):
        build_cases((4, 6), (1,), ("float32",), ("random",), ("even",), ("auto",), world_size=4)
    with pytest.raises(ValueError, match="dtype='float64'"):
        build_cases((4,), (1,), ("float64",), ("random",), ("even",), ("auto",), world_size=1)
    with pytest.raises(ValueError, match="top_k=5"):
        build_cases((4, 8), (5,), ("float32",), ("random",), ("even",), ("auto",), world_size=1)
    with pytest.raises(ValueError, match="routing='zipf'"):
        build_cases((4,), (1,), ("float32",), ("zipf",), ("even",), ("auto",), world_size=1)


def test_tokens_per_rank_and_skew_give_empty_ranks():
    assert tokens_per_rank("even", 8, 3) == [8, 8, 8]
    assert tokens_per_rank("uneven", 8, 3) == [8, 16, 0]  # last rank sends nothing
    assert tokens_per_rank("uneven", 8, 1) == [8]
    # E=4, W=4, K=2: L=1 < K+1, so exactly experts 0 and 1 (ranks 0 and 1) are hot, ranks 2 and 3 idle
    assert (skewed_expert_bias(4, 2, 4) > 0).tolist() == [True, True, False, False]
    # E=8, W=2, K=2: L=4 >= K+1, so experts 0..2 (all on rank 0) are hot and tokens still choose
    assert (skewed_expert_bias(8, 2, 2) > 0).tolist() == [True] * 3 + [False] * 5

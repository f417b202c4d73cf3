"""Check MoE expert parallelism (dp2ep) against the same MoE on one process, under torchrun.

Every rank builds the same MoE (one seed), routes its own slice of one global batch through the
expert-parallel copy (experts sharded Shard(0) over the W ranks, tokens moved by all-to-all), and
compares with the unsharded MoE run on the concatenated batch: forward output, input grad, every
expert weight grad (exact), router and shared-expert grads after the data-parallel all-reduce
(stated tolerance). Any mismatch makes every rank exit non-zero. Each argument that names a case
axis takes one value or a comma list; all combinations run in one launch.

    .venv/bin/torchrun --nproc_per_node 4 -m dp2ep.main
    .venv/bin/torchrun --nproc_per_node 2 -m dp2ep.main --num_experts=8 --top_k=2 --dtype=bfloat16

Shape legend: T tokens, D dim, H hidden, E experts, K top-k, W world size, L = E // W.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.parallel import parallelize_module

from dp2ep.expert_parallel import ExpertParallel
from dp2ep.moe import EXPERT_IMPLS, MoE, grouped_mm_supported
from pytorch_scripts_common import distributed, get_device, set_seed
from pytorch_scripts_common.cli import UsageError, parse_list
from pytorch_scripts_common.distributed import CheckResult, Tolerance, check_true, compare

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ROUTINGS = ("random", "skewed")
BATCHES = ("even", "uneven")
EXAMPLE_COMMAND = ".venv/bin/torchrun --nproc_per_node 2 -m dp2ep.main"

# Expert e receives exactly the reference's rows, in the same order (stable sort by expert, rank 0's
# rows before rank 1's, regrouping that keeps that order), so every expert GEMM has the identical
# input matrix in both runs and the k-sum is done in a fixed order (see README.md).
SAME_ROWS_SAME_ORDER = Tolerance.exact("each expert gets the reference's rows in the same order")
COPIES = Tolerance.exact("copies, no arithmetic")

# Router and shared-expert weights are replicated: each rank's grad covers its own tokens and the
# data-parallel all-reduce sums W partial grads, where the reference does one GEMM over all tokens.
# Only the summation order differs. Measured over the default 96 cases (D=16, H=32, 32 tokens per
# rank, CPU, gloo) max |diff| / max |ref|: float32 3.3e-7 (W=2) and 6.4e-7 (W=4), bound 1e-5;
# bfloat16 7.5e-3 (W=2) and 8.3e-3 (W=4), i.e. ~2 bfloat16 roundings (2^-8 = 3.9e-3) because every
# partial is rounded to bfloat16 before the sum, bound 3e-2.
ALL_REDUCED_GRAD_TOLERANCE = {
    torch.float32: Tolerance.scaled(1e-5, "all-reduce of W partial float32 grads: summation order"),
    torch.bfloat16: Tolerance.scaled(3e-2, "all-reduce of W partial grads, each rounded to bfloat16"),
}

# The expert math is identical in both runs, with one CPU catch found by measurement: float32 silu
# over a buffer computes its last (length mod 32) elements on a different code path (scalar tail
# after the 2 x 16-lane AVX-512 loop), 1 ulp off the vector path. The buffers are (rows, H), with
# different row counts in EP and reference (shared expert: T vs the global T; grouped_mm: all local
# experts in one buffer), so an element can be in the tail in one run and not the other. With H a
# multiple of 32 no row ever straddles a tail, and everything is bitwise exact (measured); otherwise
# float32 outputs and expert grads get this bound (max |diff| / max |ref|, measured worst 1.1e-7 at
# D=12, H=20, K 1 and 3, with and without the shared expert, W=2 and 4). bfloat16 silu showed no
# tail effect: exact for any H.
EXACT_HIDDEN_MULTIPLE = 32
FLOAT32_SILU_TAIL = Tolerance.scaled(
    1e-6, "float32 silu: the last (length mod 32) elements take another path"
)


@dataclasses.dataclass(frozen=True)
class Case:
    num_experts: int
    top_k: int
    dtype_name: str
    routing: str
    batch: str
    expert_impl: str

    def __str__(self) -> str:
        return (
            f"E={self.num_experts:<2} K={self.top_k} {self.dtype_name:<8} {self.routing:<6} "
            f"{self.batch:<6} {self.expert_impl:<10}"
        )


@dataclasses.dataclass(frozen=True)
class Shapes:
    dim: int  # D
    hidden: int  # H
    num_tokens: int  # T per rank, the unit of the uneven batch
    shared_expert: bool
    seed: int


def check_axes(
    num_experts: Sequence[int],
    top_k: Sequence[int],
    dtype: Sequence[str],
    routing: Sequence[str],
    batch: Sequence[str],
    expert_impl: Sequence[str],
    world_size: int | None = None,
) -> None:
    """``UsageError`` for a case-axis value no world size can run; with ``world_size``, also for an
    expert count it does not divide."""
    multiples = "positive multiples of the world size" + (f" {world_size}" if world_size else "")
    for e in num_experts:
        if e < 1:
            raise UsageError(f"num_experts={e}: pass {multiples}")
        if world_size and e % world_size != 0:
            raise UsageError(
                f"num_experts={e} is not divisible by the world size {world_size}: each rank owns "
                f"num_experts / world_size experts; use a positive multiple of {world_size} "
                f"or change --nproc_per_node"
            )
    for k in top_k:
        if not 1 <= k <= min(num_experts):
            raise UsageError(
                f"top_k={k} must be in [1, min(num_experts)={min(num_experts)}]: pass --top_k from 1 to "
                f"{min(num_experts)}, or raise --num_experts"
            )
    for values, choices, name in (
        (dtype, DTYPES, "dtype"),
        (routing, ROUTINGS, "routing"),
        (batch, BATCHES, "batch"),
        (expert_impl, EXPERT_IMPLS, "expert_impl"),
    ):
        for v in values:
            if v not in choices:
                raise UsageError(
                    f"{name}={v!r} is not one of {tuple(choices)}: pass one or a comma list of them, "
                    f"e.g. --{name}={','.join(choices)}"
                )


def build_cases(
    num_experts: Sequence[int],
    top_k: Sequence[int],
    dtype: Sequence[str],
    routing: Sequence[str],
    batch: Sequence[str],
    expert_impl: Sequence[str],
    world_size: int,
) -> list[Case]:
    """The cartesian product of the case axes, validated against the world size up front."""
    check_axes(num_experts, top_k, dtype, routing, batch, expert_impl, world_size)
    return [
        Case(*combo) for combo in itertools.product(num_experts, top_k, dtype, routing, batch, expert_impl)
    ]


def tokens_per_rank(batch: str, num_tokens: int, world_size: int) -> list[int]:
    """'even': num_tokens each. 'uneven': rank r gets num_tokens * (r + 1), the last rank none."""
    if batch == "even" or world_size == 1:
        return [num_tokens] * world_size
    return [num_tokens * (r + 1) for r in range(world_size - 1)] + [0]


def skewed_expert_bias(num_experts: int, top_k: int, world_size: int) -> torch.Tensor:
    """Selection bias that routes every token to the first few experts only.

    The "hot" experts are 0 .. n-1 with n = K + 1 when rank 0 owns that many (tokens still choose
    among them), else n = K. So experts >= n get no tokens, and with W > 1 the ranks owning only
    cold experts receive no tokens at all (e.g. E=4, W=4, K=2: ranks 2 and 3 receive nothing).
    """
    num_hot = top_k + 1 if top_k + 1 <= num_experts // world_size else top_k
    bias = torch.zeros(num_experts)
    bias[:num_hot] = 100.0  # softmax scores are <= 1, so +100 always wins the top-k
    return bias


def build_models(case: Case, mesh: DeviceMesh, device: torch.device, shapes: Shapes) -> tuple[MoE, MoE]:
    """The reference MoE and its expert-parallel copy (experts sharded Shard(0) over ``mesh``)."""
    # One seed on every rank: the reference weights, the EP copy and the global batch must be the same
    # on all ranks, because each rank compares its EP slice with the same global reference.
    set_seed(shapes.seed)
    reference = MoE(
        shapes.dim,
        shapes.hidden,
        case.num_experts,
        case.top_k,
        shapes.shared_expert,
        expert_impl=case.expert_impl,
    )
    reference = reference.to(device=device, dtype=DTYPES[case.dtype_name])
    if case.routing == "skewed":
        reference.router.expert_bias.copy_(skewed_expert_bias(case.num_experts, case.top_k, mesh.size()))
    expert_parallel_moe = copy.deepcopy(reference)
    parallelize_module(expert_parallel_moe.experts, mesh, ExpertParallel())
    return reference, expert_parallel_moe


def run_case(
    case: Case, mesh: DeviceMesh, device: torch.device, shapes: Shapes
) -> tuple[list[CheckResult], dict]:
    """One EP-vs-reference comparison on this rank; returns its checks and routing statistics."""
    rank, world_size = mesh.get_rank(), mesh.size()
    reference, expert_parallel_moe = build_models(case, mesh, device, shapes)
    counts = tokens_per_rank(case.batch, shapes.num_tokens, world_size)
    dtype = DTYPES[case.dtype_name]
    x_global = torch.randn(sum(counts), shapes.dim, device=device, dtype=dtype)  # (T_global, D)
    grad_out_global = torch.randn(sum(counts), shapes.dim, device=device, dtype=dtype)
    own_rows = slice(sum(counts[:rank]), sum(counts[: rank + 1]))

    x_ref = x_global.clone().requires_grad_()
    out_ref = reference(x_ref)
    out_ref.backward(grad_out_global)

    x_local = x_global[own_rows].clone().requires_grad_()  # (T, D): data parallel, own slice
    out = expert_parallel_moe(x_local)
    out.backward(grad_out_global[own_rows])
    # Replicated parameters: what DDP / FSDP would do, a sum over the data-parallel ranks.
    for param in expert_parallel_moe.parameters():
        if not isinstance(param, DTensor):
            dist.all_reduce(param.grad, group=mesh.get_group())

    same_math = (
        SAME_ROWS_SAME_ORDER
        if dtype != torch.float32 or shapes.hidden % EXACT_HIDDEN_MULTIPLE == 0
        else FLOAT32_SILU_TAIL
    )
    checks = [
        placement_check(expert_parallel_moe, case.num_experts // world_size),
        compare("output", out_ref[own_rows].detach(), out.detach(), same_math),
        compare("input grad", x_ref.grad[own_rows], x_local.grad, same_math),
        *parameter_checks(reference, expert_parallel_moe, rank, same_math, ALL_REDUCED_GRAD_TOLERANCE[dtype]),
    ]
    return checks, routing_stats(reference, expert_parallel_moe, x_global, x_local, counts, case)


def placement_check(expert_parallel_moe: MoE, num_local: int) -> CheckResult:
    """The expert weights are DTensors placed (Shard(0),) with ``num_local`` experts on this rank."""
    sharded = {name: p for name, p in expert_parallel_moe.named_parameters() if isinstance(p, DTensor)}
    placements_ok = set(sharded) == {"experts.w1", "experts.w2", "experts.w3"} and all(
        p.placements == (Shard(0),) and p.to_local().shape[0] == num_local for p in sharded.values()
    )
    placements = {name: str(p.placements) for name, p in sharded.items()}
    return check_true("experts Shard(0)", placements_ok, f"placements {placements}")


def parameter_checks(
    reference: MoE, expert_parallel_moe: MoE, rank: int, same_math: Tolerance, all_reduced: Tolerance
) -> list[CheckResult]:
    """Expert shards and their grads against the reference's rows; replicated grads after the all-reduce."""
    ref_params = dict(reference.named_parameters())
    checks = []
    for name, param in expert_parallel_moe.named_parameters():
        ref_param = ref_params[name]
        if isinstance(param, DTensor):  # expert weights: this rank's L experts
            num_local = param.to_local().shape[0]
            own = slice(rank * num_local, (rank + 1) * num_local)
            checks.append(
                compare(f"{name} shard", ref_param.detach()[own], param.to_local().detach(), COPIES)
            )
            checks.append(compare(f"{name} grad", ref_param.grad[own], param.grad.to_local(), same_math))
        else:
            checks.append(compare(f"{name} grad", ref_param.grad, param.grad, all_reduced))
    return checks


def routing_stats(
    reference: MoE,
    expert_parallel_moe: MoE,
    x_global: torch.Tensor,
    x_local: torch.Tensor,
    counts: list[int],
    case: Case,
) -> dict:
    """Tokens per rank, tokens routed to each rank's experts, idle experts, the expert implementation."""
    world_size = len(counts)
    _, expert_indices = reference.router(x_global)  # (T_global, K), the routing both runs used
    tokens_per_expert = torch.bincount(expert_indices.reshape(-1), minlength=case.num_experts)
    return {
        "tokens per rank": counts,
        "routed to rank": tokens_per_expert.view(world_size, case.num_experts // world_size)
        .sum(dim=1)
        .tolist(),
        "experts with no token": int((tokens_per_expert == 0).sum()),
        "impl": "grouped_mm" if expert_parallel_moe.experts.use_grouped_mm(x_local) else "loop",
    }


def run_cases(
    cases: list[Case], mesh: DeviceMesh, device: torch.device, shapes: Shapes
) -> tuple[list[str], list[str], set[Tolerance]]:
    """Every case on this rank: its table rows, its mismatch lines and the tolerances used."""
    rows, failures, tolerances = [], [], set()
    for case in cases:
        checks, stats = run_case(case, mesh, device, shapes)
        failures += [f"rank {mesh.get_rank()} {case} {c.name}: {c.detail}" for c in checks if not c.passed]
        tolerances |= {c.tolerance for c in checks if c.tolerance is not None}
        worst = max(checks, key=lambda c: c.scaled_err)
        rows.append(
            f"{case} {stats['impl']:<10} {stats['tokens per rank']!s:<18} "
            f"{stats['routed to rank']!s:<18} "
            f"{stats['experts with no token']:>5} {sum(c.passed for c in checks):>2}/{len(checks):<2} "
            f"{sum(c.bitwise_equal for c in checks):>5} {worst.scaled_err:9.2g} ({worst.name})"
        )
    return rows, failures, tolerances


def print_report(
    rows: list[str], all_failures: list[str], tolerances: set[Tolerance], device: torch.device, shapes: Shapes
) -> None:
    """Rank 0's output: the configuration, one row per case, the tolerances, every mismatch, the verdict."""
    print(
        f"dp2ep: world size {dist.get_world_size()}, device {device}, torch {torch.__version__}, "
        f"D={shapes.dim} H={shapes.hidden} T={shapes.num_tokens}, {len(rows)} cases"
    )
    print(
        f"{'case':<42} {'impl':<10} {'tokens/rank':<18} {'routed to rank':<18} {'idle':>5} "
        f"{'ok':>5} {'exact':>5} {'worst max|diff|/max|ref|'}"
    )
    print("\n".join(rows))
    print("tolerances:")
    for tolerance in sorted(tolerances, key=str):
        print(f"  {tolerance}: {tolerance.reason}")
    for line in all_failures:
        print(f"MISMATCH {line}")
    verdict = "FAILED" if all_failures else "PASSED"
    print(f"dp2ep: {verdict}: {len(all_failures)} mismatches over {len(rows)} cases")


def main(
    num_experts: int | tuple[int, ...] = (4, 8, 16),
    top_k: int | tuple[int, ...] = (1, 2),
    dtype: str | tuple[str, ...] = ("float32", "bfloat16"),
    routing: str | tuple[str, ...] = ROUTINGS,
    batch: str | tuple[str, ...] = BATCHES,
    expert_impl: str | tuple[str, ...] = ("auto", "loop"),
    dim: int = 16,
    hidden: int = 32,
    num_tokens: int = 32,
    shared_expert: bool = True,
    seed: int = 0,
    timeout_s: float = 120.0,
) -> None:
    """Compare expert-parallel MoE with the unsharded MoE; run under torchrun, exits 1 on a mismatch.

    Args:
        num_experts: experts E (one value or comma list); each must be a multiple of the world size.
        top_k: experts per token K (one value or comma list), 1 <= K <= E.
        dtype: float32 and/or bfloat16 (parameters, activations and grads).
        routing: random (learned router) and/or skewed (bias sends all tokens to the first experts).
        batch: even (num_tokens per rank) and/or uneven (rank r gets num_tokens*(r+1), last rank 0).
        expert_impl: auto (torch._grouped_mm when shapes allow), grouped_mm (required) and/or loop.
        dim: model dimension D.
        hidden: expert hidden dimension H.
        num_tokens: tokens per rank T (the unit of the uneven batch).
        shared_expert: add the dense shared expert every token also goes through.
        seed: one seed for all ranks (weights and the global batch must match everywhere).
        timeout_s: process-group timeout in seconds (rendezvous and every collective), so nothing hangs.
    """
    shapes = Shapes(dim, hidden, num_tokens, shared_expert, seed)
    cases = validate_arguments(num_experts, top_k, dtype, routing, batch, expert_impl, shapes, timeout_s)
    with distributed.process_group(timeout_s) as device:
        mesh = init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("ep",))
        rows, failures, tolerances = run_cases(cases, mesh, device, shapes)
        all_failures: list[list[str] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(all_failures, failures)
        flat_failures = [line for per_rank in all_failures for line in per_rank]
        if dist.get_rank() == 0:
            print_report(rows, flat_failures, tolerances, device, shapes)
    if flat_failures:
        raise SystemExit(1)


def validate_arguments(
    num_experts: object,
    top_k: object,
    dtype: object,
    routing: object,
    batch: object,
    expert_impl: object,
    shapes: Shapes,
    timeout_s: float,
) -> list[Case]:
    """The cases to run; ``UsageError`` for any mistake, on every rank before the process group exists."""
    for name, value in (("dim", shapes.dim), ("hidden", shapes.hidden), ("num_tokens", shapes.num_tokens)):
        if value < 1:
            raise UsageError(f"--{name} is {value}: pass a positive integer")
    if shapes.seed < 0:
        raise UsageError(f"--seed is {shapes.seed}: pass a non-negative integer")
    distributed.check_timeout(timeout_s)
    axes = {"num_experts": num_experts, "top_k": top_k, "dtype": dtype, "routing": routing, "batch": batch}
    values = {
        name: parse_list(value, int if name in ("num_experts", "top_k") else str, name=name)
        for name, value in (*axes.items(), ("expert_impl", expert_impl))
    }
    for name, items in values.items():
        if not items:
            raise UsageError(f"--{name} is empty: give at least one value")
    check_axes(*values.values())  # a value no world size can run is named before asking for torchrun
    world_size = distributed.torchrun_world_size(EXAMPLE_COMMAND)
    cases = build_cases(*values.values(), world_size=world_size)
    if "grouped_mm" in values["expert_impl"]:
        device = get_device()
        for name in values["dtype"]:
            if not grouped_mm_supported(DTYPES[name], shapes.dim, shapes.hidden, device):
                raise UsageError(
                    f"expert_impl=grouped_mm cannot run dtype={name}, dim={shapes.dim}, "
                    f"hidden={shapes.hidden} on {device.type} (dim and hidden need 16-byte rows; "
                    "bfloat16 only on CUDA sm90+): "
                    "use --expert_impl auto or loop"
                )
    return cases


if __name__ == "__main__":
    distributed.run(main)

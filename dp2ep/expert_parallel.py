"""ExpertParallel: shard ``GroupedExperts`` on the expert axis and move tokens to their experts.

Shape legend: see ``dp2ep.indices`` (T, D, E, K, W, L = E // W, S = T * K, N received rows).

Data parallelism is implicit (as in torchtitan's dp2ep): each rank routes its own batch slice,
so the same W ranks that would be data-parallel replicas own L experts each instead of all E.

Forward of the wrapped experts module, per rank:
  1. dispatch (forward pre-hook): the rank's S slots arrive grouped by global expert id. Exchange
     the per-expert counts (all-to-all of (E,) -> (W*L,)), derive per-rank split sizes, send
     every slot to the rank owning its expert (autograd-aware all-to-all), then regroup the N
     received rows from (source rank, local expert) to (local expert, source rank) order.
  2. the experts run on their local (L, D, H) shards.
  3. combine (forward hook): undo the regrouping and send the rows back with the splits swapped.
The backward of each all-to-all is the opposite all-to-all, so gradients return the same way.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle

from dp2ep.indices import (
    invert_permutation,
    num_tokens_per_local_expert,
    rank_major_to_expert_major,
    split_sizes_per_rank,
)


class ExpertParallel(ParallelStyle):
    """Apply with ``parallelize_module(moe.experts, mesh, ExpertParallel())`` on a 1-D mesh of W ranks.

    Each parameter of the module must have the expert axis first, (E, ...), with E divisible by W.
    The style keeps the split sizes and permutation of the forward in flight between its two hooks,
    so one instance serves one module and one forward at a time.
    """

    def __init__(self) -> None:
        super().__init__()
        self._input_splits: list[int] | None = None
        self._output_splits: list[int] | None = None
        self._expert_major: torch.Tensor | None = None

    @staticmethod
    def _partition_fn(name: str, module: nn.Module, device_mesh: DeviceMesh) -> None:
        for param_name, param in list(module.named_parameters(recurse=False)):
            if param.shape[0] % device_mesh.size() != 0:
                raise ValueError(
                    f"parameter {name}.{param_name} has {param.shape[0]} experts, not divisible by the "
                    f"{device_mesh.size()} expert-parallel ranks; choose num_experts as a multiple of "
                    "the world size"
                )
            sharded = nn.Parameter(distribute_tensor(param, device_mesh, [Shard(0)]))
            module.register_parameter(param_name, sharded)

    def _token_dispatch(self, module: nn.Module, inputs: tuple, device_mesh: DeviceMesh) -> tuple:
        routed_input, num_tokens_per_expert = inputs  # (S, D) grouped by expert, (E,)
        world_size = device_mesh.size()
        group = device_mesh.get_group()
        # (E,) -> (W*L,): entry w*L + l = how many slots rank w sends to my local expert l
        num_tokens_per_expert_group = torch.empty_like(num_tokens_per_expert)
        dist.all_to_all_single(num_tokens_per_expert_group, num_tokens_per_expert, group=group)
        counts = num_tokens_per_expert_group.view(world_size, -1)  # (W, L)
        # split sizes are needed on the host: this .tolist() is a device sync on CUDA
        self._input_splits = split_sizes_per_rank(num_tokens_per_expert, world_size).tolist()
        self._output_splits = counts.sum(dim=1).tolist()
        received = all_to_all_single_autograd(routed_input, self._output_splits, self._input_splits, group)
        self._expert_major = rank_major_to_expert_major(counts)  # (N,)
        return received[self._expert_major], num_tokens_per_local_expert(counts)

    def _token_combine(self, module: nn.Module, routed_output: torch.Tensor, device_mesh: DeviceMesh):
        assert self._expert_major is not None, "combine without a dispatch"
        rank_major = routed_output[invert_permutation(self._expert_major)]  # (N, D)
        combined = all_to_all_single_autograd(
            rank_major, self._input_splits, self._output_splits, device_mesh.get_group()
        )
        self._input_splits = self._output_splits = self._expert_major = None
        return combined  # (S, D) back in this rank's expert-grouped slot order

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if device_mesh.ndim != 1:
            raise ValueError(f"ExpertParallel needs a 1-D device mesh, got {device_mesh.ndim} dims")
        return distribute_module(
            module,
            device_mesh,
            partition_fn=self._partition_fn,
            input_fn=self._token_dispatch,
            output_fn=self._token_combine,
        )

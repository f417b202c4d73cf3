"""dp2ep: a small MoE layer and an ExpertParallel style that borrows the data-parallel ranks for experts.

``moe`` holds the layer (router, routed experts, optional shared expert), ``indices`` the pure
token permutation / split-size logic (unit-tested on one process), ``expert_parallel`` the
``ParallelStyle`` that shards experts with ``Shard(0)`` and dispatches tokens with all-to-all,
and ``main`` the torchrun entry that checks EP against the same layer run on one process.
"""

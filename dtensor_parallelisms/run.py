"""Run the requested modes on an initialised process group; rank 0 prints one table per mode."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from dtensor_parallelisms.checks import Report
from dtensor_parallelisms.model import ModelConfig
from dtensor_parallelisms.modes import RunSettings, run_fsdp, run_fsdp_tp, run_sp, run_tp

RUNNERS = {"fsdp": run_fsdp, "tp": run_tp, "sp": run_sp, "fsdp_tp": run_fsdp_tp}


def run_modes(
    modes: list[str],
    config: ModelConfig,
    *,
    device: torch.device,
    tp_size: int,
    seed: int,
    lr: float,
    mixed_precision: bool,
    input_seed_per_rank: bool,
) -> int:
    """Run each mode, print its checks on rank 0, return the number of failed checks over all ranks."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    settings = RunSettings(config, seed, lr, device, mixed_precision, input_seed_per_rank)
    if rank == 0:
        print(
            f"torch {torch.__version__}, device {device.type}, backend {dist.get_backend()}, "
            f"world_size {world_size}, {config}, seed {seed}, lr {lr}",
            flush=True,
        )
    total_failed = 0
    for mode in modes:
        if mode == "fsdp_tp":
            mesh = init_device_mesh(
                device.type, (world_size // tp_size, tp_size), mesh_dim_names=("dp", "tp")
            )
            mesh_text = f"mesh dp={world_size // tp_size} x tp={tp_size}"
        else:
            axis = "dp" if mode == "fsdp" else "tp"
            mesh = init_device_mesh(device.type, (world_size,), mesh_dim_names=(axis,))
            mesh_text = f"mesh {axis}={world_size}"
        report = Report()
        RUNNERS[mode](settings, mesh, report)
        # Checks on shards can fail on one rank only: collect every rank's failures on rank 0.
        failures = [f"rank {rank}: {r.name}: {r.detail}" for r in report.results if not r.passed]
        all_failures: list[list[str]] | None = [[] for _ in range(world_size)] if rank == 0 else None
        dist.gather_object(failures, all_failures, dst=0)
        if rank == 0:
            flat = [line for per_rank in all_failures for line in per_rank]
            status = "PASSED" if not flat else f"FAILED ({len(flat)} failed checks over all ranks)"
            print(f"\n== mode {mode} ({mesh_text}): {status}\n{report.render()}", flush=True)
            for line in flat:
                print(f"FAILED {line}", flush=True)
        num_failed = torch.tensor([len(failures)], dtype=torch.int64, device=device)
        dist.all_reduce(num_failed)
        total_failed += int(num_failed.item())
    if rank == 0:
        print(
            f"\n{'ALL CHECKS PASSED' if total_failed == 0 else f'{total_failed} CHECKS FAILED'}", flush=True
        )
    return total_failed

"""Run small torch.compile programs on CPU and write their TORCH_LOGS output as graph_viz fixtures.

Each program runs in its own Python subprocess with
``TORCH_LOGS_FORMAT=short TORCH_LOGS=aot_graphs,aot_joint_graph,output_code`` (stdout and stderr
go to one file, as ``prog.py > log.txt 2>&1`` would). ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``
gives the cold-compile header form (``===== Forward graph 0 =====``). The ``*_cache_hit`` logs
compile the same program twice in one process into a fresh ``TORCHINDUCTOR_CACHE_DIR`` (after
``torch._dynamo.reset()``) with caches enabled; the second compile prints the cache-hit form
(``Forward graph (from cache)``), which the log keeps after a marker line.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import fire
import torch

from graph_viz.main import publish_dir

# name -> (program, caches disabled?, TORCH_LOGS); the log file is <name>.log.
SAMPLE_LOGS: dict[str, tuple[str, bool, str]] = {
    "mlp_train": ("mlp_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "mlp_train_no_joint": ("mlp_train", True, "aot_graphs,output_code"),
    "mlp_inference": ("mlp_inference", True, "aot_graphs,output_code"),
    "graph_break_train": ("graph_break_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "transformer_train": ("transformer_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "mlp_train_cache_hit": ("mlp_train_twice", False, "aot_graphs,aot_joint_graph,output_code"),
}


class TransformerBlock(torch.nn.Module):
    """Pre-norm attention + MLP block; ``x`` is [batch, seq, dim]."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_attn = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm_mlp = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, 4 * dim)
        self.fc2 = torch.nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        q, k, v = self.qkv(self.norm_attn(x)).chunk(3, dim=-1)
        # [batch, heads, seq, head_dim]
        q, k, v = (
            t.view(batch, seq, self.num_heads, dim // self.num_heads).transpose(1, 2) for t in (q, k, v)
        )
        attn = torch.softmax(q @ k.transpose(-2, -1) / (dim // self.num_heads) ** 0.5, dim=-1) @ v
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, seq, dim))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm_mlp(x))))


def make_transformer(num_layers: int, dim: int = 32, num_heads: int = 2) -> torch.nn.Module:
    """``num_layers`` transformer blocks in a Sequential."""
    return torch.nn.Sequential(*[TransformerBlock(dim, num_heads) for _ in range(num_layers)])


def _train_step(model: torch.nn.Module, x: torch.Tensor, backend: str = "inductor") -> None:
    compiled = torch.compile(model, backend=backend)
    compiled(x).sum().backward()


def run_program(name: str, num_layers: int = 1, backend: str = "inductor") -> None:
    """Child-process body: run one small compiled program (its logs go to stdout/stderr).

    ``backend="aot_eager"`` (used by benchmark.py for big logs) prints the same AOT graphs without
    output code, skipping inductor's C++ compile.
    """
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    x = torch.randn(16, 64)
    if name == "mlp_train":
        _train_step(mlp, x)
    elif name == "mlp_train_twice":
        _train_step(mlp, x)
        torch._dynamo.reset()
        print("graph_viz sample: second compile (cache hit expected)", flush=True)
        _train_step(mlp, x)
    elif name == "mlp_inference":
        with torch.no_grad():
            torch.compile(mlp)(x)
    elif name == "graph_break_train":

        def two_graphs(x: torch.Tensor) -> torch.Tensor:
            hidden = torch.relu(mlp[0](x))
            print("user print between graphs", flush=True)  # a graph break: fw0, fw1, then bw1, bw0
            return mlp[2](hidden).sin()

        torch.compile(two_graphs)(x).sum().backward()
    elif name == "transformer_train":
        _train_step(make_transformer(num_layers), torch.randn(2, 8, 32), backend)
    else:
        raise ValueError(f"unknown program {name!r}; known: mlp_train, mlp_train_twice, ...")


def write_log(
    program: str,
    log_path: pathlib.Path,
    *,
    disable_caches: bool,
    torch_logs: str,
    num_layers: int = 1,
    backend: str = "inductor",
) -> None:
    """Run ``program`` in a subprocess with TORCH_LOGS set and write its stdout+stderr to ``log_path``."""
    with tempfile.TemporaryDirectory(prefix="graph_viz_inductor_cache_") as cache_dir:
        env = dict(os.environ)
        env.update(
            TORCH_LOGS_FORMAT="short",
            TORCH_LOGS=torch_logs,
            TORCHINDUCTOR_CACHE_DIR=cache_dir,
            TORCHINDUCTOR_FORCE_DISABLE_CACHES="1" if disable_caches else "0",
            PYTHONUNBUFFERED="1",
        )
        code = (
            "from graph_viz.make_sample_logs import run_program; "
            f"run_program({program!r}, {int(num_layers)}, {backend!r})"
        )
        with open(log_path, "wb") as log_file:
            result = subprocess.run(
                [sys.executable, "-c", code], stdout=log_file, stderr=subprocess.STDOUT, env=env, timeout=3600
            )
    if result.returncode != 0:
        raise RuntimeError(f"sample program {program!r} failed (exit {result.returncode}); see {log_path}")


def main(
    output_dir: str = "graph_viz/fixtures/logs", overwrite: bool = False, only: str | tuple[str, ...] = ""
) -> None:
    """Write the sample torch.compile logs (one <name>.log per program) into a new folder.

    Args:
        output_dir: folder to create; it holds <name>.log for each sample program.
        overwrite: replace output_dir if it exists.
        only: comma-separated subset of sample names (default: all of them).
    """
    # fire turns `--only a,b` into the tuple ("a", "b"); a plain string comes from Python callers.
    names = [str(n).strip() for n in (only if isinstance(only, (tuple, list)) else str(only).split(","))]
    names = [n for n in names if n] or list(SAMPLE_LOGS)
    unknown = [n for n in names if n not in SAMPLE_LOGS]
    if unknown:
        raise ValueError(f"unknown sample log(s) {unknown}; choose from {sorted(SAMPLE_LOGS)}")
    target = pathlib.Path(output_dir)
    if target.exists() and not overwrite:
        raise ValueError(f"{target} exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name in names:
            program, disable_caches, torch_logs = SAMPLE_LOGS[name]
            write_log(program, staging / f"{name}.log", disable_caches=disable_caches, torch_logs=torch_logs)
            print(f"wrote {target / (name + '.log')} ({(staging / (name + '.log')).stat().st_size} bytes)")
        publish_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    fire.Fire(main)

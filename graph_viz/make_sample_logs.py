"""Run small torch.compile programs on CPU and write their TORCH_LOGS output as graph_viz fixtures.

Each program runs in its own Python subprocess (the interpreter running this script, so another
torch version's venv writes that version's logs) with
``TORCH_LOGS=aot_graphs,aot_joint_graph,output_code`` in one of three forms:

- ``short``: ``TORCH_LOGS_FORMAT=short``, stdout and stderr in one file ``<name>.log`` (as
  ``prog.py > log.txt 2>&1`` would);
- ``default``: torch's default format (a glog prefix on every line), same file layout;
- ``trace``: ``TORCH_TRACE=<name>_trace/`` (the structured trace tlparse reads; its one file is
  renamed ``dedicated_log_torch_trace.log``), the program's own output is not kept.

Programs: the six of ``fixtures/logs`` (``BASIC_SAMPLE_LOGS``: MLPs and a transformer block, the
default), and programs of the kinds users compile (``USER_PROGRAMS``, chosen with ``--only``): a tiny
Llama and GPT-2 built from transformers configs (no download), ``dynamic=True``, ``torch.cond``, a
``torch.library.custom_op``, activation checkpointing, a compiled ``AdamW.step()``,
``mode="max-autotune-no-cudagraphs"``, in-place mutations, int64 index ops and ``var_mean``, a
``fullgraph=True`` Llama under ``torch.no_grad()``.

``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`` gives the cold-compile header form (``===== Forward graph 0
=====``). The ``*_cache_hit`` logs compile the same program twice in one process into a fresh
``TORCHINDUCTOR_CACHE_DIR`` (after ``torch._dynamo.reset()``) with caches enabled; the second compile
prints the cache-hit form (``Forward graph (from cache)``), which the log keeps after a marker line.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

import torch

from pytorch_scripts_common.cli import UsageError, parse_list, run
from pytorch_scripts_common.outputs import check_output, staged_dir

# name -> (program, caches disabled?, TORCH_LOGS); the log file is <name>.log.
SAMPLE_LOGS: dict[str, tuple[str, bool, str]] = {
    "mlp_train": ("mlp_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "mlp_train_no_joint": ("mlp_train", True, "aot_graphs,output_code"),
    "mlp_inference": ("mlp_inference", True, "aot_graphs,output_code"),
    "graph_break_train": ("graph_break_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "transformer_train": ("transformer_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "mlp_train_cache_hit": ("mlp_train_twice", False, "aot_graphs,aot_joint_graph,output_code"),
    # Programs of the kinds users compile (real models, dynamic shapes, higher-order ops, ...).
    "llama_train": ("llama_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "gpt2_graph_break_train": ("gpt2_graph_break_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "dynamic_train": ("dynamic_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "cond_train": ("cond_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "custom_op_train": ("custom_op_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "checkpoint_train": ("checkpoint_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "optimizer_step": ("optimizer_step", True, "aot_graphs,output_code"),
    "max_autotune_train": ("max_autotune_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "mutation_train": ("mutation_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "indexing_train": ("indexing_train", True, "aot_graphs,aot_joint_graph,output_code"),
    "llama_inference_fullgraph": ("llama_inference_fullgraph", True, "aot_graphs,output_code"),
    # Other graph records: dynamo's graph instead of the AOT graphs; post-grad graphs next to them.
    "two_ranks_train": ("two_ranks_train", True, "aot_graphs,output_code"),
    "mlp_train_graph_code": ("mlp_train", True, "graph_code,output_code"),
    "mlp_train_post_grad": ("mlp_train", True, "aot_graphs,post_grad_graphs,output_code"),
}
# The six programs of graph_viz/fixtures/logs.
BASIC_SAMPLE_LOGS = (
    "mlp_train",
    "mlp_train_no_joint",
    "mlp_inference",
    "graph_break_train",
    "transformer_train",
    "mlp_train_cache_hit",
)
LOG_FORMATS = ("short", "default", "trace")
TRACE_FILE = "dedicated_log_torch_trace.log"
TOOL = "graph_viz.make_sample_logs"


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


def _tiny_llama():
    """A randomly initialised 1-layer LlamaForCausalLM (no download): vocab 128, dim 32, 2 heads, 1 kv."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config)


def llama_train() -> None:
    """Tiny Llama (transformers), loss forward + backward: embedding, RMSNorm, RoPE, SDPA, SwiGLU, loss."""
    model = _tiny_llama()
    input_ids = torch.randint(0, 128, (2, 8))
    torch.compile(model)(input_ids=input_ids, labels=input_ids, use_cache=False).loss.backward()


def llama_inference_fullgraph() -> None:
    """Tiny Llama logits under ``torch.no_grad()`` with ``fullgraph=True``."""
    model = _tiny_llama().eval()
    with torch.no_grad():
        torch.compile(model, fullgraph=True)(input_ids=torch.randint(0, 128, (2, 8)), use_cache=False)


def gpt2_graph_break_train() -> None:
    """Tiny 2-layer GPT-2 (transformers) with a graph break (a forward hook that prints) after block 0."""
    import transformers

    config = transformers.GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)

    def announce(module, args, output):
        print("user hook after block 0", flush=True)  # unsupported under dynamo: a graph break

    model.transformer.h[0].register_forward_hook(announce)
    input_ids = torch.randint(0, 128, (2, 8))
    torch.compile(model)(input_ids=input_ids, labels=input_ids, use_cache=False).loss.backward()


def dynamic_train() -> None:
    """LayerNorm + MLP compiled with ``dynamic=True``: sizes print as symbols (``s0``), one train step."""
    model = torch.nn.Sequential(
        torch.nn.LayerNorm(64), torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 16)
    )
    torch.compile(model, dynamic=True)(torch.randn(12, 64)).sum().backward()


def cond_train() -> None:
    """``torch.cond`` (a higher-order op with two branch subgraphs) inside a train step."""
    linear = torch.nn.Linear(32, 32)

    def step(x: torch.Tensor) -> torch.Tensor:
        hidden = linear(x)
        return torch.cond(hidden.sum() > 0, lambda h: h.sin() * 2, lambda h: h.cos() + 1, (hidden,))

    torch.compile(step)(torch.randn(8, 32, requires_grad=True)).sum().backward()


def custom_op_train() -> None:
    """A ``torch.library.custom_op`` with a fake and an autograd formula, between two linears."""

    @torch.library.custom_op("graph_viz_sample::scaled_tanh", mutates_args=())
    def scaled_tanh(x: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.tanh(x) * scale

    @scaled_tanh.register_fake
    def _(x: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.empty_like(x)

    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * ctx.scale * (1 - torch.tanh(x) ** 2), None

    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.scale = inputs[1]

    scaled_tanh.register_autograd(backward, setup_context=setup_context)
    first, second = torch.nn.Linear(32, 32), torch.nn.Linear(32, 8)
    step = torch.compile(lambda x: second(scaled_tanh(first(x), 0.5)))
    step(torch.randn(16, 32)).sum().backward()


def checkpoint_train() -> None:
    """Activation checkpointing (``torch.utils.checkpoint``, non-reentrant): the backward recomputes."""
    block = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    head = torch.nn.Linear(32, 4)

    def step(x: torch.Tensor) -> torch.Tensor:
        return head(torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False))

    torch.compile(step)(torch.randn(8, 32)).sum().backward()


def optimizer_step() -> None:
    """An eager train step, then ``AdamW.step()`` compiled: foreach updates that mutate the parameters."""
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, 32)).sum().backward()
    torch.compile(optimizer.step)()


def max_autotune_train() -> None:
    """An MLP train step under ``mode="max-autotune-no-cudagraphs"`` (C++ GEMM templates on CPU)."""
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    torch.compile(mlp, mode="max-autotune-no-cudagraphs")(torch.randn(16, 64)).sum().backward()


def mutation_train() -> None:
    """In-place ops: BatchNorm's running-stat updates, an input ``add_``, ``index_put_`` on a clone."""
    norm = torch.nn.BatchNorm1d(16)
    linear = torch.nn.Linear(16, 16)
    counter = torch.zeros(4)

    def step(x: torch.Tensor) -> torch.Tensor:
        counter.add_(1)  # a mutated graph input: copied back at the end of the forward graph
        hidden = norm(linear(x))
        hidden = hidden.clone()
        hidden[:, :4] = hidden[:, :4] * counter
        return hidden.relu_()

    torch.compile(step)(torch.randn(8, 16)).sum().backward()


def indexing_train() -> None:
    """int64 index ops and welford reductions: embedding, gather, scatter_add, var_mean; two outputs."""
    embedding = torch.nn.Embedding(64, 16)
    linear = torch.nn.Linear(16, 16)

    def step(tokens: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = linear(embedding(tokens))  # [4, 8, 16]
        picked = torch.gather(hidden, 1, positions)  # [4, 2, 16]
        pooled = torch.zeros(4, 4, 16).scatter_add(1, positions % 4, picked)
        variance, mean = torch.var_mean(hidden, dim=-1, keepdim=True)
        return (hidden - mean) / (variance + 1e-5).sqrt(), pooled

    tokens = torch.randint(0, 64, (4, 8))
    positions = torch.randint(0, 8, (4, 2, 16))
    normed, pooled = torch.compile(step)(tokens, positions)
    (normed.sum() + pooled.sum()).backward()


def _two_ranks_worker(rank: int, port: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    _train_step(mlp, torch.randn(4 + 2 * rank, 8))  # batch 4 on rank 0, 6 on rank 1
    dist.destroy_process_group()


def two_ranks_train() -> None:
    """Two gloo ranks (processes) writing to one log, as torchrun's children do; batch 4 and 6."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_two_ranks_worker, args=(port,), nprocs=2)


USER_PROGRAMS = {
    function.__name__: function
    for function in (
        two_ranks_train,
        llama_train,
        llama_inference_fullgraph,
        gpt2_graph_break_train,
        dynamic_train,
        cond_train,
        custom_op_train,
        checkpoint_train,
        optimizer_step,
        max_autotune_train,
        mutation_train,
        indexing_train,
    )
}


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
    elif name in USER_PROGRAMS:
        USER_PROGRAMS[name]()
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
    log_format: str = "short",
) -> None:
    """Run ``program`` in a subprocess with TORCH_LOGS set; write its stdout+stderr to ``log_path``.

    ``log_format="trace"``: ``log_path`` is a folder that receives the TORCH_TRACE file instead.
    """
    with tempfile.TemporaryDirectory(prefix="graph_viz_inductor_cache_") as cache_dir:
        env = dict(os.environ)
        env.pop("TORCH_LOGS_FORMAT", None)
        env.pop("TORCH_TRACE", None)
        env.update(
            TORCHINDUCTOR_CACHE_DIR=cache_dir,
            TORCHINDUCTOR_FORCE_DISABLE_CACHES="1" if disable_caches else "0",
            PYTHONUNBUFFERED="1",
        )
        if log_format == "trace":
            trace_dir = pathlib.Path(cache_dir) / "trace"
            env["TORCH_TRACE"] = str(trace_dir)
        else:
            env["TORCH_LOGS"] = torch_logs
            if log_format == "short":
                env["TORCH_LOGS_FORMAT"] = "short"
        code = (
            "from graph_viz.make_sample_logs import run_program; "
            f"run_program({program!r}, {int(num_layers)}, {backend!r})"
        )
        output_path = pathlib.Path(cache_dir) / "output.log" if log_format == "trace" else log_path
        with open(output_path, "wb") as log_file:
            result = subprocess.run(
                [sys.executable, "-c", code], stdout=log_file, stderr=subprocess.STDOUT, env=env, timeout=3600
            )
        if result.returncode != 0:
            tail = pathlib.Path(output_path).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"sample program {program!r} failed (exit {result.returncode}):\n{tail}")
        if log_format == "trace":
            (trace_file,) = sorted(trace_dir.iterdir())  # one process, one file
            pathlib.Path(log_path).mkdir()
            os.replace(trace_file, pathlib.Path(log_path) / TRACE_FILE)


def main(
    output_dir: str = "graph_viz/fixtures/logs",
    overwrite: bool = False,
    only: str = "",
    log_format: str = "short",
) -> None:
    """Write the sample torch.compile logs (a <name>.log or <name>_trace/ per program) into a new folder.

    Args:
        output_dir: folder to create; it holds one log per sample program.
        overwrite: replace output_dir if it is an earlier output of this script.
        only: comma-separated sample names (default: the six of fixtures/logs; see SAMPLE_LOGS for all).
        log_format: short (TORCH_LOGS_FORMAT=short), default (glog prefix on each line), trace (TORCH_TRACE).
    """
    names = parse_list(only, str, name="only") or list(BASIC_SAMPLE_LOGS)
    unknown = [n for n in names if n not in SAMPLE_LOGS]
    if unknown:
        raise UsageError(f"unknown sample log(s) {unknown}: choose from {sorted(SAMPLE_LOGS)}")
    if log_format not in LOG_FORMATS:
        raise UsageError(f"--log_format {log_format!r} is unknown: choose one of {', '.join(LOG_FORMATS)}")
    target = check_output(output_dir, overwrite=overwrite, tool=TOOL, flag="output_dir")
    print(f"torch {torch.__version__} ({sys.executable}), log format {log_format}")
    with staged_dir(target, tool=TOOL) as staging:
        for name in names:
            program, disable_caches, torch_logs = SAMPLE_LOGS[name]
            file_name = f"{name}_trace" if log_format == "trace" else f"{name}.log"
            write_log(
                program,
                staging / file_name,
                disable_caches=disable_caches,
                torch_logs=torch_logs,
                log_format=log_format,
            )
            print(f"wrote {target / file_name}")


if __name__ == "__main__":
    run(main)

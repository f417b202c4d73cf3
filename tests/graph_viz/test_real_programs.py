"""graph_viz on logs of programs as users compile them, from torch 2.13 and 2.9 (not our toy MLPs).

Fixtures: graph_viz/fixtures/torch_2_13 and torch_2_9 (programs in graph_viz/make_sample_logs.py,
commands in graph_viz/fixtures/README.md): a tiny Llama and GPT-2 (transformers), dynamic shapes,
torch.cond, a custom op, activation checkpointing, a compiled AdamW step, in-place mutations,
int64 index ops, max-autotune. Each link checked by name below was read off the log by hand.
"""

from __future__ import annotations

import functools
import pathlib

import pytest

from graph_viz.mapping import NOT_AOT_GRAPH
from graph_viz.model import build_model
from pytorch_scripts_common.inductor_log import read_inductor_log

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "graph_viz" / "fixtures"

# log -> ([(graph kind, nodes, compute nodes) per graph, in log order], kernels incl. extern calls)
EXPECTED = {
    # graph code in terminal colours (ANSI codes): torch's stdout was a terminal, its log a file
    "torch_2_13/colored/mlp_train.log": ([("joint", 31, 0), ("forward", 11, 3), ("backward", 19, 8)], 8),
    # two gloo ranks in one short-format log: two runs (one warning), each its own batch size
    "torch_2_13/short/two_ranks_train.log": ([("forward", 11, 3), ("backward", 19, 8)] * 2, 16),
    # dynamo's graph (graph_code) and post-grad graphs: drawn, no kernel linked to them
    "torch_2_13/short/mlp_train_graph_code.log": ([("other", 14, 0)], 3),
    "torch_2_13/short/mlp_train_post_grad.log": (
        [("forward", 11, 3), ("backward", 19, 8), ("other", 11, 0), ("other", 19, 0)],
        8,
    ),
    "torch_2_13/default/cond_train.log": ([("joint", 25, 0), ("forward", 12, 4), ("backward", 17, 4)], 9),
    "torch_2_13/short/cond_train.log": ([("joint", 25, 0), ("forward", 12, 4), ("backward", 17, 4)], 9),
    "torch_2_13/trace/cond_train_trace": ([("joint", 25, 0), ("forward", 12, 4), ("backward", 17, 4)], 9),
    "torch_2_9/default/cond_train.log": ([("joint", 25, 0), ("forward", 12, 4), ("backward", 17, 4)], 9),
    # dynamic=True: AOT traces a joint graph, then traces again (Joint graph 1) and compiles that one.
    "torch_2_13/default/dynamic_train.log": (
        [("joint", 61, 0), ("joint", 60, 0), ("forward", 27, 14), ("backward", 41, 22)],
        11,
    ),
    "torch_2_13/short/dynamic_train.log": (
        [("joint", 61, 0), ("joint", 60, 0), ("forward", 27, 14), ("backward", 41, 22)],
        11,
    ),
    "torch_2_9/default/dynamic_train.log": (
        [("joint", 61, 0), ("joint", 60, 0), ("forward", 27, 14), ("backward", 41, 22)],
        11,
    ),
    "torch_2_13/short/checkpoint_train.log": (
        [("joint", 53, 0), ("forward", 19, 8), ("backward", 42, 23)],
        15,
    ),
    "torch_2_13/short/custom_op_train.log": ([("joint", 31, 0), ("forward", 11, 3), ("backward", 22, 10)], 8),
    # graph 0: the part before the hook (no parameters: an inference graph); the hook's print breaks
    # the graph after block 0 (graph 1), then the lm head (graph 2) and the loss (graph 3).
    "torch_2_13/short/gpt2_graph_break_train.log": (
        [
            ("inference", 33, 17),
            ("joint", 240, 0),
            ("forward", 125, 67),
            ("backward", 150, 90),
            ("joint", 17, 0),
            ("forward", 7, 1),
            ("backward", 11, 2),
            ("joint", 48, 0),
            ("forward", 27, 19),
            ("backward", 33, 19),
        ],
        42,
    ),
    "torch_2_9/short/gpt2_graph_break_train.log": (
        [
            ("inference", 33, 17),
            ("joint", 244, 0),
            ("forward", 125, 67),
            ("backward", 150, 90),
            ("joint", 17, 0),
            ("forward", 7, 1),
            ("backward", 11, 2),
            ("joint", 50, 0),
            ("forward", 30, 21),
            ("backward", 22, 12),
        ],
        42,
    ),
    "torch_2_9/short/llama_train.log": (
        [("joint", 392, 0), ("forward", 168, 88), ("backward", 250, 123)],
        43,
    ),
    "torch_2_13/short/indexing_train.log": (
        [("joint", 66, 0), ("forward", 24, 13), ("backward", 49, 30)],
        11,
    ),
    "torch_2_9/default/indexing_train.log": (
        [("joint", 66, 0), ("forward", 24, 13), ("backward", 47, 28)],
        11,
    ),
    "torch_2_13/short/llama_inference_fullgraph.log": ([("inference", 155, 75)], 18),
    "torch_2_13/short/llama_train.log": (
        [("joint", 385, 0), ("forward", 167, 88), ("backward", 266, 135)],
        43,
    ),
    "torch_2_13/short/mutation_train.log": ([("joint", 86, 0), ("forward", 42, 26), ("backward", 47, 29)], 6),
    "torch_2_9/default/mutation_train.log": (
        [("joint", 86, 0), ("forward", 42, 26), ("backward", 47, 29)],
        6,
    ),
    "torch_2_13/short/optimizer_step.log": ([("inference", 129, 108)], 1),
    "torch_2_9/default/optimizer_step.log": ([("inference", 165, 144)], 1),
    "torch_2_9/default/max_autotune_train.log": (
        [("joint", 33, 0), ("forward", 11, 3), ("backward", 19, 8)],
        8,
    ),
}


@functools.cache
def model_of(relative: str) -> dict:
    return build_model(read_inductor_log(FIXTURES / relative, strict=True), relative)


def graph_of(model: dict, title: str) -> dict:
    (graph,) = [g for g in model["graphs"] if g["title"] == title]
    return graph


def node_of(graph: dict, name: str) -> dict:
    (node,) = [n for n in graph["nodes"] if n["name"] == name]
    return node


def kernel_named(model: dict, name: str) -> dict:
    (kernel,) = [k for k in model["kernels"] if k["name"] == name]
    return kernel


def test_every_real_program_fixture_is_listed():
    on_disk = {
        str(p.relative_to(FIXTURES))
        for folder in ("torch_2_13", "torch_2_9")
        for p in (FIXTURES / folder).glob("*/*")
        if p.name != ".pytorch_scripts_output"
    }
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("relative", sorted(EXPECTED))
def test_graphs_kernels_and_full_link_coverage(relative):
    model = model_of(relative)  # strict: every graph / output-code line read
    graphs, num_kernels = EXPECTED[relative]
    assert len(model["warnings"]) == (relative == "torch_2_13/short/two_ranks_train.log")  # a new run
    assert [
        (g["kind"], len(g["nodes"]), g["link_coverage"]["compute_nodes"]) for g in model["graphs"]
    ] == graphs
    assert model["summary"]["num_kernels"] == num_kernels
    for graph in model["graphs"]:
        assert (graph["module"] is None) == (graph["kind"] in ("joint", "other")), graph["title"]
        coverage = graph["link_coverage"]
        assert coverage["linked"] == coverage["compute_nodes"], (graph["title"], graph["unmapped_nodes"])
    # only the kernels of output code whose AOT graph is not in the log (graph_code) have no node
    graphless = {m["index"] for m in model["modules"] if m["graph"] is None}
    assert [k["id"] for k in model["kernels"] if not k["nodes"] and k["module"] not in graphless] == []
    assert bool(graphless) == relative.endswith("graph_code.log")


def test_graphs_that_are_not_aot_graphs_say_why_no_kernel_is_linked():
    for relative in ("torch_2_13/short/mlp_train_graph_code.log", "torch_2_13/short/mlp_train_post_grad.log"):
        others = [g for g in model_of(relative)["graphs"] if g["kind"] == "other"]
        assert others and all(g["dynamo_compile_id"] == "" for g in others)  # short format: not printed
        for graph in others:
            reasons = {n["unlinked_reason"] for n in graph["nodes"] if n["op"] == "call_function"}
            assert reasons == {NOT_AOT_GRAPH}, (relative, graph["title"])


@pytest.mark.parametrize(
    "relative",
    [
        "torch_2_13/short/cond_train.log",
        "torch_2_9/default/cond_train.log",
        "torch_2_13/trace/cond_train_trace",
    ],
)
def test_cond_branches_run_for_the_cond_node(relative):
    model = model_of(relative)
    forward = graph_of(model, "Forward graph 0")
    # `true_graph_0 = self.true_graph_0`: the subgraph, not a compute node
    assert node_of(forward, "true_graph_0")["op"] == "get_attr"
    branch_kernels = [(k.split(":")[1], evidence) for k, evidence in node_of(forward, "cond")["kernels"]]
    assert branch_kernels == [("cpp_fused_mul_sin_1", "subgraph"), ("cpp_fused_add_cos_2", "subgraph")]
    # `buf4 = buf3[0]` (buf3 = the branch's result) is the cond's getitem, the forward's output 0
    assert node_of(forward, "getitem")["unlinked_reason"].startswith("getitem")
    backward = graph_of(model, "Backward graph 0")
    assert [k.split(":")[1] for k, _ in node_of(backward, "cond_1")["kernels"]] == [
        "cpp_fused_cos_mul_0",
        "cpp_fused_mul_neg_sin_1",
    ]


def test_cond_subgraph_statements_follow_their_call():
    log = read_inductor_log(FIXTURES / "torch_2_13/short/cond_train.log")
    statements = [(s.function, s.code) for s in log.modules[0].statements]
    call_index = statements.index(("call", "buf3 = true_graph_0(true_graph_0_args)"))
    assert statements[call_index + 1][0] == "true_graph_0"
    assert ("true_graph_0", "cpp_fused_mul_sin_1(true_graph_0_arg0_1, true_graph_0_buf0)") in statements
    assert [c.target for c in log.modules[0].calls] == [
        "aten::addmm",
        "cpp_fused_gt_sum_0",
        "cpp_fused_mul_sin_1",
        "cpp_fused_add_cos_2",
    ]


@pytest.mark.parametrize(
    "relative", ["torch_2_13/short/gpt2_graph_break_train.log", "torch_2_9/short/gpt2_graph_break_train.log"]
)
def test_softmax_split_over_two_cpp_kernels(relative):
    # GPT-2's _safe_softmax: kernel _2 writes amax, any and exp (buf9, buf12, buf10); kernel _3 reads
    # exp and any and computes the sum, the division and the rest (dropout, the value copy).
    model = model_of(relative)
    first = kernel_named(model, "cpp_fused__safe_softmax_add_scalar_tensor_view_where_2")
    assert sorted(name for name, _ in first["nodes"]) == [
        "add_2", "amax", "any_1", "eq", "exp", "full_default", "full_default_1", "logical_not",
        "sub_1", "view_7", "where",
    ]  # fmt: skip
    second = kernel_named(model, "cpp_fused__safe_softmax_clone_native_dropout_split_transpose_view_3")
    second_nodes = {name for name, _ in second["nodes"]}
    assert {"sum_1", "div", "logical_not_1", "where_1", "gt", "mul_4"} <= second_nodes
    assert not second_nodes & {name for name, _ in first["nodes"]}
    # the dropout seeds come from the aten.randint.low_out fallback, not from kernel _3
    forward = graph_of(model, "Forward graph 1")
    (seeds_kernel,) = node_of(forward, "inductor_seeds_default")["kernels"]
    assert seeds_kernel[1] == "op"
    assert [k for k in model["kernels"] if k["id"] == seeds_kernel[0]][0]["name"] == "aten.randint.low_out"


@pytest.mark.parametrize("relative", ["torch_2_13/short/llama_train.log", "torch_2_9/short/llama_train.log"])
def test_layout_copy_for_the_attention_backward_fallback(relative):
    # Llama backward: cpp_fused_..._4(view_10, mm_2, getitem_1, buf21, buf22, buf23) copies three
    # backward inputs into the strides _scaled_dot_product_flash_attention_for_cpu_backward needs.
    model = model_of(relative)
    name = (
        "cpp_fused__scaled_dot_product_flash_attention_for_cpu_backward"
        "__unsafe_view_expand_transpose_unsqueeze_view_4"
    )
    assert kernel_named(model, name)["nodes"] == [
        ["view_10", "copy"],
        ["mm_2", "copy"],
        ["getitem_1", "copy"],
    ]
    backward = graph_of(model, "Backward graph 0")
    assert node_of(backward, "view_10")["op"] == "placeholder"
    (attention,) = node_of(backward, "_scaled_dot_product_flash_attention_for_cpu_backward")["kernels"]
    assert attention[1] == "op"


def test_attention_mask_keyword_argument_links_the_mask_kernel():
    # `..._flash_attention_for_cpu.default(buf17, buf18, buf19, attn_mask=buf20, scale=0.25)`: buf20 is
    # the graph's `where` (attn_mask = where), computed by the big fused kernel _4.
    model = model_of("torch_2_13/short/llama_inference_fullgraph.log")
    graph = model["graphs"][0]
    (mask_kernel,) = node_of(graph, "where")["kernels"]
    assert mask_kernel[0].startswith("0:cpp_fused__scaled_dot_product_flash_attention_for_cpu__to_copy_")
    assert mask_kernel[0].endswith("_where_4") and mask_kernel[1] == "dataflow"
    assert node_of(graph, "bitwise_and_1")["kernels"] == [[mask_kernel[0], "dataflow"]]


@pytest.mark.parametrize(
    "relative", ["torch_2_13/short/optimizer_step.log", "torch_2_9/default/optimizer_step.log"]
)
def test_optimizer_step_mutations_are_the_one_kernel(relative):
    # AdamW: the graph returns (); every result is a copy_ into a parameter / state input.
    model = model_of(relative)
    graph = model["graphs"][0]
    assert graph["outputs"] == []
    (kernel,) = model["kernels"]
    copies = [n["name"] for n in graph["nodes"] if n["target"] == "aten.copy_.default"]
    assert len(copies) == 16  # 4 parameters x (param, exp_avg, exp_avg_sq, step)
    for name in copies:
        assert node_of(graph, name)["kernels"] == [[kernel["id"], "dataflow"]], name


def test_mutated_inputs_batch_norm_stats_and_index_put():
    model = model_of("torch_2_13/short/mutation_train.log")
    forward = graph_of(model, "Forward graph 0")
    # counter.add_(1): `cpp_fused_add_copy__0(primals_1, buf0, primals_1)` writes primals_1 back
    assert node_of(forward, "copy_")["args"] == ["primals_1", "add"]
    assert node_of(forward, "copy_")["kernels"] == [["0:cpp_fused_add_copy__0", "dataflow"]]
    batch_norm = (
        "0:cpp_fused__native_batch_norm_legit_functional_add_copy_copy__mul_relu_slice_threshold_backward_1"
    )
    for name in (
        "copy__1",
        "copy__2",
        "copy__3",
        "copy",
    ):  # num_batches_tracked, running mean / var, index_put
        assert node_of(forward, name)["kernels"] == [[batch_norm, "dataflow"]], name


@pytest.mark.parametrize(
    "relative", ["torch_2_13/short/indexing_train.log", "torch_2_9/default/indexing_train.log"]
)
def test_scatter_add_runs_as_the_in_place_scatter_reduce_fallback(relative):
    model = model_of(relative)
    forward = graph_of(model, "Forward graph 0")
    (scatter,) = node_of(forward, "scatter_add")["kernels"]
    assert scatter[1] == "op"
    assert [k["name"] for k in model["kernels"] if k["id"] == scatter[0]] == ["aten.scatter_reduce_.two"]
    # its inputs (the zeros, the index, the gathered values) come from the kernel before it
    gather_kernel = "0:cpp_fused_gather_remainder_scatter_add_view_zeros_1"
    for name in ("full_default", "remainder", "gather"):
        assert node_of(forward, name)["kernels"] == [[gather_kernel, "dataflow"]], name
    (var_mean,) = node_of(forward, "var_mean")["kernels"]
    assert var_mean == ["0:cpp_fused_add_div_sqrt_sub_var_mean_view_2", "dataflow"]


def test_max_autotune_bias_addmm_extern_choice():
    model = model_of("torch_2_9/default/max_autotune_train.log")
    forward = graph_of(model, "Forward graph 0")
    (addmm,) = node_of(forward, "addmm")["kernels"]
    assert addmm[1] == "op"
    assert [k["name"] for k in model["kernels"] if k["id"] == addmm[0]] == ["extern_kernels.bias_addmm"]
    log = read_inductor_log(FIXTURES / "torch_2_9/default/max_autotune_train.log")
    assert [c.target for c in log.modules[0].calls if c.kind == "extern"] == ["aten::addmm", "aten::addmm"]


def test_dynamic_shapes_symbols_in_annotations():
    model = model_of("torch_2_13/short/dynamic_train.log")
    forward = graph_of(model, "Forward graph 1")
    assert node_of(forward, "primals_3")["dtype"] == "Sym(s33)"
    assert (node_of(forward, "addmm")["dtype"], node_of(forward, "addmm")["shape"]) == ("f32", "s33, 64")
    memory = forward["saved_memory"]
    # sizes with a symbol (and the saved SymInt primals_3 itself) have no byte count; the two
    # weights saved for backward do
    assert memory["unknown"] == ["primals_4", "getitem_1", "rsqrt", "add_1", "addmm", "mul_12", "primals_3"]
    assert memory["total_bytes"] == (64 * 64 + 16 * 64) * 4


def test_checkpointed_block_is_recomputed_in_the_backward():
    model = model_of("torch_2_13/short/checkpoint_train.log")
    forward, backward = graph_of(model, "Forward graph 0"), graph_of(model, "Backward graph 0")
    assert forward["saved_memory"]["activation_bytes"] == 0  # only inputs are saved
    assert all(n["op"] == "placeholder" for n in forward["nodes"] if n["name"] in forward["saved"])
    for name in ("addmm", "addmm_1"):  # the block's two linears, run again in the backward
        ((_, evidence),) = node_of(backward, name)["kernels"]
        assert evidence == "op"
    assert node_of(backward, "erf")["kernels"] == [["1:cpp_fused_gelu_gelu_backward_0", "dataflow"]]


def test_custom_op_is_an_extern_fallback_call():
    model = model_of("torch_2_13/short/custom_op_train.log")
    forward = graph_of(model, "Forward graph 0")
    (custom,) = node_of(forward, "scaled_tanh")["kernels"]
    assert custom[1] == "op"
    assert [k["kind"] for k in model["kernels"] if k["id"] == custom[0]] == ["fallback"]


def test_fixture_readme_commands_name_the_files_of_each_folder():
    """The `--only` list of each fixtures/README.md command is the folder's content."""
    readme = (FIXTURES / "README.md").read_text()
    commands = [
        dict(
            word.removeprefix("--").split("=", 1)
            for word in line.split()
            if word.startswith("--") and "=" in word
        )
        for line in readme.splitlines()
        if "graph_viz.make_sample_logs" in line
    ]  # the README writes every flag --flag=value
    checked = set()
    for flags in commands:
        folder = flags["output_dir"].removeprefix("graph_viz/fixtures/")
        if not folder.startswith(("torch_2_13/", "torch_2_9/")):
            continue
        suffix = "_trace" if flags["log_format"] == "trace" else ".log"
        names = {f"{name}{suffix}" for name in flags["only"].split(",")}
        on_disk = {p.name for p in (FIXTURES / folder).iterdir() if p.name != ".pytorch_scripts_output"}
        assert names == on_disk, folder
        checked.add(folder)
    assert checked == {
        "torch_2_13/short",
        "torch_2_13/default",
        "torch_2_13/trace",
        "torch_2_9/default",
        "torch_2_9/short",
    }


def test_hostile_recursive_and_fanning_out_subgraph_calls_stay_bounded():
    """A hostile module whose subgraph functions call themselves and each other twice over."""
    import time

    from pytorch_scripts_common.inductor_log import parse_inductor_log_text

    functions = []
    for i in range(20):
        calls = "".join(f"    buf{j} = f{k}(f{k}_args)\n" for j, k in enumerate((i, i + 1, i + 1, 0)))
        functions.append(f"def f{i}(args):\n{calls}    cpp_fused_k_0(buf0)\n    return (buf0, )\n")
    text = (
        "TRACED GRAPH\n ===== Forward graph 0 =====\n class GraphModule(torch.nn.Module):\n"
        '    def forward(self, x: "f32[4][1]cpu"):\n'
        "        f0 = self.f0\n"
        "        cond = torch.ops.higher_order.cond(x, f0, f0, (x,))\n"
        "        return (cond,)\n"
        "Output code:\n# AOT ID: ['0_forward']\n"
        "cpp_fused_k_0 = async_compile.cpp_pybinding(['float*'], r'''\n"
        "void kernel(float* out_ptr0) {}\n''')\n"
        + "".join(functions)
        + "def call(args):\n    x, = args\n    buf9 = f0(f0_args)\n    return (buf9, )\n"
    )
    start = time.perf_counter()
    model = build_model(parse_inductor_log_text(text), "hostile")
    assert time.perf_counter() - start < 5  # unbounded, this fans out 2**20 times
    (kernel,) = [k for k in model["kernels"] if k["name"] == "cpp_fused_k_0"]
    assert kernel["nodes"] == [["cond", "subgraph"]]

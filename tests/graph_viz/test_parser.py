"""graph_viz parser + mapping on every fixture: exact counts and hand-checked node<->kernel links."""

import pathlib

import pytest

from graph_viz.mapping import op_packet
from graph_viz.model import build_model, chains, layout, run_labels
from pytorch_scripts_common.inductor_log import (
    LogParseError,
    names_in,
    parse_inductor_log_text,
    read_inductor_log,
    split_args,
)
from pytorch_scripts_common.inductor_log.structures import Run

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "graph_viz" / "fixtures"
CPU_LOGS = FIXTURES / "logs"
TRITON_LOG = FIXTURES / "triton_handwritten" / "mlp_train_triton_cuda.log"


def model_of(path: pathlib.Path) -> dict:
    return build_model(read_inductor_log(path), path.name)


def graph_shape(model: dict) -> list[tuple[str, str, str, int]]:
    return [(g["title"], g["kind"], g["compile_id"], len(g["nodes"])) for g in model["graphs"]]


def kernel_nodes(model: dict, kernel_id: str) -> list[str]:
    (kernel,) = [k for k in model["kernels"] if k["id"] == kernel_id]
    return sorted(name for name, _ in kernel["nodes"])


def node_kernels(model: dict, graph_index: int, name: str) -> list[list[str]]:
    (node,) = [n for n in model["graphs"][graph_index]["nodes"] if n["name"] == name]
    return node["kernels"]


def test_mlp_train_cold_graphs_kernels_and_links():
    model = model_of(CPU_LOGS / "mlp_train.log")
    # Node counts include placeholders and the output node: forward = 5 inputs + 5 ops + output.
    assert graph_shape(model) == [
        ("Joint graph 0", "joint", "0", 31),
        ("Forward graph 0", "forward", "0", 11),
        ("Backward graph 0", "backward", "0", 19),
    ]
    assert [m["aot_id"] for m in model["modules"]] == ["0_forward", "0_backward"]
    assert [k["name"] for k in model["kernels"]] == [
        "cpp_fused_relu_0",
        "extern_kernels.addmm",
        "extern_kernels.addmm",
        "cpp_fused_sum_threshold_backward_0",
        "cpp_fused_sum_1",
        "extern_kernels.mm",
        "extern_kernels.mm",
        "extern_kernels.mm",
    ]
    # Hand-checked against the call() bodies in the log:
    # cpp_fused_relu_0(buf1) runs in place on the addmm output -> relu (returned as output 3).
    assert kernel_nodes(model, "0:cpp_fused_relu_0") == ["relu"]
    assert node_kernels(model, 1, "addmm_1")[0][1] == "op"
    # cpp_fused_sum_threshold_backward_0(buf3, tangents_1, buf0, buf2): le/where in place, sum_1 -> buf2.
    assert kernel_nodes(model, "1:cpp_fused_sum_threshold_backward_0") == [
        "full_default",
        "le",
        "sum_1",
        "view",
        "where",
    ]
    assert kernel_nodes(model, "1:cpp_fused_sum_1") == ["sum_2", "view_1"]
    assert model["graphs"][1]["saved"] == ["primals_3", "primals_4", "relu"]
    assert model["graphs"][2]["saved"] == ["primals_3", "primals_4", "relu"]
    assert model["graphs"][0]["related"] == {"forward": 1, "backward": 2}
    # Partition of the joint graph by name; relu is computed in forward and saved for backward.
    joint_side = {n["name"]: (n["side"], n["saved"]) for n in model["graphs"][0]["nodes"]}
    assert joint_side["addmm"] == ("forward", False) and joint_side["mm"] == ("backward", False)
    assert joint_side["relu"] == ("both", True) and joint_side["alias"] == ("", False)
    assert model["summary"]["num_unmapped_nodes"] == 0 and model["summary"]["kernels_without_nodes"] == []
    joint_nodes = {n["name"]: n for n in model["graphs"][0]["nodes"]}
    assert joint_nodes["addmm"]["shape"] == "16, 64" and joint_nodes["addmm"]["stride"] == "64, 1"
    assert joint_nodes["le"]["dtype"] == "b8" and joint_nodes["addmm"]["target"] == "aten.addmm.default"
    assert joint_nodes["addmm"]["args"] == ["primals_2", "primals_3", "permute"]
    assert model["graphs"][0]["outputs"] == ["addmm_1", "permute_8", "view_1", "None", "permute_5", "view"]


def test_mlp_train_without_joint_graph():
    model = model_of(CPU_LOGS / "mlp_train_no_joint.log")
    assert graph_shape(model) == [
        ("Forward graph 0", "forward", "0", 11),
        ("Backward graph 0", "backward", "0", 19),
    ]
    assert len(model["kernels"]) == 8


def test_cache_hit_form_gets_compile_ids_from_its_modules():
    model = model_of(CPU_LOGS / "mlp_train_cache_hit.log")
    assert graph_shape(model) == [
        ("Joint graph 0", "joint", "0", 31),
        ("Forward graph 0", "forward", "0", 11),
        ("Backward graph 0", "backward", "0", 19),
        ("Joint graph (from cache)", "joint", "0", 31),
        ("Forward graph (from cache)", "forward", "0", 11),
        ("Backward graph (from cache)", "backward", "0", 19),
    ]
    assert [g["module"] for g in model["graphs"]] == [None, 0, 1, None, 2, 3]
    cold, cached = model["graphs"][1], model["graphs"][4]
    assert [n["name"] for n in cold["nodes"]] == [n["name"] for n in cached["nodes"]]
    assert cached["outputs"] == ["addmm_1", "primals_3", "primals_4", "relu"]
    assert model["graphs"][3]["outputs"] == ["addmm_1", "permute_8", "view_1", "None", "permute_5", "view"]
    assert model["graphs"][4]["related"] == {"joint": 3, "backward": 5}
    assert kernel_nodes(model, "3:cpp_fused_sum_1") == ["sum_2", "view_1"]
    assert len(model["kernels"]) == 16
    # The marker line printed between the two compiles is user output; the second compile (after
    # torch._dynamo.reset()) starts a second run with the same AOT id 0.
    assert model["summary"]["skipped_lines"] == {"other log records": 1, "user output": 1}
    assert model["warnings"] == [
        [
            399,
            "Joint graph (from cache) (AOT id 0) appears again (first at line 2): a new run in the same log "
            "(another program, or torch._dynamo.reset()); graphs and kernels are related only within a run",
        ]
    ]
    assert [g["run"] for g in model["graphs"]] == [0, 0, 0, 1, 1, 1]


def test_graph_break_order_fw0_fw1_bw1_bw0():
    model = model_of(CPU_LOGS / "graph_break_train.log")
    assert [(g["kind"], g["compile_id"], len(g["nodes"])) for g in model["graphs"]] == [
        ("joint", "0", 19),
        ("forward", "0", 8),
        ("backward", "0", 10),
        ("joint", "1", 18),
        ("forward", "1", 7),
        ("backward", "1", 14),
    ]
    # Backward graphs compile lazily, the later graph first.
    assert [m["aot_id"] for m in model["modules"]] == ["0_forward", "1_forward", "1_backward", "0_backward"]
    assert [m["graph"] for m in model["modules"]] == [1, 4, 5, 2]
    # Same kernel name in two backward modules: keyed by module.
    assert kernel_nodes(model, "2:cpp_fused_sum_1") == ["sum_1", "view"]
    assert kernel_nodes(model, "3:cpp_fused_sum_1") == ["sum_1", "view"]
    assert kernel_nodes(model, "1:cpp_fused_sin_0") == ["sin"]
    assert model["warnings"] == []
    assert model["summary"]["skipped_lines"] == {
        "other log records": 2,
        "user output": 1,  # the program's print between the graphs
        "warnings and tracebacks": 2,
    }


def test_inference_graph():
    model = model_of(CPU_LOGS / "mlp_inference.log")
    assert graph_shape(model) == [("Forward graph 0", "inference", "0", 11)]
    assert model["modules"][0]["aot_id"] == "0_inference"
    assert kernel_nodes(model, "0:cpp_fused_relu_0") == ["relu"]
    assert model["graphs"][0]["saved"] == []


def test_transformer_block_has_getitem_source_lines_and_fallback_kernels():
    model = model_of(CPU_LOGS / "transformer_train.log")
    assert graph_shape(model) == [
        ("Joint graph 0", "joint", "0", 197),
        ("Forward graph 0", "forward", "0", 71),
        ("Backward graph 0", "backward", "0", 110),
    ]
    assert len(model["kernels"]) == 26
    forward = {n["name"]: n for n in model["graphs"][1]["nodes"]}
    assert forward["getitem"]["op"] == "getitem" and forward["getitem"]["inputs"] == ["var_mean"]
    assert forward["var_mean"]["shape"] == ""  # multi-output nodes carry no annotation
    assert "make_sample_logs.py" in forward["var_mean"]["source"]
    fallback = [k for k in model["kernels"] if k["kind"] == "fallback"]
    assert [k["name"] for k in fallback] == [
        "torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default",
        "torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default",
    ]
    assert kernel_nodes(model, "0:cpp_fused_native_layer_norm_0") == [
        "add", "add_1", "getitem", "getitem_1", "mul", "mul_1", "rsqrt", "sub", "var_mean", "view",
    ]  # fmt: skip
    assert kernel_nodes(model, fallback[0]["id"]) == ["_scaled_dot_product_flash_attention_for_cpu_default"]
    # One kernel launched three times, each writing one slice of buf24 through `# alias` views
    # (buf21/22/23 = reinterpret_tensor(buf24, ...)); buf24 feeds mm as `cat`.
    (cat_kernel,) = [
        k for k in model["kernels"] if k["name"] == "cpp_fused__unsafe_view_cat_transpose_view_4"
    ]
    assert len(cat_kernel["launch_lines"]) == 3
    assert kernel_nodes(model, cat_kernel["id"]) == [
        "cat", "clone_5", "clone_6", "permute_default_3", "permute_default_4", "permute_default_5",
        "view_34", "view_35", "view_36",
    ]  # fmt: skip
    assert model["summary"]["num_unmapped_nodes"] == 0 and model["summary"]["kernels_without_nodes"] == []


def test_handwritten_triton_log():
    model = model_of(TRITON_LOG)
    assert graph_shape(model) == [
        ("Forward graph 0", "forward", "0", 11),
        ("Backward graph 0", "backward", "0", 19),
    ]
    kinds = [(k["name"], k["kind"]) for k in model["kernels"]]
    assert kinds == [
        ("triton_poi_fused_addmm_relu_0", "triton"),
        ("extern_kernels.mm", "extern"),
        ("extern_kernels.addmm", "extern"),
        ("triton_poi_fused_threshold_backward_0", "triton"),
        ("triton_per_fused_sum_1", "triton"),
        ("triton_per_fused_sum_2", "triton"),
        ("extern_kernels.mm", "extern"),
        ("extern_kernels.mm", "extern"),
        ("extern_kernels.mm", "extern"),
    ]
    triton = {k["name"]: k for k in model["kernels"]}
    assert triton["triton_poi_fused_addmm_relu_0"]["params"] == ["in_out_ptr0", "in_ptr0", "xnumel", "XBLOCK"]
    assert triton["triton_poi_fused_addmm_relu_0"]["kernel_path"].endswith(".py")
    assert triton["triton_poi_fused_addmm_relu_0"]["aten_mapping"] == {
        "input_1": ["add_tensor"],
        "input_2": ["relu"],
    }
    # From the "Source node to ATen node mapping" comments:
    assert ["relu", "comment"] in triton["triton_poi_fused_addmm_relu_0"]["nodes"]
    assert kernel_nodes(model, "1:triton_poi_fused_threshold_backward_0") == ["full_default", "le", "where"]
    # sum_2 from the comment, view_1 from data flow (buf4 is returned as output 1 = view_1).
    assert triton["triton_per_fused_sum_1"]["nodes"] == [["sum_2", "comment"], ["view_1", "dataflow"]]
    assert node_kernels(model, 0, "addmm_1") == [[model["kernels"][2]["id"], "op"]]
    # On CUDA addmm is split into an mm extern call + the bias add fused into the Triton kernel: both
    # compute the addmm node, the extern first.
    assert node_kernels(model, 0, "addmm") == [
        [model["kernels"][1]["id"], "op"],
        ["0:triton_poi_fused_addmm_relu_0", "dataflow"],
    ]
    assert model["summary"]["kernels_without_nodes"] == [] and model["summary"]["num_unmapped_nodes"] == 0
    assert model["summary"]["num_warnings"] == 0
    # 3 label lines + a user print; a 2-line Python warning; the fw_metadata record.
    assert model["summary"]["skipped_lines"] == {
        "user output": 4,
        "warnings and tracebacks": 2,
        "other log records": 1,
    }


def test_strict_mode_fails_only_on_graph_or_code_text_it_cannot_read():
    text = (CPU_LOGS / "mlp_train.log").read_text()
    assert parse_inductor_log_text(text, strict=True).num_warnings == 0  # warnings and prints are skipped
    lines = text.splitlines()
    relu = next(i for i, line in enumerate(lines) if line.startswith("        relu: "))
    lines[relu] = "        relu: f32 = = torch.ops.aten.relu.default(addmm)"
    with pytest.raises(LogParseError, match=f"line {relu + 1}: Joint graph 0: unreadable graph line"):
        parse_inductor_log_text("\n".join(lines), strict=True)
    stray = ["user output", '        mm: "f32[4][1]cpu" = torch.ops.aten.mm.default(a, b)', "more output"]
    with pytest.raises(LogParseError, match="line 2: graph or output-code text outside any graph or module"):
        parse_inductor_log_text("\n".join(stray), strict=True)


def test_truncated_graph_and_kernel_warn_with_line_numbers():
    lines = (CPU_LOGS / "mlp_train.log").read_text().splitlines()
    parsed = parse_inductor_log_text("\n".join(lines[:20]))  # cut inside the joint graph
    assert parsed.graphs[0].complete is False
    assert (4, "Joint graph 0: graph text ended before its return statement") in parsed.warnings
    cut = next(i for i, line in enumerate(lines) if "cpp_fused_relu_0 = async_compile" in line) + 5
    parsed = parse_inductor_log_text("\n".join(lines[:cut]))
    messages = [m for _, m in parsed.warnings]
    assert "kernel 'cpp_fused_relu_0': source not terminated by ''' (truncated log?); kept" in messages
    assert "output code '0_forward' has no 'def call(...)' body (truncated log?)" in messages


def test_long_format_prefixes_and_fw_metadata_are_not_warnings():
    parsed = read_inductor_log(TRITON_LOG)
    assert all(line not in (6, 7) for line, _ in parsed.warnings)  # fw_metadata + TRACED GRAPH records


def test_split_args_and_names():
    assert split_args("a, [1, 2], f(b, c), d = 'x,y'") == ["a", "[1, 2]", "f(b, c)", "d = 'x,y'"]
    assert names_in("le, full_default, mm") == ["le", "full_default", "mm"]
    assert names_in("[], 0.0, dtype = torch.float32, device = device(type='cpu'), pin_memory = False") == [
        "type"
    ]
    assert op_packet("extern_kernels.addmm") == "addmm"
    assert op_packet("aten.sum.dim_IntList") == "sum"
    assert op_packet("torch.ops.aten.mm.default") == "mm"


def test_layout_layers_follow_data_flow_and_chains_are_linear():
    parsed = read_inductor_log(CPU_LOGS / "mlp_train.log")
    forward = parsed.graphs[1]
    xs, ys, levels = layout(forward)
    level = {n.name: levels[i] for i, n in enumerate(forward.nodes)}
    for node in forward.nodes:
        for name in node.inputs:
            assert level[name] < level[node.name], (name, node.name)
    assert len(set(zip(xs, ys, strict=True))) == len(xs)  # no two nodes on the same spot
    # Saved tensors sit just above their first consumer, not in the top row.
    backward = parsed.graphs[2]
    _, _, backward_levels = layout(backward)
    level = {n.name: backward_levels[i] for i, n in enumerate(backward.nodes)}
    assert level["primals_3"] == level["mm_2"] - 1 and level["primals_3"] > 0
    joint = parsed.graphs[0]
    chain = chains(joint)
    names = [n.name for n in joint.nodes]
    # mm_1 -> permute_4 -> permute_5: each has one producer with one consumer: a chain of 3.
    assert (
        chain[names.index("mm_1")] == chain[names.index("permute_4")] == chain[names.index("permute_5")] >= 0
    )
    # sum_1 -> view is only 2 long; where has three producers.
    assert chain[names.index("view")] == chain[names.index("where")] == -1


# The user-program fixtures (torch_2_13/, torch_2_9/: inference graphs inside training programs, an
# optimizer step) have their exact graph kinds and link coverage in test_real_programs.py.
TRAINING_FIXTURES = sorted(
    p
    for folder in ("logs", "torch_2_10", "triton_handwritten")
    for p in [*(FIXTURES / folder).rglob("*.log"), *(FIXTURES / folder).rglob("*_trace")]
    if "inference" not in p.name and not p.parent.name.endswith("_trace")
)


@pytest.mark.parametrize("path", TRAINING_FIXTURES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_training_fixture_links_every_compute_node_and_every_kernel(path):
    model = model_of(path)
    graphs_with_code = [g for g in model["graphs"] if g["module"] is not None]
    assert {g["kind"] for g in graphs_with_code} == {"forward", "backward"}
    for graph in graphs_with_code:
        coverage = graph["link_coverage"]
        assert coverage["compute_nodes"] > 0, graph["title"]
        assert coverage["linked"] == coverage["compute_nodes"], graph["title"]
    assert model["summary"]["num_unmapped_nodes"] == 0
    # Kernels of output code whose graph the log does not print (torch 2.10's cache hit) have none.
    graphless = {m["index"] for m in model["modules"] if m["graph"] is None}
    unlinked = [k["id"] for k in model["kernels"] if not k["nodes"] and k["module"] not in graphless]
    assert unlinked == []


def test_training_fixture_list_covers_every_form():
    names = {str(p.relative_to(FIXTURES)) for p in TRAINING_FIXTURES}
    assert {
        "logs/transformer_train.log",
        "torch_2_10/default/transformer_train.log",
        "torch_2_10/short/mlp_train_cache_hit.log",
        "torch_2_10/trace/graph_break_train_trace",
        "triton_handwritten/fp8_linear_train_triton_older_torch.log",
        "triton_handwritten/two_runs_fused_addmm_triton.log",
    } <= names
    assert len(names) == 16


FP8_LOG = FIXTURES / "triton_handwritten" / "fp8_linear_train_triton_older_torch.log"
TWO_RUNS_LOG = FIXTURES / "triton_handwritten" / "two_runs_fused_addmm_triton.log"


def test_backward_kernels_named_only_by_graph_fragment_lines():
    model = model_of(FP8_LOG)
    assert kernel_nodes(model, "1:triton_poi_fused_threshold_backward_0") == ["full_default", "le", "where"]
    assert kernel_nodes(model, "1:triton_per_fused__to_copy_abs_amax_clamp_div_1") == [
        "abs_2", "amax_1", "clamp_min_1", "convert_element_type_3", "div_2",
    ]  # fmt: skip
    backward = model["graphs"][1]
    assert all(
        evidence == "fragment"
        for n in backward["nodes"]
        for _, evidence in n["kernels"]
        if n["name"] == "where"
    )


def test_scaled_mm_extern_aligns_four_tensor_arguments_with_seven_node_arguments():
    model = model_of(FP8_LOG)
    forward, backward = model["graphs"]
    (scaled_mm,) = [n for n in forward["nodes"] if n["name"] == "_scaled_mm"]
    (scaled_mm_1,) = [n for n in backward["nodes"] if n["name"] == "_scaled_mm_1"]
    assert scaled_mm_1["kernels"][0][1] == "op" and scaled_mm_1["kernels"][0][0].startswith("1:L")
    # The aligned arguments resolve the extern's inputs: the fp8 cast kernel's output is
    # convert_element_type_2, so data flow links its fused region down to the inputs.
    assert kernel_nodes(model, "0:triton_poi_fused__to_copy_div_1") == [
        "convert_element_type_1", "convert_element_type_2", "div_1",
    ]  # fmt: skip
    assert scaled_mm["kernels"][0][1] == "op"


def test_extern_outranks_a_pointwise_kernel_comment_that_over_reports_its_node():
    model = model_of(FP8_LOG)
    (scaled_mm,) = [n for n in model["graphs"][0]["nodes"] if n["name"] == "_scaled_mm"]
    extern = next(
        k["id"] for k in model["kernels"] if k["name"] == "extern_kernels._scaled_mm" and k["module"] == 0
    )
    assert scaled_mm["kernels"] == [[extern, "op"], ["0:triton_poi_fused__scaled_mm_relu_2", "comment"]]


def test_deeper_indented_file_lines_give_every_node_a_source():
    model = model_of(FP8_LOG)
    for graph in model["graphs"]:
        for node in graph["nodes"]:
            if node["op"] == "call_function":
                assert node["source"].startswith("File: /home/user/fp8_linear.py:"), node["name"]


def test_fused_addmm_extern_covers_mm_and_add():
    model = model_of(TWO_RUNS_LOG)
    (addmm,) = [k for k in model["kernels"] if k["name"] == "extern_kernels.addmm"]
    assert addmm["nodes"] == [["mm", "op"], ["add", "op"]]
    assert kernel_nodes(model, "0:triton_poi_fused_relu_0") == ["relu"]


def test_two_runs_with_the_same_compile_id_are_not_cross_linked():
    model = model_of(TWO_RUNS_LOG)
    assert [(g["title"], g["run"]) for g in model["graphs"]] == [
        ("Forward graph 0", 0),
        ("Backward graph 0", 0),
        ("Forward graph 0", 1),
        ("Backward graph 0", 1),
    ]
    assert [g["related"] for g in model["graphs"]] == [
        {"backward": 1},
        {"forward": 0},
        {"backward": 3},
        {"forward": 2},
    ]
    assert model["graphs"][0]["saved"] == ["relu", "primals_3"]
    assert model["graphs"][2]["saved"] == ["tanh", "primals_2"]
    assert [m["graph"] for m in model["modules"]] == [0, 1, 2, 3]
    assert [line for line, _ in model["warnings"]] == [236]


def test_unlinked_reasons():
    model = model_of(CPU_LOGS / "mlp_train.log")
    joint, forward, _ = model["graphs"]
    reasons = {n["name"]: n["unlinked_reason"] for n in forward["nodes"]}
    assert reasons["primals_1"] == "graph input" and reasons["output"] == "graph output"
    assert reasons["permute"].startswith("view: ") and reasons["relu"] == ""
    joint_reasons = {n["name"]: n["unlinked_reason"] for n in joint["nodes"]}
    assert joint_reasons["alias"].startswith("joint graph: ")
    text = (CPU_LOGS / "mlp_train.log").read_text()
    graphs_only = build_model(parse_inductor_log_text(text[: text.index("Output code:")]), "graphs only")
    (relu,) = [n for n in graphs_only["graphs"][1]["nodes"] if n["name"] == "relu"]
    assert relu["unlinked_reason"] == "no output code for this graph in the log"


def two_rank_log() -> str:
    """torch 2.10's default-format mlp_train log as two torchrun ranks print it: rank 1 first."""
    lines = (FIXTURES / "torch_2_10" / "default" / "mlp_train.log").read_text().splitlines(keepends=True)
    return "".join(f"[rank1]:{line}" for line in lines) + "".join(f"[rank0]:{line}" for line in lines)


def test_graphs_of_several_ranks_name_their_rank_and_dynamo_compile_id():
    model = build_model(parse_inductor_log_text(two_rank_log()), "ranks.log")
    titles = ["Joint graph 0", "Forward graph 0", "Backward graph 0"]
    assert [(g["title"], g["run_label"], g["dynamo_compile_id"]) for g in model["graphs"]] == [
        *[(title, "rank 1", "0/0") for title in titles],
        *[(title, "rank 0", "0/0") for title in titles],
    ]
    # a log of one run needs no label; recompiles and graph breaks keep dynamo's frame/recompile id
    single = model_of(FIXTURES / "torch_2_13" / "default" / "dynamic_train.log")
    assert {g["run_label"] for g in single["graphs"]} == {""}
    assert [g["dynamo_compile_id"] for g in single["graphs"]] == ["0/0", "0/0_1", "0/0_1", "0/0_1"]


def test_run_labels_fall_back_to_the_run_number():
    runs = [Run(0, "pid 7", 1), Run(1, "pid 7", 50), Run(2, "pid 8", 90), Run(3, "", 99)]
    assert run_labels(runs) == ["run 1 (pid 7)", "run 2 (pid 7)", "pid 8", "run 4"]
    assert run_labels(runs[:1]) == [""]

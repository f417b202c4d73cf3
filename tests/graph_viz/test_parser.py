"""graph_viz parser + mapping on every fixture: exact counts and hand-checked node<->kernel links."""

import pathlib

import pytest

from graph_viz.mapping import op_packet
from graph_viz.model import build_model, chains, layout
from graph_viz.parser import LogParseError, names_in, parse_log_file, parse_log_text, split_args

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "graph_viz" / "fixtures"
CPU_LOGS = FIXTURES / "logs"
TRITON_LOG = FIXTURES / "triton_handwritten" / "mlp_train_triton_cuda.log"


def model_of(path: pathlib.Path) -> dict:
    return build_model(parse_log_file(str(path)), path.name)


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
    # The marker line printed between the two compiles is the only unknown line.
    assert [message for _, message in model["warnings"]] == [
        "skipped unrecognised line: 'graph_viz sample: second compile (cache hit expected)'"
    ]


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
    assert (178, "skipped unrecognised line: 'user print between graphs'") in [
        tuple(w) for w in model["warnings"]
    ]


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
    # On CUDA addmm is split into mm + a fused bias add; the mm extern call matches no graph node.
    assert model["summary"]["kernels_without_nodes"] == [model["kernels"][1]["id"]]
    assert model["summary"]["num_warnings"] == 6  # 3 label lines, a 2-line warning, a user print


def test_strict_mode_turns_warnings_into_errors():
    text = (CPU_LOGS / "mlp_train.log").read_text()
    with pytest.raises(LogParseError, match="line 1: skipped unrecognised line"):
        parse_log_text(text, strict=True)
    clean = "\n".join(text.splitlines()[2:])  # without the two UserWarning lines
    assert parse_log_text(clean, strict=True).num_warnings == 0


def test_truncated_graph_and_kernel_warn_with_line_numbers():
    lines = (CPU_LOGS / "mlp_train.log").read_text().splitlines()
    parsed = parse_log_text("\n".join(lines[:20]))  # cut inside the joint graph
    assert parsed.graphs[0].complete is False
    assert (4, "Joint graph 0: graph text ended before its return statement") in parsed.warnings
    cut = next(i for i, line in enumerate(lines) if "cpp_fused_relu_0 = async_compile" in line) + 5
    parsed = parse_log_text("\n".join(lines[:cut]))
    messages = [m for _, m in parsed.warnings]
    assert "kernel 'cpp_fused_relu_0': code string is not terminated (truncated log?)" in messages
    assert "output code '0_forward' has no call(args) body (truncated?)" in messages


def test_long_format_prefixes_and_fw_metadata_are_not_warnings():
    parsed = parse_log_file(str(TRITON_LOG))
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
    parsed = parse_log_file(str(CPU_LOGS / "mlp_train.log"))
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

"""pytorch_scripts_common.inductor_log on real logs of two torch versions in every form, and hostile input.

Real logs: graph_viz/fixtures/logs (torch 2.13, TORCH_LOGS_FORMAT=short), graph_viz/fixtures/torch_2_10
(torch 2.10 in default, short and TORCH_TRACE form), graph_viz/fixtures/torch_2_13 and torch_2_9 (user
programs: transformers models, dynamic shapes, torch.cond, ...), perf_traces/fixtures/cpu_* (torch 2.13
output code in default, short and TORCH_TRACE form). Hand-written: graph_viz/fixtures/triton_handwritten.
"""

from __future__ import annotations

import io
import math
import pathlib
import random

import pytest

from pytorch_scripts_common.inductor_log import (
    InductorLog,
    LogParseError,
    parse_inductor_log_text,
    read_inductor_log,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
GRAPH_FIXTURES = REPO / "graph_viz" / "fixtures"
TORCH_2_10 = GRAPH_FIXTURES / "torch_2_10"
PERF_FIXTURES = REPO / "perf_traces" / "fixtures"
RUN_WARNING = (
    "appears again (first at line {first}): a new run in the same log (another program, or "
    "torch._dynamo.reset()); graphs and kernels are related only within a run"
)


def all_fixture_logs() -> list[pathlib.Path]:
    """Every committed log: files, and TORCH_TRACE folders (``*_trace`` / ``torch_trace``)."""
    logs = [p for p in GRAPH_FIXTURES.rglob("*.log") if not p.parent.name.endswith("_trace")]
    logs += [p for p in GRAPH_FIXTURES.rglob("*_trace") if p.is_dir()]
    logs += sorted(PERF_FIXTURES.glob("*/output_code.log")) + sorted(PERF_FIXTURES.glob("*/torch_trace"))
    return sorted(logs)


# Warnings a fixture is expected to give: the second run of the cache-hit programs (compiled twice
# in one process, torch._dynamo.reset() between) and of the two-program hand-written log.
EXPECTED_WARNINGS = {
    "logs/mlp_train_cache_hit.log": ["Joint graph (from cache) (AOT id 0) " + RUN_WARNING.format(first=2)],
    # torch 2.10 prints no AOT graphs on a cache hit, only the output code
    "torch_2_10/short/mlp_train_cache_hit.log": ["output code '0_forward' " + RUN_WARNING.format(first=73)],
    "torch_2_10/trace/mlp_train_cache_hit_trace": ["Joint graph 0 "],
    "triton_handwritten/two_runs_fused_addmm_triton.log": ["Forward graph 0 " + RUN_WARNING.format(first=6)],
    "torch_2_13/short/two_ranks_train.log": ["Forward graph 0 " + RUN_WARNING.format(first=7)],
}


# Logs with graphs that are not AOT graphs, and the modules that have no AOT graph in their log:
# torch 2.10 prints no AOT graphs for a cache hit, only the output code; graph_code prints dynamo's.
OTHER_GRAPH_LOGS = {"torch_2_13/short/mlp_train_graph_code.log", "torch_2_13/short/mlp_train_post_grad.log"}
GRAPHLESS_MODULES = {
    "torch_2_10/short/mlp_train_cache_hit.log": ["0_forward (log line 378)", "0_backward (log line 493)"],
    "torch_2_13/short/mlp_train_graph_code.log": ["0_forward (log line 20)", "0_backward (log line 145)"],
}

EXTERN_ONLY_MODULES = {
    "torch_2_13/short/custom_op_train.log": ["0_forward (log line 76)"],
    "torch_2_13/short/gpt2_graph_break_train.log": [
        "2_forward (log line 1918)",
        "2_backward (log line 2604)",
    ],
    "torch_2_9/short/gpt2_graph_break_train.log": ["2_forward (log line 1812)", "2_backward (log line 2510)"],
}


def structure(log: InductorLog) -> tuple:
    """What every log form of one program must agree on (not line numbers, paths or prefixes)."""
    graphs = [
        (
            g.kind,
            g.compile_id,
            g.complete,
            g.module,
            g.outputs,
            [(n.name, n.op, n.target, n.args, n.inputs, n.dtype, n.shape, n.stride) for n in g.nodes],
        )
        for g in log.graphs
    ]
    modules = [
        (
            m.aot_id,
            m.graph,
            {name: (k.backend, k.source, k.params, k.source_nodes) for name, k in m.kernels.items()},
            [(s.kind, s.target, s.code, s.source_nodes) for s in m.statements],
        )
        for m in log.modules
    ]
    return graphs, modules


@pytest.mark.parametrize("path", all_fixture_logs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_fixture_parses_strictly_with_only_explained_warnings(path):
    log = read_inductor_log(path, strict=True)  # strict: no graph / output-code text left unread
    assert log.graphs or log.modules
    relative = str(path.relative_to(GRAPH_FIXTURES)) if GRAPH_FIXTURES in path.parents else ""
    expected = EXPECTED_WARNINGS.get(relative, [])
    assert len(log.warnings) == len(expected), log.warnings
    for (_, message), start in zip(log.warnings, expected, strict=True):
        assert message.startswith(start) and message.endswith("related only within a run"), message
    for graph in log.graphs:
        assert graph.complete, graph.title
        if graph.kind == "other":  # dynamo's graph_code, post-grad graphs: no AOT id, no module
            assert relative in OTHER_GRAPH_LOGS and graph.module is None, graph.title
            continue
        assert not graph.compile_id.startswith("?"), graph.title
        assert graph.kind == "joint" or graph.module is not None, graph.title
    if relative:  # graph_viz logs hold graphs; perf_traces logs only output code
        graphless = [m.label for m in log.modules if m.graph is None]
        assert graphless == GRAPHLESS_MODULES.get(relative, [])
    # Modules whose every launch is an extern call (a custom op, a lone matmul) have no kernel.
    assert [m.label for m in log.modules if not m.kernels] == EXTERN_ONLY_MODULES.get(relative, [])
    for module in log.modules:
        assert module.calls, module.label


def read_alike(folder, name: str, forms: tuple[str, ...]) -> dict:
    """The program ``name``'s log in each of ``forms`` under ``folder`` (a TORCH_TRACE folder for
    "trace"), read; asserts that every form has the structure of the first. Returns {form: log}."""
    logs = {
        form: read_inductor_log(folder / form / (f"{name}_trace" if form == "trace" else f"{name}.log"))
        for form in forms
    }
    reference = structure(logs[forms[0]])
    for form in forms[1:]:
        assert structure(logs[form]) == reference, form
    return logs


@pytest.mark.parametrize(
    "name, forms",
    [
        ("mlp_train", ("default", "short", "trace")),
        ("graph_break_train", ("default", "trace")),
    ],
)
def test_torch_2_10_log_forms_read_alike(name, forms):
    logs = read_alike(TORCH_2_10, name, forms)
    assert {form: log.format for form, log in logs.items()} == {form: form for form in forms}
    default_or_trace = [log for form, log in logs.items() if form != "short"]
    for log in default_or_trace:  # both print dynamo's compile id
        assert all(g.dynamo_compile_id for g in log.graphs) and all(m.compile_id for m in log.modules)


@pytest.mark.parametrize(
    "name, forms", [("cond_train", ("default", "short", "trace")), ("dynamic_train", ("default", "short"))]
)
def test_torch_2_13_user_program_log_forms_read_alike(name, forms):
    read_alike(GRAPH_FIXTURES / "torch_2_13", name, forms)


def test_perf_pairs_in_three_forms_have_the_same_output_code():
    forms = {
        "default": PERF_FIXTURES / "cpu_train" / "output_code.log",
        "short": PERF_FIXTURES / "cpu_train_short" / "output_code.log",
        "trace": PERF_FIXTURES / "cpu_train_trace" / "torch_trace",
    }
    logs = {form: read_inductor_log(path, strict=True) for form, path in forms.items()}
    for form, log in logs.items():
        assert log.format == form
        assert [m.aot_id for m in log.modules] == ["0_forward", "0_backward"], form
        assert [[(c.kind, c.target) for c in m.calls] for m in log.modules] == [
            [(c.kind, c.target) for c in m.calls] for m in logs["default"].modules
        ], form
        assert all(m.output_code_path and m.output_code_path.endswith(".py") for m in log.modules), form


def test_node_fields_source_lines_and_bytes():
    log = read_inductor_log(TORCH_2_10 / "default" / "transformer_train.log")
    forward = log.graphs[1]
    nodes = {n.name: n for n in forward.nodes}
    layer_norm = next(n for n in forward.nodes if n.source_file)
    assert layer_norm.source_file.endswith("graph_viz/make_sample_logs.py") and layer_norm.source_line > 0
    assert layer_norm.source_function == "forward" and layer_norm.source_code.startswith("q, k, v = ")
    for node in forward.nodes:
        if node.dtype == "f32" and node.shape:
            assert node.num_bytes == 4 * math.prod(int(dim) for dim in node.shape.split(", ")), node.name
    assert nodes["getitem"].num_bytes is None or nodes["getitem"].dtype
    # The TORCH_TRACE form prints input and output descriptors.
    trace = read_inductor_log(TORCH_2_10 / "trace" / "mlp_train_trace")
    forward = trace.graphs[1]
    assert forward.nodes[0].descriptor == "PlainAOTInput(idx=0)"
    assert forward.output_descriptors[-1].startswith("SavedForBackwardsAOTOutput(")


def test_deeper_indented_file_comments_are_read():
    log = read_inductor_log(GRAPH_FIXTURES / "triton_handwritten" / "fp8_linear_train_triton_older_torch.log")
    nodes = {n.name: n for n in log.graphs[0].nodes}
    assert [nodes[name].source_line for name in ("abs_1", "_scaled_mm", "relu")] == [21, 23, 24]
    assert nodes["_scaled_mm"].num_bytes == 16 * 32 * 2  # bf16
    assert nodes["convert_element_type_2"].num_bytes == 16 * 32  # f8e4m3fn


def test_module_attributes_are_get_attr_nodes():
    text = (
        "TRACED GRAPH\n ===== Forward graph 0 =====\n class GraphModule(torch.nn.Module):\n"
        '    def forward(self, x: "f32[4][1]cpu"):\n'
        "        _tensor_constant0 = self._tensor_constant0\n"
        "        true_graph_0 = self.true_graph_0\n"
        "        cond = torch.ops.higher_order.cond(x, true_graph_0, true_graph_0, (x, _tensor_constant0))\n"
        "        return (cond,)\n"
    )
    log = parse_inductor_log_text(text, strict=True)
    nodes = {n.name: n for n in log.graphs[0].nodes}
    assert [(nodes[n].op, nodes[n].target) for n in ("_tensor_constant0", "true_graph_0")] == [
        ("get_attr", "_tensor_constant0"),
        ("get_attr", "true_graph_0"),
    ]
    assert nodes["cond"].inputs == ["x", "true_graph_0", "_tensor_constant0"]


def test_subgraph_function_statements_follow_their_call():
    text = (
        "# AOT ID: ['0_forward']\n"
        "def true_graph_0(args):\n    a, = args\n    extern_kernels.mm(a, a, out=buf0)\n    return (buf0, )\n"
        "def call(args):\n    x, = args\n    buf1 = true_graph_0(true_graph_0_args)\n"
        "    extern_kernels.addmm(x, x, x, out=buf2)\n    return (buf2, )\n"
    )
    (module,) = parse_inductor_log_text(text, strict=True).modules
    assert [(s.function, s.code) for s in module.statements] == [
        ("call", "x, = args"),
        ("call", "buf1 = true_graph_0(true_graph_0_args)"),
        ("true_graph_0", "a, = args"),
        ("true_graph_0", "extern_kernels.mm(a, a, out=buf0)"),
        ("true_graph_0", "return (buf0, )"),
        ("call", "extern_kernels.addmm(x, x, x, out=buf2)"),
        ("call", "return (buf2, )"),
    ]
    assert [c.target for c in module.calls] == ["aten::mm", "aten::addmm"]


def test_op_calls_are_extern_call_sites_named_as_the_profiler_records_them():
    text = (
        "# AOT ID: ['0_forward']\n"
        "def call(args):\n"
        "    x, = args\n"
        "    buf0 = torch.ops.my_lib.scaled_tanh.default(x, 0.5)\n"
        "    buf1 = torch.ops.aten.convolution_backward.default(buf0, x)\n"
        "    buf2 = aten._foo.default(buf1)\n"
        "    buf3 = torch.ops.higher_order.some_hop.default(buf2)\n"
        "    extern_kernels.bias_addmm(x, x, x, out=buf4)\n"
        "    return (buf4, )\n"
    )
    (module,) = parse_inductor_log_text(text, strict=True).modules
    # a higher-order op is a Python operator, which the profiler does not record as an op event
    assert [(c.target, c.code.split(" = ")[0]) for c in module.calls] == [
        ("my_lib::scaled_tanh", "buf0"),
        ("aten::convolution_backward", "buf1"),
        ("aten::_foo", "buf2"),
        ("aten::addmm", "extern_kernels.bias_addmm(x, x, x, out=buf4)"),
    ]
    real = read_inductor_log(GRAPH_FIXTURES / "torch_2_13/short/custom_op_train.log", strict=True)
    assert [(c.kind, c.target) for c in real.modules[0].calls] == [
        ("extern", "aten::addmm"),
        ("extern", "graph_viz_sample::scaled_tanh"),
        ("extern", "aten::addmm"),
    ]


def interleave(*logs: list[str]) -> list[str]:
    merged = []
    for lines in zip(*logs, strict=False):
        merged.extend(lines)
    longest = max(logs, key=len)
    merged.extend(longest[min(len(x) for x in logs) :])
    return merged


def test_two_processes_interleaved_line_by_line_are_two_streams():
    lines = (TORCH_2_10 / "default" / "mlp_train.log").read_text().splitlines()
    pid = lines[next(i for i, line in enumerate(lines) if line.startswith("I"))].split()[2]
    other = [line.replace(f" {pid} ", " 99999 ", 1) for line in lines]
    log = parse_inductor_log_text("\n".join(interleave(lines, other)), strict=True)
    single = read_inductor_log(TORCH_2_10 / "default" / "mlp_train.log")
    assert [g.stream for g in log.graphs] == [f"pid {pid}", "pid 99999"] * 3
    assert len(log.runs) == 2 and log.warnings == []  # told apart by pid: no repeat warning
    first = InductorLog(graphs=log.graphs[0::2], modules=log.modules[0::2])
    assert [len(g.nodes) for g in first.graphs] == [len(g.nodes) for g in single.graphs]
    assert [m.graph for m in log.modules] == [2, 3, 4, 5]  # each backward module links in its own stream


@pytest.mark.parametrize("prefix", ["[rank0]:", "[default0]:", "[rank0]:[rank0]:"])
def test_rank_prefixed_short_log(prefix):
    text = (TORCH_2_10 / "short" / "mlp_train.log").read_text()
    plain = read_inductor_log(TORCH_2_10 / "short" / "mlp_train.log")
    prefixed = "".join(prefix + line for line in text.splitlines(keepends=True))
    ranked = parse_inductor_log_text(prefixed, strict=True)
    assert structure(ranked) == structure(plain)
    assert {g.stream for g in ranked.graphs} == {"rank 0"}


def test_two_ranks_interleaved_in_short_format():
    lines = (TORCH_2_10 / "short" / "mlp_train.log").read_text().splitlines()
    rank0 = ["[rank0]:" + line for line in lines]
    rank1 = ["[rank1]:" + line for line in lines]
    log = parse_inductor_log_text("\n".join(interleave(rank0, rank1)), strict=True)
    assert [g.stream for g in log.graphs] == ["rank 0", "rank 1"] * 3
    assert log.warnings == [] and len(log.runs) == 2
    assert [m.graph for m in log.modules] == [2, 3, 4, 5]


def test_trace_folder_with_two_rank_files(tmp_path):
    source = next((TORCH_2_10 / "trace" / "mlp_train_trace").iterdir())
    for rank in (0, 1):
        (tmp_path / f"dedicated_log_torch_trace_rank_{rank}_abc.log").write_text(source.read_text())
    log = read_inductor_log(tmp_path, strict=True)
    assert len(log.graphs) == 6 and len(log.runs) == 2 and log.warnings == []
    assert [g.source_file for g in log.graphs[:3]] == ["dedicated_log_torch_trace_rank_0_abc.log"] * 3
    assert [m.graph for m in log.modules] == [1, 2, 4, 5]


def test_a_trace_given_as_the_log_is_named_as_json(tmp_path):
    trace = PERF_FIXTURES / "cpu_train" / "trace.json"
    log = read_inductor_log(trace)
    assert log.json_files == [str(trace)] and log.graphs == [] and log.modules == []
    assert log.warnings[0][0] == 1 and "this file is JSON (a torch.profiler trace?)" in log.warnings[0][1]
    with pytest.raises(LogParseError, match="line 1: this file is JSON"):
        read_inductor_log(trace, strict=True)
    folder = tmp_path / "trace_folder"  # one JSON file among the rank logs of a TORCH_TRACE folder
    folder.mkdir()
    source = next((TORCH_2_10 / "trace" / "mlp_train_trace").iterdir())
    (folder / "rank_0.log").write_text(source.read_text())
    (folder / "rank_1.log").write_bytes(trace.read_bytes())
    log = read_inductor_log(folder)
    assert log.json_files == [str(folder / "rank_1.log")] and len(log.graphs) == 3
    assert log.warnings[0][1].startswith("rank_1.log: this file is JSON")


@pytest.mark.parametrize(
    "line, is_log",
    [
        (
            "V1123 18:56:37.289000 6703 torch/_inductor/graph.py:2722] [0/0] [__output_code] Output code:",
            True,
        ),
        ("[rank1]:I1123 18:56:37.289000 6703 torch/_dynamo/x.py:1] msg", True),
        ("\x1b[32mINFO:torch._inductor.codecache.__output_code:Output code: \x1b[0m", True),
        ("DEBUG:torch._inductor.codecache.__output_code:Output code: ", True),
        ('{"traceEvents": []}', False),
        ("step 0: loss 2.3", False),
        ("", False),
    ],
)
def test_is_log_line(line, is_log):
    from pytorch_scripts_common.inductor_log.records import is_log_line

    assert is_log_line(line) is is_log


def test_user_output_and_warnings_are_counted_not_warned():
    log = read_inductor_log(TORCH_2_10 / "default" / "graph_break_train.log", strict=True)
    assert log.warnings == []
    assert log.skipped["user output"] == 1  # the program's print between its two graphs
    assert log.skipped["warnings and tracebacks"] == 2  # a UserWarning and its source line


def test_strict_fails_on_unreadable_graph_text_only():
    lines = (TORCH_2_10 / "short" / "mlp_train.log").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("        relu: "))
    lines[index] = "        relu: = ?"
    with pytest.raises(LogParseError, match=f"line {index + 1}: Joint graph 0: unreadable graph line"):
        parse_inductor_log_text("\n".join(lines), strict=True)
    assert parse_inductor_log_text("\n".join(lines)).num_warnings == 1


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\x00" * 1000,
        "".join(chr(c) for c in range(1, 0x3000, 7)),
        "TRACED GRAPH\n" * 1000,
        "V1123 10:00:00.000000 1 x.py:1] {\n\t" + "[" * 10000,
        'V1123 10:00:00.000000 1 x.py:1] {"aot_forward_graph": {}}\n\tclass GraphModule(torch.nn.Module):\n',
        'V1123 10:00:00.000000 1 x.py:1] {"inductor_output_code": 5, "frame_id": "x"}\n\t# AOT ID: [\'0\n',
        "class GraphModule(torch.nn.Module):\n    def forward(self, " + "a, " * 5000,
        "[rank0]:" * 5000 + "\n",
        "# AOT ID: ['0_forward']\ndef call(args):\n    return (" + "(" * 5000,
        ' ===== Forward graph 0 =====\n        x: "f32[' + "9" * 5000 + ']" = y\n',
    ],
)
def test_hostile_text_never_raises(text):
    log = parse_inductor_log_text(text)
    assert log.num_lines == len(io.StringIO(text).readlines())


def test_every_truncation_of_a_trace_file(tmp_path):
    lines = next((TORCH_2_10 / "trace" / "mlp_train_trace").iterdir()).read_text().splitlines()
    for cut in range(0, len(lines), max(1, len(lines) // 150)):
        log = parse_inductor_log_text("\n".join(lines[:cut]))
        assert all(g.kind in ("joint", "forward", "backward", "inference") for g in log.graphs)


def test_fuzzed_logs_of_every_form_never_raise():
    """Seeded, bounded: line deletions, duplications, cuts, byte noise and prefix damage."""
    rng = random.Random(0)
    sources = [
        (TORCH_2_10 / "default" / "mlp_train.log").read_text().splitlines(),
        (TORCH_2_10 / "short" / "mlp_train_cache_hit.log").read_text().splitlines(),
        next((TORCH_2_10 / "trace" / "mlp_train_trace").iterdir()).read_text().splitlines(),
        (GRAPH_FIXTURES / "triton_handwritten" / "two_runs_fused_addmm_triton.log").read_text().splitlines(),
    ]
    noise = "'\"()[]{}#:=%\\\t xyz_0123456789\x00\u2028" + "".join(chr(c) for c in range(0x20, 0x7F, 5))
    num_warned = 0
    for iteration in range(160):
        lines = list(sources[iteration % len(sources)])
        for _ in range(rng.randint(1, 12)):
            position = rng.randrange(len(lines))
            operation = rng.randrange(6)
            if operation == 0:
                del lines[position : position + rng.randint(1, 40)]
            elif operation == 1:
                lines[position:position] = lines[position : position + rng.randint(1, 40)]
            elif operation == 2:
                lines[position] = lines[position][: rng.randrange(len(lines[position]) + 1)]
            elif operation == 3:
                lines.insert(position, "".join(rng.choice(noise) for _ in range(rng.randint(1, 60))))
            elif operation == 4:
                lines[position] = lines[position][rng.randint(0, 40) :]
            else:
                lines = lines[:position]
            lines = lines or [""]
        log = parse_inductor_log_text("\n".join(lines))
        num_warned += log.num_warnings > 0
        for graph in log.graphs:
            assert graph.run < len(log.runs)
    assert num_warned > 40  # the damage is real: many variants warn


def test_colored_graph_code_reads_like_plain_text():
    # torch colours graph code (ANSI codes) when its stdout is a terminal, also into a log that
    # stderr is redirected to; same program and torch as logs/mlp_train.log (C++ vector widths differ
    # with the machine, so kernel sources are not compared)
    colored_path = GRAPH_FIXTURES / "torch_2_13" / "colored" / "mlp_train.log"
    assert '"\x1b[31mf32\x1b[0m' in colored_path.read_text()
    colored = read_inductor_log(colored_path, strict=True)
    plain = read_inductor_log(GRAPH_FIXTURES / "logs" / "mlp_train.log", strict=True)
    assert structure(colored)[0] == structure(plain)[0]
    assert [n.dtype for n in colored.graphs[1].nodes][:2] == ["f32", "f32"]

    def calls(log: InductorLog) -> list:
        return [
            (m.aot_id, m.graph, sorted(m.kernels), [(c.kind, c.target) for c in m.calls]) for m in log.modules
        ]

    assert calls(colored) == calls(plain)


def test_line_numbers_count_newlines_only(tmp_path):
    # a progress bar (tqdm) redraws itself with \r: still one line for grep -n, sed and the reader
    text = (GRAPH_FIXTURES / "logs" / "mlp_train.log").read_text()
    bar = "".join(f" {10 * i}%|{'#' * i:<10}| {i}/10\r" for i in range(1, 11)) + "\n"
    path = tmp_path / "train.log"
    path.write_bytes((bar + text.replace("\n", "\r\n")).encode())
    log = read_inductor_log(path, strict=True)
    plain = read_inductor_log(GRAPH_FIXTURES / "logs" / "mlp_train.log", strict=True)
    assert [g.line for g in log.graphs] == [g.line + 1 for g in plain.graphs]
    assert [m.line_number for m in log.modules] == [m.line_number + 1 for m in plain.modules]
    assert structure(log) == structure(plain)
    assert log.num_lines == plain.num_lines + 1
    assert [g.line for g in parse_inductor_log_text(bar + text).graphs] == [g.line for g in log.graphs]


def test_interleaved_runs_link_each_module_to_the_graph_whose_inputs_it_asserts():
    # two gloo ranks in one short-format log (no prefix tells them apart), batch 4 and 6; the two
    # ranks' graphs in the logged order and swapped: either way each module's call() asserts its
    # graph's input sizes (`assert_size_stride(primals_3, (6, 8), ...)`)
    lines = (GRAPH_FIXTURES / "torch_2_13" / "short" / "two_ranks_train.log").read_text().splitlines(True)
    starts = [i for i, line in enumerate(lines) if line.endswith("__aot_graphs:TRACED GRAPH\n")]
    code = next(i for i, line in enumerate(lines) if "Output code: " in line)
    assert len(starts) == 4 and starts[-1] < code  # forward and backward of one rank, then the other's
    swapped = lines[: starts[0]] + lines[starts[2] : code] + lines[starts[0] : starts[2]] + lines[code:]
    for text in ("".join(lines), "".join(swapped)):
        log = parse_inductor_log_text(text)
        assert [g.kind for g in log.graphs] == ["forward", "backward"] * 2
        batches = []
        for graph in log.graphs:
            (primals_3,) = [n for n in graph.nodes if n.name == "primals_3"]
            batches.append(primals_3.shape)
            asserts = [s.code for s in log.modules[graph.module].statements if "(primals_3," in s.code]
            assert asserts[0].startswith(f"assert_size_stride(primals_3, ({primals_3.shape}),"), asserts
        assert sorted(batches) == ["4, 8", "4, 8", "6, 8", "6, 8"]

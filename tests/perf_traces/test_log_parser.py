"""The output-code view perf_traces takes from the shared inductor-log parser, in every log form."""

from __future__ import annotations

import random
import re

import pytest

from pytorch_scripts_common.inductor_log import LogParseError, parse_inductor_log_text, read_inductor_log
from tests.perf_traces.helpers import CPU_FIXTURES, fixture

_PREFIX_RE = re.compile(r"^[VIWEDC]\d{4} [^\]]*\] (?:\[[^\]]*\] )*")
_SHORT_OUTPUT_CODE = "DEBUG:torch._inductor.codecache.__output_code:"


def _read_lines(name: str) -> list[str]:
    with open(fixture(name, "output_code.log"), encoding="utf-8") as log_file:
        return log_file.read().splitlines()


def _modules(lines: list[str], **kwargs):
    return parse_inductor_log_text("\n".join(lines) + "\n", **kwargs).modules


def _as_short_format(lines: list[str]) -> list[str]:
    """The same log as TORCH_LOGS_FORMAT=short writes it: a prefix on each record's first line only."""
    short = []
    for line in lines:
        message = _PREFIX_RE.sub("", line)
        starts_record = message.startswith("Output code") or line == _PREFIX_RE.sub("", line)
        short.append(_SHORT_OUTPUT_CODE + message if starts_record else message)
    return short


def _signature(modules) -> list:
    return [
        (
            m.aot_id,
            m.graph_kind,
            m.output_code_path,
            {
                name: (k.backend, k.source, k.profile_name, k.kernel_path, k.source_nodes)
                for name, k in m.kernels.items()
            },
            [(c.kind, c.target, c.source_nodes, c.aten_ops, c.code) for c in m.calls],
        )
        for m in modules
    ]


def test_real_train_log_modules_kernels_and_calls():
    modules = read_inductor_log(fixture("cpu_train", "output_code.log"), strict=True).modules
    assert [(m.aot_id, m.graph_kind, m.compile_id) for m in modules] == [
        ("0_forward", "forward", "0/0"),
        ("0_backward", "backward", "0/0"),
    ]
    forward, backward = modules
    assert [(c.kind, c.target) for c in forward.calls] == [
        ("kernel", "cpp_fused_native_layer_norm_0"),
        ("extern", "aten::addmm"),
        ("kernel", "cpp_fused_native_layer_norm_relu_1"),
        ("extern", "aten::addmm"),
        ("kernel", "cpp_fused_relu_threshold_backward_2"),
    ]
    assert forward.calls[1].source_nodes == ["input_2"]
    assert forward.calls[1].aten_ops == ["aten.t", "aten.addmm"]
    assert [c.target for c in backward.calls if c.kind == "extern"] == ["aten::mm"] * 4
    kernel = forward.kernels["cpp_fused_native_layer_norm_0"]
    assert kernel.backend == "cpp_pybinding"
    assert kernel.profile_name == "graph_0_cpp_fused_native_layer_norm_0"
    assert 'extern "C"' in kernel.source and kernel.source.rstrip().endswith("}")
    assert forward.graph_ids == backward.graph_ids == {0}
    assert forward.output_code_path.endswith(".py") and backward.output_code_path.endswith(".py")
    assert forward.output_code_path != backward.output_code_path


@pytest.mark.parametrize("name", CPU_FIXTURES + ("cuda_handwritten",))
def test_short_format_is_read_like_the_default_format(name):
    """TORCH_LOGS_FORMAT=short: forward and backward stay apart (they collapsed into one module before)."""
    lines = _read_lines(name)
    prefixed = _modules(lines, strict=True)
    short = _modules(_as_short_format(lines), strict=True)
    assert prefixed
    assert _signature(short) == _signature(prefixed)


@pytest.mark.parametrize("name", CPU_FIXTURES + ("cuda_handwritten",))
def test_plain_handler_and_bare_text_are_read_like_the_default_format(name):
    """A plain handler (prefix on the first line only), bare module text, and `[rank0]:` prefixes."""
    lines = _read_lines(name)
    prefixed = _modules(lines, strict=True)
    plain = []
    for line in lines:
        stripped = _PREFIX_RE.sub("", line)
        plain.append(line if stripped.startswith("Output code") or not stripped.strip() else stripped)
    bare = [_PREFIX_RE.sub("", line) for line in lines if "Output code" not in line]
    ranked = ["[rank0]:" + line for line in lines]
    for other in (_modules(plain, strict=True), _modules(bare, strict=True), _modules(ranked, strict=True)):
        assert [sorted(m.kernels) for m in other] == [sorted(m.kernels) for m in prefixed]
        assert [[(c.kind, c.target, c.source_nodes) for c in m.calls] for m in other] == [
            [(c.kind, c.target, c.source_nodes) for c in m.calls] for m in prefixed
        ]
        for module, reference in zip(other, prefixed, strict=True):
            assert module.aot_id == reference.aot_id
            for kernel_name, kernel in module.kernels.items():
                assert kernel.source == reference.kernels[kernel_name].source
    assert [m.output_code_path for m in _modules(plain)] == [m.output_code_path for m in prefixed]


def test_two_ranks_interleaved_line_by_line():
    lines = _read_lines("cpu_train")
    rank0 = ["[rank0]:" + line for line in lines]
    rank1 = ["[rank1]:" + line.replace("graph_0_", "graph_7_") for line in lines]
    interleaved = [line for pair in zip(rank0, rank1, strict=True) for line in pair]
    log = parse_inductor_log_text("\n".join(interleaved), strict=True)
    assert [(m.aot_id, m.stream, sorted(m.graph_ids)) for m in log.modules] == [
        ("0_forward", "pid 13945 rank 0", [0]),
        ("0_forward", "pid 13945 rank 1", [7]),
        ("0_backward", "pid 13945 rank 0", [0]),
        ("0_backward", "pid 13945 rank 1", [7]),
    ]
    reference = _modules(lines)
    assert _signature(log.modules[0::2])[0][3] == _signature(reference)[0][3]


def test_cuda_log_kernel_paths_and_source_nodes():
    modules = read_inductor_log(fixture("cuda_handwritten", "output_code.log"), strict=True).modules
    assert [m.aot_id for m in modules] == ["0_forward", "0_backward", "1_forward", "1_backward"]
    kernel = modules[2].kernels["triton_per_fused_native_layer_norm_0"]
    assert kernel.backend == "triton"
    assert kernel.kernel_path == "/tmp/torchinductor_user/ef/cef1ln.py"
    assert kernel.source_nodes == ["layer_norm"] and kernel.aten_ops == ["aten.native_layer_norm"]
    assert kernel.profile_name is None
    assert "@triton.jit" in kernel.source and "r0_numel = 128" in kernel.source
    assert [c.target for c in modules[1].calls] == [
        "triton_poi_fused_threshold_backward_0",
        "aten::mm",
        "aten::mm",
        "triton_per_fused_native_layer_norm_backward_1",
    ]


def test_truncated_log_warns_with_line_number_and_strict_raises():
    lines = _read_lines("cpu_train")
    cut = next(
        i for i, line in enumerate(lines) if "cpp_fused_native_layer_norm_relu_1 = async_compile" in line
    )
    truncated = lines[: cut + 5]
    log = parse_inductor_log_text("\n".join(truncated))
    assert log.warnings == [
        (
            cut + 1,
            "kernel 'cpp_fused_native_layer_norm_relu_1': source not terminated by "
            "''' (truncated log?); kept",
        ),
        (1, "output code '0_forward' has no 'def call(...)' body (truncated log?)"),
    ]
    assert log.modules[0].aot_id == "0_forward" and "cpp_fused_native_layer_norm_0" in log.modules[0].kernels
    with pytest.raises(LogParseError, match=f"line {cut + 1}: kernel"):
        parse_inductor_log_text("\n".join(truncated), strict=True)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no output code here\njust text\n",
        "Output code: \n",
        "Output code: \n# AOT ID: ['0_forward']\nx = async_compile.cpp_pybinding([], r'''\n",
        "Output code: \n    def call(self, args):\n        cpp_fused_unknown_0(buf0)\n",
        "\x00\xff\ufffd" * 1000 + "\n" + "Output code:" * 10000,
        "# AOT ID: ['" + "x" * 100000 + "']\n",
        "Output code written to: /tmp/a.py\n",
        "[rank0]:[rank1]:\n\t\t{\n" * 50,
        'V0101 00:00:00.000000 1 x.py:1] {"inductor_output_code": {"filename": 3}}\n\tdef call(args):\n',
    ],
)
def test_hostile_logs_do_not_crash(text):
    log = parse_inductor_log_text(text)
    assert isinstance(log.modules, list)


def test_log_without_output_code_gives_no_modules():
    log = parse_inductor_log_text("I0101 12:00:00.000000 1 /x.py:1] hello\nplain line\n", strict=True)
    assert log.modules == [] and log.skipped == {"other log records": 1, "user output": 1}


def test_fuzz_log_parser_never_crashes():
    """Seeded random line deletions, duplications, truncations and byte noise on real logs."""
    rng = random.Random(0)
    sources = [_read_lines(name) for name in ("cpu_inference", "cuda_handwritten")]
    sources += [_as_short_format(lines) for lines in sources]
    alphabet = "'\"()[]#:=\\\n\t xyz_0123456789" + "".join(chr(c) for c in range(0x20, 0x7F, 7))
    for iteration in range(200):
        lines = list(sources[iteration % len(sources)])
        for _ in range(rng.randint(1, 20)):
            operation = rng.randrange(5)
            position = rng.randrange(len(lines))
            if operation == 0:
                del lines[position : position + rng.randint(1, 50)]
            elif operation == 1:
                lines.insert(position, lines[rng.randrange(len(lines))])
            elif operation == 2:
                line = lines[position]
                lines[position] = line[: rng.randrange(len(line) + 1)]
            elif operation == 3:
                lines.insert(position, "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))))
            else:
                lines = lines[:position]
            if not lines:
                lines = [""]
        for module in _modules(lines):
            assert module.graph_kind in ("forward", "backward", "inference", "unknown")


@pytest.mark.parametrize("log_format", ["short", "trace"])
def test_pairs_in_short_and_trace_form_are_matched_like_the_default_form(tmp_path, log_format):
    """Real pairs written by profile_compiled_model.py --log_format short / trace (torch 2.13, CPU)."""
    from perf_traces.enrich import enrich_trace
    from perf_traces.log_kernels import compiled_graphs
    from tests.perf_traces.helpers import enclosing_kind, kernel_table, load_events

    name = f"cpu_train_{log_format}"
    log_path = fixture(name, "torch_trace" if log_format == "trace" else "output_code.log")
    log = read_inductor_log(log_path, strict=True)
    assert log.format == log_format and [m.aot_id for m in log.modules] == ["0_forward", "0_backward"]
    output = str(tmp_path / "enriched.json")
    summary = enrich_trace(fixture(name, "trace.json"), compiled_graphs(log), output)
    events = load_events(output)
    table = kernel_table(events)
    kernel_events = [e for e in events if re.match(r"^graph_\d+_cpp_", e["name"])]
    assert len(kernel_events) == sum(len(m.kernels) for m in log.modules)
    for event in kernel_events:
        graph_id = event["name"].split("_")[1]
        entry = table[event["args"]["inductor_kernel_id"]]
        assert entry["inductor_aot_id"] == f"{graph_id}_{enclosing_kind(events, event)}"
        assert entry["inductor_output_code_path"].endswith(".py")
    assert summary.unmatched_by_name == {} and summary.log_kernels_not_in_trace == []
    assert summary.matched_by_kind["extern aten op"] == sum(
        1 for module in log.modules for call in module.calls if call.kind == "extern"
    )

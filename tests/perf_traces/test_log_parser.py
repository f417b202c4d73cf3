"""Output-code log parser: real logs (three layouts), truncated and hostile logs, a fuzz test."""

from __future__ import annotations

import random
import re
import warnings

import pytest

from perf_traces.log_parser import OutputCodeLogWarning, parse_output_code_log, parse_output_code_log_file
from tests.perf_traces.helpers import CPU_FIXTURES, fixture

_PREFIX_RE = re.compile(r"^[VIWEDC]\d{4} [^\]]*\] (?:\[[^\]]*\] )*")


def _read_lines(name: str) -> list[str]:
    with open(fixture(name, "output_code.log"), encoding="utf-8") as log_file:
        return log_file.read().splitlines(keepends=True)


def test_real_train_log_modules_kernels_and_calls():
    modules = parse_output_code_log_file(fixture("cpu_train", "output_code.log"), strict=True)
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
def test_layouts_parse_identically(name):
    """torch's prefixed format, a plain handler (prefix on the first line only) and bare module text."""
    lines = _read_lines(name)
    prefixed = parse_output_code_log(lines, strict=True)
    plain = []
    for line in lines:
        stripped = _PREFIX_RE.sub("", line)
        plain.append(line if stripped.startswith("Output code:") or not stripped.strip() else stripped)
    bare = [_PREFIX_RE.sub("", line) for line in lines]
    for other in (parse_output_code_log(plain, strict=True), parse_output_code_log(bare, strict=True)):
        assert [(m.aot_id, m.output_code_path) for m in other] == [
            (m.aot_id, m.output_code_path) for m in prefixed
        ]
        assert [sorted(m.kernels) for m in other] == [sorted(m.kernels) for m in prefixed]
        assert [[(c.kind, c.target, c.source_nodes) for c in m.calls] for m in other] == [
            [(c.kind, c.target, c.source_nodes) for c in m.calls] for m in prefixed
        ]
        for module, reference in zip(other, prefixed, strict=True):
            for kernel_name, kernel in module.kernels.items():
                assert kernel.source == reference.kernels[kernel_name].source


def test_cuda_log_kernel_paths_and_source_nodes():
    modules = parse_output_code_log_file(fixture("cuda_handwritten", "output_code.log"), strict=True)
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
    with pytest.warns(OutputCodeLogWarning) as record:
        modules = parse_output_code_log(truncated)
    messages = [str(warning.message) for warning in record]
    assert messages == [
        f"<log>:{cut + 1}: kernel 'cpp_fused_native_layer_norm_relu_1': source not terminated by "
        + "'" * 3
        + " (truncated log?); kept",
        "<log>:1: output-code record '0_forward' has no 'def call(...)' body (truncated log?)",
    ]
    assert modules[0].aot_id == "0_forward" and "cpp_fused_native_layer_norm_0" in modules[0].kernels
    with pytest.raises(ValueError, match="strict mode"):
        parse_output_code_log(truncated, strict=True)


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
    ],
)
def test_hostile_logs_do_not_crash(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutputCodeLogWarning)
        modules = parse_output_code_log(text.splitlines(keepends=True))
    assert isinstance(modules, list)


def test_log_without_output_code_gives_no_modules():
    assert parse_output_code_log(["I0101 12:00:00.000000 1 /x.py:1] hello\n", "plain line\n"]) == []


def test_fuzz_log_parser_never_crashes():
    """Seeded random line deletions, duplications, truncations and byte noise on real logs."""
    rng = random.Random(0)
    sources = [_read_lines(name) for name in ("cpu_inference", "cuda_handwritten")]
    alphabet = "'\"()[]#:=\\\n\t xyz_0123456789" + "".join(chr(c) for c in range(0x20, 0x7F, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutputCodeLogWarning)
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
                    noise = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
                    lines.insert(position, noise + "\n")
                else:
                    lines = lines[:position]
                if not lines:
                    lines = ["\n"]
            modules = parse_output_code_log(lines)
            for module in modules:
                assert module.graph_kind in ("forward", "backward", "inference", "unknown")

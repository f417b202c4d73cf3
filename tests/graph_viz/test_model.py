"""graph_viz.model's tensor sizes against torch's own dtype table, and its source groups."""

import math

import pytest

from graph_viz.model import source_groups
from pytorch_scripts_common.inductor_log import parse_inductor_log_text as parse_log_text
from pytorch_scripts_common.inductor_log.structures import DTYPE_BYTES, tensor_bytes


def test_dtype_bytes_cover_every_torch_dtype_abbreviation():
    import torch
    from torch.utils._dtype_abbrs import dtype_abbrs

    expected = {abbr: dtype.itemsize for dtype, abbr in dtype_abbrs.items() if isinstance(dtype, torch.dtype)}
    assert expected == DTYPE_BYTES


@pytest.mark.parametrize(
    ("dtype", "shape", "expected"),
    [
        ("f32", "16, 64", 4 * 16 * 64),
        ("bf16", "3, 5, 7", 2 * 105),
        ("f32", "", 4),  # a 0-d tensor: f32[]
        ("i64", "0, 8", 0),
        ("f32", "s0, 64", None),  # symbolic
        ("f32", "2*s0", None),
        ("q9", "4", None),  # unknown dtype
    ],
)
def test_tensor_bytes(dtype, shape, expected):
    assert tensor_bytes(dtype, shape) == expected
    if expected:
        assert expected == DTYPE_BYTES[dtype] * math.prod(int(d) for d in shape.split(",") if d.strip())


def test_source_groups_are_runs_under_one_file_line():
    log = (
        "INFO:torch._functorch._aot_autograd.graph_compile.__aot_graphs:TRACED GRAPH\n"
        " ===== Forward graph 0 =====\n"
        " /x.py class GraphModule(torch.nn.Module):\n"
        '    def forward(self, x: "f32[4][1]cpu"):\n'
        "        # File: /a/model.py:3 in forward, code: y = x.sin().cos()\n"
        '        sin: "f32[4][1]cpu" = torch.ops.aten.sin.default(x)\n'
        '        cos: "f32[4][1]cpu" = torch.ops.aten.cos.default(sin)\n'
        "        # File: /a/model.py:4 in forward, code: z = y.neg()\n"
        '        neg: "f32[4][1]cpu" = torch.ops.aten.neg.default(cos)\n'
        "        # No stacktrace found for following nodes\n"
        '        abs_1: "f32[4][1]cpu" = torch.ops.aten.abs.default(neg)\n'
        '        abs_2: "f32[4][1]cpu" = torch.ops.aten.abs.default(abs_1)\n'
        "        # File: /a/model.py:3 in forward, code: y = x.sin().cos()\n"
        '        exp: "f32[4][1]cpu" = torch.ops.aten.exp.default(abs_2)\n'
        '        exp_1: "f32[4][1]cpu" = torch.ops.aten.exp.default(exp)\n'
        "        return (exp_1,)\n"
    )
    (graph,) = parse_log_text(log).graphs
    group_of, groups = source_groups(graph)
    names = [n.name for n in graph.nodes]
    assert names == ["x", "sin", "cos", "neg", "abs_1", "abs_2", "exp", "exp_1", "output"]
    # line 3 twice (two runs), line 4 has a single node (no group), no-stacktrace nodes none
    assert [(g["label"], g["head"], g["size"]) for g in groups] == [
        ("model.py:3 in forward", 1, 2),
        ("model.py:3 in forward", 6, 2),
    ]
    assert group_of == [-1, 0, 0, -1, -1, -1, 1, 1, -1]

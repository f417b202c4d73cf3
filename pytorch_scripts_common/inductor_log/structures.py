"""What the inductor-log parser returns: AOT graphs, output-code modules, their kernels and calls.

Plain dataclasses, no behaviour beyond a few derived properties; every tool reads the same objects.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

# Bytes per element for the dtype abbreviations FX prints in node annotations
# (`f32[16, 64][64, 1]cpu`; torch.utils._dtype_abbrs: ``dtype.abbr``, size ``dtype.itemsize``; the
# packed dtypes such as ``f4e2m1fnx2`` and ``b1x8`` hold several values in one byte per element).
DTYPE_BYTES = {
    "b8": 1, "u8": 1, "i8": 1, "u16": 2, "i16": 2, "u32": 4, "i32": 4, "u64": 8, "i64": 8,
    "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c32": 4, "c64": 8, "c128": 16,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "f8e8m0fnu": 1, "f4e2m1fnx2": 1,
    "b1x8": 1, "b2x4": 1, "b4x2": 1, "b8x1": 1, "b16x1": 2,
}  # fmt: skip
_GRAPH_PREFIX_RE = re.compile(r"^graph_(\d+)_")


class LogParseError(ValueError):
    """A line that looks like graph or output-code text but cannot be read (raised in strict mode)."""


@dataclasses.dataclass
class Node:
    """One FX node of an AOT graph, as printed by ``GraphModule.print_readable``."""

    name: str
    op: str  # "placeholder", "call_function", "getitem", "get_attr" (subgraph, constant), "output"
    target: str  # e.g. "aten.addmm.default"
    args: list[str]  # argument texts as written
    inputs: list[str]  # names of graph nodes used by this node
    dtype: str = ""  # "f32" (the annotation's abbreviation)
    shape: str = ""  # "16, 64"
    stride: str = ""  # "64, 1"
    device: str = ""  # "cpu", "cuda:0"
    num_bytes: int | None = None  # dtype size x number of elements; None when symbolic or unknown
    source: str = ""  # the `# File: ...` comment above the node, without "# "
    source_file: str = ""  # parsed from `source`: "/path/model.py"
    source_line: int = 0  # 12
    source_function: str = ""  # "forward"
    source_code: str = ""  # "x = self.linear(x)"
    descriptor: str = ""  # placeholders of the expanded form: "PlainAOTInput(idx=0)", "ParamAOTInput(...)"
    line: int = 0  # 1-based line of the node in the log


@dataclasses.dataclass
class Graph:
    """One AOT graph (joint, forward, backward or inference)."""

    index: int
    kind: str  # joint, forward, backward, inference, other
    # The AOT graph id: N of "Forward graph N" and of `# AOT ID: ['N_forward']` ("?" until known for
    # cache-hit and TORCH_TRACE graphs, which print none; "?<index>" when it stays unknown).
    compile_id: str
    title: str
    from_cache: bool
    line: int
    nodes: list[Node] = dataclasses.field(default_factory=list)
    outputs: list[str] = dataclasses.field(default_factory=list)  # returned names, "None" kept
    output_descriptors: list[str] = dataclasses.field(
        default_factory=list
    )  # "SavedForBackwardsAOTOutput(idx=0)"
    module: int | None = None  # index into InductorLog.modules
    complete: bool = False
    dynamo_compile_id: str = ""  # dynamo's "0/0" (log prefix / trace metadata), "" when not printed
    stream: str = ""  # which process / rank / file printed it
    run: int = 0  # index into InductorLog.runs
    source_file: str = ""  # the log file (differs per rank in a TORCH_TRACE folder)


@dataclasses.dataclass
class KernelDefinition:
    """One generated kernel (``name = async_compile.<backend>(...)``) and the comments above it."""

    name: str  # "cpp_fused_relu_0", "triton_poi_fused_addmm_relu_0"
    backend: str  # async_compile method: "cpp_pybinding", "triton", ...
    source: str  # the C++ / Triton source
    line_number: int  # 1-based log line of the definition
    params: list[str] = dataclasses.field(default_factory=list)  # in_ptr0, out_ptr0, in_out_ptr0, ...
    source_nodes: list[str] = dataclasses.field(default_factory=list)  # `# ... Source Nodes: [...]`
    aten_ops: list[str] = dataclasses.field(default_factory=list)  # `Original ATen: [...]`
    aten_mapping: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # `#   a => b, c`
    fragment_nodes: list[str] = dataclasses.field(default_factory=list)  # `# Graph fragment:` call_functions
    fragment_inputs: list[str] = dataclasses.field(default_factory=list)  # its PlaceHolder reads
    fragment_outputs: list[str] = dataclasses.field(default_factory=list)  # its `return %a,%b`
    kernel_path: str | None = None  # `# kernel path:` (Triton)
    profile_name: str | None = None  # the name torch.profiler records (C++: "graph_0_<name>")

    @property
    def kind(self) -> str:
        """ "cpp" for every C++ backend method, else the backend ("triton", "halide", ...)."""
        return "cpp" if self.backend.startswith("cpp") else self.backend


@dataclasses.dataclass
class CallSite:
    """One statement of a module's ``call()`` (``partition_N()``, subgraph function) body, in execution order.

    The body of a higher-order op's subgraph function (``def true_graph_0(args):``) follows the
    statement that calls it."""

    kind: str  # "kernel" (a kernel of this module), "extern" (extern_kernels.X / aten or custom op), "other"
    # kernel name, or the op as the profiler shows it ("aten::addmm", "my_lib::scaled_tanh"); "" for other
    target: str
    source_nodes: list[str]  # the Source Nodes comment above it (kernels: the kernel's own if none)
    aten_ops: list[str]
    code: str  # the stripped statement, trailing comment kept (`buf1 = buf0; del buf0  # reuse`)
    line_number: int
    function: str = "call"  # "call", "partition_0", ..., or a subgraph function ("true_graph_0")


@dataclasses.dataclass
class OutputCodeModule:
    """One ``Output code:`` record: the wrapper module inductor generated for one graph."""

    aot_id: str | None  # "0_forward"
    graph_kind: str  # "forward", "backward", "inference" or "unknown"
    compile_id: str | None  # dynamo's "0/0" from the log prefix / trace metadata, when present
    output_code_path: str | None  # "Output code written to:" path / trace "file_path"
    kernels: dict[str, KernelDefinition]
    statements: list[CallSite]
    line_number: int
    index: int = 0
    graph: int | None = None  # index into InductorLog.graphs
    stream: str = ""
    run: int = 0
    source_file: str = ""

    @property
    def calls(self) -> list[CallSite]:
        """The launches: kernel and extern call sites, in execution order."""
        return [statement for statement in self.statements if statement.kind != "other"]

    @property
    def graph_ids(self) -> set[int]:
        """Inductor graph ids, from the C++ kernels' profile names ("graph_<id>_..."); empty otherwise."""
        ids = set()
        for kernel in self.kernels.values():
            match = _GRAPH_PREFIX_RE.match(kernel.profile_name or "")
            if match:
                ids.add(int(match.group(1)))
        return ids

    @property
    def label(self) -> str:
        return f"{self.aot_id or '?'} (log line {self.line_number})"


@dataclasses.dataclass
class Run:
    """One program's compiles: a stream (process / rank / file), split where its AOT ids start over."""

    index: int
    stream: str
    line: int  # first line


@dataclasses.dataclass
class InductorLog:
    graphs: list[Graph] = dataclasses.field(default_factory=list)
    modules: list[OutputCodeModule] = dataclasses.field(default_factory=list)
    runs: list[Run] = dataclasses.field(default_factory=list)
    warnings: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (line, message), capped
    num_warnings: int = 0
    num_lines: int = 0
    # Lines that are not graph or output-code text, by what they are: "user output",
    # "torch warnings", "other log records", "other trace records". Skipped, never warnings.
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    format: str = ""  # "default", "short", "plain", "bare", "trace", or a "+"-joined mix
    json_files: list[str] = dataclasses.field(default_factory=list)  # read files that hold JSON, not a log

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tensor_bytes(dtype: str, shape: str) -> int | None:
    """``f32``, ``16, 64`` -> 4096; None for symbolic sizes (``s0``) or unknown dtypes."""
    size = DTYPE_BYTES.get(dtype)
    if size is None:
        return None
    count = 1
    for dim in shape.split(","):
        dim = dim.strip()
        if not dim:
            continue
        if not dim.isdigit():
            return None
        count *= int(dim)
    return size * count

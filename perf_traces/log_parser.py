"""Parse a ``TORCH_LOGS=output_code`` log into output-code modules, their kernels and ``call()`` bodies.

The log is untrusted text: it is read line by line with regexes (never imported, ``exec``-ed or
``eval``-ed). Malformed parts produce a warning naming the line number and parsing continues;
``strict=True`` turns the first warning into a ``ValueError`` (for tests and CI).

Accepted layouts of the same content:

- torch's log format (``TORCH_LOGS=output_code python train.py 2> log``, or ``TORCH_LOGS_OUT``), where
  every line of a record carries a prefix such as
  ``V1123 18:56:37.289000 6703 /…/graph.py:2722] [0/0] [__output_code] # AOT ID: ['0_forward']``;
- a plain ``logging`` handler: only the first line (``… Output code:``) carries a prefix and the module
  follows unprefixed;
- the bare module text (no prefixes at all, e.g. the ``.py`` file the log points at).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Iterable

__all__ = [
    "CallSite",
    "KernelDefinition",
    "OutputCodeLogWarning",
    "OutputCodeModule",
    "parse_output_code_log",
    "parse_output_code_log_file",
]


class OutputCodeLogWarning(UserWarning):
    """A malformed part of an output-code log that was skipped."""


# torch's log-line prefix, e.g.
# "V1123 18:56:37.289000 6703 /x/torch/_inductor/graph.py:2722] [0/0] [__output_code] Output code: "
# The bracketed groups after "] " are optional: a compile id ("[0/0]", "[1/0_1]", "[0/0] [__rank0]") and
# the artifact name ("[__output_code]").
_LOG_PREFIX_RE = re.compile(r"^[VIWEDC]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^\]]*?:\d+\] ((?:\[[^\]\s]*\] )*)")
_COMPILE_ID_RE = re.compile(r"\[(\d+/\d+(?:_\d+)?)\]")
# "# AOT ID: ['0_forward']"
_AOT_ID_RE = re.compile(r"^# AOT ID: \['([^']*)'\]")
# "cpp_fused_relu_1 = async_compile.cpp_pybinding(['float*'], r'''"
# "triton_poi_fused_relu_0 = async_compile.triton('triton_poi_fused_relu_0', '''"
_KERNEL_DEF_RE = re.compile(r"^(\w+) = async_compile\.(\w+)\(.*?r?'''\s*$")
# '    torch::aot_inductor::RAIIAtenRecordFunctionHandle record_graph_0_k_("graph_0_k", nullptr);'
_RECORD_FUNCTION_RE = re.compile(r'RAIIAtenRecordFunctionHandle\s+\w+\("([^"]+)"')
# "# kernel path: /tmp/torchinductor_user/ab/cabc.py"
_KERNEL_PATH_RE = re.compile(r"^# kernel path: (\S.*)$")
# "# Topologically Sorted Source Nodes: [input_2], Original ATen: [aten.t, aten.addmm]"
_SOURCE_NODES_RE = re.compile(
    r"^#\s*(?:Topologically Sorted )?Source Nodes: \[(.*?)\], Original ATen: \[(.*?)\]"
)
# "    def call(self, args):" (torch >= 2.8) or "def call(args):"
_CALL_DEF_RE = re.compile(r"^(\s*)def call\((?:self, )?args\):")
# "        extern_kernels.addmm(primals_5, buf4, ..., out=buf5)"
_EXTERN_CALL_RE = re.compile(r"^\s*(?:\w+ = )?extern_kernels\.(\w+)\(")
# "        buf3 = torch.ops.aten.convolution_backward.default(...)" / "aten._foo.default(...)"
_ATEN_CALL_RE = re.compile(r"^\s*(?:[\w, ]+ = )?(?:torch\.ops\.)?aten\.(\w+)\.(\w+)\(")
# "        cpp_fused_relu_1(buf0, buf1)" / "        triton_poi_fused_relu_0.run(buf0, 16, stream=stream0)"
_KERNEL_CALL_RE = re.compile(r"^\s*(\w+)(?:\.run)?\(")
_OUTPUT_WRITTEN_RE = re.compile(r"^Output code written to: (\S.*)$")
_GRAPH_PREFIX_RE = re.compile(r"^graph_(\d+)_")
# "triton_per_fused_native_layer_norm_0" -> category "per", fused ops "native_layer_norm"
_KERNEL_NAME_RE = re.compile(r"^(?:triton_(?:poi|red|per|tem|for|mm)_|cpp_)?(?:fused_)?(.*?)(?:_\d+)?$")


@dataclasses.dataclass
class KernelDefinition:
    """One generated kernel: its Python-level name, source, and what it was generated from."""

    name: str  # the wrapper-level name, e.g. "cpp_fused_native_layer_norm_0"
    backend: str  # async_compile method: "cpp_pybinding", "triton", ...
    source: str
    profile_name: str | None  # the name the profiler records (C++ kernels: "graph_0_<name>")
    kernel_path: str | None  # "# kernel path:" comment (Triton), else None
    source_nodes: list[str]
    aten_ops: list[str]
    line_number: int  # 1-based line of the definition in the log


@dataclasses.dataclass
class CallSite:
    """One call in the module's ``call()`` body, in execution order."""

    kind: str  # "kernel" (a kernel defined in this module) or "extern" (an ATen op / extern kernel)
    target: str  # kernel name, or the ATen op name as the profiler shows it ("aten::addmm")
    source_nodes: list[str]
    aten_ops: list[str]
    code: str  # the stripped call line
    line_number: int


@dataclasses.dataclass
class OutputCodeModule:
    """One ``Output code:`` record: a compiled forward, backward or inference graph."""

    aot_id: str | None  # "0_forward"
    graph_kind: str  # "forward", "backward", "inference" or "unknown"
    compile_id: str | None  # dynamo's "0/0" from the log prefix, when present
    output_code_path: str | None  # "Output code written to:" path, when present
    kernels: dict[str, KernelDefinition]
    calls: list[CallSite]
    line_number: int

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


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def ops_from_kernel_name(kernel_name: str) -> list[str]:
    """The fused op names Inductor put into a kernel's name (a hint, not exact: names are truncated)."""
    match = _KERNEL_NAME_RE.match(_GRAPH_PREFIX_RE.sub("", kernel_name))
    return [match.group(1)] if match and match.group(1) else []


def _graph_kind(aot_id: str | None) -> str:
    if aot_id is None:
        return "unknown"
    for kind in ("forward", "backward", "inference"):
        if aot_id.endswith(kind):
            return kind
    return "unknown"


class _Warner:
    def __init__(self, strict: bool, source_name: str) -> None:
        self.strict = strict
        self.source_name = source_name
        self.count = 0

    def __call__(self, line_number: int, message: str) -> None:
        text = f"{self.source_name}:{line_number}: {message}"
        if self.strict:
            raise ValueError(text + " (strict mode; pass strict=False to skip malformed parts)")
        self.count += 1
        warnings.warn(text, OutputCodeLogWarning, stacklevel=3)


def _records(lines: Iterable[str]) -> Iterable[tuple[int, str | None, list[tuple[int, str]]]]:
    """Yield (first line number, compile id, [(line number, payload line)]) per ``Output code:`` record."""
    current: list[tuple[int, str]] | None = None
    start_line = 0
    compile_id = None
    for line_number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        prefix_match = _LOG_PREFIX_RE.match(line)
        if prefix_match:
            tags = prefix_match.group(1)
            payload = line[prefix_match.end() :]
            if payload.startswith("Output code:"):
                if current is not None:
                    yield start_line, compile_id, current
                id_match = _COMPILE_ID_RE.search(tags)
                compile_id = id_match.group(1) if id_match else None
                current, start_line = [], line_number
                rest = payload[len("Output code:") :].strip()
                if rest:
                    current.append((line_number, rest))
                continue
            written = _OUTPUT_WRITTEN_RE.match(payload)
            if current is not None and not written and "[__output_code]" in tags:
                current.append((line_number, payload))
                continue
            if current is not None:  # another log record ends a multi-line record
                yield start_line, compile_id, current
                current = None
            if written:
                yield -line_number, None, [(line_number, payload)]
            continue
        if line.startswith("Output code:"):  # unprefixed record start (bare format)
            if current is not None:
                yield start_line, compile_id, current
            current, start_line, compile_id = [], line_number, None
            continue
        if _OUTPUT_WRITTEN_RE.match(line):
            if current is not None:
                yield start_line, compile_id, current
                current = None
            yield -line_number, None, [(line_number, line)]
            continue
        if current is not None:
            current.append((line_number, line))
        elif _AOT_ID_RE.match(line):  # bare module text without an "Output code:" header
            current, start_line, compile_id = [(line_number, line)], line_number, None
    if current is not None:
        yield start_line, compile_id, current


def _parse_module(
    start_line: int, compile_id: str | None, lines: list[tuple[int, str]], warn: _Warner
) -> OutputCodeModule | None:
    aot_id = None
    kernels: dict[str, KernelDefinition] = {}
    calls: list[CallSite] = []
    pending_comments: list[str] = []
    index = 0
    call_indent: int | None = None
    call_nodes: tuple[list[str], list[str]] | None = None
    saw_call = False
    while index < len(lines):
        line_number, line = lines[index]
        index += 1
        if call_indent is not None:
            stripped = line.strip()
            indent = len(line) - len(line.lstrip())
            if stripped and indent <= call_indent:
                call_indent = None  # fell out of call(); handle this line below
            else:
                if not stripped:
                    continue
                nodes = _SOURCE_NODES_RE.match(stripped)
                if nodes:
                    call_nodes = (_split_list(nodes.group(1)), _split_list(nodes.group(2)))
                    continue
                if stripped.startswith("#"):
                    continue
                extern = _EXTERN_CALL_RE.match(line)
                aten = _ATEN_CALL_RE.match(line) if not extern else None
                kernel_call = _KERNEL_CALL_RE.match(line)
                if extern or aten:
                    op = extern.group(1) if extern else aten.group(1)
                    source_nodes, aten_ops = call_nodes or ([], [])
                    calls.append(
                        CallSite("extern", f"aten::{op}", source_nodes, aten_ops, stripped, line_number)
                    )
                    call_nodes = None
                elif kernel_call and kernel_call.group(1) in kernels:
                    kernel = kernels[kernel_call.group(1)]
                    source_nodes, aten_ops = call_nodes or (kernel.source_nodes, kernel.aten_ops)
                    calls.append(
                        CallSite("kernel", kernel.name, source_nodes, aten_ops, stripped, line_number)
                    )
                    call_nodes = None
                continue
        aot = _AOT_ID_RE.match(line)
        if aot:
            aot_id = aot.group(1)
            continue
        if line.startswith("#"):
            pending_comments.append(line)
            continue
        definition = _KERNEL_DEF_RE.match(line)
        if definition:
            name, backend = definition.group(1), definition.group(2)
            body: list[str] = []
            terminated = False
            while index < len(lines):
                _, body_line = lines[index]
                index += 1
                if body_line.startswith("'''"):
                    terminated = True
                    break
                body.append(body_line)
            if not terminated:
                warn(line_number, f"kernel {name!r}: source not terminated by ''' (truncated log?); kept")
            source = "\n".join(body)
            record = _RECORD_FUNCTION_RE.search(source)
            kernel_path = None
            source_nodes: list[str] = []
            aten_ops: list[str] = []
            for comment in pending_comments:
                path_match = _KERNEL_PATH_RE.match(comment)
                if path_match:
                    kernel_path = path_match.group(1).strip()
                nodes = _SOURCE_NODES_RE.match(comment)
                if nodes:
                    source_nodes, aten_ops = _split_list(nodes.group(1)), _split_list(nodes.group(2))
            if name in kernels:
                warn(line_number, f"kernel {name!r} defined twice in one module; keeping the last")
            kernels[name] = KernelDefinition(
                name=name,
                backend=backend,
                source=source,
                profile_name=record.group(1) if record else None,
                kernel_path=kernel_path,
                source_nodes=source_nodes,
                aten_ops=aten_ops,
                line_number=line_number,
            )
            pending_comments = []
            continue
        if line.strip():
            pending_comments = []
        call_def = _CALL_DEF_RE.match(line)
        if call_def:
            call_indent = len(call_def.group(1))
            saw_call = True
    if aot_id is None:
        warn(start_line, "output-code record without '# AOT ID:' line; forward/backward unknown")
    if not saw_call:
        warn(start_line, f"output-code record {aot_id!r} has no 'def call(...)' body (truncated log?)")
    if not kernels and not calls:
        return None
    return OutputCodeModule(
        aot_id=aot_id,
        graph_kind=_graph_kind(aot_id),
        compile_id=compile_id,
        output_code_path=None,
        kernels=kernels,
        calls=calls,
        line_number=start_line,
    )


def parse_output_code_log(
    lines: Iterable[str], *, strict: bool = False, source_name: str = "<log>"
) -> list[OutputCodeModule]:
    """Parse the lines of an output-code log into modules, in log order (see the module docstring)."""
    warn = _Warner(strict, source_name)
    modules: list[OutputCodeModule] = []
    for start_line, compile_id, record in _records(lines):
        if start_line < 0:  # "Output code written to: <path>" belongs to the module before it
            path = _OUTPUT_WRITTEN_RE.match(record[0][1]).group(1).strip()
            if modules and modules[-1].output_code_path is None:
                modules[-1].output_code_path = path
            continue
        module = _parse_module(start_line, compile_id, record, warn)
        if module is not None:
            modules.append(module)
    return modules


def parse_output_code_log_file(path: str, *, strict: bool = False) -> list[OutputCodeModule]:
    """``parse_output_code_log`` of a file (decoded as UTF-8; undecodable bytes replaced)."""
    with open(path, encoding="utf-8", errors="replace") as log_file:
        return parse_output_code_log(log_file, strict=strict, source_name=path)

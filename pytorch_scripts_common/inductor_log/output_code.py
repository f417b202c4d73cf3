"""Read one output-code module (the Python wrapper inductor generates) into an ``OutputCodeModule``.

What is read (torch 2.x; the log prefix already removed by ``records``)::

    # AOT ID: ['0_forward']
    ...
    # kernel path: /tmp/torchinductor_user/ab/cab.py                     (Triton)
    # Topologically Sorted Source Nodes: [x], Original ATen: [aten.abs]  (or "Unsorted", or none)
    # Source node to ATen node mapping:
    #   x => abs_1
    # Graph fragment:
    #   %abs_1 : [num_users=1] = call_function[target=torch.ops.aten.abs.default](args = (%x,))
    #   return %abs_1
    triton_poi_fused_abs_0 = async_compile.triton('triton_poi_fused_abs_0', '''
    ...''', device_str='cuda')
    cpp_fused_relu_0 = async_compile.cpp_pybinding(['float*'], r'''
    ...''')
    def call(self, args):          (or `def call(args):`, and `def partition_0(self, args):` bodies)
        # Topologically Sorted Source Nodes: [input_1], Original ATen: [aten.addmm]
        extern_kernels.addmm(primals_2, primals_3, reinterpret_tensor(primals_1, ...), out=buf0)
        cpp_fused_relu_0(buf1)
        triton_poi_fused_abs_0.run(buf0, 16, stream=stream0)
        buf3 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default(...)
        return (buf2, primals_3, )
    ...
    if __name__ == "__main__":
        from torch._inductor.wrapper_benchmark import compiled_module_main
        compiled_module_main('None', benchmark_compiled_module)

The module ends after the ``compiled_module_main(...)`` line; text after it is not module text.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pytorch_scripts_common.inductor_log.graph_text import split_args
from pytorch_scripts_common.inductor_log.structures import CallSite, KernelDefinition, OutputCodeModule

# "# AOT ID: ['0_forward']"
AOT_ID_RE = re.compile(r"^# AOT ID: \['([^']*)'\]")
# "cpp_fused_relu_0 = async_compile.cpp_pybinding(['float*'], r'''"
KERNEL_DEF_RE = re.compile(r"^(\w+) = async_compile\.(\w+)\((.*)$")
# '    torch::aot_inductor::RAIIAtenRecordFunctionHandle record_graph_0_k_("graph_0_k", nullptr);'
RECORD_FUNCTION_RE = re.compile(r'RAIIAtenRecordFunctionHandle\s+\w+\("([^"]+)"')
KERNEL_PATH_RE = re.compile(r"^# kernel path: (\S.*)$")
# "# Topologically Sorted Source Nodes: [input_2], Original ATen: [aten.t, aten.addmm]"
# (also "# Unsorted Source Nodes: ..." and the older "# Source Nodes: ...")
SOURCE_NODES_RE = re.compile(
    r"^#\s*(?:Topologically Sorted |Unsorted )?Source Nodes: \[(.*?)\], Original ATen: \[(.*?)\]"
)
# "#   input_2 => relu, add_tensor" (under "# Source node to ATen node mapping:")
ATEN_MAPPING_RE = re.compile(r"^#\s{2,}(\w+) => ([\w, ]*)$")
# "#   %abs_3 : [num_users=1] = call_function[target=torch.ops.aten.abs.default](args = (%x,))"
# "#   %buf0 : Tensor "f32[16][1]cuda:0" = PlaceHolder[target=buf0]"
FRAGMENT_NODE_RE = re.compile(r"^#\s+%(\w+) : .*?= (call_function|PlaceHolder|placeholder)\[target=")
FRAGMENT_RETURN_RE = re.compile(r"^#\s+return (.*)$")
# "    def call(self, args):" (torch >= 2.8), "def call(args):", "    def partition_0(self, args):", and
# the subgraphs of higher-order ops (torch.cond, while_loop, invoke_subgraph): "def true_graph_0(args):"
FUNCTION_DEF_RE = re.compile(r"^(\s*)def (\w+)\((?:self, )?args\):")
# "            buf3 = true_graph_0(true_graph_0_args)": a call of a subgraph function
SUBGRAPH_CALL_RE = re.compile(r"^(?:\w+ = )?(\w+)\(\1_args\)")
MAIN_FUNCTION_RE = re.compile(r"^(?:call|partition_\d+)$")
# "        extern_kernels.addmm(primals_5, buf4, ..., out=buf5)"
EXTERN_CALL_RE = re.compile(r"^(?:\w+ = )?extern_kernels\.(\w+)\(")
# "        buf3 = torch.ops.aten.convolution_backward.default(...)" / "aten._foo.default(...)", and custom
# ops: "buf0 = torch.ops.my_lib.scaled_tanh.default(buf1, 0.5)" (the profiler records my_lib::scaled_tanh).
# Not torch.ops.higher_order (Python operators, not recorded by the profiler).
OP_CALL_RE = re.compile(r"^(?:[\w, ]+ = )?(?:torch\.ops\.(?!higher_order\.)(\w+)|(aten))\.(\w+)\.(\w+)\(")
# "        cpp_fused_relu_1(buf0, buf1)" / "        triton_poi_fused_relu_0.run(buf0, 16, stream=stream0)"
KERNEL_CALL_RE = re.compile(r"^(\w+)(?:\.run)?\(")
KERNEL_NAME_RE = re.compile(r"^(?:triton_(?:poi|red|per|tem|for|mm)_|cpp_)?(?:fused_)?(.*?)(?:_\d+)?$")
GRAPH_PREFIX_RE = re.compile(r"^graph_(\d+)_")
QUOTE = "'''"
# Extern calls whose op the profiler records under another name: max-autotune's choice
# `extern_kernels.bias_addmm` is a Python function calling torch.addmm (torch/_inductor/kernel/mm.py).
PROFILER_OP_OF_EXTERN = {"bias_addmm": "addmm"}

Warn = Callable[[int, str], None]


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def ops_from_kernel_name(kernel_name: str) -> list[str]:
    """The fused op names Inductor put into a kernel's name (a hint, not exact: names are truncated)."""
    match = KERNEL_NAME_RE.match(GRAPH_PREFIX_RE.sub("", kernel_name))
    return [match.group(1)] if match and match.group(1) else []


def graph_kind(aot_id: str | None) -> str:
    if aot_id is None:
        return "unknown"
    for kind in ("forward", "backward", "inference"):
        if aot_id.endswith(kind):
            return kind
    return "unknown"


class _Comments:
    """The comment block above a kernel definition or an extern call."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.kernel_path: str | None = None
        self.source_nodes: list[str] = []
        self.aten_ops: list[str] = []
        self.aten_mapping: dict[str, list[str]] = {}
        self.fragment_nodes: list[str] = []
        self.fragment_inputs: list[str] = []
        self.fragment_outputs: list[str] = []
        self.seen = False

    def read(self, stripped: str) -> bool:
        """Take one comment line; False if it is not one of the kernel-metadata comments."""
        if match := SOURCE_NODES_RE.match(stripped):
            self.source_nodes, self.aten_ops = split_list(match.group(1)), split_list(match.group(2))
        elif match := KERNEL_PATH_RE.match(stripped):
            self.kernel_path = match.group(1).strip()
        elif match := ATEN_MAPPING_RE.match(stripped):
            self.aten_mapping[match.group(1)] = split_list(match.group(2))
        elif match := FRAGMENT_NODE_RE.match(stripped):
            if match.group(2) == "call_function":
                self.fragment_nodes.append(match.group(1))
            else:
                self.fragment_inputs.append(match.group(1))
        elif match := FRAGMENT_RETURN_RE.match(stripped):
            self.fragment_outputs = [
                name.strip().lstrip("%") for name in match.group(1).split(",") if name.strip()
            ]
        elif stripped.startswith(("# Source node to ATen node mapping", "# Graph fragment")):
            pass
        else:
            return False
        self.seen = True
        return True


def read_module(
    lines: list[tuple[int, str]], warn: Warn, *, line_number: int, bounded: bool
) -> tuple[OutputCodeModule | None, int]:
    """Parse module text; return (module or None when there is nothing of one, lines consumed).

    ``bounded``: every line belongs to the module (a prefixed record / trace payload); otherwise the
    module ends after its ``compiled_module_main(...)`` line.
    """
    aot_id = None
    kernels: dict[str, KernelDefinition] = {}
    statements: list[CallSite] = []
    comments = _Comments()
    function: str | None = None  # the call()/partition_N()/subgraph body being read
    function_indent = 0
    saw_call = False
    position = 0
    ended_at = len(lines)
    while position < len(lines):
        number, line = lines[position]
        position += 1
        stripped = line.strip()
        if function is not None:
            indent = len(line) - len(line.lstrip())
            if stripped and indent <= function_indent:
                function = None  # fell out of the body; handle this line below
            else:
                if stripped.startswith("#"):
                    comments.read(stripped)
                elif stripped:
                    statements.append(_statement(stripped, number, function, kernels, comments))
                    comments.clear()
                continue
        if aot := AOT_ID_RE.match(stripped):
            if aot_id is None:
                aot_id = aot.group(1)
                continue
            if not bounded:  # the next module of bare module text
                ended_at = position - 1
                break
        if stripped.startswith("#"):
            if not comments.read(stripped):
                comments.clear()
            continue
        definition = KERNEL_DEF_RE.match(line)
        if definition:
            position = _read_kernel(definition, number, lines, position, kernels, comments, warn)
            comments.clear()
            continue
        if stripped:
            comments.clear()
        function_def = FUNCTION_DEF_RE.match(line)
        if function_def:
            function_indent = len(function_def.group(1))
            function = function_def.group(2)
            saw_call = saw_call or function == "call"
            continue
        if "compiled_module_main(" in stripped and not bounded:
            ended_at = position
            break
    if aot_id is None and not kernels and not statements:
        return None, 0
    if aot_id is None:
        warn(line_number, "output-code record without '# AOT ID:' line; forward/backward unknown")
    if not saw_call:
        warn(line_number, f"output code {aot_id!r} has no 'def call(...)' body (truncated log?)")
    module = OutputCodeModule(
        aot_id=aot_id,
        graph_kind=graph_kind(aot_id),
        compile_id=None,
        output_code_path=None,
        kernels=kernels,
        statements=_in_execution_order(statements),
        line_number=line_number,
    )
    return module, ended_at


def _in_execution_order(statements: list[CallSite]) -> list[CallSite]:
    """Subgraph functions (defined before ``call()``) moved to just after the statement that calls them.

    ``call()`` and ``partition_N()`` bodies keep their order; a subgraph called twice (both branches
    of one ``torch.cond`` call different ones) is placed at its first call; one never called stays last.
    """
    bodies: dict[str, list[CallSite]] = {}
    for statement in statements:
        bodies.setdefault(statement.function, []).append(statement)
    if all(MAIN_FUNCTION_RE.match(function) for function in bodies):
        return statements
    ordered: list[CallSite] = []
    placed: set[str] = set()

    def emit(function: str, depth: int) -> None:
        placed.add(function)
        for statement in bodies[function]:
            ordered.append(statement)
            called = SUBGRAPH_CALL_RE.match(statement.code)
            if called and called.group(1) in bodies and called.group(1) not in placed and depth < 16:
                emit(called.group(1), depth + 1)

    for function in bodies:
        if MAIN_FUNCTION_RE.match(function) and function not in placed:
            emit(function, 0)
    for function in bodies:
        if function not in placed:
            emit(function, 0)
    return ordered


def _read_kernel(
    definition: re.Match[str],
    number: int,
    lines: list[tuple[int, str]],
    position: int,
    kernels: dict[str, KernelDefinition],
    comments: _Comments,
    warn: Warn,
) -> int:
    name, backend, rest = definition.group(1), definition.group(2), definition.group(3)
    code_lines: list[str] = []
    if QUOTE in rest:
        after = rest.split(QUOTE, 1)[1]
        if QUOTE in after:  # one-line kernel string
            code_lines.append(after.split(QUOTE, 1)[0])
        else:
            if after.strip():
                code_lines.append(after)
            closed = False
            while position < len(lines):
                _, raw = lines[position]
                position += 1
                if QUOTE in raw:
                    code_lines.append(raw.split(QUOTE, 1)[0])
                    closed = True
                    break
                code_lines.append(raw)
            if not closed:
                warn(number, f"kernel {name!r}: source not terminated by ''' (truncated log?); kept")
    source = "\n".join(code_lines).strip("\n")
    if backend.startswith("cpp"):
        signature = re.search(r"void\s+kernel\((.*?)\)", source, flags=re.S)
        params = re.findall(r"(\w+)\s*(?:,|$)", signature.group(1)) if signature else []
    else:
        signature = re.search(r"def \w+\((.*?)\):", source, flags=re.S)
        params = [p.split(":")[0].strip() for p in split_args(signature.group(1))] if signature else []
    if name in kernels:
        warn(number, f"kernel {name!r} defined twice in one module; keeping the last")
    record = RECORD_FUNCTION_RE.search(source)
    kernels[name] = KernelDefinition(
        name=name,
        backend=backend,
        source=source,
        line_number=number,
        params=params,
        source_nodes=comments.source_nodes,
        aten_ops=comments.aten_ops,
        aten_mapping=comments.aten_mapping,
        fragment_nodes=comments.fragment_nodes,
        fragment_inputs=comments.fragment_inputs,
        fragment_outputs=comments.fragment_outputs,
        kernel_path=comments.kernel_path,
        profile_name=record.group(1) if record else None,
    )
    return position


def _statement(
    stripped: str, number: int, function: str, kernels: dict[str, KernelDefinition], comments: _Comments
) -> CallSite:
    extern = EXTERN_CALL_RE.match(stripped)
    op_call = OP_CALL_RE.match(stripped) if not extern else None
    if extern or op_call:
        if extern:
            target = f"aten::{PROFILER_OP_OF_EXTERN.get(extern.group(1), extern.group(1))}"
        else:
            target = f"{op_call.group(1) or op_call.group(2)}::{op_call.group(3)}"
        return CallSite(
            "extern", target, comments.source_nodes, comments.aten_ops, stripped, number, function
        )
    kernel_call = KERNEL_CALL_RE.match(stripped)
    if kernel_call and kernel_call.group(1) in kernels:
        kernel = kernels[kernel_call.group(1)]
        if comments.seen:
            source_nodes, aten_ops = comments.source_nodes, comments.aten_ops
        else:
            source_nodes, aten_ops = kernel.source_nodes, kernel.aten_ops
        return CallSite("kernel", kernel.name, source_nodes, aten_ops, stripped, number, function)
    return CallSite("other", "", comments.source_nodes, comments.aten_ops, stripped, number, function)

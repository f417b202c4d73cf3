"""Line-based parser for ``TORCH_LOGS=aot_graphs,aot_joint_graph,output_code`` logs (torch 2.13).

It reads two kinds of blocks out of a log that also holds unrelated output:

- AOT graphs, cold form::

      INFO:torch._functorch._aot_autograd.graph_compile.__aot_graphs:TRACED GRAPH
       ===== Forward graph 0 =====
       /path/_lazy_graph_module.py class GraphModule(torch.nn.Module):
          def forward(self, primals_1: "f32[64, 64][64, 1]cpu", ...):
              relu: "f32[16, 64][64, 1]cpu" = torch.ops.aten.relu.default(addmm);  addmm = None
              return (addmm_1, primals_3)

  and the cache-hit form (``...__aot_graphs:Forward graph (from cache)``, no ``=====`` line, the
  signature and the return split over several lines with ``# PlainAOTInput(idx=0)`` comments).
- Output code modules: ``...__output_code:Output code: `` followed by ``# AOT ID: ['0_forward']`` and
  the module source up to the next log record. Kernels are ``name = async_compile.cpp_pybinding(...,
  r'''...''')`` or ``name = async_compile.triton('name', '''...''', device_str='cuda')``; the
  ``call(args)`` body is kept as statements for graph_viz.mapping.

Lines that belong to no block and are not a log record of another logger are reported as warnings
with their 1-based line number; ``strict=True`` raises ``LogParseError`` at the first one instead.
Nothing in the log is evaluated: arguments are split by a bracket-aware scanner.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

# `INFO:torch._inductor.codecache.__output_code:Output code: ` (TORCH_LOGS_FORMAT=short) or
# `V1123 10:00:00.123456 4242 torch/_inductor/codecache.py:1234] [0/0] [__output_code] Output code: `
LOG_RECORD_RE = re.compile(
    r"^(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):[\w.]+:"
    r"|[VIWEDC]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^\]]*\](?: \[[^\]]*\])* )"
)
# ` ===== Forward graph 0 =====` (cold form; the line after `TRACED GRAPH`)
COLD_HEADER_RE = re.compile(r"^\s*=====\s+(.+?)\s+=====\s*$")
# `Forward graph (from cache)` after a log prefix (cache-hit form)
CACHE_HEADER_RE = re.compile(r"\b(Joint|Forward|Backward|Inference) graph \(from cache\)\s*$")
# `# AOT ID: ['0_forward']`
AOT_ID_RE = re.compile(r"^# AOT ID: \['([^']*)'\]")
# `        addmm: "f32[16, 64][64, 1]cpu" = torch.ops.aten.addmm.default(a, b, c);  a = None`
NODE_RE = re.compile(r'^(\w+)(?:: "([^"]*)")? = (.*)$')
# `f32[16, 64][64, 1]cpu` -> dtype, shape, stride, device
ANNOTATION_RE = re.compile(r"^(\w+)\[([^\]]*)\]\[([^\]]*)\](.*)$")
# `cpp_fused_relu_0 = async_compile.cpp_pybinding(['float*'], r'''`
KERNEL_DEF_RE = re.compile(r"^(\w+) = async_compile\.(cpp_pybinding|cpp|triton|cuda|halide)\((.*)$")
# `    def call(self, args):` / `def call(args):`
CALL_DEF_RE = re.compile(r"^(\s*)def call\((?:self, )?args\):\s*$")
# `# Topologically Sorted Source Nodes: [a, b], Original ATen: [aten.addmm]`
SOURCE_NODES_RE = re.compile(
    r"^\s*# (?:Topologically Sorted|Unsorted) Source Nodes: \[([^\]]*)\], Original ATen: \[([^\]]*)\]"
)
# `#   input_2 => relu, add_tensor` (Triton "Source node to ATen node mapping")
ATEN_MAPPING_RE = re.compile(r"^\s*#\s{2,}(\w+) => ([\w, ]+)$")
KERNEL_PATH_RE = re.compile(r"^\s*# kernel path: (.*)$")
IDENT_RE = re.compile(r"^[A-Za-z_]\w*$")
MAX_WARNINGS = 2000


class LogParseError(ValueError):
    """A line the parser does not understand, raised in strict mode."""


@dataclasses.dataclass
class Node:
    name: str
    op: str  # "placeholder", "call_function", "getitem", "output"
    target: str  # e.g. "aten.addmm.default"
    args: list[str]  # argument texts as written
    inputs: list[str]  # names of graph nodes used by this node
    dtype: str = ""
    shape: str = ""
    stride: str = ""
    device: str = ""
    source: str = ""  # the `# File: ...` line above the node
    line: int = 0


@dataclasses.dataclass
class Graph:
    index: int
    kind: str  # joint, forward, backward, inference, other
    compile_id: str  # "0", "1", ... ("?" until known for cache-hit graphs)
    title: str
    from_cache: bool
    line: int
    nodes: list[Node] = dataclasses.field(default_factory=list)
    outputs: list[str] = dataclasses.field(default_factory=list)  # returned names, "None" kept
    module: int | None = None  # index into ParsedLog.modules
    complete: bool = False


@dataclasses.dataclass
class Kernel:
    name: str
    kind: str  # cpp, triton, ...
    code: str
    line: int  # 1-based log line of `name = async_compile...`
    params: list[str]  # parameter names of the kernel function (in_ptr0, out_ptr0, ...)
    source_nodes: list[str]  # from `# Topologically Sorted Source Nodes` above the definition
    original_aten: list[str]
    aten_mapping: dict[str, list[str]]  # source node -> graph node names (Triton comment)
    kernel_path: str = ""


@dataclasses.dataclass
class CallStatement:
    line: int
    text: str
    comment_source_nodes: list[str]  # from the comment right above (extern/fallback calls)
    comment_original_aten: list[str]


@dataclasses.dataclass
class OutputModule:
    index: int
    aot_id: str  # "0_forward"
    line: int
    kernels: list[Kernel] = dataclasses.field(default_factory=list)
    call: list[CallStatement] = dataclasses.field(default_factory=list)
    graph: int | None = None  # index into ParsedLog.graphs


@dataclasses.dataclass
class ParsedLog:
    graphs: list[Graph] = dataclasses.field(default_factory=list)
    modules: list[OutputModule] = dataclasses.field(default_factory=list)
    warnings: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    num_warnings: int = 0
    num_lines: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SPECIAL_CHARS_RE = re.compile(r"[()\[\]{}'\",\\]")


def split_args(text: str) -> list[str]:
    """Split ``a, [1, 2], f(b, c), d = 'x,y'`` at top-level commas (brackets and quotes respected)."""
    if not any(char in text for char in "([{'\"\\"):
        parts = [part.strip() for part in text.split(",")]
        return parts[:-1] if parts and not parts[-1] else parts
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    escaped_until = -1
    for match in SPECIAL_CHARS_RE.finditer(text):  # only the characters that matter, not every one
        i = match.start()
        if i < escaped_until:
            continue
        char = text[i]
        if quote:
            if char == "\\":
                escaped_until = i + 2
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    tail = text[start:].strip()
    if tail:
        parts.append(tail)
    return parts


def call_parts(expr: str) -> tuple[str, str] | None:
    """``torch.ops.aten.mm.default(a, b)`` -> (``torch.ops.aten.mm.default``, ``a, b``); None if no call."""
    paren = expr.find("(")
    if paren <= 0 or not expr.endswith(")"):
        return None
    return expr[:paren].strip(), expr[paren + 1 : -1]


def names_in(text: str) -> list[str]:
    """Identifiers in an argument text, skipping keywords/literals (``dtype = torch.float32`` keeps none)."""
    found = []
    for part in split_args(text):
        if "=" in part and not part.startswith(("[", "(")):
            part = part.split("=", 1)[1].strip()
        for token in re.findall(r"(?<![\w.'\"])[A-Za-z_]\w*(?![\w.(])", part):
            if token not in ("None", "True", "False", "inf", "nan"):
                found.append(token)
    return found


def _strip_comment(text: str) -> str:
    # `primals_1: "f32[4]cpu",  # PlainAOTInput(idx=0)` -> without the comment; '#' never occurs in
    # a quoted annotation.
    hash_pos = text.find("  #")
    return text[:hash_pos] if hash_pos >= 0 else text


class _Parser:
    def __init__(self, lines: list[str], strict: bool) -> None:
        self.lines = lines
        self.strict = strict
        self.result = ParsedLog(num_lines=len(lines))
        self.pos = 0
        self.pending_source_nodes: tuple[list[str], list[str]] = ([], [])

    def warn(self, line_index: int, message: str) -> None:
        text = f"line {line_index + 1}: {message}"
        if self.strict:
            raise LogParseError(text)
        self.result.num_warnings += 1
        if len(self.result.warnings) < MAX_WARNINGS:
            self.result.warnings.append((line_index + 1, message))

    def run(self) -> ParsedLog:
        lines = self.lines
        while self.pos < len(lines):
            line = lines[self.pos]
            record = LOG_RECORD_RE.match(line)
            if record:
                message = line[record.end() :]
                if message.startswith("TRACED GRAPH") and self.pos + 1 < len(lines):
                    header = COLD_HEADER_RE.match(lines[self.pos + 1])
                    if header:
                        self.pos += 2
                        self.parse_graph(header.group(1), from_cache=False, header_line=self.pos - 1)
                        continue
                cache_header = CACHE_HEADER_RE.search(message)
                if cache_header:
                    self.pos += 1
                    self.parse_graph(
                        f"{cache_header.group(1)} graph", from_cache=True, header_line=self.pos - 1
                    )
                    continue
                if message.startswith("Output code: ") or message.rstrip() == "Output code:":
                    rest = message[len("Output code:") :].strip()
                    self.pos += 1
                    if rest.startswith("# AOT ID:"):  # module text on the same line
                        self.pos -= 1
                        lines[self.pos] = rest
                    self.parse_module()
                    continue
                self.pos += 1  # some other logger's record: not ours, not a problem
                continue
            if AOT_ID_RE.match(line):  # output code printed without a prefix line
                self.parse_module()
                continue
            if line.strip():
                self.warn(self.pos, f"skipped unrecognised line: {line[:120]!r}")
            self.pos += 1
        self.link_modules_to_graphs()
        return self.result

    # ---- graphs -------------------------------------------------------------------------------

    def parse_graph(self, title: str, *, from_cache: bool, header_line: int) -> None:
        # title: "Forward graph 0" (cold) or "Forward graph" (cache hit)
        match = re.match(r"^(\w+) graph\s*(\d*)", title)
        kind = match.group(1).lower() if match else "other"
        if kind not in ("joint", "forward", "backward", "inference"):
            kind = "other"
        compile_id = match.group(2) if match and match.group(2) else "?"
        graph = Graph(
            index=len(self.result.graphs),
            kind=kind,
            compile_id=compile_id,
            title=title + (" (from cache)" if from_cache else ""),
            from_cache=from_cache,
            line=header_line + 1,
        )
        self.result.graphs.append(graph)
        lines = self.lines
        known: set[str] = set()
        source = ""
        body_indent = -1
        in_signature = False
        signature_parts: list[str] = []
        return_parts: list[str] | None = None
        return_line = 0
        while self.pos < len(lines):
            raw = lines[self.pos]
            stripped = raw.strip()
            if stripped and not raw[0].isspace() and not stripped.startswith("class "):
                break  # a new log record or unrelated output: the graph text ended
            indent = len(raw) - len(raw.lstrip())
            index = self.pos
            self.pos += 1
            if not stripped:
                if graph.complete:
                    break
                continue
            if graph.complete:
                continue  # nested submodule classes printed after the main forward
            if in_signature:
                signature_parts.append(_strip_comment(stripped))
                if stripped.startswith("):") or stripped.endswith("):"):
                    in_signature = False
                    self.add_placeholders(graph, " ".join(signature_parts), index, known)
                continue
            if stripped.startswith("def forward(") and body_indent < 0:
                body_indent = indent + 4
                signature = stripped[len("def forward(") :]
                if signature.rstrip().endswith("):"):
                    self.add_placeholders(graph, signature, index, known)
                else:
                    in_signature = True
                    signature_parts = [signature]
                continue
            if body_indent < 0 or indent != body_indent:
                if body_indent < 0 and (" class " in raw or stripped.startswith("class ")):
                    continue
                if return_parts is None and body_indent >= 0 and indent > body_indent:
                    continue  # nested submodule body
                if return_parts is None:
                    continue
            if return_parts is not None:
                return_parts.append(_strip_comment(stripped))
                if (
                    stripped.startswith((")", "]"))
                    or stripped.endswith(("_spec)", ")"))
                    and indent == body_indent
                ):
                    self.finish_return(graph, " ".join(return_parts), return_line)
                    return_parts = None
                continue
            if stripped.startswith("# File:"):
                source = stripped[2:]
                continue
            if stripped.startswith("#"):
                if stripped.startswith("# No stacktrace"):
                    source = ""
                continue
            if stripped.startswith("return"):
                text = _strip_comment(stripped)
                if text.endswith(("(", "[")):
                    return_parts = [text]
                    return_line = index
                else:
                    self.finish_return(graph, text, index)
                continue
            self.parse_node_line(graph, stripped, index, known, source)
        if not graph.complete:
            self.warn(header_line, f"{graph.title}: graph text ended before its return statement")

    def add_placeholders(self, graph: Graph, signature: str, index: int, known: set[str]) -> None:
        signature = signature.strip()
        if signature.endswith("):"):
            signature = signature[:-2]
        for part in split_args(signature):
            part = _strip_comment(part).strip().rstrip(",")
            name, _, annotation = part.partition(":")
            name = name.strip()
            if not IDENT_RE.match(name):
                if part:
                    self.warn(index, f"{graph.title}: unreadable forward() parameter {part[:80]!r}")
                continue
            if name == "self" or (not annotation and name in ("primals", "tangents")):
                continue
            self.add_placeholder(graph, name, annotation.strip().strip('"'), index, known)

    def add_placeholder(self, graph: Graph, name: str, annotation: str, index: int, known: set[str]) -> None:
        if name in known:
            return
        node = Node(name=name, op="placeholder", target="", args=[], inputs=[], line=index + 1)
        _set_annotation(node, annotation)
        graph.nodes.append(node)
        known.add(name)

    def parse_node_line(self, graph: Graph, stripped: str, index: int, known: set[str], source: str) -> None:
        # Joint graphs declare their inputs on one line (cold) or one per line (cache hit):
        # `primals_1: "f32[64, 64][64, 1]cpu"; primals_2: "f32[64][1]cpu"; `
        if '" = ' not in stripped and re.match(r'^\w+: "[^"]*"(;|$)', _strip_comment(stripped)):
            for decl in _strip_comment(stripped).split(";"):
                name, _, annotation = decl.strip().partition(":")
                if name and IDENT_RE.match(name):
                    self.add_placeholder(graph, name, annotation.strip().strip('"'), index, known)
            return
        if "fx_pytree.tree_flatten_spec(" in stripped:
            return  # `primals_1, ..., = fx_pytree.tree_flatten_spec([primals, tangents], self._in_spec)`
        statement = stripped.split(";  ", 1)[0]  # drop `;  a = b = None` (frees)
        match = NODE_RE.match(statement)
        if not match:
            self.warn(index, f"{graph.title}: unreadable graph line {stripped[:120]!r}")
            return
        name, annotation, expr = match.group(1), match.group(2), match.group(3)
        if name in known:
            self.warn(index, f"{graph.title}: node {name!r} defined twice; keeping the first")
            return
        parts = call_parts(expr)
        item = re.match(r"^(\w+)\[(\d+)\]$", expr)
        if item:  # `getitem: "f32[...]" = var_mean[0]`
            node = Node(name, "getitem", "getitem", [item.group(1), item.group(2)], [item.group(1)])
        elif parts:
            target, arg_text = parts
            target = target.removeprefix("torch.ops.")
            args = split_args(arg_text)
            node = Node(name, "call_function", target, args, [])
            node.inputs = [n for n in dict.fromkeys(names_in(arg_text)) if n in known]
        else:
            node = Node(name, "call_function", expr[:80], [expr], [])
            node.inputs = [n for n in dict.fromkeys(names_in(expr)) if n in known]
        node.line = index + 1
        node.source = source
        if annotation:
            _set_annotation(node, annotation)
        graph.nodes.append(node)
        known.add(name)

    def finish_return(self, graph: Graph, text: str, index: int) -> None:
        text = text.strip()[len("return") :].strip()
        text = text.removeprefix("pytree.tree_unflatten(")
        text = re.sub(r",?\s*self\._out_spec\)$", "", text)
        while text and text[0] in "([" and text[-1] in ")]":
            text = text[1:-1].strip()
        names = [p.strip() for p in split_args(text)]
        graph.outputs = [n if IDENT_RE.match(n) else "?" for n in names]
        known = {n.name for n in graph.nodes}
        node = Node("output", "output", "output", names, [n for n in dict.fromkeys(names) if n in known])
        node.line = index + 1
        graph.nodes.append(node)
        graph.complete = True

    # ---- output code ---------------------------------------------------------------------------

    def parse_module(self) -> None:
        lines = self.lines
        match = AOT_ID_RE.match(lines[self.pos]) if self.pos < len(lines) else None
        if not match:
            self.warn(self.pos, "output code without an `# AOT ID: [...]` line; skipped")
            return
        module = OutputModule(index=len(self.result.modules), aot_id=match.group(1), line=self.pos + 1)
        self.result.modules.append(module)
        self.pos += 1
        source_nodes: tuple[list[str], list[str]] = ([], [])
        aten_mapping: dict[str, list[str]] = {}
        kernel_path = ""
        call_indent = -1
        while self.pos < len(lines):
            raw = lines[self.pos]
            if LOG_RECORD_RE.match(raw) or AOT_ID_RE.match(raw):
                break
            index = self.pos
            self.pos += 1
            stripped = raw.strip()
            if call_indent >= 0:
                indent = len(raw) - len(raw.lstrip())
                if stripped and indent <= call_indent:
                    call_indent = -1
                else:
                    self.parse_call_line(module, raw, index, source_nodes)
                    if stripped and not stripped.startswith("#"):
                        source_nodes = ([], [])
                    sources = SOURCE_NODES_RE.match(raw)
                    if sources:
                        source_nodes = (_list(sources.group(1)), _list(sources.group(2)))
                    continue
            sources = SOURCE_NODES_RE.match(raw)
            if sources:
                source_nodes = (_list(sources.group(1)), _list(sources.group(2)))
                aten_mapping = {}
                continue
            mapping = ATEN_MAPPING_RE.match(raw)
            if mapping:
                aten_mapping[mapping.group(1)] = _list(mapping.group(2))
                continue
            path = KERNEL_PATH_RE.match(raw)
            if path:
                kernel_path = path.group(1)
                continue
            kernel_def = KERNEL_DEF_RE.match(raw)
            if kernel_def:
                self.parse_kernel(module, kernel_def, index, source_nodes, aten_mapping, kernel_path)
                source_nodes, aten_mapping, kernel_path = ([], []), {}, ""
                continue
            call_def = CALL_DEF_RE.match(raw)
            if call_def:
                call_indent = len(call_def.group(1))
                source_nodes = ([], [])
        if not module.call:
            self.warn(module.line - 1, f"output code {module.aot_id!r} has no call(args) body (truncated?)")

    def parse_kernel(
        self,
        module: OutputModule,
        kernel_def: re.Match[str],
        index: int,
        source_nodes: tuple[list[str], list[str]],
        aten_mapping: dict[str, list[str]],
        kernel_path: str,
    ) -> None:
        lines = self.lines
        name, kind = kernel_def.group(1), kernel_def.group(2)
        kind = "cpp" if kind.startswith("cpp") else kind
        rest = kernel_def.group(3)
        quote = "'''"
        code_lines: list[str] = []
        if quote in rest:
            after = rest.split(quote, 1)[1]
            if quote in after:  # one-line kernel string
                code_lines.append(after.split(quote, 1)[0])
            else:
                if after.strip():
                    code_lines.append(after)
                closed = False
                while self.pos < len(lines):
                    raw = lines[self.pos]
                    if LOG_RECORD_RE.match(raw) or AOT_ID_RE.match(raw):
                        break
                    self.pos += 1
                    if quote in raw:
                        code_lines.append(raw.split(quote, 1)[0])
                        closed = True
                        break
                    code_lines.append(raw)
                if not closed:
                    self.warn(index, f"kernel {name!r}: code string is not terminated (truncated log?)")
        code = "\n".join(code_lines).strip("\n")
        if kind == "cpp":
            signature = re.search(r"void\s+kernel\((.*?)\)", code, flags=re.S)
            params = re.findall(r"(\w+)\s*(?:,|$)", signature.group(1)) if signature else []
        else:
            signature = re.search(r"def \w+\((.*?)\):", code, flags=re.S)
            params = [p.split(":")[0].strip() for p in split_args(signature.group(1))] if signature else []
        module.kernels.append(
            Kernel(
                name=name,
                kind=kind,
                code=code,
                line=index + 1,
                params=params,
                source_nodes=source_nodes[0],
                original_aten=source_nodes[1],
                aten_mapping=aten_mapping,
                kernel_path=kernel_path,
            )
        )

    def parse_call_line(
        self, module: OutputModule, raw: str, index: int, source_nodes: tuple[list[str], list[str]]
    ) -> None:
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            return
        module.call.append(CallStatement(index + 1, stripped, source_nodes[0], source_nodes[1]))

    def link_modules_to_graphs(self) -> None:
        """Give each output module its graph (and cache-hit graphs their compile id).

        A module ``N_forward`` / ``N_inference`` belongs to the latest forward graph before it that has
        no module yet, ``N_backward`` to the latest such backward graph. Cache-hit graphs print no
        number, so they take N from their module; a cache-hit joint graph takes N from its forward.
        """
        events = sorted(
            [(g.line, "graph", g.index) for g in self.result.graphs]
            + [(m.line, "module", m.index) for m in self.result.modules]
        )
        graphs = self.result.graphs
        for _, what, index in events:
            if what != "module":
                continue
            module = self.result.modules[index]
            compile_id, _, part = module.aot_id.partition("_")
            wanted = "backward" if part == "backward" else "forward"
            candidates = [
                g
                for g in graphs
                if g.line < module.line
                and g.module is None
                and g.kind in (wanted, "inference" if wanted == "forward" else wanted)
                and g.compile_id in (compile_id, "?")
            ]
            if not candidates:
                continue
            graph = candidates[-1]
            graph.module = module.index
            module.graph = graph.index
            if part == "inference":
                graph.kind = "inference"
            if graph.compile_id == "?":
                graph.compile_id = compile_id
                joints = [
                    g for g in graphs if g.kind == "joint" and g.compile_id == "?" and g.line < graph.line
                ]
                if joints:
                    joints[-1].compile_id = compile_id
        for graph in graphs:
            if graph.compile_id == "?":
                graph.compile_id = f"?{graph.index}"


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _set_annotation(node: Node, annotation: str) -> None:
    match = ANNOTATION_RE.match(annotation)
    if match:
        node.dtype, node.shape, node.stride, node.device = match.groups()
    elif annotation:
        node.dtype = annotation[:40]


def parse_log_text(text: str, *, strict: bool = False) -> ParsedLog:
    """Parse a whole log; see the module docstring for the forms understood."""
    return _Parser(text.splitlines(), strict).run()


def parse_log_file(path: str, *, strict: bool = False) -> ParsedLog:
    """Read ``path`` as UTF-8 (undecodable bytes replaced) and parse it."""
    with open(path, encoding="utf-8", errors="replace") as log_file:
        return parse_log_text(log_file.read(), strict=strict)

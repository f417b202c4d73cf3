"""Read the text of one AOT graph (``GraphModule.print_readable``) into a ``Graph``.

Forms, all of torch 2.x (the log prefix already removed by ``records``)::

     ===== Forward graph 0 =====                       <- cold header (the record's first line)
     /path/_lazy_graph_module.py class GraphModule(torch.nn.Module):
        def forward(self, primals_1: "f32[64, 64][64, 1]cpu", ...):
            # File: /path/model.py:12 in forward, code: x = self.fc(x)
            addmm: "f32[16, 64][64, 1]cpu" = torch.ops.aten.addmm.default(a, b, c);  a = None
            return (addmm_1, primals_3)

and the expanded form of cache hits and TORCH_TRACE (``class GraphModule(torch.nn.Module):`` at
column 0, one parameter per line with ``# PlainAOTInput(idx=0)`` descriptors, a multi-line
``return (...)`` with ``# SavedForBackwardsAOTOutput(idx=0)``). Joint graphs declare their inputs as
``primals_1: "f32[...]"; primals_2: ...`` statements. ``# File:`` comments may be indented deeper
than the statements (9 spaces in some torch versions). Nested submodule classes (higher-order ops)
after the top ``forward`` are skipped. Nothing is evaluated: arguments are split by a bracket-aware
scanner.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from pytorch_scripts_common.inductor_log.structures import Graph, Node, tensor_bytes

# `        addmm: "f32[16, 64][64, 1]cpu" = torch.ops.aten.addmm.default(a, b, c)`
NODE_RE = re.compile(r'^(\w+)(?:: "([^"]*)")? = (.*)$')
# `f32[16, 64][64, 1]cpu` -> dtype, shape, stride, device
ANNOTATION_RE = re.compile(r"^(\w+)\[([^\]]*)\]\[([^\]]*)\](.*)$")
# `# File: /path/model.py:12 in forward, code: x = self.fc(x)`
FILE_COMMENT_RE = re.compile(r"^File: (.*?):(\d+) in (.*?), code: (.*)$")
# ` ===== Forward graph 0 =====`
COLD_HEADER_RE = re.compile(r"^\s*={3,}\s+(.+?)\s+={3,}\s*$")
IDENT_RE = re.compile(r"^[A-Za-z_]\w*$")
# `primals_1: "f32[64, 64][64, 1]cpu"; primals_2: "f32[64][1]cpu"; ` (joint-graph input declarations)
DECLARATION_RE = re.compile(r'^\w+: "[^"]*"(;|\s*$)')
GETITEM_RE = re.compile(r"^(\w+)\[(\d+)\]$")
ATTRIBUTE_RE = re.compile(r"^self\.[A-Za-z_][\w.]*$")
NAME_TOKEN_RE = re.compile(r"(?<![\w.'\"])[A-Za-z_]\w*(?![\w.(])")
SPECIAL_CHARS_RE = re.compile(r"[()\[\]{}'\",\\]")
GRAPH_KINDS = ("joint", "forward", "backward", "inference")

Warn = Callable[[int, str], None]


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
        for token in NAME_TOKEN_RE.findall(part):
            if token not in ("None", "True", "False", "inf", "nan"):
                found.append(token)
    return found


def split_comment(text: str) -> tuple[str, str]:
    """``primals_1: "f32[4]cpu",  # PlainAOTInput(idx=0)`` -> (code, ``PlainAOTInput(idx=0)``).

    FX separates trailing comments by two spaces; '#' never occurs in a quoted annotation.
    """
    hash_pos = text.find("  #")
    if hash_pos < 0:
        return text, ""
    return text[:hash_pos], text[hash_pos + 3 :].strip()


@functools.lru_cache(maxsize=16384)
def _parse_annotation(annotation: str) -> tuple[str, str, str, str, int | None]:
    match = ANNOTATION_RE.match(annotation)
    if not match:
        return annotation[:40], "", "", "", None
    dtype, shape, stride, device = match.groups()
    return dtype, shape, stride, device, tensor_bytes(dtype, shape)


def set_annotation(node: Node, annotation: str) -> None:
    if annotation:
        node.dtype, node.shape, node.stride, node.device, node.num_bytes = _parse_annotation(annotation)


def graph_kind_and_id(title: str) -> tuple[str, str]:
    """``Forward graph 0`` -> (``forward``, ``0``); ``Joint graph`` -> (``joint``, ``?``)."""
    match = re.match(r"^(\w+) graph\s*(\d*)", title)
    kind = match.group(1).lower() if match else "other"
    if kind not in GRAPH_KINDS:
        kind = "other"
    return kind, (match.group(2) if match and match.group(2) else "?")


class GraphReader:
    """Reads one graph's lines; ``read`` returns how many lines belong to the graph."""

    def __init__(self, graph: Graph, lines: list[tuple[int, str]], warn: Warn, *, bounded: bool) -> None:
        self.graph = graph
        self.lines = lines
        self.warn = warn
        # bounded: every line belongs to the graph (a prefixed record, a trace payload); otherwise the
        # graph ends at the first line that cannot be graph text (user output after it).
        self.bounded = bounded
        self.known: set[str] = set()

    def read(self) -> int:
        graph, lines = self.graph, self.lines
        source = ""
        body_indent = -1
        signature_parts: list[str] | None = None
        return_parts: list[str] | None = None
        return_line = 0
        position = 0
        while position < len(lines):
            number, raw = lines[position]
            stripped = raw.strip()
            indent = len(raw) - len(raw.lstrip())
            at_column_0 = stripped and indent == 0 and not (body_indent < 0 and stripped.startswith("class "))
            if at_column_0 and (graph.complete or not self.bounded):
                break  # unrelated text after the graph (or a cut graph): not ours
            position += 1
            if not stripped:
                continue
            if graph.complete:
                continue  # nested submodule classes printed after the top-level forward
            if signature_parts is not None:
                code, descriptor = split_comment(stripped)
                signature_parts.append(code)
                if descriptor:
                    signature_parts.append(f"#{descriptor}#,")  # kept next to its parameter
                if stripped.startswith("):") or code.rstrip().endswith("):"):
                    self.add_signature(" ".join(signature_parts), number)
                    signature_parts = None
                continue
            if stripped.startswith("def forward(") and body_indent < 0:
                body_indent = indent + 4
                rest = stripped[len("def forward(") :]
                if rest.rstrip().endswith("):"):
                    self.add_signature(rest, number)
                else:
                    signature_parts = [rest]
                continue
            if body_indent < 0:
                continue  # `class GraphModule(...)`, the header path line
            if return_parts is not None:
                code, descriptor = split_comment(stripped)
                return_parts.append(code)
                if descriptor:
                    graph.output_descriptors.append(descriptor)
                if indent <= body_indent and stripped.startswith((")", "]")):
                    self.finish_return(" ".join(return_parts), return_line)
                    return_parts = None
                continue
            if stripped.startswith("#"):
                if indent >= body_indent:  # `# File:` lines may sit deeper than the statements
                    if stripped.startswith("# File:"):
                        source = stripped[2:]
                    elif stripped.startswith("# No stacktrace"):
                        source = ""
                continue
            if indent != body_indent:
                continue  # nested submodule body
            if stripped.startswith("return"):
                code, descriptor = split_comment(stripped)
                if code.rstrip().endswith(("(", "[")):
                    return_parts = [code]
                    return_line = number
                else:
                    self.finish_return(code, number)
                continue
            self.add_node_line(stripped, number, source)
        if not graph.complete:
            self.warn(graph.line, f"{graph.title}: graph text ended before its return statement")
        return position

    def add_signature(self, signature: str, number: int) -> None:
        signature = signature.strip()
        if signature.endswith("):"):
            signature = signature[:-2]
        descriptor_of: dict[str, str] = {}
        previous = ""
        for part in split_args(signature):
            part = part.strip().rstrip(",")
            if part.startswith("#") and part.endswith("#"):
                if previous:
                    descriptor_of[previous] = part[1:-1]
                continue
            part = split_comment(part)[0].strip()
            name, _, annotation = part.partition(":")
            name = name.strip()
            if not IDENT_RE.match(name):
                if part:
                    self.warn(number, f"{self.graph.title}: unreadable forward() parameter {part[:80]!r}")
                continue
            previous = name
            if name == "self" or (not annotation and name in ("primals", "tangents")):
                continue
            self.add_placeholder(name, annotation.strip().strip('"'), number)
        for node in self.graph.nodes:
            if node.op == "placeholder" and node.name in descriptor_of:
                node.descriptor = descriptor_of[node.name]

    def add_placeholder(self, name: str, annotation: str, number: int, descriptor: str = "") -> None:
        if name in self.known:
            return
        node = Node(name=name, op="placeholder", target="", args=[], inputs=[], line=number)
        node.descriptor = descriptor
        set_annotation(node, annotation)
        self.graph.nodes.append(node)
        self.known.add(name)

    def add_node_line(self, stripped: str, number: int, source: str) -> None:
        graph, known = self.graph, self.known
        code, descriptor = split_comment(stripped)
        # Joint graphs declare their inputs on one line (cold) or one per line (expanded form):
        # `primals_1: "f32[64, 64][64, 1]cpu"; primals_2: "f32[64][1]cpu"; `
        if '" = ' not in code and DECLARATION_RE.match(code):
            for declaration in code.split(";"):
                name, _, annotation = declaration.strip().partition(":")
                if name and IDENT_RE.match(name):
                    self.add_placeholder(name, annotation.strip().strip('"'), number, descriptor)
            return
        if "fx_pytree.tree_flatten_spec(" in code:
            return  # `primals_1, ..., = fx_pytree.tree_flatten_spec([primals, tangents], self._in_spec)`
        statement = code.split(";  ", 1)[0]  # drop `;  a = b = None` (frees)
        match = NODE_RE.match(statement)
        if not match:
            self.warn(number, f"{graph.title}: unreadable graph line {stripped[:120]!r}")
            return
        name, annotation, expr = match.group(1), match.group(2), match.group(3)
        if name in known:
            self.warn(number, f"{graph.title}: node {name!r} defined twice; keeping the first")
            return
        parts = call_parts(expr)
        item = GETITEM_RE.match(expr)
        if item:  # `getitem: "f32[...]" = var_mean[0]`
            node = Node(name, "getitem", "getitem", [item.group(1), item.group(2)], [item.group(1)])
        elif parts:
            target, arg_text = parts
            target = target.removeprefix("torch.ops.")
            node = Node(name, "call_function", target, split_args(arg_text), [])
            node.inputs = [n for n in dict.fromkeys(names_in(arg_text)) if n in known]
        elif ATTRIBUTE_RE.match(
            expr
        ):  # `true_graph_0 = self.true_graph_0` (a subgraph), `self._tensor_constant0`
            node = Node(name, "get_attr", expr.removeprefix("self."), [], [])
        else:
            node = Node(name, "call_function", expr[:80], [expr], [])
            node.inputs = [n for n in dict.fromkeys(names_in(expr)) if n in known]
        node.line = number
        if source:
            set_source(node, source)
        if annotation:
            set_annotation(node, annotation)
        graph.nodes.append(node)
        known.add(name)

    def finish_return(self, text: str, number: int) -> None:
        graph = self.graph
        text = text.strip()[len("return") :].strip()
        text = text.removeprefix("pytree.tree_unflatten(")
        text = re.sub(r",?\s*self\._out_spec\)$", "", text)
        while text and text[0] in "([" and text[-1] in ")]":
            text = text[1:-1].strip()
        names = [p.strip() for p in split_args(text)]
        graph.outputs = [n if IDENT_RE.match(n) else "?" for n in names]
        known = self.known
        node = Node("output", "output", "output", names, [n for n in dict.fromkeys(names) if n in known])
        node.line = number
        graph.nodes.append(node)
        graph.complete = True


@functools.lru_cache(maxsize=4096)
def _parse_source(source: str) -> tuple[str, int, str, str]:
    match = FILE_COMMENT_RE.match(source)
    if not match:
        return "", 0, "", ""
    file, line, function, code = match.groups()
    return file, int(line), function, code


def set_source(node: Node, source: str) -> None:
    """``File: /path/model.py:12 in forward, code: x = f(x)`` -> node.source and its parsed parts."""
    node.source = source
    node.source_file, node.source_line, node.source_function, node.source_code = _parse_source(source)

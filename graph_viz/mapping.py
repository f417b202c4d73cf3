"""Link generated kernels to the graph nodes they compute, and forward graphs to backward graphs.

Evidence, strongest first (each link records which one it came from):

- ``comment``: Triton's ``# Source node to ATen node mapping:`` lines (``#   input_2 => relu``) name
  the graph nodes a kernel computes; ``# Topologically Sorted Source Nodes: [...]`` above an extern
  call names graph nodes in backward graphs (forward graphs show pre-AOT names there).
- ``op``: ``extern_kernels.mm(..., out=buf4)`` and ``buf6 = torch.ops.aten.X.default(...)`` are
  matched to the next unclaimed graph node with the same ATen op, preferring one named in the comment.
- ``dataflow``: the ``call()`` body is replayed: ``bufN`` values are resolved to graph nodes from the
  ``return`` statement (position i is the graph's output i), from extern arguments aligned with their
  node's arguments and from ``bufB = bufA[i]`` (getitem). A C++/Triton kernel then computes its
  output nodes and every ancestor up to the nodes its inputs hold (the fused region).

Names repeat across modules (``cpp_fused_sum_1`` in two backward graphs), so kernels are keyed by
module index and name.
"""

from __future__ import annotations

import re
from typing import Any

from graph_viz.parser import Graph, OutputModule, ParsedLog, call_parts, split_args

VIEW_OPS = {
    "view",
    "_unsafe_view",
    "reshape",
    "permute",
    "t",
    "transpose",
    "expand",
    "alias",
    "squeeze",
    "unsqueeze",
    "slice",
    "select",
    "as_strided",
    "split",
    "split_with_sizes",
    "chunk",
}
SKIPPED_CALL_PREFIXES = (
    "args.clear()",
    "assert_size_stride(",
    "assert_alignment(",
    "del ",
    "with ",
    "torch.cuda.set_device(",
    "pass",
)
ARG_BUFFER_RE = re.compile(r"^(?:reinterpret_tensor\()?([A-Za-z_]\w*)")


def op_packet(target: str) -> str:
    """The op name: ``aten.addmm.default`` or ``extern_kernels.addmm`` -> ``addmm``."""
    parts = target.removeprefix("torch.ops.").split(".")
    if parts[0] == "extern_kernels":
        return parts[1] if len(parts) > 1 else ""
    if len(parts) >= 3:
        return parts[1]
    return parts[-1]


class _Value:
    __slots__ = ("getitem_of", "node")

    def __init__(self, node: str | None = None, getitem_of: tuple[int, int] | None = None) -> None:
        self.node = node
        self.getitem_of = getitem_of


def _replay_call(module: OutputModule, kernels_by_name: dict[str, dict[str, Any]]) -> tuple[list, list, list]:
    """Replay ``call()``: returns (values, launches, returned value ids).

    A launch is ``{"kernel": kernel dict, "inputs": [value ids], "outputs": [value ids], "statement"}``.
    """
    values: list[_Value] = []
    current: dict[str, int] = {}
    # `buf21 = reinterpret_tensor(buf24, ...)  # alias`: a view into buf24 (e.g. one slice of a cat);
    # a kernel writing buf21 writes part of buf24's final content.
    alias_base: dict[str, str] = {}
    launches: list[dict[str, Any]] = []
    returned: list[int | None] = []

    def new_value(**kwargs: Any) -> int:
        values.append(_Value(**kwargs))
        return len(values) - 1

    def value_of(arg: str) -> int | None:
        match = ARG_BUFFER_RE.match(arg.strip())
        if not match or match.group(1) not in current:
            return None
        return current[match.group(1)]

    for statement in module.call:
        text = statement.text.split("  #", 1)[0].strip()
        if not text or text.startswith(SKIPPED_CALL_PREFIXES):
            continue
        is_alias = "; del " not in text and statement.text.rstrip().endswith("# alias")
        text = text.split("; del ", 1)[0]
        if text.endswith("= args"):  # `primals_1, primals_2 = args`
            for name in split_args(text[: -len("= args")]):
                if name:
                    current[name] = new_value(node=name)
            continue
        if text.startswith("return"):
            body = text[len("return") :].strip()
            if body.startswith("(") and body.endswith(")"):
                body = body[1:-1]
            returned = [value_of(part) if part != "None" else None for part in split_args(body)]
            continue
        target_name, eq, expr = text.partition(" = ")
        if eq and re.match(r"^\w+$", target_name):
            item = re.match(r"^(\w+)\[(\d+)\]$", expr)
            parts = call_parts(expr)
            if expr.startswith(("empty_strided", "torch.empty")):
                current[target_name] = new_value()
            elif item:
                parent = current.get(item.group(1))
                current[target_name] = new_value(
                    getitem_of=(parent, int(item.group(2))) if parent is not None else None
                )
            elif re.match(r"^\w+$", expr) or expr.startswith("reinterpret_tensor("):
                source = value_of(expr)
                current[target_name] = source if source is not None else new_value()
                base = ARG_BUFFER_RE.match(expr)
                if is_alias and base and base.group(1) in current:
                    alias_base[target_name] = alias_base.get(base.group(1), base.group(1))
            elif parts and (parts[0].startswith(("torch.ops.", "extern_kernels.", "aten."))):
                args = [a for a in split_args(parts[1]) if "=" not in a or a.startswith(("[", "("))]
                inputs = [value_of(a) for a in args]
                output = new_value()
                current[target_name] = output
                launches.append(_extern_launch(module, statement, parts[0], inputs, [output]))
            elif parts and parts[0].endswith("get_raw_stream"):
                continue
            continue
        parts = call_parts(text)
        if not parts:
            continue
        func, arg_text = parts
        args = split_args(arg_text)
        if func.startswith("extern_kernels."):
            positional = [a for a in args if not re.match(r"^\w+\s*=", a)]
            out_args = [a.split("=", 1)[1].strip() for a in args if re.match(r"^out\s*=", a)]
            inputs = [value_of(a) for a in positional]
            outputs = []
            for out in out_args:
                match = ARG_BUFFER_RE.match(out)
                if match:
                    current[match.group(1)] = new_value()
                    outputs.append(current[match.group(1)])
            launches.append(_extern_launch(module, statement, func, inputs, outputs))
            continue
        kernel_name = func.removesuffix(".run")
        kernel = kernels_by_name.get(kernel_name)
        if kernel is None:
            continue
        inputs, outputs = [], []
        params = kernel["params"]

        def write(buffer: str) -> int:
            if buffer in alias_base:  # a slice of the base: its content is the base's final value
                current[buffer] = current[alias_base[buffer]]
            else:
                current[buffer] = new_value()
            return current[buffer]

        for position, arg in enumerate(a for a in args if not re.match(r"^\w+\s*=", a)):
            role = params[position] if position < len(params) else ""
            value = value_of(arg)
            if value is None:
                continue
            if role.startswith("in_out_ptr"):
                inputs.append(value)
                outputs.append(write(ARG_BUFFER_RE.match(arg).group(1)))
            elif role.startswith("out_ptr"):
                outputs.append(write(ARG_BUFFER_RE.match(arg).group(1)))
            else:
                inputs.append(value)
        launches.append({"kernel": kernel, "inputs": inputs, "outputs": outputs, "statement": statement})
    return values, launches, returned


def _extern_launch(module: OutputModule, statement, func: str, inputs: list, outputs: list) -> dict[str, Any]:
    kernel = {
        "id": f"{module.index}:L{statement.line}",
        "module": module.index,
        "name": func,
        "kind": "extern" if func.startswith("extern_kernels.") else "fallback",
        "code": statement.text,
        "line": statement.line,
        "params": [],
        "source_nodes": statement.comment_source_nodes,
        "original_aten": statement.comment_original_aten,
        "aten_mapping": {},
        "kernel_path": "",
        "nodes": [],
        "launch_lines": [statement.line],
    }
    return {"kernel": kernel, "inputs": inputs, "outputs": outputs, "statement": statement, "extern": True}


def map_module(graph: Graph, module: OutputModule) -> list[dict[str, Any]]:
    """Kernels of ``module`` (as dicts) with ``nodes``: [[node name, evidence], ...] into ``graph``."""
    nodes = {node.name: node for node in graph.nodes}
    kernels = []
    kernels_by_name: dict[str, dict[str, Any]] = {}
    for kernel in module.kernels:
        entry = {
            "id": f"{module.index}:{kernel.name}",
            "module": module.index,
            "name": kernel.name,
            "kind": kernel.kind,
            "code": kernel.code,
            "line": kernel.line,
            "params": kernel.params,
            "source_nodes": kernel.source_nodes,
            "original_aten": kernel.original_aten,
            "aten_mapping": kernel.aten_mapping,
            "kernel_path": kernel.kernel_path,
            "nodes": [],
            "launch_lines": [],
        }
        kernels.append(entry)
        kernels_by_name[kernel.name] = entry
    values, launches, returned = _replay_call(module, kernels_by_name)
    owner: dict[str, str] = {}  # node name -> kernel id
    links: dict[str, list[list[str]]] = {}

    def claim(kernel: dict[str, Any], node_name: str, evidence: str) -> None:
        if node_name not in nodes or nodes[node_name].op in ("placeholder", "output"):
            return
        if node_name in owner and owner[node_name] != kernel["id"] and evidence == "dataflow":
            return
        entries = links.setdefault(kernel["id"], [])
        if not any(name == node_name for name, _ in entries):
            entries.append([node_name, evidence])
        owner.setdefault(node_name, kernel["id"])

    # 1. Triton comments: exact graph node names.
    for kernel in kernels:
        for aten_nodes in kernel["aten_mapping"].values():
            for name in aten_nodes:
                claim(kernel, name, "comment")

    # 2. Return statement: value i holds graph output i.
    for value_id, output_name in zip(returned, graph.outputs, strict=False):
        if value_id is not None and output_name in nodes and values[value_id].node is None:
            values[value_id].node = output_name

    # 3. Extern / fallback calls: match by op, then align their arguments with the node's.
    used: set[str] = set()
    by_packet: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op == "call_function":
            by_packet.setdefault(op_packet(node.target), []).append(node.name)
    for launch in launches:
        if not launch.get("extern"):
            continue
        kernel = launch["kernel"]
        kernels.append(kernel)
        packet = op_packet(kernel["name"])
        candidates = [n for n in by_packet.get(packet, []) if n not in used]
        chosen = max(candidates, key=lambda n: _extern_score(nodes, values, launch, n), default=None)
        # The other names in an extern call's comment are usually fused producers of its inputs,
        # computed by a C++/Triton kernel, so they are not claimed here.
        if chosen is None:
            continue
        used.add(chosen)
        claim(kernel, chosen, "op")
        for value_id in launch["outputs"]:
            if values[value_id].node is None:
                values[value_id].node = chosen
        node_args = [a for a in nodes[chosen].args if "=" not in a or a.startswith(("[", "("))]
        if len(node_args) == len(launch["inputs"]):
            for value_id, arg in zip(launch["inputs"], node_args, strict=True):
                if value_id is not None and values[value_id].node is None and arg in nodes:
                    values[value_id].node = _view_root(nodes, arg)

    # 4. getitem values: `buf7 = buf6[0]` is the getitem node of buf6's node with index 0.
    getitems = {(n.args[0], n.args[1]): n.name for n in graph.nodes if n.op == "getitem"}
    for value in values:
        if value.node is None and value.getitem_of is not None:
            parent = values[value.getitem_of[0]].node
            value.node = getitems.get((parent, str(value.getitem_of[1])))

    # 5. Fused kernels: output nodes and their ancestors down to the input nodes. A kernel launched
    # several times (one slice of a cat each) stops at the inputs of all its launches.
    stops: dict[str, set[str]] = {}
    for launch in launches:
        if not launch.get("extern"):
            stop = stops.setdefault(launch["kernel"]["id"], set())
            stop.update(values[v].node for v in launch["inputs"] if values[v].node)
    for launch in launches:
        if launch.get("extern"):
            continue
        kernel = launch["kernel"]
        kernel["launch_lines"].append(launch["statement"].line)
        stop = stops[kernel["id"]]
        frontier = [values[v].node for v in launch["outputs"] if values[v].node]
        seen: set[str] = set()
        while frontier:
            name = frontier.pop()
            if name in seen or name not in nodes:
                continue
            seen.add(name)
            node = nodes[name]
            if node.op == "placeholder" or (name in owner and owner[name] != kernel["id"]):
                continue
            claim(kernel, name, "dataflow")
            frontier.extend(i for i in node.inputs if i not in stop)
    for kernel in kernels:
        kernel["nodes"] = links.get(kernel["id"], [])
    return kernels


def _extern_score(nodes: dict, values: list[_Value], launch: dict[str, Any], candidate: str) -> tuple:
    """How well graph node ``candidate`` fits an extern call; ties go to the earliest node.

    An output already resolved to the candidate (from ``return``) wins; then graph inputs passed at
    the same argument positions; then being named in the call's source-node comment.
    """
    node = nodes[candidate]
    output_match = any(values[v].node == candidate for v in launch["outputs"])
    node_args = [a for a in node.args if "=" not in a or a.startswith(("[", "("))]
    same_inputs = 0
    for value_id, arg in zip(launch["inputs"], node_args, strict=False):
        if value_id is None or arg not in nodes:
            continue
        known = values[value_id].node
        if known is not None and known in (arg, _view_root(nodes, arg)):
            same_inputs += 1
    return (output_match, same_inputs, candidate in launch["kernel"]["source_nodes"])


def _view_root(nodes: dict, name: str) -> str:
    """Follow view-like ops (free reinterpretations in the output code) back to the producing node."""
    for _ in range(64):
        node = nodes[name]
        if node.op != "call_function" or op_packet(node.target) not in VIEW_OPS or not node.inputs:
            return name
        name = node.inputs[0]
    return name


def related_graphs(parsed: ParsedLog) -> dict[int, dict[str, int]]:
    """For each graph index: the joint/forward/backward graph indices of the same compile id."""
    groups: dict[tuple[str, bool], dict[str, int]] = {}
    for graph in parsed.graphs:
        # A cache-hit log prints compile id 0 twice (cold, then from cache): keep those apart.
        groups.setdefault((graph.compile_id, graph.from_cache), {})[graph.kind] = graph.index
    return {graph.index: groups[(graph.compile_id, graph.from_cache)] for graph in parsed.graphs}


def saved_tensors(forward: Graph, backward: Graph) -> list[str]:
    """Forward outputs that the backward graph takes as inputs (what autograd saves between them)."""
    backward_inputs = {
        n.name for n in backward.nodes if n.op == "placeholder" and not n.name.startswith("tangents")
    }
    return [name for name in dict.fromkeys(forward.outputs) if name in backward_inputs]

"""Link generated kernels to the graph nodes they compute, and forward graphs to backward graphs.

Evidence, strongest first (each link records which one it came from; a node lists its kernels in
this order, and the first one colours it):

- ``op``: an extern call (``extern_kernels.mm(..., out=buf4)``, ``buf6 = torch.ops.aten.X.default(...)``)
  matched to a graph node of the same ATen op. Candidates are ranked by: the call's output buffer
  already known to hold the node (``return`` / data flow), graph inputs passed at the same tensor
  argument positions (``None`` and literals dropped on both sides: ``_scaled_mm(buf0, buf1, buf2,
  buf3)`` aligns with ``_scaled_mm(a, b, sa, sb, None, None, torch.bfloat16)``), being named in the
  call's source-node comment, then graph order; keyword tensors (``attn_mask=buf20``) align by name.
  Inductor's rewrites are followed: ``addmm`` can cover an ``mm`` node plus the ``add`` that consumes
  it, an ``mm`` call can compute part of an ``addmm`` node whose bias add went into a pointwise
  kernel, and some externs compute an op of another name (``EXTERN_ALIASES``). An in-place fallback
  (``aten.scatter_reduce_.two(buf2, ...)``) writes its first argument. An extern's claim outranks
  comments.
- ``comment``: ``# Source node to ATen node mapping:`` lines (``#   input_2 => relu``) and
  ``fragment``: ``# Graph fragment:`` lines (``#   %abs_3 : ... = call_function[...]``) above a
  kernel name graph nodes (backward kernels of some torch versions print only the fragment).
- ``dataflow``: ``call()`` (with its ``partition_N`` bodies inlined) is replayed: ``bufN`` values are
  resolved to graph nodes from the ``return`` statement (position i is the graph's output i), from
  extern arguments aligned with their node's arguments, from ``bufB = bufA[i]`` (getitem) and from a
  kernel's graph-fragment ``return``; a kernel writing a graph input's buffer computes that input's
  ``copy_`` mutation. A C++/Triton kernel then computes its output nodes and every ancestor up to
  the nodes its inputs hold (the fused region), except nodes another kernel owns. A buffer one
  kernel writes and a later one reads, still unknown, is matched by dtype and shape in the reader's
  region (``_resolve_intermediates``), and the regions are walked again.
- ``subgraph``: kernels and externs in a higher-order op's subgraph function (``def
  true_graph_0(args):``, called from ``call()``) compute the op's node (``cond``), never a
  same-op node of the top graph.
- ``copy``: a kernel whose outputs hold only graph inputs or other kernels' nodes (the strided
  copies an extern call needs) is linked to those values.

Names repeat across modules (``cpp_fused_sum_1`` in two backward graphs), so kernels are keyed by
module index and name.
"""

from __future__ import annotations

import re
from typing import Any

from pytorch_scripts_common.inductor_log import (
    Graph,
    InductorLog,
    Node,
    OutputCodeModule,
    call_parts,
    split_args,
)

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
REDUCTION_OPS = {
    "sum", "mean", "amax", "amin", "max", "min", "prod", "any", "all", "argmax", "argmin", "var",
    "var_mean", "std", "std_mean", "logsumexp", "native_layer_norm", "_native_batch_norm_legit_functional",
    "native_batch_norm", "native_group_norm", "cumsum", "cumprod", "norm", "linalg_vector_norm",
}  # fmt: skip
# `empty_strided_cpu((2, 2, 8, 1), (16, 8, 1, 32), torch.float32)` (also `empty_strided_cuda`, and
# `empty_strided((..), (..), device='cuda', dtype=torch.float32)` of older torch)
ALLOCATION_RE = re.compile(
    r"^empty_strided\w*\(\(([^()]*)\),\s*\([^()]*\),\s*(?:device=[^,]*,\s*dtype=)?torch\.(\w+)"
)
TORCH_DTYPE_ABBREVIATIONS = {
    "float32": "f32", "float": "f32", "float16": "f16", "half": "f16", "bfloat16": "bf16", "float64": "f64",
    "double": "f64", "int64": "i64", "long": "i64", "int32": "i32", "int": "i32", "int16": "i16",
    "int8": "i8", "uint8": "u8", "bool": "b8",
}  # fmt: skip
# extern op -> graph ops it may compute together (the node the output holds is the last one):
# inductor's post-grad passes fuse `mm` + `add` into one `addmm` call.
FUSED_EXTERNS = {"addmm": ("mm", "add"), "baddbmm": ("bmm", "add"), "addmv": ("mv", "add")}
# extern op -> graph ops it computes under another name: `aten.randint.low_out(..., out=buf14)` makes
# the seeds of `prims.inductor_seeds` (inductor's lowering of random ops).
# `scatter_add` runs as the in-place fallback `aten.scatter_reduce_.two(..., reduce='sum')`.
# max-autotune's extern choice `extern_kernels.bias_addmm` (torch/_inductor/kernel/mm.py) is torch.addmm.
EXTERN_ALIASES = {
    "randint": ("inductor_seeds",),
    "scatter_reduce_": ("scatter_add", "scatter_reduce"),
    "bias_addmm": ("addmm",),
}
# extern op -> graph ops it computes part of: `addmm` lowered to an `mm` call plus a bias add fused
# into the following pointwise kernel.
PARTIAL_EXTERNS = {"mm": ("addmm",), "bmm": ("baddbmm",), "mv": ("addmv",)}
EVIDENCE_RANK = {"op": 0, "subgraph": 1, "comment": 1, "fragment": 1, "dataflow": 2, "copy": 3}
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
TENSOR_ARG_RE = re.compile(r"^(?:reinterpret_tensor\(\s*)?([A-Za-z_]\w*)(?:$|\s*,)")
PARTITION_CALL_RE = re.compile(r"self\.partitions\[(\d+)\]\(")
# "buf3 = true_graph_0(true_graph_0_args)": a higher-order op's subgraph function called from call()
SUBGRAPH_CALL_RE = re.compile(r"^(?:(\w+) = )?(\w+)\(\2_args\)")
LITERAL_NAMES = {"None", "True", "False", "inf", "nan"}


def op_packet(target: str) -> str:
    """The op name: ``aten.addmm.default`` or ``extern_kernels.addmm`` -> ``addmm``."""
    parts = target.removeprefix("torch.ops.").split(".")
    if parts[0] == "extern_kernels":
        return parts[1] if len(parts) > 1 else ""
    if len(parts) >= 3:
        return parts[1]
    return parts[-1]


def is_compute_node(node: Node) -> bool:
    """A node that needs a kernel: an op that is not a view (views become ``reinterpret_tensor``)."""
    return node.op == "call_function" and op_packet(node.target) not in VIEW_OPS


# Why the graphs of other log records (dynamo's graph_code, post_grad_graphs) have no kernel links.
NOT_AOT_GRAPH = (
    "not an AOT graph (dynamo's graph_code, a post-grad graph): kernels are linked only in the AOT "
    "forward / backward / inference graphs (TORCH_LOGS=aot_graphs)"
)


def unlinked_reason(graph: Graph, node: Node) -> str:
    """Why ``node`` has no kernel link (the page shows it in the node's details)."""
    if node.op == "placeholder":
        return "graph input"
    if node.op == "output":
        return "graph output"
    if node.op == "getitem":
        return "getitem: picks one output of the node it indexes, no kernel of its own"
    if node.op == "get_attr":
        return (
            "attribute of the graph module (a higher-order op's subgraph, whose kernels are linked "
            "to the op's node, or a constant): no kernel of its own"
        )
    if graph.kind == "joint":
        return "joint graph: kernels are linked in the forward and backward graphs"
    if graph.kind == "other":
        return NOT_AOT_GRAPH
    if graph.module is None:
        return "no output code for this graph in the log"
    if node.op == "call_function" and op_packet(node.target) in VIEW_OPS:
        return "view: a reinterpretation of its input's storage (reinterpret_tensor), no kernel"
    return (
        "no kernel found: no kernel comment names it, no extern call matches its op, "
        "and no buffer traced through call() holds it"
    )


def ordered_links(links: list[list[str]]) -> list[list[str]]:
    """A node's ``[kernel id, evidence]`` links, strongest evidence first (stable)."""
    return sorted(links, key=lambda link: EVIDENCE_RANK.get(link[1], 9))


def _tensor_args(args: list[str]) -> list[str]:
    """Positional arguments that can hold a tensor: names and reinterpret_tensor views, not literals."""
    found = []
    for arg in args:
        if re.match(r"^\w+\s*=", arg):
            continue  # keyword argument (out=, alpha=, out_dtype=)
        match = TENSOR_ARG_RE.match(arg.strip())
        if match and match.group(1) not in LITERAL_NAMES:
            found.append(arg.strip())
    return found


def _node_tensor_args(node: Node, nodes: dict[str, Node]) -> list[str]:
    """A node's positional arguments that are graph nodes (``None``, numbers, dtypes, lists dropped)."""
    return [arg for arg in node.args if "=" not in arg and arg in nodes]


class _Value:
    __slots__ = ("buffer", "getitem_of", "node", "signature", "subgraph")

    def __init__(
        self,
        node: str | None = None,
        getitem_of: tuple[int, int] | None = None,
        subgraph: str = "",
        signature: tuple[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.node = node
        self.getitem_of = getitem_of
        self.subgraph = subgraph  # the outputs of a subgraph function call (a higher-order op's node)
        self.signature = signature  # (dtype, shape) of the buffer's allocation: ("f32", ("2", "8"))
        self.buffer = ""  # the buffer a kernel wrote it into (a graph input's name when it mutates it)


class _Replay:
    """Replays ``call()``: buffer values, kernel/extern launches and the returned values."""

    def __init__(self, module: OutputCodeModule, kernels_by_name: dict[str, dict[str, Any]]) -> None:
        self.module = module
        self.kernels_by_name = kernels_by_name
        self.values: list[_Value] = []
        self.current: dict[str, int] = {}
        # `buf21 = reinterpret_tensor(buf24, ...)  # alias`: a view into buf24 (e.g. one slice of a
        # cat); a kernel writing buf21 writes part of buf24's final content.
        self.alias_base: dict[str, str] = {}
        self.launches: list[dict[str, Any]] = []
        self.subgraph = ""  # the subgraph function of the statement being replayed ("" in call())
        self.active: set[str] = set()  # bodies being replayed (the call stack)
        self.budget = 16 * len(module.statements) + 1000  # statements left to replay
        self.returned: list[int | None] = []
        self.bodies: dict[str, list] = {}
        for statement in module.statements:
            self.bodies.setdefault(statement.function, []).append(statement)

    def run(self) -> _Replay:
        self.replay("call", depth=0)
        return self

    def new_value(self, **kwargs: Any) -> int:
        self.values.append(_Value(**kwargs))
        return len(self.values) - 1

    def value_of(self, arg: str) -> int | None:
        match = ARG_BUFFER_RE.match(arg.strip())
        if not match or match.group(1) not in self.current:
            return None
        return self.current[match.group(1)]

    def replay(self, function: str, depth: int, subgraph: str = "") -> None:
        """Replay one body; ``subgraph``: the outermost higher-order-op subgraph function it runs in.

        Bodies on the call stack are not entered again, and the statements replayed in all are capped
        (``budget``), so that a hostile log's calls cannot recurse or fan out without end."""
        self.active.add(function)
        for statement in self.bodies.get(function, []):
            self.budget -= 1
            if self.budget < 0:
                break
            partition = PARTITION_CALL_RE.search(statement.code)
            if partition and depth < 4 and f"partition_{partition.group(1)}" not in self.active:
                self.replay(f"partition_{partition.group(1)}", depth + 1, subgraph)
                continue
            called = SUBGRAPH_CALL_RE.match(statement.code)
            if (
                called
                and called.group(2) in self.bodies
                and called.group(2) not in self.active
                and depth < 16
            ):
                # `buf3 = true_graph_0(true_graph_0_args)`: its kernels run for the higher-order op node
                # (torch.cond, ...) that takes the subgraph; buf3 holds that node's outputs.
                name = called.group(2)
                self.replay(name, depth + 1, subgraph or name)
                if called.group(1):
                    self.current[called.group(1)] = self.new_value(subgraph=subgraph or name)
                continue
            self.subgraph = subgraph
            self.statement(statement, in_call=function == "call")
        self.active.discard(function)

    def statement(self, statement: Any, in_call: bool) -> None:
        current = self.current
        text = statement.code.split("  #", 1)[0].strip()
        if not text or text.startswith(SKIPPED_CALL_PREFIXES):
            return
        is_alias = "; del " not in text and statement.code.rstrip().endswith("# alias")
        text = text.split("; del ", 1)[0]
        if text.endswith("= args"):  # `primals_1, primals_2 = args` (a partition: the caller's values)
            for name in split_args(text[: -len("= args")]):
                if name and (in_call or name not in current):
                    current[name] = self.new_value(node=name)
            return
        if text.startswith("return"):
            if in_call:
                body = text[len("return") :].strip()
                if body.startswith("(") and body.endswith(")"):
                    body = body[1:-1]
                self.returned = [self.value_of(part) if part != "None" else None for part in split_args(body)]
            return
        target_name, eq, expr = text.partition(" = ")
        if eq and re.match(r"^\w+$", target_name):
            self.assignment(statement, target_name, expr, is_alias)
            return
        parts = call_parts(text)
        if not parts:
            return
        func, arg_text = parts
        args = split_args(arg_text)
        # `extern_kernels.mm(..., out=buf4)`, `aten.randint.low_out(..., out=buf14)`
        if func.startswith(("extern_kernels.", "aten.", "torch.ops.")):
            out_args = [a.split("=", 1)[1].strip() for a in args if re.match(r"^out\s*=", a)]
            launch = self.extern_launch(statement, func, args, [])
            if not out_args and op_packet(func).endswith("_") and _tensor_args(args):
                # `aten.scatter_reduce_.two(buf2, 1, buf3, buf4, ...)`: in place, writes its first argument
                out_args = _tensor_args(args)[:1]
            for out in out_args:
                match = ARG_BUFFER_RE.match(out)
                if match:
                    current[match.group(1)] = self.new_value()
                    launch["outputs"].append(current[match.group(1)])
            self.launches.append(launch)
            return
        kernel = self.kernels_by_name.get(func.removesuffix(".run"))
        if kernel is not None:
            self.kernel_launch(statement, kernel, args)

    def assignment(self, statement: Any, target_name: str, expr: str, is_alias: bool) -> None:
        current = self.current
        item = re.match(r"^(\w+)\[(\d+)\]$", expr)
        parts = call_parts(expr)
        if expr.startswith(("empty_strided", "torch.empty")):
            allocation = ALLOCATION_RE.match(expr)
            signature = None
            if allocation and allocation.group(2) in TORCH_DTYPE_ABBREVIATIONS:
                shape = tuple(dim.strip() for dim in allocation.group(1).split(",") if dim.strip())
                signature = (TORCH_DTYPE_ABBREVIATIONS[allocation.group(2)], shape)
            current[target_name] = self.new_value(signature=signature)
        elif item:
            parent = current.get(item.group(1))
            current[target_name] = self.new_value(
                getitem_of=(parent, int(item.group(2))) if parent is not None else None
            )
        elif re.match(r"^\w+$", expr) or expr.startswith("reinterpret_tensor("):
            source = self.value_of(expr)
            current[target_name] = source if source is not None else self.new_value()
            base = ARG_BUFFER_RE.match(expr)
            if is_alias and base and base.group(1) in current:
                self.alias_base[target_name] = self.alias_base.get(base.group(1), base.group(1))
        elif parts and parts[0].startswith(("torch.ops.", "extern_kernels.", "aten.")):
            output = self.new_value()
            launch = self.extern_launch(statement, parts[0], split_args(parts[1]), [output])
            current[target_name] = output
            self.launches.append(launch)

    def extern_launch(self, statement: Any, func: str, args: list[str], outputs: list[int]) -> dict[str, Any]:
        inputs = [self.value_of(a) for a in _tensor_args(args)]
        module = self.module
        kernel = {
            "id": f"{module.index}:L{statement.line_number}",
            "module": module.index,
            "name": func,
            "kind": "extern" if func.startswith("extern_kernels.") else "fallback",
            "code": statement.code,
            "line": statement.line_number,
            "params": [],
            "source_nodes": statement.source_nodes,
            "original_aten": statement.aten_ops,
            "aten_mapping": {},
            "kernel_path": "",
            "nodes": [],
            "launch_lines": [statement.line_number],
        }
        keywords = {}  # `attn_mask=buf20`: keyword tensor arguments (not out=)
        for arg in args:
            keyword = re.match(r"^(\w+)\s*=\s*(.*)$", arg)
            if keyword and keyword.group(1) != "out" and self.value_of(keyword.group(2)) is not None:
                keywords[keyword.group(1)] = self.value_of(keyword.group(2))
        launch = {"kernel": kernel, "inputs": inputs, "outputs": outputs, "statement": statement}
        return {**launch, "keywords": keywords, "extern": True, "subgraph": self.subgraph}

    def kernel_launch(self, statement: Any, kernel: dict[str, Any], args: list[str]) -> None:
        current = self.current
        inputs, outputs = [], []
        params = kernel["params"]

        def write(buffer: str) -> int:
            if buffer in self.alias_base:  # a slice of the base: its content is the base's final value
                current[buffer] = current[self.alias_base[buffer]]
            else:
                previous = current.get(buffer)
                signature = self.values[previous].signature if previous is not None else None
                current[buffer] = self.new_value(signature=signature)
                self.values[current[buffer]].buffer = buffer
            return current[buffer]

        for position, arg in enumerate(a for a in args if not re.match(r"^\w+\s*=", a)):
            role = params[position] if position < len(params) else ""
            value = self.value_of(arg)
            if value is None:
                continue
            if role.startswith("in_out_ptr"):
                inputs.append(value)
                outputs.append(write(ARG_BUFFER_RE.match(arg).group(1)))
            elif role.startswith("out_ptr"):
                outputs.append(write(ARG_BUFFER_RE.match(arg).group(1)))
            else:
                inputs.append(value)
        self.launches.append(
            {
                "kernel": kernel,
                "inputs": inputs,
                "outputs": outputs,
                "statement": statement,
                "subgraph": self.subgraph,
            }
        )


def map_module(graph: Graph, module: OutputCodeModule) -> list[dict[str, Any]]:
    """Kernels of ``module`` (as dicts) with ``nodes``: [[node name, evidence], ...] into ``graph``."""
    nodes = {node.name: node for node in graph.nodes}
    kernels = []
    kernels_by_name: dict[str, dict[str, Any]] = {}
    for kernel in module.kernels.values():
        entry = {
            "id": f"{module.index}:{kernel.name}",
            "module": module.index,
            "name": kernel.name,
            "kind": kernel.kind,
            "code": kernel.source,
            "line": kernel.line_number,
            "params": kernel.params,
            "source_nodes": kernel.source_nodes,
            "original_aten": kernel.aten_ops,
            "aten_mapping": kernel.aten_mapping,
            "fragment_nodes": kernel.fragment_nodes,
            "kernel_path": kernel.kernel_path or "",
            "nodes": [],
            "launch_lines": [],
        }
        kernels.append(entry)
        kernels_by_name[kernel.name] = entry
    replay = _Replay(module, kernels_by_name).run()
    values, launches = replay.values, replay.launches
    owner: dict[str, str] = {}  # node name -> kernel id
    # Nodes an extern computes only part of (`mm` of an `addmm`): the kernel that fuses the rest
    # (the bias add) reaches them through data flow too, and stops there.
    shared: set[str] = set()
    links: dict[str, list[list[str]]] = {}

    def claim(kernel: dict[str, Any], node_name: str, evidence: str) -> None:
        if node_name not in nodes or nodes[node_name].op in ("placeholder", "output"):
            return
        taken = node_name in owner and owner[node_name] != kernel["id"] and node_name not in shared
        if taken and evidence == "dataflow":
            return
        entries = links.setdefault(kernel["id"], [])
        if not any(name == node_name for name, _ in entries):
            entries.append([node_name, evidence])
        if evidence == "op":  # the extern call that computes it outranks a comment's claim
            owner[node_name] = kernel["id"]
        else:
            owner.setdefault(node_name, kernel["id"])

    # 1. Comments: the source-node mapping and the graph fragment name graph nodes exactly.
    for kernel in kernels:
        for aten_nodes in kernel["aten_mapping"].values():
            for name in aten_nodes:
                claim(kernel, name, "comment")
        for name in kernel["fragment_nodes"]:
            claim(kernel, name, "fragment")

    # 2. Return statement: value i holds graph output i. The value a subgraph function returns
    # holds the outputs of the higher-order op node that takes the subgraph (`buf4 = buf3[0]`).
    for value_id, output_name in zip(replay.returned, graph.outputs, strict=False):
        if value_id is not None and output_name in nodes and values[value_id].node is None:
            values[value_id].node = output_name
    # A kernel writing into a graph input's buffer computes the mutation `copy_ = copy_(primals_3, x)`
    # (an in-place op, an optimizer step, BatchNorm's running stats) whose first argument is that input.
    mutations = {n.args[0]: n.name for n in graph.nodes if op_packet(n.target) == "copy_" and n.args}
    for value in values:
        if value.node is None and value.buffer in mutations:
            value.node = mutations[value.buffer]
    subgraph_nodes = {
        name: _subgraph_users(graph, name) for name in {launch["subgraph"] for launch in launches}
    }
    for value in values:
        if value.subgraph and value.node is None and subgraph_nodes.get(value.subgraph):
            value.node = subgraph_nodes[value.subgraph][0]

    # 3. Extern / fallback calls: match by op, then align their arguments with the node's.
    shared.update(_match_externs(graph, nodes, values, launches, kernels, claim))

    # 4. getitem values: `buf7 = buf6[0]` is the getitem node of buf6's node with index 0.
    getitems = {(n.args[0], n.args[1]): n.name for n in graph.nodes if n.op == "getitem"}
    for value in values:
        if value.node is None and value.getitem_of is not None:
            parent = values[value.getitem_of[0]].node
            value.node = getitems.get((parent, str(value.getitem_of[1])))

    # 5. Fused kernels: output nodes and their ancestors down to the input nodes. A kernel launched
    # several times (one slice of a cat each) stops at the inputs of all its launches.
    def fused_regions() -> tuple[dict[int, list[str]], list[tuple[dict[str, Any], list[str]]]]:
        stops: dict[str, set[str]] = {}
        for launch in launches:
            if not launch.get("extern"):
                stop = stops.setdefault(launch["kernel"]["id"], set())
                # A partial extern's node (mm of an addmm) is an input the kernel finishes, not a stop.
                stop.update(n for n in (values[v].node for v in launch["inputs"]) if n and n not in shared)
        regions: dict[int, list[str]] = {}
        copies: list[tuple[dict[str, Any], list[str]]] = []
        for index, launch in enumerate(launches):
            if launch.get("extern") or launch["subgraph"]:
                continue
            kernel = launch["kernel"]
            stop = stops[kernel["id"]]
            frontier = [values[v].node for v in launch["outputs"] if values[v].node]
            definition = module.kernels.get(kernel["name"])
            if definition is not None:  # the fragment's `return %a,%b`: what the kernel writes
                frontier += [name for name in definition.fragment_outputs if name in nodes]
            written = list(dict.fromkeys(frontier))
            seen: set[str] = set()
            region = regions[index] = []
            while frontier:
                name = frontier.pop()
                if name in seen or name not in nodes:
                    continue
                seen.add(name)
                node = nodes[name]
                taken = name in owner and owner[name] != kernel["id"] and name not in shared
                if node.op == "placeholder" or taken:
                    continue
                claim(kernel, name, "dataflow")
                region.append(name)
                if name not in shared:
                    frontier.extend(i for i in node.inputs if i not in stop)
            if not region and written:
                copies.append((kernel, written))
        return regions, copies

    before = ({k: [list(e) for e in v] for k, v in links.items()}, dict(owner))
    regions, copies = fused_regions()
    # A buffer one kernel writes and a later kernel reads that nothing else names (C++ kernels carry
    # no comments) is resolved by its dtype and shape within the reader's region, then the regions
    # are walked again with it as a boundary.
    if _resolve_intermediates(graph, values, launches, regions):
        links.clear()
        links.update(before[0])
        owner.clear()
        owner.update(before[1])
        regions, copies = fused_regions()
    for launch in launches:
        if not launch.get("extern") and not launch["subgraph"]:
            launch["kernel"]["launch_lines"].append(launch["statement"].line_number)

    # 6. Kernels of higher-order ops' subgraphs (a torch.cond branch) compute the op's node; a kernel
    # whose outputs hold only graph inputs or nodes that other kernels compute is a layout copy (the
    # contiguous inputs an extern call needs): it is linked to the values it copies.
    for launch in launches:
        if launch["subgraph"]:
            if not launch.get("extern"):
                launch["kernel"]["launch_lines"].append(launch["statement"].line_number)
            for name in subgraph_nodes.get(launch["subgraph"], []):
                claim(launch["kernel"], name, "subgraph")
    for kernel, written in copies:
        if not links.get(kernel["id"]):
            links[kernel["id"]] = [[name, "copy"] for name in written]
    for kernel in kernels:
        kernel["nodes"] = links.get(kernel["id"], [])
    return kernels


def _match_externs(
    graph: Graph, nodes: dict, values: list[_Value], launches: list, kernels: list, claim
) -> set[str]:
    """Step 3 of ``map_module``: each extern call claims the graph node(s) it computes.

    Returns the nodes claimed by an extern that computes only part of them (``PARTIAL_EXTERNS``).
    """
    used: set[str] = set()
    partial: set[str] = set()
    by_packet: dict[str, list[str]] = {}
    users: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op == "call_function":
            by_packet.setdefault(op_packet(node.target), []).append(node.name)
        for name in node.inputs:
            users.setdefault(name, []).append(node.name)
    for launch in launches:
        if not launch.get("extern"):
            continue
        kernel = launch["kernel"]
        kernels.append(kernel)
        if launch["subgraph"]:
            continue  # runs inside a higher-order op's subgraph: linked to that op's node (step 6)
        packet = op_packet(kernel["name"])
        # (node the output holds, nodes the call computes, rewrite: 0 same op, 1 fused, 2 partial)
        candidates = [
            (n, (n,), 0)
            for op in (packet, *EXTERN_ALIASES.get(packet, ()))
            for n in by_packet.get(op, [])
            if n not in used
        ]
        if packet in FUSED_EXTERNS:
            first_op, second_op = FUSED_EXTERNS[packet]
            for first in by_packet.get(first_op, []):
                for second in users.get(first, []):
                    free = second not in used and first not in used
                    if free and op_packet(nodes[second].target) == second_op:
                        candidates.append((second, (first, second), 1))
        for whole_op in PARTIAL_EXTERNS.get(packet, ()):
            candidates += [(n, (n,), 2) for n in by_packet.get(whole_op, []) if n not in used]
        if not candidates:
            continue
        chosen, covered, rewrite = max(candidates, key=lambda c: _extern_score(nodes, values, launch, c))
        if rewrite == 2:
            partial.add(chosen)
        # The other names in an extern call's comment are usually fused producers of its inputs,
        # computed by a C++/Triton kernel, so they are not claimed here.
        for name in covered:
            used.add(name)
            claim(kernel, name, "op")
        for value_id in launch["outputs"]:
            if values[value_id].node is None:
                values[value_id].node = chosen
        node_args = _node_tensor_args(nodes[chosen], nodes)
        if len(covered) == 1 and len(node_args) == len(launch["inputs"]):
            for value_id, arg in zip(launch["inputs"], node_args, strict=True):
                if value_id is not None and values[value_id].node is None:
                    values[value_id].node = _view_root(nodes, arg)
        for arg in nodes[chosen].args:  # `attn_mask = where` in the graph, `attn_mask=buf20` in the call
            keyword, _, name = (part.strip() for part in arg.partition("="))
            value_id = launch["keywords"].get(keyword)
            if name in nodes and value_id is not None and values[value_id].node is None:
                values[value_id].node = _view_root(nodes, name)
    return partial


def _extern_score(nodes: dict, values: list[_Value], launch: dict[str, Any], candidate: tuple) -> tuple:
    """How well a candidate fits an extern call; ``max`` keeps the earliest of equal ones.

    An output already resolved to the candidate (from ``return``) wins; then graph inputs passed at
    the same tensor argument positions; then being named in the call's source-node comment; then a
    same-op node over an inductor rewrite.
    """
    chosen, covered, rewrite = candidate  # rewrite: 0 same op, 1 fused (mm + add), 2 partial (mm of addmm)
    output_match = any(values[v].node == chosen for v in launch["outputs"])
    same_inputs = 0
    if len(covered) == 1:
        for value_id, arg in zip(launch["inputs"], _node_tensor_args(nodes[chosen], nodes), strict=False):
            known = values[value_id].node if value_id is not None else None
            if known is not None and known in (arg, _view_root(nodes, arg)):
                same_inputs += 1
    named = any(name in launch["kernel"]["source_nodes"] for name in covered)
    return (output_match, same_inputs, named, -rewrite)


def _resolve_intermediates(
    graph: Graph, values: list[_Value], launches: list[dict[str, Any]], regions: dict[int, list[str]]
) -> bool:
    """Give unresolved kernel-to-kernel buffers a node; True if any was resolved.

    The buffer a kernel reads from an earlier kernel is a node of the reader's region (walked without
    that boundary) with the buffer's dtype and shape (its ``empty_strided`` allocation). Inductor
    writes a buffer between kernels for a reduction or a value with several users, so among such
    matches the last in graph order (nearest the reader) is taken; with no such match it stays unknown.
    """
    order = {node.name: i for i, node in enumerate(graph.nodes)}
    nodes = {node.name: node for node in graph.nodes}
    num_users: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.inputs:
            num_users[name] = num_users.get(name, 0) + 1
    written_by_kernel: set[int] = set()
    resolved = False
    for index, launch in enumerate(launches):
        if launch.get("extern") or launch["subgraph"]:
            continue
        outputs = {values[v].node for v in launch["outputs"]}
        for value_id in launch["inputs"]:
            value = values[value_id]
            if value.node is not None or value_id not in written_by_kernel or value.signature is None:
                continue
            matches = [
                name
                for name in regions.get(index, [])
                if name not in outputs
                and _signature(nodes[name]) == value.signature
                and (_is_reduction(nodes, nodes[name]) or num_users.get(name, 0) >= 2)
            ]
            if matches:
                value.node = max(matches, key=order.__getitem__)
                resolved = True
        written_by_kernel.update(launch["outputs"])
    return resolved


def _signature(node: Node) -> tuple[str, tuple[str, ...]]:
    return node.dtype, tuple(dim.strip() for dim in node.shape.split(",") if dim.strip())


def _is_reduction(nodes: dict[str, Node], node: Node) -> bool:
    """A reduction node, or a getitem of one (``var_mean[0]``)."""
    if node.op == "getitem" and node.inputs:
        node = nodes.get(node.inputs[0], node)
    return node.op == "call_function" and op_packet(node.target) in REDUCTION_OPS


def _subgraph_users(graph: Graph, function: str) -> list[str]:
    """Nodes of ``graph`` that run the subgraph ``function``: the higher-order op node (``cond``) that
    takes the ``get_attr`` node of that name (``true_graph_0 = self.true_graph_0``) or the name as text."""
    attributes = {n.name for n in graph.nodes if n.op == "get_attr" and function in (n.name, n.target)}
    quoted = (f"'{function}'", f'"{function}"')
    return [
        n.name
        for n in graph.nodes
        if n.op == "call_function" and (attributes & set(n.inputs) or any(arg in quoted for arg in n.args))
    ]


def _view_root(nodes: dict, name: str) -> str:
    """Follow view-like ops (free reinterpretations in the output code) back to the producing node."""
    for _ in range(64):
        node = nodes[name]
        if node.op != "call_function" or op_packet(node.target) not in VIEW_OPS or not node.inputs:
            return name
        name = node.inputs[0]
    return name


def related_graphs(parsed: InductorLog) -> dict[int, dict[str, int]]:
    """For each graph index: the joint/forward/backward graph indices of the same run and compile id."""
    groups: dict[tuple[int, str, bool], dict[str, int]] = {}
    for graph in parsed.graphs:
        # Runs keep two programs (or a dynamo reset) with the same compile ids apart; a cache-hit
        # log prints compile id 0 twice (cold, then from cache) in one run only if not reset.
        groups.setdefault((graph.run, graph.compile_id, graph.from_cache), {})[graph.kind] = graph.index
    return {graph.index: groups[(graph.run, graph.compile_id, graph.from_cache)] for graph in parsed.graphs}


def saved_tensors(forward: Graph, backward: Graph) -> list[str]:
    """Forward outputs that the backward graph takes as inputs (what autograd saves between them)."""
    backward_inputs = {
        n.name for n in backward.nodes if n.op == "placeholder" and not n.name.startswith("tangents")
    }
    return [name for name in dict.fromkeys(forward.outputs) if name in backward_inputs]

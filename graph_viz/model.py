"""Build the JSON model shown by the HTML page: graphs with a layered layout, kernels, links.

Layout (computed once here, so the browser only draws): a node's layer is its longest-path depth
from the graph inputs (inputs, constants and their views sit just above their first consumer);
within a layer nodes are ordered by the mean position of their inputs (one barycentre sweep). Cost
O(nodes + edges) plus a sort per layer, so 10k-node graphs take well under a second. Linear chains
(each link has exactly one producer and one consumer) get a chain id so the page can collapse them.
"""

from __future__ import annotations

from typing import Any

from graph_viz.mapping import (
    VIEW_OPS,
    is_compute_node,
    map_module,
    op_packet,
    ordered_links,
    related_graphs,
    saved_tensors,
    unlinked_reason,
)
from pytorch_scripts_common.inductor_log import Graph, InductorLog

NODE_WIDTH = 180
NODE_HEIGHT = 34
X_GAP = 30
Y_GAP = 40
MIN_CHAIN_LENGTH = 3


def layout(graph: Graph) -> tuple[list[int], list[int], list[int]]:
    """Per node (in graph order): x, y (top-left, pixels) and layer index."""
    index = {node.name: i for i, node in enumerate(graph.nodes)}
    num_nodes = len(graph.nodes)
    preds = [[index[name] for name in node.inputs if name in index] for node in graph.nodes]
    succs: list[list[int]] = [[] for _ in range(num_nodes)]
    for i, inputs in enumerate(preds):
        for j in inputs:
            succs[j].append(i)
    level = [0] * num_nodes
    # FX prints nodes in topological order, so one forward sweep gives longest-path depths; an
    # input used "later" in a broken (fuzzed) log only counts if it appeared earlier.
    for i in range(num_nodes):
        level[i] = 1 + max((level[j] for j in preds[i] if j < i), default=-1)
    # Then graph inputs, constants and views/getitems of them move down to just above their first
    # consumer, so saved tensors sit next to where they are used (a backward graph uses layer 0's
    # saved activations last) instead of in one wide top row with long edges. Computing nodes stay
    # as early as possible (moving them too would crowd every gradient into the bottom row).
    movable = [False] * num_nodes
    for i, node in enumerate(graph.nodes):
        cheap = node.op == "getitem" or (node.op == "call_function" and op_packet(node.target) in VIEW_OPS)
        movable[i] = not preds[i] or (cheap and all(movable[j] for j in preds[i] if j < i))
    for i in range(num_nodes - 1, -1, -1):
        if succs[i] and movable[i]:
            level[i] = max(level[i], min(level[s] for s in succs[i]) - 1)
    num_levels = max(level, default=-1) + 1
    layers: list[list[int]] = [[] for _ in range(num_levels)]
    for i in range(num_nodes):
        layers[level[i]].append(i)
    position = [0.0] * num_nodes
    xs = [0] * num_nodes
    ys = [0] * num_nodes
    for layer_index, layer in enumerate(layers):
        keyed = []
        for order, i in enumerate(layer):
            placed = [position[j] for j in preds[i] if level[j] < layer_index]
            keyed.append((sum(placed) / len(placed) if placed else order, order, i))
        keyed.sort()
        offset = (len(keyed) - 1) / 2
        for slot, (_, _, i) in enumerate(keyed):
            position[i] = slot - offset
            xs[i] = round((slot - offset) * (NODE_WIDTH + X_GAP))
            ys[i] = layer_index * (NODE_HEIGHT + Y_GAP)
    return xs, ys, level


def chains(graph: Graph) -> list[int]:
    """Chain id per node (-1 when not in a chain of at least MIN_CHAIN_LENGTH linear nodes)."""
    index = {node.name: i for i, node in enumerate(graph.nodes)}
    num_consumers = [0] * len(graph.nodes)
    for node in graph.nodes:
        for name in set(node.inputs):
            if name in index:
                num_consumers[index[name]] += 1
    chain_of = [-1] * len(graph.nodes)
    members: list[list[int]] = []
    for i, node in enumerate(graph.nodes):
        if node.op in ("placeholder", "output"):
            continue
        inputs = [index[n] for n in set(node.inputs) if n in index]
        if len(inputs) == 1 and num_consumers[inputs[0]] == 1 and chain_of[inputs[0]] >= 0:
            chain_of[i] = chain_of[inputs[0]]
            members[chain_of[i]].append(i)
        else:
            chain_of[i] = len(members)
            members.append([i])
    keep = {c for c, m in enumerate(members) if len(m) >= MIN_CHAIN_LENGTH}
    renumber = {c: k for k, c in enumerate(sorted(keep))}
    return [renumber.get(c, -1) for c in chain_of]


def _side(name: str, forward_names: set[str], backward_names: set[str]) -> str:
    """Where the partitioner put a joint-graph node, by name: forward, backward, both or neither."""
    in_forward, in_backward = name in forward_names, name in backward_names
    if in_forward and in_backward:
        return "both"
    return "forward" if in_forward else "backward" if in_backward else ""


def build_model(parsed: InductorLog, source_name: str) -> dict[str, Any]:
    """The page model: ``graphs``, ``kernels``, ``modules``, ``warnings`` and a ``summary``."""
    kernels: list[dict[str, Any]] = []
    node_kernels: dict[tuple[int, str], list[list[str]]] = {}
    for module in parsed.modules:
        if module.graph is None:
            for kernel in module.kernels.values():
                kernels.append(
                    {"id": f"{module.index}:{kernel.name}", "module": module.index, "name": kernel.name,
                     "kind": kernel.kind, "code": kernel.source, "line": kernel.line_number, "nodes": [],
                     "launch_lines": [], "graph": None}
                )  # fmt: skip
            continue
        for kernel in map_module(parsed.graphs[module.graph], module):
            kernel["graph"] = module.graph
            kernels.append(kernel)
            for name, evidence in kernel["nodes"]:
                node_kernels.setdefault((module.graph, name), []).append([kernel["id"], evidence])
    related = related_graphs(parsed)
    graphs = []
    num_nodes_total = 0
    unmapped_total = 0
    for graph in parsed.graphs:
        xs, ys, levels = layout(graph)
        chain_ids = chains(graph)
        relatives = related[graph.index]
        saved: list[str] = []
        forward_names: set[str] = set()
        backward_names: set[str] = set()
        if "forward" in relatives and "backward" in relatives:
            forward_graph, backward_graph = (
                parsed.graphs[relatives["forward"]],
                parsed.graphs[relatives["backward"]],
            )
            saved = saved_tensors(forward_graph, backward_graph)
            forward_names = {n.name for n in forward_graph.nodes if n.op != "output"}
            backward_names = {n.name for n in backward_graph.nodes if n.op != "output"}
        saved_set = set(saved)
        nodes = []
        unmapped = []
        num_compute = 0
        for i, node in enumerate(graph.nodes):
            links = ordered_links(node_kernels.get((graph.index, node.name), []))
            # View ops become reinterpret_tensor(...) in the output code: no kernel expected.
            has_code = graph.module is not None
            if has_code and is_compute_node(node):
                num_compute += 1
                if not links:
                    unmapped.append(node.name)
            nodes.append(
                {"name": node.name, "op": node.op, "target": node.target, "args": node.args,
                 "inputs": node.inputs, "dtype": node.dtype, "shape": node.shape, "stride": node.stride,
                 "device": node.device, "source": node.source, "line": node.line,
                 "kernels": links, "x": xs[i], "y": ys[i], "layer": levels[i], "chain": chain_ids[i],
                 "side": _side(node.name, forward_names, backward_names) if graph.kind == "joint" else "",
                 "saved": node.name in saved_set,
                 "unlinked_reason": "" if links else unlinked_reason(graph, node)}
            )  # fmt: skip
        num_nodes_total += len(nodes)
        unmapped_total += len(unmapped)
        graphs.append(
            {"index": graph.index, "kind": graph.kind, "compile_id": graph.compile_id, "title": graph.title,
             "from_cache": graph.from_cache, "line": graph.line, "complete": graph.complete,
             "module": graph.module, "outputs": graph.outputs, "nodes": nodes,
             "related": {k: v for k, v in relatives.items() if v != graph.index},
             "saved": saved if graph.kind != "inference" else [], "unmapped_nodes": unmapped,
             "run": graph.run,
             "link_coverage": {"compute_nodes": num_compute, "linked": num_compute - len(unmapped)}}
        )  # fmt: skip
    modules = [
        {"index": m.index, "aot_id": m.aot_id, "line": m.line_number, "graph": m.graph,
         "call": [[s.line_number, s.code] for s in m.statements]}
        for m in parsed.modules
    ]  # fmt: skip
    kernels_without_nodes = [k["id"] for k in kernels if not k["nodes"]]
    return {
        "source": source_name,
        "graphs": graphs,
        "kernels": kernels,
        "modules": modules,
        "warnings": [[line, message] for line, message in parsed.warnings],
        "summary": {
            "num_lines": parsed.num_lines,
            "num_graphs": len(graphs),
            "num_nodes": num_nodes_total,
            "num_kernels": len(kernels),
            "num_warnings": parsed.num_warnings,
            "num_unmapped_nodes": unmapped_total,
            "kernels_without_nodes": kernels_without_nodes,
            "skipped_lines": parsed.skipped,
            "format": parsed.format,
        },
    }

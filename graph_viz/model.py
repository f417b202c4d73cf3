"""Build the JSON model shown by the HTML page: graphs with a layered layout, kernels, links.

Layout (computed once here, so the browser only draws): a node's layer is its longest-path depth
from the graph inputs (inputs, constants and their views sit just above their first consumer);
within a layer nodes are ordered by the mean position of their inputs (one barycentre sweep). Cost
O(nodes + edges) plus a sort per layer. Linear chains (each link has exactly one producer and one
consumer) get a chain id, and runs of consecutive nodes printed under the same ``# File:`` comment
a source-group id, so the page can collapse either. Saved-for-backward tensors get their size in
bytes (dtype size x number of elements, from the FX annotation ``"f32[8, 16][16, 1]cpu"``).
"""

from __future__ import annotations

import re
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
from pytorch_scripts_common.inductor_log.structures import Run, tensor_bytes

NODE_WIDTH = 180
NODE_HEIGHT = 34
X_GAP = 30
Y_GAP = 40
MIN_CHAIN_LENGTH = 3
MIN_GROUP_SIZE = 2

# `File: /path/model.py:53 in forward, code: attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)`
SOURCE_RE = re.compile(r"^File: (.*?):(\d+) in (.*?), code: (.*)$")
# A run's stream as the reader names it: "pid 4242", "pid 4242 rank 1", "<trace file> pid 4242 rank 1"
_RANK_RE = re.compile(r"\brank (\d+)")
_PID_RE = re.compile(r"\bpid (\d+)")


def layout(graph: Graph) -> tuple[list[int], list[int], list[int]]:
    """Per node (in graph order): x, y (top-left, pixels) and layer index."""
    nodes = graph.nodes
    index = {node.name: i for i, node in enumerate(nodes)}
    num_nodes = len(nodes)
    # FX prints nodes in topological order; an input used "later" in a broken (fuzzed) log only
    # counts if it appeared earlier, so every edge below points backwards (j < i).
    preds: list[list[int]] = []
    for i, node in enumerate(nodes):
        found = [index[name] for name in node.inputs if name in index]
        preds.append([j for j in found if j < i] if found else found)
    succs: list[list[int]] = [[] for _ in range(num_nodes)]
    for i, inputs in enumerate(preds):
        for j in inputs:
            succs[j].append(i)
    # Longest-path depth in one forward sweep.
    level = [0] * num_nodes
    for i, inputs in enumerate(preds):
        if inputs:
            level[i] = 1 + max([level[j] for j in inputs])
    # Then graph inputs, constants and views/getitems of them move down to just above their first
    # consumer, so saved tensors sit next to where they are used (a backward graph uses layer 0's
    # saved activations last) instead of in one wide top row with long edges. Computing nodes stay
    # as early as possible (moving them too would crowd every gradient into the bottom row).
    movable = [False] * num_nodes
    for i, node in enumerate(nodes):
        inputs = preds[i]
        if not inputs:
            movable[i] = True
        elif node.op == "getitem" or (node.op == "call_function" and op_packet(node.target) in VIEW_OPS):
            movable[i] = all(movable[j] for j in inputs)
    for i in range(num_nodes - 1, -1, -1):
        users = succs[i]
        if users and movable[i]:
            level[i] = max(level[i], min([level[s] for s in users]) - 1)
    num_levels = max(level, default=-1) + 1
    layers: list[list[int]] = [[] for _ in range(num_levels)]
    for i in range(num_nodes):
        layers[level[i]].append(i)
    position = [0.0] * num_nodes
    xs = [0] * num_nodes
    ys = [0] * num_nodes
    x_step = NODE_WIDTH + X_GAP
    y_step = NODE_HEIGHT + Y_GAP
    for layer_index, layer in enumerate(layers):
        keyed = []
        for order, i in enumerate(layer):
            placed = [position[j] for j in preds[i] if level[j] < layer_index]
            keyed.append((sum(placed) / len(placed) if placed else order, order, i))
        keyed.sort()
        offset = (len(keyed) - 1) / 2
        y = layer_index * y_step
        for slot, (_, _, i) in enumerate(keyed):
            position[i] = slot - offset
            xs[i] = round((slot - offset) * x_step)
            ys[i] = y
    return xs, ys, level


def chains(graph: Graph) -> list[int]:
    """Chain id per node (-1 when not in a chain of at least MIN_CHAIN_LENGTH linear nodes)."""
    index = {node.name: i for i, node in enumerate(graph.nodes)}
    unique_inputs = [[index[n] for n in set(node.inputs) if n in index] for node in graph.nodes]
    num_consumers = [0] * len(graph.nodes)
    for inputs in unique_inputs:
        for j in inputs:
            num_consumers[j] += 1
    chain_of = [-1] * len(graph.nodes)
    members: list[list[int]] = []
    for i, node in enumerate(graph.nodes):
        if node.op in ("placeholder", "output"):
            continue
        inputs = unique_inputs[i]
        if len(inputs) == 1 and num_consumers[inputs[0]] == 1 and chain_of[inputs[0]] >= 0:
            chain_of[i] = chain_of[inputs[0]]
            members[chain_of[i]].append(i)
        else:
            chain_of[i] = len(members)
            members.append([i])
    renumber: dict[int, int] = {}
    for c, m in enumerate(members):
        if len(m) >= MIN_CHAIN_LENGTH:
            renumber[c] = len(renumber)
    return [renumber.get(c, -1) for c in chain_of]


def source_groups(graph: Graph) -> tuple[list[int], list[dict[str, Any]]]:
    """Group id per node (-1: none) and the groups: runs of consecutive nodes under one ``# File:``.

    FX prints a ``# File: ...`` comment when the source line changes, so a run of nodes with the
    same ``source`` is what one line of user code became; runs shorter than MIN_GROUP_SIZE are not
    groups. A group is ``{"head": first node index, "size", "source", "label"}`` (label: ``file:line
    in function``).
    """
    group_of = [-1] * len(graph.nodes)
    groups: list[dict[str, Any]] = []
    run_source = ""
    run_start = 0

    def close_run(end: int) -> None:
        if not run_source or end - run_start < MIN_GROUP_SIZE:
            return
        match = SOURCE_RE.match(run_source)
        if match:
            path, line, function, _ = match.groups()
            label = f"{path.replace(chr(92), '/').rsplit('/', 1)[-1]}:{line} in {function}"
        else:
            label = run_source[:80]
        for i in range(run_start, end):
            group_of[i] = len(groups)
        groups.append({"head": run_start, "size": end - run_start, "source": run_source, "label": label})

    for i, node in enumerate(graph.nodes):
        source = (getattr(node, "source", "") or "") if node.op not in ("placeholder", "output") else ""
        if source != run_source:
            close_run(i)
            run_source, run_start = source, i
    close_run(len(graph.nodes))
    return group_of, groups


def saved_memory(forward: Graph, backward: Graph, saved: list[str]) -> dict[str, Any]:
    """Bytes of each tensor the forward saves for the backward, and their totals.

    dtype and shape come from the forward graph's node of that name (its output), else from the
    backward's placeholder. ``input`` marks forward graph inputs (parameters, user inputs): saving
    them keeps nothing alive that was not alive anyway, unlike saved activations.
    """
    forward_nodes = {n.name: n for n in forward.nodes}
    backward_nodes = {n.name: n for n in backward.nodes if n.op == "placeholder"}
    tensors = []
    total = activations = 0
    unknown = []
    for name in saved:
        node = forward_nodes.get(name)
        if node is None or not node.dtype:
            node = backward_nodes.get(name, node)
        dtype, shape = (node.dtype, node.shape) if node is not None else ("", "")
        num_bytes = tensor_bytes(dtype, shape)
        is_input = name in forward_nodes and forward_nodes[name].op == "placeholder"
        tensors.append({"name": name, "dtype": dtype, "shape": shape, "bytes": num_bytes, "input": is_input})
        if num_bytes is None:
            unknown.append(name)
            continue
        total += num_bytes
        if not is_input:
            activations += num_bytes
    return {"tensors": tensors, "total_bytes": total, "activation_bytes": activations, "unknown": unknown}


def _side(name: str, forward_names: set[str], backward_names: set[str]) -> str:
    """Where the partitioner put a joint-graph node, by name: forward, backward, both or neither."""
    in_forward, in_backward = name in forward_names, name in backward_names
    if in_forward and in_backward:
        return "both"
    return "forward" if in_forward else "backward" if in_backward else ""


def run_labels(runs: list[Run]) -> list[str]:
    """What tells the runs of a log apart in the page: ``rank 1``, ``pid 4242``, the TORCH_TRACE
    file, ``run 3 (pid 4242)`` for a stream with several runs; all ``""`` for a log of one run."""
    if len(runs) < 2:
        return [""] * len(runs)
    labels = []
    for run in runs:
        rank, pid = _RANK_RE.search(run.stream), _PID_RE.search(run.stream)
        labels.append(f"rank {rank[1]}" if rank else f"pid {pid[1]}" if pid else run.stream.split(" ")[0])
    repeated = {label for label in labels if labels.count(label) > 1}
    return [
        f"run {run.index + 1}" + (f" ({label})" if label else "") if label in repeated or not label else label
        for run, label in zip(runs, labels, strict=True)
    ]


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
    labels = run_labels(parsed.runs)
    graphs = []
    num_nodes_total = 0
    unmapped_total = 0
    for graph in parsed.graphs:
        xs, ys, levels = layout(graph)
        chain_ids = chains(graph)
        group_ids, groups = source_groups(graph)
        relatives = related[graph.index]
        saved: list[str] = []
        memory = None
        forward_names: set[str] = set()
        backward_names: set[str] = set()
        if "forward" in relatives and "backward" in relatives:
            forward_graph, backward_graph = (
                parsed.graphs[relatives["forward"]],
                parsed.graphs[relatives["backward"]],
            )
            saved = saved_tensors(forward_graph, backward_graph)
            memory = saved_memory(forward_graph, backward_graph, saved)
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
                 "group": group_ids[i],
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
            "saved": saved if graph.kind != "inference" else [],
            "saved_memory": memory if graph.kind != "inference" else None,
            "groups": groups, "unmapped_nodes": unmapped,
            "run": graph.run, "run_label": labels[graph.run] if labels else "",
            "dynamo_compile_id": graph.dynamo_compile_id,
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


def page_model(model: dict[str, Any]) -> dict[str, Any]:
    """The model as the page embeds it: each graph's distinct ``# File:`` lines listed once in
    ``sources`` and node ``source`` an index into it (the same line repeats on every node it covers,
    about a third of a 100k-node model's JSON). ``model`` itself is not changed."""
    graphs = []
    for graph in model["graphs"]:
        table: dict[str, int] = {}
        nodes = [dict(node, source=table.setdefault(node["source"], len(table))) for node in graph["nodes"]]
        graphs.append(dict(graph, nodes=nodes, sources=list(table)))
    return dict(model, graphs=graphs)

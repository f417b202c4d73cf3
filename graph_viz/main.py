"""torch.compile log -> one self-contained interactive HTML of the AOT graphs and their kernels.

TORCH_LOGS=aot_graphs,aot_joint_graph,output_code python prog.py > log.txt 2>&1
.venv/bin/python -m graph_viz.main log.txt out/    # -> out/index.html, out/model.json
"""

from __future__ import annotations

import gc
import json
import pathlib
import time
from typing import Any

from pytorch_scripts_common.cli import UsageError, run

TEMPLATE_DIR = pathlib.Path(__file__).resolve().parent / "templates"
TOOL = "graph_viz"
CAPTURE_HINT = (
    "capture stdout and stderr of the program run with TORCH_LOGS=aot_graphs,output_code "
    "(any TORCH_LOGS_FORMAT, rank prefixes are fine), or pass its TORCH_TRACE=<folder>"
)


def model_to_script_json(model: dict[str, Any]) -> str:
    """JSON for a ``<script type="application/json">`` block: ``<``, ``>``, ``&`` become ``\\u003c`` etc.

    With those escaped no log text can close the script element (``</script>``) or open a comment;
    the page reads it back with ``JSON.parse``, which undoes the escapes.
    """
    text = json.dumps(model, separators=(",", ":"), ensure_ascii=False)
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def render_html(model: dict[str, Any]) -> str:
    """The page: the jinja2 template (autoescaped) with the model JSON and the viewer script inlined."""
    import jinja2
    from markupsafe import Markup

    from graph_viz.model import page_model

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True, undefined=jinja2.StrictUndefined
    )
    script = (TEMPLATE_DIR / "viewer.js").read_text(encoding="utf-8")
    assert "</script" not in script.lower()
    return env.get_template("index.html.j2").render(
        title=model["source"],
        # Both are safe to mark: the JSON has no '<' left and the script is our own file.
        model_json=Markup(model_to_script_json(page_model(model))),
        script=Markup(script),
    )


def no_graphs_message(log_path: str, parsed: Any) -> str:
    """The one-line reason a log gave no graph, and how to capture one."""
    if parsed.num_lines == 0:
        what = "is empty"
    elif parsed.json_files:
        what = "is JSON (a torch.profiler trace?), not a compile log"
    elif parsed.modules:
        return (
            f"{log_path} has output code ({len(parsed.modules)} modules) but no AOT graphs: "
            "add aot_graphs to TORCH_LOGS, e.g. TORCH_LOGS=aot_graphs,output_code"
        )
    else:
        skipped = ", ".join(f"{count} {what}" for what, count in sorted(parsed.skipped.items()))
        what = f"has no AOT graph ({parsed.num_lines} lines{': ' + skipped if skipped else ''})"
    return f"{log_path} {what}: {CAPTURE_HINT}"


def convert(
    log_path: str, output_dir: str, *, overwrite: bool = False, strict: bool = False
) -> dict[str, Any]:
    """Parse ``log_path`` (a log file or a TORCH_TRACE folder), write ``output_dir/index.html`` and
    ``output_dir/model.json``; return the model. A log without graphs is a ``UsageError``."""
    from graph_viz.model import build_model
    from pytorch_scripts_common.inductor_log import read_inductor_log
    from pytorch_scripts_common.outputs import check_output, staged_dir

    log = pathlib.Path(log_path)
    if not log.exists():
        raise UsageError(
            f"log {log_path} does not exist: pass a TORCH_LOGS output file or TORCH_TRACE folder"
        )
    target = check_output(output_dir, inputs=[log_path], overwrite=overwrite, tool=TOOL, flag="output_dir")
    # The parser allocates one small acyclic object per node, edge and argument; with the cyclic
    # GC on, its full collections rescan the growing heap and made 10k-node logs ~2x slower per
    # node than 1k-node ones. Reference counting frees everything anyway.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        parsed = read_inductor_log(log, strict=strict)
        if not parsed.graphs:
            raise UsageError(no_graphs_message(log_path, parsed))
        model = build_model(parsed, log.name)
        html = render_html(model)
    finally:
        if gc_was_enabled:
            gc.enable()
    with staged_dir(target, tool=TOOL) as staging:
        (staging / "index.html").write_text(html, encoding="utf-8")
        (staging / "model.json").write_text(json.dumps(model), encoding="utf-8")
    return model


def coverage_text(graph: dict[str, Any]) -> str:
    """``link coverage 100.0% (5/5 compute nodes)`` for a graph with output code, else why there is none."""
    if graph["kind"] == "joint":
        return "joint graph: kernels are linked in its forward / backward graphs"
    if graph["kind"] == "other":
        return "not an AOT graph: kernels are linked only in AOT forward / backward / inference graphs"
    if graph["module"] is None:
        return "no output code in the log"
    coverage = graph["link_coverage"]
    if not coverage["compute_nodes"]:
        return "no compute nodes"
    percent = 100 * coverage["linked"] / coverage["compute_nodes"]
    return f"link coverage {percent:.1f}% ({coverage['linked']}/{coverage['compute_nodes']} compute nodes)"


def main(log_path: str, output_dir: str, overwrite: bool = False, strict: bool = False) -> None:
    """Write OUTPUT_DIR/index.html (self-contained viewer) and OUTPUT_DIR/model.json from a torch.compile log.

    Args:
        log_path: log of a run with TORCH_LOGS=aot_graphs,output_code (any format), or a TORCH_TRACE folder.
        output_dir: folder to create for index.html and model.json (not the log's folder).
        overwrite: replace output_dir if it is an earlier output of graph_viz.
        strict: fail at the first graph or output-code line the parser cannot read instead of warning.
    """
    start_s = time.perf_counter()
    model = convert(log_path, output_dir, overwrite=overwrite, strict=strict)
    summary = model["summary"]
    for line, message in model["warnings"][:20]:
        print(f"warning: {log_path}:{line}: {message}")
    if summary["num_warnings"] > 20:
        print(f"... {summary['num_warnings'] - 20} more warnings (all in model.json)")
    for graph in model["graphs"]:
        title = f"{graph['run_label']}: {graph['title']}" if graph["run_label"] else graph["title"]
        dynamo = f"[{graph['dynamo_compile_id']}]" if graph["dynamo_compile_id"] else ""
        aot_id = "-" if graph["kind"] == "other" else graph["compile_id"]
        print(
            f"{title:<32} {graph['kind']:<9} AOT id {aot_id:<3} {dynamo:<7} "
            f"{len(graph['nodes']):>6} nodes, {coverage_text(graph)}"
        )
    if model["modules"] and all(graph["kind"] == "other" for graph in model["graphs"]):
        print(
            f"note: {log_path} has output code ({len(model['modules'])} modules) but no AOT graphs, so "
            "no kernel is linked: add aot_graphs to TORCH_LOGS, e.g. TORCH_LOGS=aot_graphs,output_code"
        )
    skipped = ", ".join(f"{count} {what}" for what, count in sorted(summary["skipped_lines"].items()))
    print(
        f"{summary['num_graphs']} graphs, {summary['num_nodes']} nodes, {summary['num_kernels']} kernels "
        f"({len(summary['kernels_without_nodes'])} without a node), {summary['num_warnings']} warnings "
        f"in {time.perf_counter() - start_s:.2f} s" + (f"; skipped {skipped}" if skipped else "")
    )
    target = pathlib.Path(output_dir)
    print(f"wrote {target / 'index.html'} and {target / 'model.json'}")


if __name__ == "__main__":
    run(main)

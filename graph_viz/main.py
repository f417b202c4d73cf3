"""torch.compile log -> one self-contained interactive HTML of the AOT graphs and their kernels.

TORCH_LOGS_FORMAT=short TORCH_LOGS=aot_graphs,aot_joint_graph,output_code python prog.py > log.txt 2>&1
python graph_viz/main.py log.txt out/    # -> out/index.html, out/model.json
"""

from __future__ import annotations

import gc
import json
import pathlib
import shutil
import tempfile
import time
from typing import Any

import fire

TEMPLATE_DIR = pathlib.Path(__file__).resolve().parent / "templates"


def publish_dir(staging: pathlib.Path, target: pathlib.Path) -> None:
    """Put the finished ``staging`` folder at ``target``; an existing ``target`` is swapped out first
    and deleted only after the new folder is in place, so a failed rename never loses it."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old.{staging.name}")
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old)


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


def convert(
    log_path: str, output_dir: str, *, overwrite: bool = False, strict: bool = False
) -> dict[str, Any]:
    """Parse ``log_path``, write ``output_dir/index.html`` and ``output_dir/model.json``; return the model."""
    from graph_viz.model import build_model
    from graph_viz.parser import parse_log_file

    log = pathlib.Path(log_path)
    if not log.is_file():
        raise ValueError(f"log {log_path!r} is not a file; pass the path of a TORCH_LOGS output file")
    target = pathlib.Path(output_dir)
    if target.exists() and not overwrite:
        raise ValueError(f"output folder {target} exists; pass --overwrite to replace it")
    if target.exists() and not target.is_dir():
        raise ValueError(f"output path {target} exists and is not a folder; choose another output_dir")
    # The parser allocates one small acyclic object per node, edge and argument; with the cyclic
    # GC on, its full collections rescan the growing heap and made 10k-node logs ~2x slower per
    # node than 1k-node ones. Reference counting frees everything anyway.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        parsed = parse_log_file(str(log), strict=strict)
        model = build_model(parsed, log.name)
        html = render_html(model)
    finally:
        if gc_was_enabled:
            gc.enable()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp.", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary folder
        (staging / "index.html").write_text(html, encoding="utf-8")
        (staging / "model.json").write_text(json.dumps(model), encoding="utf-8")
        publish_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model


def main(log_path: str, output_dir: str, overwrite: bool = False, strict: bool = False) -> None:
    """Write OUTPUT_DIR/index.html (self-contained viewer) and OUTPUT_DIR/model.json from a torch.compile log.

    Args:
        log_path: log of a run with TORCH_LOGS=aot_graphs,output_code (optionally aot_joint_graph).
        output_dir: folder to create for index.html and model.json.
        overwrite: replace output_dir if it already exists.
        strict: fail at the first line the parser does not understand instead of warning.
    """
    start_s = time.perf_counter()
    model = convert(log_path, output_dir, overwrite=overwrite, strict=strict)
    summary = model["summary"]
    for line, message in model["warnings"][:20]:
        print(f"warning: {log_path}:{line}: {message}")
    if summary["num_warnings"] > 20:
        print(f"... {summary['num_warnings'] - 20} more warnings (all in model.json)")
    for graph in model["graphs"]:
        print(
            f"{graph['title']:<32} {graph['kind']:<9} compile {graph['compile_id']:<3} "
            f"{len(graph['nodes']):>6} nodes, {len(graph['unmapped_nodes'])} non-view nodes without a kernel"
        )
    print(
        f"{summary['num_graphs']} graphs, {summary['num_nodes']} nodes, {summary['num_kernels']} kernels "
        f"({len(summary['kernels_without_nodes'])} without a node), {summary['num_warnings']} warnings "
        f"in {time.perf_counter() - start_s:.2f} s"
    )
    print(f"wrote {pathlib.Path(output_dir) / 'index.html'} and {pathlib.Path(output_dir) / 'model.json'}")


if __name__ == "__main__":
    fire.Fire(main)

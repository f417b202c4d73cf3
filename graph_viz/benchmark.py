"""Log -> HTML time and page-interactive time in headless Chromium for ~1k / 10k / 100k-node logs.

The logs come from many-layer transformer train steps compiled in a subprocess
(graph_viz.make_sample_logs.write_log) into a temporary folder (or ``log_dir``), never into the
repository. ``backend="aot_eager"`` prints the joint/forward/backward graphs without output code
(dynamo + AOT tracing only: ~3 min for 300 layers on a shared 2-core machine);
``backend="inductor"`` adds real output code but compiles a C++ kernel per fused region (slow).

Every number is the median of ``num_runs`` repeats after one warm-up, with the spread (min-max).
"us/node" divides by the node count and compares with the first (smallest) row; the lines under the
table give the cost per node added from one row to the next, which leaves fixed costs (browser
start, first-call overheads) out: about equal from 1k->10k and 10k->100k means linear. In the page,
"ready" is navigation start until the viewer's first frame (``performance.mark('graph_viz:ready')``:
HTML parsed, model JSON parsed, the first graph's lookups built and drawn; "HTML parsed" is when the
viewer script starts); the interaction columns are timed inside the page.
"""

from __future__ import annotations

import os
import pathlib
import platform
import statistics
import tempfile
import time
from typing import Any

from pytorch_scripts_common.cli import UsageError, parse_list, run

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Times (ms) inside a freshly loaded page: the marks the viewer sets while loading, then the
# interactions a reader does first on the largest graph.
PAGE_TIMING_JS = """() => {
  const mark = (name) => performance.getEntriesByName(name)[0].startTime;
  const gv = window.graphViz, graphs = gv.model.graphs;
  const out = { ready: mark("graph_viz:ready"), html: mark("graph_viz:start") };
  out.json = mark("graph_viz:parsed") - out.html;
  let largest = 0;
  graphs.forEach((g, i) => { if (g.nodes.length > graphs[largest].nodes.length) largest = i; });
  const time = (fn) => { const start = performance.now(); fn(); return performance.now() - start; };
  out.select_graph = time(() => { gv.selectGraph(largest); gv.renderNow(); });
  const middle = Math.floor(graphs[largest].nodes.length / 2);
  out.select_node = time(() => { gv.selectNode(middle, true); gv.renderNow(); });
  const search = document.getElementById("search");
  out.search = time(() => { search.value = "mm_1"; gv.runSearch(); gv.renderNow(); });
  out.fit = time(() => { gv.fitLayers(); gv.renderNow(); });
  gv.fitAll();
  const frames = [];
  for (let i = 0; i < 5; i++) frames.push(time(() => gv.renderNow()));
  frames.sort((a, b) => a - b);
  out.full_frame = frames[2];
  return out;
}"""
PAGE_KEYS = ("ready", "html", "json", "select_graph", "select_node", "search", "fit", "full_frame")


def page_timings(html_path: pathlib.Path, num_runs: int) -> dict[str, list[float]]:
    """PAGE_TIMING_JS (ms) for ``num_runs`` fresh page loads after one warm-up load."""
    from playwright.sync_api import sync_playwright

    runs: dict[str, list[float]] = {key: [] for key in PAGE_KEYS}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for run in range(num_runs + 1):  # the first load warms the browser's caches up
                page = browser.new_page(viewport={"width": 1500, "height": 900})
                page.goto(html_path.as_uri())
                page.wait_for_selector("body[data-ready='1']", timeout=120_000)
                timings = page.evaluate(PAGE_TIMING_JS)
                page.close()
                if run:
                    for key in PAGE_KEYS:
                        runs[key].append(timings[key])
        finally:
            browser.close()
    return runs


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """``median (min-max)`` of ``values`` times ``scale``."""
    if not values:
        return "-"
    median, low, high = (scale * v for v in (statistics.median(values), min(values), max(values)))
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _layer_counts(layers: Any) -> list[int]:
    counts = parse_list(layers, int, name="layers")
    if not counts or min(counts) < 1:
        raise UsageError(f"--layers is {layers!r}: pass positive layer counts, e.g. --layers=3,30,300")
    return counts


def main(
    layers: str | tuple[int, ...] = "3,30,300",
    backend: str = "aot_eager",
    num_runs: int = 3,
    log_dir: str = "",
    browser: bool = True,
) -> None:
    """Time log -> index.html and the page in headless Chromium for transformer train-step logs.

    Args:
        layers: comma-separated layer counts, one log each (3, 30, 300 give about 1k, 10k, 100k nodes).
        backend: aot_eager (graphs only, fast) or inductor (graphs + kernels, slow to compile on CPU).
        num_runs: timed runs per measurement (median and min-max reported) after one warm-up run.
        log_dir: reuse/keep logs here (transformer_<layers>_<backend>.log); default: a temporary folder.
        browser: also time the page in headless Chromium (needs /usr/bin/chromium and playwright).
    """
    if backend not in ("aot_eager", "inductor"):
        raise UsageError(f"--backend is {backend!r}: pass --backend=aot_eager or --backend=inductor")
    if num_runs < 1:
        raise UsageError(f"--num_runs is {num_runs}: pass an integer >= 1")
    layer_counts = _layer_counts(layers)
    if browser and not pathlib.Path(CHROMIUM).exists():
        raise UsageError(f"{CHROMIUM} not found: install Debian chromium or pass --browser=False")
    from graph_viz.main import convert
    from graph_viz.make_sample_logs import write_log
    from pytorch_scripts_common import benchmark

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="graph_viz_bench_") as tmp:
        logs = pathlib.Path(log_dir) if log_dir else pathlib.Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        for num_layers in layer_counts:
            log_path = logs / f"transformer_{num_layers}_{backend}.log"
            if not log_path.exists():
                start_s = time.perf_counter()
                write_log(
                    "transformer_train",
                    log_path,
                    disable_caches=True,
                    torch_logs="aot_graphs,aot_joint_graph,output_code",
                    num_layers=num_layers,
                    backend=backend,
                )
                print(f"generated {log_path} in {time.perf_counter() - start_s:.1f} s")
            out = pathlib.Path(tmp) / f"html_{num_layers}"
            model: dict = {}

            def convert_once(log_path=log_path, out=out, model=model) -> None:
                model.update(convert(str(log_path), str(out), overwrite=True))

            convert_time = benchmark(convert_once, num_warmup=1, num_runs=num_runs, device="cpu")
            page = page_timings(out / "index.html", num_runs) if browser else {}
            rows.append(
                {
                    "layers": num_layers,
                    "nodes": model["summary"]["num_nodes"],
                    "largest": max((len(g["nodes"]) for g in model["graphs"]), default=0),
                    "kernels": model["summary"]["num_kernels"],
                    "log_mb": log_path.stat().st_size / 1e6,
                    "html_mb": (out / "index.html").stat().st_size / 1e6,
                    "convert_s": list(convert_time.times_s),
                    "page_ms": page,
                }
            )
            print(f"measured {num_layers} layers ({rows[-1]['nodes']} nodes), load average {os.getloadavg()}")
    print_table(rows, backend=backend, num_runs=num_runs, load_before=load_before, load_after=os.getloadavg())


def print_table(
    rows: list[dict[str, Any]],
    *,
    backend: str,
    num_runs: int,
    load_before: tuple[float, ...],
    load_after: tuple[float, ...],
) -> None:
    """The benchmark table (markdown), its conditions above it."""
    import torch

    print(
        f"\ngraph_viz benchmark: torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, backend={backend}; median (min-max) of {num_runs} "
        f"runs after 1 warm-up; load average (1/5/15 min) {', '.join(f'{x:.1f}' for x in load_before)} "
        f"before, {', '.join(f'{x:.1f}' for x in load_after)} after"
    )
    columns = [
        "layers", "nodes", "largest graph", "kernels", "log MB", "html MB", "log->html s",
        "us/node (x row 1)", "page ready s", "page us/node (x row 1)", "HTML parsed ms", "JSON.parse ms",
        "select largest graph ms", "select node ms", "search all ms", "f (fit) ms", "full-graph frame ms",
    ]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    base_convert = base_page = None
    for row in rows:
        nodes = max(1, row["nodes"])
        convert_per_node = statistics.median(row["convert_s"]) / nodes
        base_convert = base_convert or convert_per_node
        cells = [
            str(row["layers"]), str(row["nodes"]), str(row["largest"]), str(row["kernels"]),
            f"{row['log_mb']:.2f}", f"{row['html_mb']:.2f}", spread(row["convert_s"]),
            f"{convert_per_node * 1e6:.0f} ({convert_per_node / base_convert:.2f}x)",
        ]  # fmt: skip
        page = row["page_ms"]
        if page:
            page_per_node = statistics.median(page["ready"]) / 1e3 / nodes
            base_page = base_page or page_per_node
            cells += [
                spread(page["ready"], 1e-3), f"{page_per_node * 1e6:.1f} ({page_per_node / base_page:.2f}x)",
                spread(page["html"], digits=0), spread(page["json"], digits=0),
                spread(page["select_graph"], digits=0), spread(page["select_node"], digits=1),
                spread(page["search"], digits=0), spread(page["fit"], digits=1),
                spread(page["full_frame"], digits=1),
            ]  # fmt: skip
        else:
            cells += ["-"] * (len(columns) - len(cells))
        print("| " + " | ".join(cells) + " |")
    # Linearity without the fixed costs (imports, browser start): cost per node added between rows.
    for previous, row in zip(rows, rows[1:], strict=False):
        added = row["nodes"] - previous["nodes"]
        if added <= 0:
            continue
        convert_us = (statistics.median(row["convert_s"]) - statistics.median(previous["convert_s"])) * 1e6
        line = f"{previous['nodes']} -> {row['nodes']} nodes, per added node: log->html "
        line += f"+{convert_us / added:.0f} us"
        if row["page_ms"] and previous["page_ms"]:
            ready_us = (
                statistics.median(row["page_ms"]["ready"]) - statistics.median(previous["page_ms"]["ready"])
            ) * 1e3
            line += f", +{ready_us / added:.1f} us page ready"
        print(line)


if __name__ == "__main__":
    run(main)

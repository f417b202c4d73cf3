"""Log -> HTML time and page-interactive time in headless Chromium for 1k / 5k / 10k+ node logs.

The big logs come from many-layer transformer train steps compiled in a subprocess
(graph_viz.make_sample_logs.run_program) into a temporary folder, never into the repository.
``backend="inductor"`` gives real output code (slow to compile on CPU: inductor builds a C++ kernel
per fused region); ``backend="aot_eager"`` prints the same joint/forward/backward graphs without
output code in seconds. Each row reports the median of ``num_runs`` runs after one warm-up run, and
the per-node cost relative to the first (smallest) row as the linearity check.
"""

from __future__ import annotations

import pathlib
import platform
import statistics
import tempfile
import time

import fire

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


# Worst case for one frame: the largest graph, zoomed out so every node and edge is in view.
FRAME_TIMING_JS = """() => {
  const graphs = window.graphViz.model.graphs;
  let largest = 0;
  graphs.forEach((g, i) => { if (g.nodes.length > graphs[largest].nodes.length) largest = i; });
  window.graphViz.selectGraph(largest);
  window.graphViz.fitAll();
  const times = [];
  for (let i = 0; i < 7; i++) {
    const start = performance.now();
    window.graphViz.renderNow();
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[3];
}"""


def page_ready_seconds(html_path: pathlib.Path, num_runs: int) -> tuple[list[float], float]:
    """Wall times from navigation to the viewer's first frame (body[data-ready]) per fresh page load,
    and the median time (ms) of drawing the largest graph fully zoomed out on the last load."""
    from playwright.sync_api import sync_playwright

    times = []
    frame_ms = float("nan")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(num_runs + 1):  # the first load warms the browser's caches up
                page = browser.new_page(viewport={"width": 1500, "height": 900})
                start_s = time.perf_counter()
                page.goto(html_path.as_uri())
                page.wait_for_selector("body[data-ready='1']", timeout=120_000)
                times.append(time.perf_counter() - start_s)
                frame_ms = page.evaluate(FRAME_TIMING_JS)
                page.close()
        finally:
            browser.close()
    return times[1:], frame_ms


def main(
    layers: str | tuple[int, ...] = "3,15,31",
    backend: str = "aot_eager",
    num_runs: int = 3,
    log_dir: str = "",
    browser: bool = True,
) -> None:
    """Time log -> index.html and page-ready in headless Chromium for transformer train-step logs.

    Args:
        layers: comma-separated layer counts, one log each (3, 15, 31 give about 1k, 5k, 10k nodes).
        backend: aot_eager (graphs only, fast) or inductor (graphs + kernels, slow to compile on CPU).
        num_runs: timed runs per measurement (median reported) after one warm-up run.
        log_dir: reuse/keep logs here (transformer_<layers>_<backend>.log); default: a temporary folder.
        browser: also time the page in headless Chromium (needs /usr/bin/chromium and playwright).
    """
    from graph_viz.main import convert
    from graph_viz.make_sample_logs import write_log
    from pytorch_scripts_common import benchmark

    if backend not in ("aot_eager", "inductor"):
        raise ValueError(f"backend must be 'aot_eager' or 'inductor', got {backend!r}")
    if num_runs < 1:
        raise ValueError(f"num_runs must be >= 1, got {num_runs}")
    # fire turns `--layers 3,15` into the tuple (3, 15) and `--layers 4` into 4.
    items = layers if isinstance(layers, (tuple, list)) else str(layers).split(",")
    try:
        layer_counts = [int(str(x).strip()) for x in items if str(x).strip()]
    except ValueError as error:
        raise ValueError(f"layers must be integers like '3,15,31', got {layers!r}") from error
    if not layer_counts or min(layer_counts) < 1:
        raise ValueError(f"layers must be positive integers like '3,15,31', got {layers!r}")
    if browser and not pathlib.Path(CHROMIUM).exists():
        raise ValueError(f"{CHROMIUM} not found; install Debian chromium or pass --browser=False")
    import torch

    with tempfile.TemporaryDirectory(prefix="graph_viz_bench_") as tmp:
        logs = pathlib.Path(log_dir) if log_dir else pathlib.Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        rows = []
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

            def run(log_path=log_path, out=out, model=model) -> None:
                model.update(convert(str(log_path), str(out), overwrite=True))

            convert_time = benchmark(run, num_warmup=1, num_runs=num_runs, device="cpu")
            ready, frame_ms = float("nan"), float("nan")
            if browser:
                ready_times, frame_ms = page_ready_seconds(out / "index.html", num_runs)
                ready = statistics.median(ready_times)
            summary = model["summary"]
            rows.append(
                {
                    "layers": num_layers,
                    "nodes": summary["num_nodes"],
                    "largest graph": max(len(g["nodes"]) for g in model["graphs"]),
                    "kernels": summary["num_kernels"],
                    "log MB": log_path.stat().st_size / 1e6,
                    "html MB": (out / "index.html").stat().st_size / 1e6,
                    "log->html s": convert_time.median_s,
                    "page ready s": ready,
                    "frame ms": frame_ms,
                }
            )
    base = rows[0]["log->html s"] / rows[0]["nodes"]
    print(
        f"\ngraph_viz benchmark: torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, backend={backend}, median of {num_runs} runs after 1 warm-up"
    )
    header = (
        "| layers | nodes | largest graph | kernels | log MB | html MB | log->html s | us/node (x row 1) "
        "| page ready s | full-graph frame ms |"
    )
    print(header)
    print("|---" * 10 + "|")
    for row in rows:
        per_node = row["log->html s"] / row["nodes"]
        print(
            f"| {row['layers']} | {row['nodes']} | {row['largest graph']} | {row['kernels']} "
            f"| {row['log MB']:.2f} | {row['html MB']:.2f} | {row['log->html s']:.2f} "
            f"| {per_node * 1e6:.0f} ({per_node / base:.2f}x) "
            f"| {row['page ready s']:.2f} | {row['frame ms']:.1f} |"
        )


if __name__ == "__main__":
    fire.Fire(main)

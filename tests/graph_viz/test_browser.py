"""The page in real headless Chromium (Playwright): what a reader clicks, checked against the log.

Expected values (saved-tensor bytes, a node's inputs and users, source groups, launch lines) are
re-derived from the log text here with small regexes and torch's own dtype sizes, not read from
graph_viz's model. Every test also asserts no console error, no page error and no network request.
"""

import math
import pathlib
import re
import shutil

import pytest

from graph_viz.benchmark import CHROMIUM, CHROMIUM_ARGS
from graph_viz.main import convert, render_html
from graph_viz.model import build_model
from pytorch_scripts_common.inductor_log import parse_inductor_log_text as parse_log_text
from tests.graph_viz.test_cli import PAYLOAD, hostile_log

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "graph_viz" / "fixtures"
MLP_TRAIN = FIXTURES / "logs" / "mlp_train.log"
TRANSFORMER_TRAIN = FIXTURES / "logs" / "transformer_train.log"
NODE_W, NODE_H = 180, 34  # viewer.js / model.py node box size
READABLE_SCALE = 0.5  # viewer.js: `f` never zooms out further

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"needs Debian chromium at {CHROMIUM}")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, html_path: pathlib.Path):
    page = browser.new_page(viewport={"width": 1500, "height": 900})
    errors: list[str] = []
    dialogs: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on(
        "request",
        lambda request: (
            errors.append(f"network request {request.url}") if not request.url.startswith("file:") else None
        ),
    )
    page.goto(html_path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=10_000)
    return page, errors, dialogs


def open_log(browser, tmp_path: pathlib.Path, log: pathlib.Path):
    out = tmp_path / (log.stem + "_out")
    convert(str(log), str(out))
    return open_page(browser, out / "index.html")


def graph_block(log_text: str, title: str) -> list[str]:
    """The lines of the cold-form graph ``title`` (``Forward graph 0``) up to its return statement."""
    lines = log_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"===== {title} =====")
    block = []
    for line in lines[start + 1 :]:
        block.append(line)
        if line.strip().startswith("return"):
            return block
    raise AssertionError(f"{title} has no return")


NODE_LINE_RE = re.compile(r'^\s+(\w+)(?:: "[^"]*")? = (.*)$')  # tuple-valued nodes have no annotation


def node_lines(block: list[str]) -> dict[str, str]:
    """node name -> right-hand side (without the `;  x = None` frees), in graph order."""
    return {m.group(1): m.group(2).split(";  ")[0] for m in map(NODE_LINE_RE.match, block) if m}


def click_node(page, name: str) -> None:
    position = page.evaluate(f"window.graphViz.nodeScreenPosition({name!r})")
    page.mouse.click(position["x"], position["y"])


def canvas_pixels(page, x: float, y: float, radius: int = 3) -> list[tuple[int, int, int]]:
    """RGB of the canvas pixels in a (2 radius + 1)^2 window around client point (x, y), after a frame."""
    data = page.evaluate(
        """([x, y, r]) => {
          window.graphViz.renderNow();
          const c = document.getElementById('graph-canvas'), box = c.getBoundingClientRect();
          const dpr = devicePixelRatio;
          const px = Math.round((x - box.left) * dpr), py = Math.round((y - box.top) * dpr);
          return Array.from(c.getContext('2d').getImageData(px - r, py - r, 2 * r + 1, 2 * r + 1).data);
        }""",
        [x, y, radius],
    )
    return [tuple(data[i : i + 3]) for i in range(0, len(data), 4)]


def hex_rgb(color: str) -> tuple[int, int, int]:
    value = int(color.lstrip("#"), 16)
    return value >> 16, (value >> 8) & 255, value & 255


def near(pixel, color, tolerance=40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color, strict=True))


def edge_probe(page, src: str, dst: str) -> tuple[float, float]:
    """A client point on the edge src -> dst, 20 graph px below src's box (in the gap under its layer)."""
    a = page.evaluate(f"window.graphViz.nodeScreenPosition({src!r})")
    b = page.evaluate(f"window.graphViz.nodeScreenPosition({dst!r})")
    scale = page.evaluate("window.graphViz.state.scale")
    x0, y0 = a["x"], a["y"] + NODE_H / 2 * scale
    x1, y1 = b["x"], b["y"] - NODE_H / 2 * scale
    t = 20 * scale / (y1 - y0)
    return x0 + t * (x1 - x0), y0 + t * (y1 - y0)


def test_search_across_graphs_and_click_node_shows_kernel_code(browser, tmp_path):
    page, errors, _ = open_log(browser, tmp_path, MLP_TRAIN)
    page.click("button[data-graph='1']")  # Forward graph 0 has no `where`
    page.fill("#search", "where")
    # `where` is in the joint (0) and backward (2) graphs: both are listed.
    assert page.locator("#search-results button[data-node='where'][data-graph='0']").count() == 1
    assert page.locator("#search-results button[data-node='where'][data-graph='2']").count() == 1
    assert page.locator("#search-results button[data-graph='1']").count() == 0
    assert "2 of 3 graphs" in page.locator("#search-results").text_content()
    page.click("#search-results button[data-node='where'][data-graph='2']")
    assert page.evaluate("window.graphViz.state.graph.title") == "Backward graph 0"
    assert page.locator("#details h1").text_content() == "where"
    page.press("#search", "Enter")  # Enter prefers the shown graph
    assert page.evaluate("window.graphViz.state.graph.title") == "Backward graph 0"
    # Click the node on the canvas itself (after resetting the selection by re-picking the graph).
    page.click("button[data-graph='2']")
    click_node(page, "where")
    assert page.locator("#details h1").text_content() == "where"
    assert "aten.where.self" in page.locator("#node-table").text_content()
    code = page.locator("#kernel-code").text_content()
    assert "cpp_fused_sum_threshold_backward_0" in page.locator("#details").text_content()
    assert "1#include <torch/csrc/inductor/cpp_prefix.h>" in code  # line numbers + the kernel's code
    page.click("#kernel-list button[data-kernel='1:cpp_fused_sum_threshold_backward_0']")
    assert page.evaluate("window.graphViz.state.kernel") == "1:cpp_fused_sum_threshold_backward_0"
    # Saved-tensor link back to the forward graph.
    page.fill("#search", "relu")
    page.press("#search", "Enter")
    page.get_by_text("saved by forward: open in Forward graph 0").click()
    assert page.evaluate("window.graphViz.state.graph.title") == "Forward graph 0"
    assert page.locator("#details h1").text_content() == "relu"
    screenshot = tmp_path / "graph_viz_browser.png"
    page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}")
    assert errors == []


def test_selected_node_edges_highlighted_and_neighbours_clickable(browser, tmp_path):
    nodes = node_lines(graph_block(MLP_TRAIN.read_text(), "Backward graph 0"))
    names = set(nodes) | {"primals_3", "primals_4", "relu", "tangents_1"}

    def args_of(name: str) -> list[str]:
        return [t for t in re.findall(r"\b\w+\b", nodes[name].split("(", 1)[1]) if t in names]

    expected_inputs = args_of("where")
    expected_users = [n for n in nodes if "where" in args_of(n)]
    assert expected_inputs == ["le", "full_default", "mm"] and expected_users == ["permute_6", "sum_2"]

    page, errors, _ = open_log(browser, tmp_path, MLP_TRAIN)
    page.click("button[data-graph='2']")
    click_node(page, "where")
    inputs = page.locator("#node-inputs button").evaluate_all("bs => bs.map(b => b.dataset.node)")
    users = page.locator("#node-users button").evaluate_all("bs => bs.map(b => b.dataset.node)")
    assert inputs == expected_inputs and users == expected_users
    # Edges into the selection are drawn in the inputs colour, out of it in the users colour, and an
    # edge not touching it stays grey.
    blue, green = hex_rgb("#1565c0"), hex_rgb("#2e7d32")
    into = canvas_pixels(page, *edge_probe(page, "le", "where"))
    out_of = canvas_pixels(page, *edge_probe(page, "where", "permute_6"))
    unrelated = canvas_pixels(page, *edge_probe(page, "permute_1", "permute_2"))
    assert any(near(p, blue) for p in into), into
    assert any(near(p, green) for p in out_of), out_of
    assert not any(near(p, blue) or near(p, green) for p in unrelated), unrelated
    # Users and inputs are links: the selection moves there.
    page.click("#node-users button[data-node='sum_2']")
    assert page.locator("#details h1").text_content() == "sum_2"
    assert page.evaluate("window.graphViz.state.graph.nodes[window.graphViz.state.selected].name") == "sum_2"
    page.click("#node-inputs button[data-node='where']")
    assert page.locator("#details h1").text_content() == "where"
    assert errors == []


def test_kernel_colour_legend_matches_canvas(browser, tmp_path):
    page, errors, _ = open_log(browser, tmp_path, MLP_TRAIN)
    page.click("button[data-graph='1']")  # Forward graph 0: relu is computed by cpp_fused_relu_0
    swatch = page.locator("#kernel-list button[data-kernel='0:cpp_fused_relu_0'] .swatch")
    color = swatch.get_attribute("data-color")
    background = swatch.evaluate("s => getComputedStyle(s).backgroundColor")
    assert background == "rgb({}, {}, {})".format(*hex_rgb(color))
    colors = page.locator("#kernel-list .swatch").evaluate_all("ss => ss.map(s => s.dataset.color)")
    assert len(colors) == 3 and len(set(colors)) == 3  # one distinct colour per kernel of the graph
    # A spot inside relu's box clear of its labels and its saved-tensor frame.
    centre = page.evaluate("window.graphViz.nodeScreenPosition('relu')")
    scale = page.evaluate("window.graphViz.state.scale")
    spot = centre["x"] + (NODE_W / 2 - 8) * scale, centre["y"] - (NODE_H / 2 - 8) * scale
    pixels = canvas_pixels(page, *spot, 1)
    assert all(near(p, hex_rgb(color), 3) for p in pixels), (pixels, color)
    legend = page.locator("#legend").text_content()
    entries = ("graph input", "no kernel", "saved for backward", "selected node", "its inputs", "its users")
    for entry in entries:
        assert entry in legend, entry
    assert errors == []


def launch_lines(log_text: str, module_aot_id: str, call_prefix: str) -> list[int]:
    """1-based log lines in ``module_aot_id``'s call() that start with ``call_prefix``."""
    lines = log_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"# AOT ID: ['{module_aot_id}']"))
    call = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("def call("))
    found = []
    for i in range(call + 1, len(lines)):
        if lines[i].strip() and not lines[i].startswith(" "):
            break
        if lines[i].strip().startswith(call_prefix):
            found.append(i + 1)
    return found


def test_kernel_panel_shows_call_wrapper_with_launch_line(browser, tmp_path):
    text = MLP_TRAIN.read_text()
    page, errors, _ = open_log(browser, tmp_path, MLP_TRAIN)
    page.click("button[data-graph='1']")
    kernels = [("0:cpp_fused_relu_0", "cpp_fused_relu_0("), ("0:L167", "extern_kernels.addmm(primals_5")]
    for kernel_id, prefix in kernels:
        expected = launch_lines(text, "0_forward", prefix)
        assert len(expected) == 1
        page.click(f"#kernel-list button[data-kernel='{kernel_id}']")
        highlighted = page.locator("#call-code .hl")
        assert highlighted.count() == 1
        assert highlighted.locator(".ln").text_content() == str(expected[0])
        assert highlighted.text_content().removeprefix(str(expected[0])).startswith(prefix)
        # the whole call() is there, numbered with log lines
        numbers = page.locator("#call-code .ln").evaluate_all("ls => ls.map(l => Number(l.textContent))")
        assert numbers == sorted(numbers) and expected[0] in numbers and len(numbers) > 5
    # On a long call() the launch line is scrolled into view.
    page, errors2, _ = open_log(browser, tmp_path, TRANSFORMER_TRAIN)
    page.click("button[data-graph='1']")
    last = page.locator("#kernel-list button").last
    last.click()
    box = page.locator("#call-code").bounding_box()
    line = page.locator("#call-code .hl").first.bounding_box()
    assert box["y"] <= line["y"] and line["y"] + line["height"] <= box["y"] + box["height"]
    assert errors == [] and errors2 == []


def dtype_sizes() -> dict[str, int]:
    """FX annotation abbreviation -> bytes per element, from torch itself."""
    import torch
    from torch.utils._dtype_abbrs import dtype_abbrs

    return {abbr: dtype.itemsize for dtype, abbr in dtype_abbrs.items() if isinstance(dtype, torch.dtype)}


ANNOTATED_RE = re.compile(r'(\w+): "(\w+)\[([^\]]*)\]')


def expected_saved(log_text: str) -> dict[str, int | None]:
    """Forward outputs taken by the backward (tangents aside) -> bytes (None: symbolic shape)."""
    sizes = dtype_sizes()
    forward_return = graph_block(log_text, "Forward graph 0")[-1].strip()
    returned = re.findall(r"\w+", forward_return.removeprefix("return"))
    backward = graph_block(log_text, "Backward graph 0")
    backward_signature = next(line for line in backward if "def forward(" in line)
    saved = {}
    for name, dtype, shape in ANNOTATED_RE.findall(backward_signature):
        if name in returned and not name.startswith("tangents"):
            dims = [d.strip() for d in shape.split(",") if d.strip()]
            numel = math.prod(int(d) for d in dims) if all(d.isdigit() for d in dims) else None
            saved[name] = None if numel is None else sizes[dtype] * numel
    return saved


MIXED_DTYPES_LOG = """INFO:torch._functorch._aot_autograd.graph_compile.__aot_graphs:TRACED GRAPH
 ===== Forward graph 0 =====
 /x/_lazy_graph_module.py class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "bf16[8, 16][16, 1]cpu", primals_2: "f32[s0, 16][16, 1]cpu"):
        # File: /x/prog.py:3 in forward, code: y = x.relu()
        relu: "bf16[8, 16][16, 1]cpu" = torch.ops.aten.relu.default(primals_1)
        le: "b8[8, 16][16, 1]cpu" = torch.ops.aten.le.Scalar(relu, 0)
        argmax: "i64[8][1]cpu" = torch.ops.aten.argmax.default(relu, 1)
        exp: "f32[s0, 16][16, 1]cpu" = torch.ops.aten.exp.default(primals_2)
        scale: "f8e4m3fn[3, 5, 7][35, 7, 1]cpu" = torch.ops.aten.empty.memory_format([3, 5, 7])
        return (relu, le, argmax, exp, scale, primals_1)


INFO:torch._functorch._aot_autograd.graph_compile.__aot_graphs:TRACED GRAPH
 ===== Backward graph 0 =====
 <eval_with_key>.2 class GraphModule(torch.nn.Module):
    def forward(self, BACKWARD_SIGNATURE):
        where: "bf16[8, 16][16, 1]cpu" = torch.ops.aten.where.self(le, tangents_1, primals_1)
        mul: "f32[s0, 16][16, 1]cpu" = torch.ops.aten.mul.Tensor(exp, argmax)
        return (where, mul, scale)
""".replace(
    "BACKWARD_SIGNATURE",
    'primals_1: "bf16[8, 16][16, 1]cpu", le: "b8[8, 16][16, 1]cpu", argmax: "i64[8][1]cpu", '
    'exp: "f32[s0, 16][16, 1]cpu", scale: "f8e4m3fn[3, 5, 7][35, 7, 1]cpu", '
    'tangents_1: "bf16[8, 16][16, 1]cpu"',
)


@pytest.mark.parametrize("log_name", ["mlp_train", "transformer_train", "mixed_dtypes"])
def test_saved_tensor_bytes_and_total(browser, tmp_path, log_name):
    if log_name == "mixed_dtypes":
        log = tmp_path / "mixed_dtypes.log"
        log.write_text(MIXED_DTYPES_LOG)
    else:
        log = FIXTURES / "logs" / f"{log_name}.log"
    expected = expected_saved(log.read_text())
    assert expected
    total = sum(b for b in expected.values() if b is not None)
    page, errors, _ = open_log(browser, tmp_path, log)
    titles = page.locator("#graph-list button").evaluate_all("bs => bs.map(b => b.textContent)")
    for kind in ("Forward graph 0", "Backward graph 0"):
        page.click(f"#graph-list button[data-graph='{[t.startswith(kind) for t in titles].index(True)}']")
        rows = page.locator("#saved-memory tr[data-name]")
        shown = dict(rows.evaluate_all("rs => rs.map(r => [r.dataset.name, r.dataset.bytes])"))
        assert shown == {name: "" if b is None else str(b) for name, b in expected.items()}
        assert page.locator("#saved-total").get_attribute("data-bytes") == str(total)
        assert f"{total:,} B" in page.locator("#saved-total").text_content()
        if None in expected.values():
            assert "of unknown size" in page.locator("#saved-total").text_content()
    # a saved tensor's row is a link to its node
    name = next(iter(expected))
    page.click(f"#saved-memory tr[data-name='{name}'] button")
    assert page.locator("#details h1").text_content() == name
    assert errors == []


def source_runs(block: list[str]) -> list[tuple[str, list[str]]]:
    """(`file:line in function`, node names) for each run of >= 2 nodes under one `# File:` comment."""
    runs: list[tuple[str, list[str]]] = []
    current, names = "", []
    for line in block:
        stripped = line.strip()
        if stripped.startswith("#"):
            if current and len(names) >= 2:
                runs.append((current, names))
            match = re.match(r"# File: .*/([^/]+:\d+) in (\S+), code:", stripped)
            current, names = (f"{match.group(1)} in {match.group(2)}" if match else ""), []
        elif NODE_LINE_RE.match(line):
            names.append(NODE_LINE_RE.match(line).group(1))
    if current and len(names) >= 2:
        runs.append((current, names))
    return runs


def test_source_groups_collapse_and_expand(browser, tmp_path):
    runs = source_runs(graph_block(TRANSFORMER_TRAIN.read_text(), "Forward graph 0"))
    assert len(runs) >= 3
    page, errors, _ = open_log(browser, tmp_path, TRANSFORMER_TRAIN)
    page.click("button[data-graph='1']")
    labels = page.locator("#group-list button.item").evaluate_all("bs => bs.map(b => b.textContent)")
    assert labels == [f"{label} ({len(names)})" for label, names in runs]
    # The group's own list of nodes is the run under its `# File:` line.
    page.click("#group-list button[data-group='0']")
    listed = page.locator("#details button[data-node]").evaluate_all("bs => bs.map(b => b.dataset.node)")
    assert listed == runs[0][1]
    # Collapse all: one box per group (the group's first node), the others not drawn.
    page.check("#collapse-groups")
    num_hidden = sum(len(names) - 1 for _, names in runs)
    assert page.evaluate("window.graphViz.state.collapsedGroups.size") == len(runs)
    hidden = page.evaluate("Array.from(window.graphViz.state.repr).filter((r, j) => r !== j).length")
    assert hidden == num_hidden
    assert page.locator("#group-list button.toggle.collapsed").count() == len(runs)
    # Click the collapsed box on the canvas: that group expands, the others stay collapsed.
    page.evaluate("window.graphViz.state.scale = 1; window.graphViz.renderNow()")
    head = runs[1][1][0]
    page.evaluate(f"""(() => {{ const gv = window.graphViz, p = gv.nodeScreenPosition({head!r});
      const c = document.getElementById('graph-canvas').getBoundingClientRect();
      gv.state.tx += c.left + c.width / 2 - p.x; gv.state.ty += c.top + c.height / 2 - p.y; }})()""")
    click_node(page, head)
    assert page.evaluate("window.graphViz.state.collapsedGroups.has(1)") is False
    assert page.evaluate("window.graphViz.state.collapsedGroups.size") == len(runs) - 1
    assert page.locator("#details h1").text_content() == head
    assert page.locator("#details button[data-group='1']").count() == 1  # the node's group, as a link
    # The per-group toggle collapses and expands one group.
    page.click("#group-list button[data-group-toggle='1']")
    assert page.evaluate("window.graphViz.state.collapsedGroups.has(1)") is True
    page.uncheck("#collapse-groups")
    assert page.evaluate("window.graphViz.state.collapsedGroups.size") == 0
    page.click("#group-list button[data-group-toggle='2']")
    assert page.evaluate("[...window.graphViz.state.collapsedGroups]") == [2]
    assert errors == []


def big_log(num_layers: int, width: int) -> str:
    """A forward graph of ``num_layers`` x ``width`` adds (each of two nodes of the layer above): a tall
    graph far too big to fit the view at a readable zoom."""
    args = ", ".join(f'primals_{k}: "f32[4][1]cpu"' for k in range(width))
    lines = [
        "INFO:torch._functorch._aot_autograd.graph_compile.__aot_graphs:TRACED GRAPH",
        " ===== Forward graph 0 =====",
        " /x/_lazy_graph_module.py class GraphModule(torch.nn.Module):",
        f"    def forward(self, {args}):",
    ]
    previous = [f"primals_{k}" for k in range(width)]
    for layer in range(num_layers):
        current = [f"add_{layer}_{k}" for k in range(width)]
        for k, name in enumerate(current):
            a, b = previous[k], previous[(k + 1) % width]
            lines.append(f'        {name}: "f32[4][1]cpu" = torch.ops.aten.add.Tensor({a}, {b})')
        previous = current
    lines.append(f"        return ({', '.join(previous)},)")
    return "\n".join(lines) + "\n"


def test_fit_keeps_a_5k_node_graph_readable_and_minimap_navigates(browser, tmp_path):
    log = tmp_path / "big.log"
    log.write_text(big_log(num_layers=1000, width=5))
    page, errors, _ = open_log(browser, tmp_path, log)
    num_nodes = page.evaluate("window.graphViz.state.graph.nodes.length")
    assert num_nodes >= 5000
    page.keyboard.press("F")  # the whole graph: nodes become pixels
    assert page.evaluate("window.graphViz.state.scale") < 0.05
    page.evaluate("window.graphViz.renderNow()")
    assert "as dots" in page.locator("#status").text_content()
    page.keyboard.press("f")  # fit the layers in view: readable again
    scale = page.evaluate("window.graphViz.state.scale")
    assert scale >= READABLE_SCALE
    page.evaluate("window.graphViz.renderNow()")
    assert "as dots" not in page.locator("#status").text_content()
    visible = page.evaluate("window.graphViz.visibleNodeCount()")
    assert 0 < visible < num_nodes
    # Every node of the band in view is inside the canvas horizontally (the band fits the width).
    canvas = page.locator("#graph-canvas").bounding_box()
    for k in range(5):
        name = f"add_499_{k}"
        page.evaluate(f"""(() => {{ const gv = window.graphViz, p = gv.nodeScreenPosition({name!r});
          gv.state.ty += {canvas["y"] + canvas["height"] / 2} - p.y; }})()""")
        x = page.evaluate(f"window.graphViz.nodeScreenPosition({name!r}).x")
        assert canvas["x"] < x < canvas["x"] + canvas["width"]
    # The minimap: clicking its bottom edge brings the graph's last layer into view.
    assert page.locator("#minimap").is_visible()
    box = page.locator("#minimap").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] - 2)
    position = page.evaluate("window.graphViz.nodeScreenPosition('output')")
    assert canvas["y"] < position["y"] < canvas["y"] + canvas["height"]
    assert page.evaluate("window.graphViz.state.scale") == scale  # moving does not zoom
    assert errors == []


def test_zero_graph_page_keys_and_controls_without_errors(browser, tmp_path):
    # Built without convert(), which refuses logs without graphs: the page itself must still cope.
    html = tmp_path / "index.html"
    model = build_model(parse_log_text("no graphs here\n"), "empty.log")
    html.write_text(render_html(model), encoding="utf-8")
    page, errors, _ = open_page(browser, html)
    for key in ("f", "F"):
        page.keyboard.press(key)
    assert errors == []  # fitting a page without graphs raises no TypeError
    page.fill("#search", "x")
    page.press("#search", "Enter")
    page.check("#collapse")
    page.check("#collapse-groups")
    page.mouse.click(700, 400)
    assert "no graphs found" in page.locator("#graph-list").text_content()
    assert errors == []


def test_hostile_log_text_is_not_executed(browser, tmp_path):
    log = tmp_path / "hostile.log"
    log.write_text(hostile_log())
    convert(str(log), str(tmp_path / "out"))
    page, errors, dialogs = open_page(browser, tmp_path / "out" / "index.html")
    page.fill("#search", "relu")
    page.press("#search", "Enter")
    assert PAYLOAD in page.locator("#node-table").text_content()  # shown as text
    assert PAYLOAD in page.locator("#kernel-code").text_content()
    assert PAYLOAD in page.locator("#warnings").text_content()
    assert PAYLOAD in page.locator("#graph-list").text_content()
    assert PAYLOAD in page.locator("#search-results").text_content()  # relu's dtype text
    assert PAYLOAD in page.locator("#node-table").text_content().split("source", 1)[1]
    assert PAYLOAD in page.locator("#group-list").text_content()  # the `# File:` line labels a group
    page.click("#group-list button[data-group='0']")
    assert PAYLOAD in page.locator("#details").text_content()
    page.click("#kernel-list button >> nth=0")
    assert page.locator("#call-code").count() == 1
    assert page.locator("img").count() == 0
    assert dialogs == [] and errors == []


def test_empty_and_truncated_logs_load_without_errors(browser, tmp_path):
    (tmp_path / "empty.log").write_text("")
    with pytest.raises(ValueError, match="empty.log is empty"):  # no graphs: no page, a one-line error
        convert(str(tmp_path / "empty.log"), str(tmp_path / "empty_out"))
    assert not (tmp_path / "empty_out").exists()
    truncated = tmp_path / "truncated.log"
    truncated.write_text(
        "INFO:x:TRACED GRAPH\n ===== Forward graph 0 =====\n class G(torch.nn.Module):\n"
        '    def forward(self, x: "f32[2][1]cpu"):\n'
    )
    out = tmp_path / "truncated_out"
    convert(str(truncated), str(out))
    page, errors, _ = open_page(browser, out / "index.html")
    page.fill("#search", "x")
    page.press("#search", "Enter")
    page.check("#collapse")
    page.check("#collapse-groups")
    page.keyboard.press("f")
    page.keyboard.press("F")
    assert errors == []


def test_collapse_chains_and_expand_on_click(browser, tmp_path):
    page, errors, _ = open_log(browser, tmp_path, MLP_TRAIN)
    page.check("#collapse")
    page.wait_for_timeout(100)
    assert page.evaluate("window.graphViz.state.collapse") is True
    click_node(page, "mm_1")  # head of mm_1->permute_4->permute_5
    assert page.evaluate("window.graphViz.state.expanded.size") == 1
    assert errors == []


ALL_FIXTURE_LOGS = sorted((FIXTURES / "logs").glob("*.log")) + sorted(
    (FIXTURES / "triton_handwritten").glob("*.log")
)


@pytest.mark.parametrize("log", ALL_FIXTURE_LOGS, ids=lambda p: p.stem)
def test_every_fixture_every_node_kernel_and_group_without_errors(browser, tmp_path, log):
    page, errors, _ = open_log(browser, tmp_path, log)
    counts = page.evaluate(
        """() => {
          const gv = window.graphViz, counts = { nodes: 0, kernels: 0, groups: 0 };
          gv.model.graphs.forEach((g, i) => {
            gv.selectGraph(i);
            for (let j = 0; j < g.nodes.length; j++) {
              gv.selectNode(j, true); gv.renderNow(); counts.nodes++;
            }
            gv.fitLayers(); gv.renderNow(); gv.fitAll(); gv.renderNow();
          });
          for (const k of gv.model.kernels) { gv.selectKernel(k.id); gv.renderNow(); counts.kernels++; }
          return counts;
        }"""
    )
    assert counts["nodes"] == sum(len(g["nodes"]) for g in page.evaluate("window.graphViz.model.graphs"))
    for i in range(page.locator("#graph-list button").count()):
        page.click(f"#graph-list button[data-graph='{i}']")
        page.check("#collapse-groups")
        page.check("#collapse")
        for toggle in page.locator("#group-list button.toggle").all():
            toggle.click()
        page.uncheck("#collapse-groups")
        page.uncheck("#collapse")
    assert errors == []


def test_graph_list_names_each_graph_rank_and_dynamo_compile_id(browser, tmp_path):
    from tests.graph_viz.test_parser import two_rank_log

    html = tmp_path / "index.html"
    html.write_text(render_html(build_model(parse_log_text(two_rank_log()), "ranks.log")), encoding="utf-8")
    page, errors, _ = open_page(browser, html)
    titles = page.locator("#graph-list button").evaluate_all("bs => bs.map(b => b.textContent)")
    assert titles[1] == "Forward graph 0 [forward 0, 0/0] rank 1 (11 nodes)"
    assert titles[4] == "Forward graph 0 [forward 0, 0/0] rank 0 (11 nodes)"
    page.click("#graph-list button[data-graph='4']")
    assert "dynamo compile id0/0" in page.locator("#details").text_content()
    assert "runrank 0" in page.locator("#details").text_content()
    assert errors == []

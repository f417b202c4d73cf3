"""The page in real headless Chromium: search, click a node on the canvas, see its kernel code."""

import pathlib
import shutil

import pytest

from graph_viz.benchmark import CHROMIUM, CHROMIUM_ARGS
from graph_viz.main import convert
from tests.graph_viz.test_cli import PAYLOAD, hostile_log

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "graph_viz" / "fixtures"

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


def test_search_click_node_shows_kernel_code(browser, tmp_path):
    convert(str(FIXTURES / "logs" / "mlp_train.log"), str(tmp_path / "out"))
    page, errors, _ = open_page(browser, tmp_path / "out" / "index.html")
    page.click("button[data-graph='2']")  # Backward graph 0
    page.fill("#search", "where")
    assert page.locator("#search-results button[data-node='where']").count() == 1
    page.press("#search", "Enter")
    assert page.locator("#details h1").text_content() == "where"
    # Click the node on the canvas itself (after clearing the selection by picking another graph view).
    page.click("button[data-graph='2']")
    position = page.evaluate("window.graphViz.nodeScreenPosition('where')")
    page.mouse.click(position["x"], position["y"])
    assert page.locator("#details h1").text_content() == "where"
    assert "aten.where.self" in page.locator("#node-table").text_content()
    code = page.locator("#kernel-code").text_content()
    assert "cpp_fused_sum_threshold_backward_0" in page.locator("#details").text_content()
    assert "1#include <torch/csrc/inductor/cpp_prefix.h>" in code  # line numbers + the kernel's code
    # Click the kernel: all its nodes are highlighted.
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


def test_collapse_chains_and_expand_on_click(browser, tmp_path):
    convert(str(FIXTURES / "logs" / "mlp_train.log"), str(tmp_path / "out"))
    page, errors, _ = open_page(browser, tmp_path / "out" / "index.html")
    page.check("#collapse")
    page.wait_for_timeout(100)
    assert page.evaluate("window.graphViz.state.collapse") is True
    position = page.evaluate(
        "window.graphViz.nodeScreenPosition('mm_1')"
    )  # head of mm_1->permute_4->permute_5
    page.mouse.click(position["x"], position["y"])
    assert page.evaluate("window.graphViz.state.expanded.size") == 1
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
    assert PAYLOAD in page.locator("#node-table").text_content().split("source", 1)[1]
    assert page.locator("img").count() == 0
    assert dialogs == [] and errors == []


def test_empty_and_truncated_logs_load_without_errors(browser, tmp_path):
    (tmp_path / "empty.log").write_text("")
    truncated = tmp_path / "truncated.log"
    truncated.write_text(
        "INFO:x:TRACED GRAPH\n ===== Forward graph 0 =====\n class G(torch.nn.Module):\n"
        '    def forward(self, x: "f32[2][1]cpu"):\n'
    )
    with pytest.raises(ValueError, match="empty.log is empty"):  # no graphs: no page, a one-line error
        convert(str(tmp_path / "empty.log"), str(tmp_path / "empty_out"))
    assert not (tmp_path / "empty_out").exists()
    for log in (truncated,):
        out = tmp_path / (log.stem + "_out")
        convert(str(log), str(out))
        page, errors, _ = open_page(browser, out / "index.html")
        page.fill("#search", "x")
        page.press("#search", "Enter")
        page.check("#collapse")
        assert errors == [], log.name
        page.close()

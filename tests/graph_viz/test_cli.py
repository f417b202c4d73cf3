"""graph_viz/main.py as a user runs it (subprocess into tmp_path), overwrite rules, hostile logs."""

import json
import pathlib
import subprocess
import sys

import pytest

from graph_viz.main import convert

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "graph_viz" / "fixtures"
PAYLOAD = "</script><img src=x onerror=alert(1)>"


def hostile_log() -> str:
    """The mlp inference log with an HTML/script payload in a graph title, a source line, a node's
    annotation, an unparseable node name, kernel code and a noise line."""
    text = (FIXTURES / "logs" / "mlp_inference.log").read_text()
    text = text.replace("===== Forward graph 0 =====", f"===== Forward graph 0 {PAYLOAD} =====", 1)
    text = text.replace("# No stacktrace found for following nodes", f"# File: {PAYLOAD}", 1)
    text = text.replace('relu: "f32', f'relu: "{PAYLOAD}f32', 1)
    text = text.replace("        addmm_1:", f"        {PAYLOAD}: f = g(x)\n        addmm_1:", 1)
    text = text.replace(
        "auto tmp1 = at::vec::clamp_min",
        f"// {PAYLOAD}\n                        auto tmp1 = at::vec::clamp_min",
        1,
    )
    return text + f"user output {PAYLOAD} <!-- & -->\n"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "graph_viz" / "main.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_html_and_model(tmp_path):
    out = tmp_path / "out"
    result = run_cli(str(FIXTURES / "logs" / "mlp_train.log"), str(out))
    assert result.returncode == 0, result.stderr
    assert "3 graphs, 61 nodes, 8 kernels" in result.stdout
    model = json.loads((out / "model.json").read_text())
    assert [g["title"] for g in model["graphs"]] == ["Joint graph 0", "Forward graph 0", "Backward graph 0"]
    html = (out / "index.html").read_text()
    assert html.count("<script") == 2 and "cpp_fused_relu_0" in html
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind

    again = run_cli(str(FIXTURES / "logs" / "mlp_train.log"), str(out))
    assert again.returncode != 0 and "pass --overwrite" in again.stderr
    forced = run_cli(str(FIXTURES / "logs" / "mlp_inference.log"), str(out), "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "model.json").read_text())["source"] == "mlp_inference.log"


def test_cli_strict_fails_on_noise(tmp_path):
    result = run_cli(str(FIXTURES / "logs" / "mlp_train.log"), str(tmp_path / "out"), "--strict")
    assert result.returncode != 0 and "line 1: skipped unrecognised line" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_log_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        convert(str(tmp_path / "nope.log"), str(tmp_path / "out"))


def test_hostile_text_is_escaped_in_html(tmp_path):
    log = tmp_path / "hostile.log"
    log.write_text(hostile_log())
    model = convert(str(log), str(tmp_path / "out"))
    relu = [n for n in model["graphs"][0]["nodes"] if n["name"] == "relu"][0]
    assert relu["dtype"].startswith("</script>")  # kept as text in the model
    assert relu["source"] == f"File: {PAYLOAD}"
    assert (
        model["graphs"][0]["title"] == f"Forward graph 0 {PAYLOAD}"
        and model["graphs"][0]["kind"] == "inference"
    )
    assert any(PAYLOAD in message for _, message in model["warnings"])
    html = (tmp_path / "out" / "index.html").read_text()
    assert PAYLOAD not in html and "<img" not in html and "<!--" not in html
    assert "\\u003c/script\\u003e\\u003cimg src=x onerror=alert(1)\\u003e" in html

"""graph_viz/main.py as a user runs it (subprocess into tmp_path), overwrite rules, hostile logs."""

import json
import os
import pathlib
import subprocess

import pytest

from graph_viz.main import convert
from tests.module_cli import run_module

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


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_module("graph_viz.main", *args, env=env, timeout=120)


def test_cli_writes_html_and_model(tmp_path):
    out = tmp_path / "out"
    result = run_cli(str(FIXTURES / "logs" / "mlp_train.log"), str(out))
    assert result.returncode == 0, result.stderr
    assert "3 graphs, 61 nodes, 8 kernels" in result.stdout
    forward = "Forward graph 0                  forward   AOT id 0               11 nodes, link coverage"
    assert f"{forward} 100.0% (3/3" in result.stdout
    assert "joint graph: kernels are linked in its forward / backward graphs" in result.stdout
    model = json.loads((out / "model.json").read_text())
    assert [g["title"] for g in model["graphs"]] == ["Joint graph 0", "Forward graph 0", "Backward graph 0"]
    html = (out / "index.html").read_text()
    assert html.count("<script") == 2 and "cpp_fused_relu_0" in html
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind

    again = run_cli(str(FIXTURES / "logs" / "mlp_train.log"), str(out))
    assert again.returncode == 2 and "pass --overwrite" in again.stderr and again.stderr.count("\n") == 1
    forced = run_cli(str(FIXTURES / "logs" / "mlp_inference.log"), str(out), "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "model.json").read_text())["source"] == "mlp_inference.log"


def test_cli_strict_passes_real_logs_and_fails_on_unreadable_graph_text(tmp_path):
    result = run_cli(str(FIXTURES / "logs" / "mlp_train.log"), str(tmp_path / "ok"), "--strict")
    assert result.returncode == 0, result.stderr  # its UserWarning lines are not parse problems
    log = tmp_path / "broken.log"
    text = (FIXTURES / "logs" / "mlp_train.log").read_text()
    log.write_text(text.replace("        relu: ", "        relu: f32 = = ", 1))
    result = run_cli(str(log), str(tmp_path / "out"), "--strict")
    assert result.returncode == 2 and "Joint graph 0: unreadable graph line" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_missing_log_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        convert(str(tmp_path / "nope.log"), str(tmp_path / "out"))


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "is empty: capture stdout and stderr"),
        # every byte value, 40 times: its 40 \n make 41 lines (a \r does not end a line)
        (bytes(range(256)) * 40, "has no AOT graph (41 lines: 41 user output)"),
        (b"step 0: loss 2.3\nstep 1: loss 2.1\n", "has no AOT graph (2 lines: 2 user output)"),
        (
            b'{\n  "schemaVersion": 1,\n  "traceEvents": []\n}\n',
            "is JSON (a torch.profiler trace?), not a compile log",
        ),
    ],
)
def test_log_without_graphs_exits_with_a_one_line_hint(tmp_path, content, expected):
    log = tmp_path / "prog.log"
    log.write_bytes(content)
    result = run_cli(str(log), str(tmp_path / "out"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr and "TORCH_LOGS=aot_graphs,output_code" in result.stderr
    assert not (tmp_path / "out").exists()


def test_folder_without_log_files_is_one_line(tmp_path):
    folder = tmp_path / "trace_dir"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a log\n")
    result = run_cli(str(folder), str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert (
        f"error: {folder} is a folder with no *.log file: pass a log file, or the TORCH_TRACE"
        in result.stderr
    )
    assert not (tmp_path / "out").exists()


def test_rank_prefixed_log_is_read(tmp_path):
    lines = (FIXTURES / "logs" / "mlp_train.log").read_text().splitlines()
    log = tmp_path / "ranks.log"
    log.write_text("".join(f"[rank{rank}]:{line}\n" for rank in (0, 1) for line in lines))
    result = run_cli(str(log), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "6 graphs, 122 nodes, 16 kernels (0 without a node), 0 warnings" in result.stdout
    # each graph names its rank
    assert "rank 0: Forward graph 0          forward   AOT id 0" in result.stdout
    assert "rank 1: Forward graph 0          forward   AOT id 0" in result.stdout


def test_output_dir_may_not_hold_the_log(tmp_path):
    logs = tmp_path / "home" / "logs"
    logs.mkdir(parents=True)
    log = logs / "mlp_train.log"
    log.write_text((FIXTURES / "logs" / "mlp_train.log").read_text())
    for output in (logs, tmp_path / "home", logs / "mlp_train.log"):
        result = run_cli(str(log), str(output), "--overwrite")
        assert result.returncode == 2 and "choose an output path outside the inputs" in result.stderr, output
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    result = run_cli(str(log), "~", "--overwrite", env=env)
    assert result.returncode == 2 and "is a folder containing the input" in result.stderr
    assert sorted(p.name for p in logs.iterdir()) == ["mlp_train.log"]


def test_overwrite_replaces_only_an_earlier_graph_viz_output(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    result = run_cli(str(FIXTURES / "logs" / "mlp_inference.log"), str(other), "--overwrite")
    assert result.returncode == 2 and "not an earlier output of graph_viz" in result.stderr
    assert (other / "notes.txt").read_text() == "mine"


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


def test_log_without_aot_graphs_but_with_dynamo_graphs_says_what_to_add(tmp_path):
    log = FIXTURES / "torch_2_13" / "short" / "mlp_train_graph_code.log"  # TORCH_LOGS=graph_code,output_code
    result = run_cli(str(log), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert (
        "other     AOT id -               14 nodes, not an AOT graph: kernels are linked only in"
        in result.stdout
    )
    assert (
        f"note: {log} has output code (2 modules) but no AOT graphs, so no kernel is linked: add aot_graphs "
        "to TORCH_LOGS" in result.stdout
    )

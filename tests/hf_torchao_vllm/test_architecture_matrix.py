"""The architecture conformance matrix: the committed ARCHITECTURES.md is complete and current (fast), and a
representative subset rerun now gives the committed cells (slow: a dense model with Linear biases, and an
MoE with 3D experts that transformers renames on save). The parent's handling of vLLM failures and
crashes is tested with a fake child process (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_torchao_vllm import architecture_matrix as matrix
from hf_torchao_vllm import tiny_models

FOLDER = Path(matrix.__file__).resolve().parent
COMMITTED_JSON = FOLDER / matrix.JSON_FILE
COMMITTED_MD = FOLDER / matrix.MARKDOWN
# dense with Linear biases, and an MoE with 3D experts that transformers stores under other names. The
# embedded models (Llama, Qwen3-MoE) run through every tool in the other tests.
CI_ARCHITECTURES = ("Qwen2ForCausalLM", "MixtralForCausalLM")
CI_RECIPES = ("int8_weight_only", "int8_dynamic_act_int8_weight")


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads(COMMITTED_JSON.read_text())


def test_committed_matrix_covers_every_architecture_and_the_issue_list(committed):
    rows = {row["architecture"] for row in committed["rows"]}
    assert rows == {a.hf_name for a in tiny_models.architectures_in_both()}
    required = {
        "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
        "Gemma3ForCausalLM", "Phi3ForCausalLM", "OPTForCausalLM", "GPTNeoXForCausalLM", "MixtralForCausalLM",
        "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "PhimoeForCausalLM", "DeepseekV3ForCausalLM",
        "GptOssForCausalLM", "Llama4ForCausalLM",
    }  # fmt: skip
    assert required <= rows


def test_committed_matrix_is_current(committed):
    """Made with the installed (locked) versions and every matrix recipe; the markdown is its rendering."""
    assert committed["versions"] == matrix.versions()
    assert committed["recipes"] == list(matrix.MATRIX_RECIPES)
    assert COMMITTED_MD.read_text() == matrix.render_markdown(committed)


def test_every_cell_is_measured_and_no_failure_is_ours(committed):
    columns = matrix.columns(committed["recipes"])
    for row in committed["rows"]:
        cells = row["cells"]
        built = cells["build"]["status"] == "ok"
        assert set(cells) == (set(columns) if built else {"build"}), row["architecture"]
        for name, cell in cells.items():
            assert cell["status"] in ("ok", "refused", "failed", "skipped"), (row["architecture"], name)
            if cell["status"] in ("refused", "failed"):
                assert cell["owner"] in matrix.OWNERS and cell["detail"], (row["architecture"], name)
    ours = {
        (row["architecture"], name)
        for row in committed["rows"]
        for name, cell in row["cells"].items()
        if cell["status"] == "failed" and cell["owner"] == "ours"
    }
    known = {
        (a, n) for a, n in ours if any(a == arch and n.endswith(col) for arch, col in KNOWN_DEFECTS_OF_OURS)
    }
    assert ours == known, f"failures of ours not in KNOWN_DEFECTS_OF_OURS: {sorted(ours - known)}"
    for architecture, column in KNOWN_DEFECTS_OF_OURS:  # a fixed defect leaves the list
        assert any(a == architecture and n.endswith(column) for a, n in ours), (architecture, column)


# Open defects of ours the full matrix measured (issue 15 is not done while this list is not empty).
# Each entry fails the test above once fixed, so that the list shrinks with the fixes.
KNOWN_DEFECTS_OF_OURS: dict[tuple[str, str], str] = {}


def test_owner_is_the_package_that_raised():
    import transformers

    def raise_from_transformers():
        transformers.AutoConfig.for_model("no-such-model-type")

    try:
        raise_from_transformers()
    except ValueError as error:
        assert matrix.owner_of(error) == "transformers"
    try:
        try:
            raise_from_transformers()
        except ValueError as inner:
            raise RuntimeError("wrapped by our code") from inner
    except RuntimeError as error:
        assert matrix.owner_of(error) == "transformers"  # the root of the chain, not our wrapper
    try:
        raise KeyError("raised here")
    except KeyError as error:
        assert matrix.owner_of(error) == "ours"


def test_markdown_numbers_each_reason_once():
    cell_ok = {"status": "ok", "detail": "", "owner": "", "kl": None}
    refused = {"status": "refused", "detail": "vLLM cannot X", "owner": "vLLM", "kl": None}
    row = {"architecture": "A", "cells": {"build": cell_ok, "vllm_bf16": refused}}
    text = matrix.render_markdown(
        {
            "versions": matrix.versions(),
            "machine": "m",
            "recipes": [],
            "wall_s": 0.0,
            "rows": [row, {**row, "architecture": "B"}],
        }
    )
    assert "| A | ok | no [1] |" in text and "| B | ok | no [1] |" in text
    assert text.count("1. **vLLM**: vLLM cannot X") == 1


@pytest.mark.slow
def test_ci_subset_reproduces_the_committed_cells(committed, tmp_path):
    """A dense model with biases and an MoE, through two recipes: every cell has the committed status."""
    matrix.main(
        architectures=",".join(CI_ARCHITECTURES), recipes=",".join(CI_RECIPES),
        output_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"),
    )  # fmt: skip
    fresh = {
        r["architecture"]: r for r in json.loads((tmp_path / "out" / matrix.JSON_FILE).read_text())["rows"]
    }
    rows = {r["architecture"]: r for r in committed["rows"]}
    for name in CI_ARCHITECTURES:
        for column, cell in fresh[name]["cells"].items():
            assert cell["status"] == rows[name]["cells"][column]["status"], (name, column, cell)
    # a dense model is served from torchao and from compressed-tensors; an MoE converts its 3D experts
    assert fresh["Qwen2ForCausalLM"]["cells"]["int8_dynamic_act_int8_weight/vllm_ct"]["status"] == "ok"
    assert fresh["Qwen2ForCausalLM"]["cells"]["int8_weight_only/vllm_torchao"]["status"] == "ok"
    assert "+ 4 3D" in fresh["MixtralForCausalLM"]["cells"]["int8_weight_only/quantize"]["detail"]
    # transformers stores Mixtral's quantized experts under block_sparse_moe while the torchao metadata
    # names them mlp: the reader finds them and the converter writes per-expert w1 / w3 / w2.
    mixtral_convert = fresh["MixtralForCausalLM"]["cells"]["int8_weight_only/convert"]
    assert mixtral_convert["status"] == "ok" and "bit-exact; transformers KL" in mixtral_convert["detail"]


def test_every_vllm_failure_not_ours_is_refused_up_front(committed):
    """Every vLLM cell the matrix saw fail (for a reason not ours) is refused by vllm_support before vLLM
    starts, with the measured error: for a checkpoint of that architecture and kind."""
    import torch

    from hf_torchao_vllm.serving import vllm_support

    cpu = torch.device("cpu")
    failures = [
        (row["architecture"], name, cell)
        for row in committed["rows"]
        for name, cell in row["cells"].items()
        if name.startswith("vllm") or "/vllm" in name
        if cell["status"] == "failed" and cell["owner"] != "ours"  # ours: KNOWN_DEFECTS_OF_OURS above
    ]
    assert failures, "the matrix records vLLM failures"
    for architecture, name, cell in failures:
        assert cell["kind"], (architecture, name)
        problem = vllm_support.measured_failure(architecture, cell["kind"])
        assert problem is not None and cell["detail"] in problem, (architecture, name)
    bf16_failed = [a for a, name, _ in failures if name == "vllm_bf16"]
    for architecture in bf16_failed:
        config = {"architectures": [architecture]}
        assert "even in bf16" in vllm_support.checkpoint_problem(config, set(), cpu), architecture


@pytest.mark.parametrize("row_timeout_s", [0, -5])
def test_row_timeout_below_one_second_is_refused(tmp_path, row_timeout_s):
    # a limit of 0 fails every row, and the work dir keeps those rows for the next run to reuse
    with pytest.raises(ValueError, match=r"--row_timeout_s is .*: pass a limit >= 1 second"):
        matrix.main(
            architectures="LlamaForCausalLM", recipes="int8_weight_only", output_dir=str(tmp_path / "o"),
            work_dir=str(tmp_path / "w"), row_timeout_s=row_timeout_s,
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def _row(name: str, owner: str, status: str = "failed") -> dict:
    cell = {"status": status, "detail": "d", "owner": owner, "kl": None}
    ok = {"status": "ok", "detail": "", "owner": "", "kl": None}
    return {
        "architecture": name,
        "recipes": ["int8_weight_only"],
        "seconds": 1.0,
        "cells": {"build": ok, "x": cell},
    }


@pytest.mark.parametrize("owner, exits", [("vLLM", False), ("ours", True), ("unknown", True)])
def test_exit_status_is_1_when_a_cell_failed_in_our_code(tmp_path, monkeypatch, capsys, owner, exits):
    monkeypatch.setattr(matrix, "run_row", lambda architecture, *args: _row(architecture.hf_name, owner))
    call = {
        "architectures": "LlamaForCausalLM",
        "recipes": "int8_weight_only",
        "output_dir": str(tmp_path / "o"),
    }
    if exits:
        with pytest.raises(SystemExit) as raised:
            matrix.main(**call, work_dir=str(tmp_path / "w"))
        assert raised.value.code == 1
        assert (
            f"FAILED: 1 cell(s) failed in our code or in a row's process: LlamaForCausalLM x ({owner})"
            in (capsys.readouterr().out)
        )
    else:
        matrix.main(**call, work_dir=str(tmp_path / "w"))
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted([matrix.MARKDOWN, matrix.JSON_FILE])


def test_a_row_whose_process_died_is_measured_again(tmp_path, monkeypatch):
    """A cached row is reused unless its process timed out or died (then the rerun measures it)."""
    architecture = next(a for a in tiny_models.architectures_in_both() if a.hf_name == "LlamaForCausalLM")
    children = []

    def run_child(args, log, timeout_s):
        children.append(args[0])
        return "did not finish in 1 s"

    monkeypatch.setattr(matrix, "run_child", run_child)
    cached = tmp_path / "LlamaForCausalLM.json"
    cached.write_text(json.dumps(_row("LlamaForCausalLM", "vLLM")))
    assert matrix.run_row(architecture, ["int8_weight_only"], tmp_path, 1)["cells"]["x"]["owner"] == "vLLM"
    assert children == []
    died = matrix.run_row(architecture, ["int8_weight_only", "fp8"], tmp_path, 1)  # other recipes: a new row
    assert children == ["prepare"] and died["cells"]["build"]["owner"] == "unknown"
    assert json.loads(cached.read_text()) == died
    matrix.run_row(architecture, ["int8_weight_only", "fp8"], tmp_path, 1)
    assert children == ["prepare", "prepare"]
    assert [p.name for p in tmp_path.iterdir()] == ["LlamaForCausalLM.json"]  # no staging file, no work dir


def _jobs(*cells: str) -> list[dict]:
    return [{"cell": cell, "path": f"/m/{cell}", "kind": "k", "problem": None} for cell in cells]


def _fake_serve(monkeypatch, outcomes: list[list[tuple[str, str]]]):
    """run_child for the serve phase: call i writes outcomes[i] ((cell, status) lines) and, when the
    list ends in ("died", ""), returns a process problem."""
    calls = []

    def run_child(args, log, timeout_s):
        jobs = json.loads(Path(args[1]).read_text())
        calls.append([job["cell"] for job in jobs])
        written, failed_before = outcomes[len(calls) - 1], False
        with open(args[2], "w") as f:
            for cell, status in written:
                if cell == "died":
                    return "exited -11"
                owner = "vLLM" if status != "ok" else ""
                line = {"cell": cell, "after_failure": failed_before, "status": status}
                line |= {"detail": f"{cell} {status}", "owner": owner, "kl": None}
                f.write(json.dumps(line) + "\n")
                failed_before = failed_before or status == "failed"
        return None

    monkeypatch.setattr(matrix, "run_child", run_child)
    return calls


def test_serve_row_refuses_the_quantized_cells_when_bf16_fails(tmp_path, monkeypatch):
    calls = _fake_serve(monkeypatch, [[("vllm_bf16", "failed")]])
    results = matrix.serve_row(
        _jobs("vllm_bf16", "r/vllm_torchao", "r/vllm_ct"), tmp_path, tmp_path / "log", 9
    )
    assert calls == [["vllm_bf16", "r/vllm_torchao", "r/vllm_ct"]]
    assert results["vllm_bf16"]["status"] == "failed"
    for cell in ("r/vllm_torchao", "r/vllm_ct"):
        assert results[cell]["status"] == "refused" and results[cell]["owner"] == "vLLM"
        assert results[cell]["detail"] == "vLLM cannot serve this architecture even in bf16: vllm_bf16 failed"


def test_serve_row_reruns_a_failure_after_a_failure_and_isolates_a_crash(tmp_path, monkeypatch):
    calls = _fake_serve(
        monkeypatch,
        [
            [("vllm_bf16", "ok"), ("a", "failed"), ("b", "failed")],  # b failed after a: rerun alone
            [("b", "ok"), ("died", "")],  # then the process dies in c
            [("d", "ok")],
        ],
    )
    results = matrix.serve_row(_jobs("vllm_bf16", "a", "b", "c", "d"), tmp_path, tmp_path / "log", 9)
    assert calls == [["vllm_bf16", "a", "b", "c", "d"], ["b", "c", "d"], ["d"]]
    assert {cell: r["status"] for cell, r in results.items()} == {
        "vllm_bf16": "ok", "a": "failed", "b": "ok", "c": "failed", "d": "ok",
    }  # fmt: skip
    assert results["c"]["detail"].startswith("vLLM process exited -11") and results["c"]["owner"] == "vLLM"

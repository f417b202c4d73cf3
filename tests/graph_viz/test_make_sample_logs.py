"""The fixture generator still produces logs that parse like the committed fixtures (real torch.compile)."""

import pathlib

import pytest

from graph_viz.model import build_model
from pytorch_scripts_common.inductor_log import read_inductor_log
from tests.module_cli import run_module

REPO = pathlib.Path(__file__).resolve().parents[2]


def shape(path: pathlib.Path) -> list[tuple[str, str, int]]:
    model = build_model(read_inductor_log(path), path.name)
    return [(g["title"], g["kind"], len(g["nodes"])) for g in model["graphs"]] + [
        ("kernels", "", model["summary"]["num_kernels"])
    ]


@pytest.mark.slow
def test_regenerated_inference_and_cache_hit_logs_match_fixtures(tmp_path):
    out = tmp_path / "logs"
    only = "--only=mlp_inference,mlp_train_cache_hit"
    result = run_module("graph_viz.make_sample_logs", f"--output_dir={out}", only, timeout=600)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        ".pytorch_scripts_output",
        "mlp_inference.log",
        "mlp_train_cache_hit.log",
    ]
    for name in ("mlp_inference.log", "mlp_train_cache_hit.log"):
        assert shape(out / name) == shape(REPO / "graph_viz" / "fixtures" / "logs" / name), name
    again = run_module("graph_viz.make_sample_logs", f"--output_dir={out}", timeout=120)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr


def test_unknown_sample_name_or_format_is_a_value_error(tmp_path):
    from graph_viz.make_sample_logs import main

    with pytest.raises(ValueError, match="unknown sample log"):
        main(output_dir=str(tmp_path / "logs"), only="mlp_train,nope")
    with pytest.raises(ValueError, match="--log_format 'json' is unknown"):
        main(output_dir=str(tmp_path / "logs"), log_format="json")
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_trace_form_writes_a_torch_trace_folder(tmp_path):
    from graph_viz.make_sample_logs import TRACE_FILE, write_log

    write_log(
        "mlp_inference",
        tmp_path / "mlp_inference_trace",
        disable_caches=True,
        torch_logs="",
        log_format="trace",
    )
    assert [p.name for p in (tmp_path / "mlp_inference_trace").iterdir()] == [TRACE_FILE]
    log = read_inductor_log(tmp_path / "mlp_inference_trace", strict=True)
    assert log.format == "trace" and [g.kind for g in log.graphs] == ["inference"]

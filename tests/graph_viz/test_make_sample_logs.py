"""The fixture generator still produces logs that parse like the committed fixtures (real torch.compile)."""

import pathlib
import subprocess
import sys

import pytest

from graph_viz.model import build_model
from graph_viz.parser import parse_log_file

REPO = pathlib.Path(__file__).resolve().parents[2]


def shape(path: pathlib.Path) -> list[tuple[str, str, int]]:
    model = build_model(parse_log_file(str(path)), path.name)
    return [(g["title"], g["kind"], len(g["nodes"])) for g in model["graphs"]] + [
        ("kernels", "", model["summary"]["num_kernels"])
    ]


@pytest.mark.slow
def test_regenerated_inference_and_cache_hit_logs_match_fixtures(tmp_path):
    out = tmp_path / "logs"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "graph_viz" / "make_sample_logs.py"),
            "--output_dir",
            str(out),
            "--only",
            "mlp_inference,mlp_train_cache_hit",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["mlp_inference.log", "mlp_train_cache_hit.log"]
    for name in ("mlp_inference.log", "mlp_train_cache_hit.log"):
        assert shape(out / name) == shape(REPO / "graph_viz" / "fixtures" / "logs" / name), name
    again = subprocess.run(
        [sys.executable, str(REPO / "graph_viz" / "make_sample_logs.py"), "--output_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode != 0 and "pass --overwrite" in again.stderr


def test_unknown_sample_name_is_a_value_error(tmp_path):
    from graph_viz.make_sample_logs import main

    with pytest.raises(ValueError, match="unknown sample log"):
        main(output_dir=str(tmp_path / "logs"), only="mlp_train,nope")

"""benchmark.py: bad arguments are rejected up front; a one-row run on a committed log prints its table.

The 1k/10k/100k run itself is a manual command (see the README); timings are never asserted.
"""

import pathlib
import shutil

import pytest

from graph_viz.benchmark import CHROMIUM, main
from pytorch_scripts_common.cli import UsageError

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "graph_viz" / "fixtures"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": "3,x"}, r"--layers is '3,x': pass comma-separated integers"),
        ({"layers": (3, 0)}, r"--layers is \(3, 0\): pass positive layer counts"),
        ({"layers": ""}, r"--layers is '': pass positive layer counts"),
        ({"backend": "eager"}, r"--backend is 'eager': pass --backend=aot_eager or --backend=inductor"),
        ({"num_runs": 0}, r"--num_runs is 0: pass an integer >= 1"),
    ],
)
def test_bad_arguments_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        main(**kwargs, browser=False)


def test_one_row_on_the_committed_transformer_log(tmp_path, capsys):
    # The bundled 1-layer inductor log stands in for a generated one (log_dir reuses existing logs).
    shutil.copy(FIXTURES / "logs" / "transformer_train.log", tmp_path / "transformer_1_inductor.log")
    browser = shutil.which(CHROMIUM) is not None
    if browser:
        pytest.importorskip("playwright.sync_api")
    main(layers="1", backend="inductor", num_runs=1, log_dir=str(tmp_path), browser=browser)
    out = capsys.readouterr().out
    assert "load average (1/5/15 min)" in out and "median (min-max) of 1 runs" in out
    header = next(line for line in out.splitlines() if line.startswith("| layers |"))
    (row,) = [line for line in out.splitlines() if line.startswith("| 1 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == header.count("|") - 1
    assert cells[1:4] == ["378", "197", "26"]  # nodes, largest graph, kernels of that log
    assert cells[7].endswith("(1.00x)")
    assert (cells[8] != "-") == browser

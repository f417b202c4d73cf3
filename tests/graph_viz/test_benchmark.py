"""benchmark.py rejects bad arguments up front (the timed run itself is a manual command, see README)."""

import pytest

from graph_viz.benchmark import main


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": "3,x"}, "layers must be integers"),
        ({"layers": (3, 0)}, "layers must be positive"),
        ({"backend": "eager"}, "backend must be"),
        ({"num_runs": 0}, "num_runs must be"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        main(**kwargs, browser=False)

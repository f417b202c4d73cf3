"""Every entry point refuses hostile command lines with one ``error:`` line, exit 2, no traceback and
nothing written (the table and the check: tests/hostile_cli.py)."""

import pytest

from tests.hostile_cli import CASES, SIGNAL_CASES, check_refused, check_signal


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_hostile_command_line_is_refused_in_one_line(case, tmp_path):
    check_refused(case, tmp_path)


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in SIGNAL_CASES]
)
def test_signal_mid_run_leaves_no_output_and_no_process(case, tmp_path):
    check_signal(case, tmp_path)

"""Every entry point refuses hostile command lines with one ``error:`` line, exit 2, no traceback and
nothing written (the table and the check: tests/hostile_cli.py)."""

import pytest

from tests.hostile_cli import CASES, check_refused


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_hostile_command_line_is_refused_in_one_line(case, tmp_path):
    check_refused(case, tmp_path)

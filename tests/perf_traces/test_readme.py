"""Keep perf_traces/README.md's commands honest: the shared README check, and one command per fixture pair."""

from __future__ import annotations

from pathlib import Path

from tests.perf_traces.helpers import FIXTURES, REPO_ROOT
from tests.readme_commands import bash_block_commands, command_flags, readme_problems

README = Path(REPO_ROOT) / "perf_traces" / "README.md"


def _commands() -> list[list[str]]:
    return bash_block_commands(README.read_text(encoding="utf-8"), ".venv/bin/python")


def test_readme_commands_name_real_modules_and_flags():
    assert len(_commands()) >= 8
    assert readme_problems(README) == []


def test_readme_names_the_command_of_every_fixture_pair():
    """Each fixtures/cpu_* folder is the --output_dir of a README command (and only those exist)."""
    written = set()
    for command in _commands():
        output_dir = command_flags(command).get("output_dir", "")
        if output_dir.startswith("perf_traces/fixtures/"):
            written.add(output_dir.removeprefix("perf_traces/fixtures/"))
    on_disk = {path.name for path in Path(FIXTURES).iterdir() if path.name.startswith("cpu_")}
    assert written == on_disk

"""Keeps graph_viz/README.md honest: its commands name real modules, files and flags; fixture commands run."""

import pathlib
import subprocess
import sys

from tests.readme_commands import bash_block_commands, readme_problems

REPO = pathlib.Path(__file__).resolve().parents[2]
README = REPO / "graph_viz" / "README.md"


def readme_commands() -> list[list[str]]:
    return bash_block_commands(README.read_text(), ".venv/bin/python -m graph_viz.")


def test_readme_commands_use_existing_modules_files_and_flags():
    assert readme_problems(README) == []  # modules, flags and repository paths: the shared check
    commands = readme_commands()
    assert {c[2] for c in commands} == {"graph_viz.main", "graph_viz.benchmark", "graph_viz.make_sample_logs"}
    assert "RESULTS_TABLE" not in README.read_text()  # the measured table was filled in


def test_readme_fixture_commands_run(tmp_path):
    commands = [c for c in readme_commands() if c[2] == "graph_viz.main" and c[3].startswith("graph_viz/")]
    assert len(commands) == 2
    for number, command in enumerate(commands):
        out = tmp_path / f"out{number}"
        args = [out if a.startswith("/tmp/") else a for a in command[3:]]
        result = subprocess.run(
            [sys.executable, "-m", command[2], *map(str, args)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert (out / "index.html").is_file()

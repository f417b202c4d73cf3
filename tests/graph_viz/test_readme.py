"""Keeps graph_viz/README.md honest: its commands name real files and flags; the fixture command runs."""

import inspect
import pathlib
import subprocess
import sys

from tests.readme_commands import bash_block_commands

REPO = pathlib.Path(__file__).resolve().parents[2]
README = REPO / "graph_viz" / "README.md"


def readme_commands() -> list[list[str]]:
    return bash_block_commands(README.read_text(), ".venv/bin/python graph_viz/")


def test_readme_commands_use_existing_scripts_files_and_flags():
    import graph_viz.benchmark
    import graph_viz.main
    import graph_viz.make_sample_logs

    entry_points = {
        "graph_viz/main.py": graph_viz.main.main,
        "graph_viz/benchmark.py": graph_viz.benchmark.main,
        "graph_viz/make_sample_logs.py": graph_viz.make_sample_logs.main,
    }
    commands = readme_commands()
    assert {c[1] for c in commands} == set(entry_points)
    for command in commands:
        parameters = inspect.signature(entry_points[command[1]]).parameters
        for arg in command[2:]:
            if arg.startswith("--"):
                assert arg[2:].split("=")[0] in parameters, (command, arg)
            elif arg.startswith("graph_viz/fixtures/") and arg.endswith(".log"):
                assert (REPO / arg).is_file(), arg
    assert "RESULTS_TABLE" not in README.read_text()  # the measured table was filled in


def test_readme_fixture_command_runs(tmp_path):
    (command,) = [
        c for c in readme_commands() if c[1] == "graph_viz/main.py" and "transformer_train.log" in c[2]
    ]
    args = [tmp_path / "out" if a.startswith("/tmp/") else a for a in command[2:]]
    result = subprocess.run(
        [sys.executable, str(REPO / command[1]), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "index.html").is_file()

"""Keep perf_traces/README.md's commands honest: scripts exist and every --flag is a main() argument."""

from __future__ import annotations

import importlib
import inspect
import os

from tests.perf_traces.helpers import REPO_ROOT
from tests.readme_commands import bash_block_commands

README = os.path.join(REPO_ROOT, "perf_traces", "README.md")


def _commands() -> list[list[str]]:
    with open(README, encoding="utf-8") as readme:
        return bash_block_commands(readme.read(), ".venv/bin/python")


def test_readme_commands_use_real_flags():
    commands = _commands()
    assert len(commands) >= 8
    for command in commands:
        if command[1:3] == ["-m", "pytest"]:
            assert all(os.path.isdir(os.path.join(REPO_ROOT, arg)) for arg in command[3:4])
            continue
        if command[1] == "-m":
            module_name, rest = command[2], command[3:]
        else:
            path = command[1]
            assert os.path.isfile(os.path.join(REPO_ROOT, path)), path
            module_name = path[:-3].replace("/", ".")
            rest = command[2:]
        module = importlib.import_module(module_name)
        if not hasattr(module, "main"):  # fixture generator scripts run as plain scripts
            assert module_name.endswith("make_fixture")
            continue
        parameters = inspect.signature(module.main).parameters
        for flag in (token for token in rest if token.startswith("--")):
            assert flag[2:] in parameters, f"{flag} is not an argument of {module_name}.main"


def test_readme_names_the_command_of_every_fixture_pair():
    """Each fixtures/cpu_* folder is the --output_dir of a README command (and only those exist)."""
    written = set()
    for command in _commands():
        if "--output_dir" in command and command[command.index("--output_dir") + 1].startswith(
            "perf_traces/fixtures/"
        ):
            written.add(command[command.index("--output_dir") + 1].removeprefix("perf_traces/fixtures/"))
    on_disk = {
        name
        for name in os.listdir(os.path.join(REPO_ROOT, "perf_traces", "fixtures"))
        if name.startswith("cpu_")
    }
    assert written == on_disk

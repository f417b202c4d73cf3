"""House rules that can be checked statically across every tool in the repository.

- Nothing runs at import time: no bare top-level calls, no environment writes at module level;
  `fire.Fire(...)` only under `if __name__ == "__main__":`.
- Every fire entry function documents every one of its parameters in its docstring (that docstring
  is the tool's --help).
- Every entry script goes through the one error path, ``pytorch_scripts_common.cli.run`` (or
  ``pytorch_scripts_common.distributed.run`` under torchrun), never ``fire.Fire`` directly, and has
  hostile command lines in tests/hostile_cli.py.
- Every tool folder has a README.md.
"""

import ast
import pathlib
import re

import pytest

from tests.entry_points import calls_fire, entry_call, is_main_guard, walk_import_time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIPPED_PARTS = {"tests", "fixtures", ".venv", ".git", "__pycache__", "embedded_models", "outputs"}


def repository_python_files() -> list[pathlib.Path]:
    return sorted(
        path
        for path in REPO_ROOT.rglob("*.py")
        if not SKIPPED_PARTS.intersection(path.relative_to(REPO_ROOT).parts)
    )


PYTHON_FILES = repository_python_files()


@pytest.mark.parametrize("path", PYTHON_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_nothing_runs_at_import_time(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for index, node in enumerate(tree.body):
        if is_main_guard(node):
            continue
        where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
        if isinstance(node, ast.Expr):
            is_docstring = index == 0 and isinstance(node.value, ast.Constant)
            assert is_docstring, f"{where}: top-level expression runs at import time"
        assert calls_fire(node) is None, f"{where}: fire.Fire outside `if __name__ == '__main__':`"
        for child in walk_import_time(node):
            if isinstance(child, ast.Subscript) and isinstance(child.ctx, ast.Store):
                target = ast.unparse(child.value)
                assert target != "os.environ", f"{where}: module-level os.environ write"


def fire_entry_points() -> list[tuple[pathlib.Path, str]]:
    entries = []
    for path in PYTHON_FILES:
        call = entry_call(ast.parse(path.read_text(encoding="utf-8")))
        if call is not None and call.args and isinstance(call.args[0], ast.Name):
            entries.append((path, call.args[0].id))
    return entries


@pytest.mark.parametrize(
    ("path", "function_name"), fire_entry_points(), ids=lambda v: str(v) if isinstance(v, str) else v.name
)
def test_fire_entry_documents_every_parameter(path, function_name):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert function_name in functions, f"{path.name}: fire entry {function_name} is not a top-level function"
    function = functions[function_name]
    docstring = ast.get_docstring(function) or ""
    assert docstring, f"{path.name}:{function.lineno}: {function_name} has no docstring (it is --help)"
    arguments = [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
    for argument in arguments:
        assert re.search(rf"\b{re.escape(argument.arg)}\b", docstring), (
            f"{path.name}: --help of {function_name} does not mention '{argument.arg}'"
        )


def test_there_are_fire_entry_points():
    assert fire_entry_points(), "no fire entry point found: the repository's tools are missing"


TOOL_FOLDERS = sorted(
    path
    for path in REPO_ROOT.iterdir()
    if path.is_dir() and (path / "__init__.py").exists() and path.name not in {"tests", "requirements"}
)


@pytest.mark.parametrize("folder", TOOL_FOLDERS, ids=lambda p: p.name)
def test_every_tool_folder_has_a_readme(folder):
    assert (folder / "README.md").is_file(), f"{folder.name}/ has no README.md"


# Entry scripts that do not go through pytorch_scripts_common.cli.run, each with the reason.
OWN_ERROR_PATH = {
    # setup.sh runs it to find out whether the environment is complete, so it needs nothing but the
    # standard library and packaging (not fire); it prints one line per problem itself.
    "requirements/check_lock.py": "checks the environment fire itself comes from",
}


def imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> ``module.name`` for every ``from module import name`` anywhere in the file."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def entry_scripts() -> list[pathlib.Path]:
    return [
        path
        for path in PYTHON_FILES
        if any(is_main_guard(node) for node in ast.parse(path.read_text(encoding="utf-8")).body)
    ]


ONE_ERROR_PATH = {"pytorch_scripts_common.cli.run", "pytorch_scripts_common.distributed.run"}


def error_path_calls(path: pathlib.Path) -> set[str]:
    """What the ``if __name__ == "__main__":`` block calls to run the tool, resolved to full names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = imported_names(tree)
    calls = set()
    for guard in (node for node in tree.body if is_main_guard(node)):
        for node in ast.walk(guard):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name):
                calls.add(names.get(func.id, func.id))
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                calls.add(f"{names.get(func.value.id, func.value.id)}.{func.attr}")
    return calls


@pytest.mark.parametrize("path", entry_scripts(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_entry_script_uses_the_one_error_path(path):
    relative = str(path.relative_to(REPO_ROOT))
    calls = error_path_calls(path)
    assert "fire.Fire" not in calls, f"{relative}: fire.Fire directly; use pytorch_scripts_common.cli.run"
    if relative in OWN_ERROR_PATH:
        return
    assert calls & ONE_ERROR_PATH, (
        f"{relative}: its __main__ block calls {sorted(calls)}, not pytorch_scripts_common.cli.run "
        "(or pytorch_scripts_common.distributed.run under torchrun): user mistakes would print tracebacks"
    )


def test_the_one_error_path_check_can_fail(tmp_path):
    fire_script = tmp_path / "tool.py"
    fire_script.write_text(
        "import fire\n\ndef main():\n    pass\n\nif __name__ == '__main__':\n    fire.Fire(main)\n"
    )
    assert error_path_calls(fire_script) == {"fire.Fire"}
    own_run = tmp_path / "own.py"
    own_run.write_text("from subprocess import run\n\nif __name__ == '__main__':\n    run(['true'])\n")
    assert not error_path_calls(own_run) & ONE_ERROR_PATH


def test_every_entry_script_has_hostile_command_lines():
    from tests.hostile_cli import CASES

    covered = {case.module for case in CASES}
    missing = [
        str(path.relative_to(REPO_ROOT))
        for path in entry_scripts()
        if str(path.relative_to(REPO_ROOT)) not in OWN_ERROR_PATH
        and ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts) not in covered
    ]
    assert not missing, f"entry scripts without a case in tests/hostile_cli.py CASES: {missing}"


def test_torchao_environment_is_set_in_one_place():
    """TORCHAO_FORCE_SKIP_LOADING_SO_FILES: pytorch_scripts_common.torchao_env sets it on CPU-only torch
    builds; gpu/runner.py sets it per device for the steps it starts (gpu/plan.py prints it)."""
    allowed = {"pytorch_scripts_common/torchao_env.py", "gpu/runner.py", "gpu/plan.py"}
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in PYTHON_FILES
        if "TORCHAO_FORCE_SKIP_LOADING_SO_FILES" in path.read_text(encoding="utf-8")
        and str(path.relative_to(REPO_ROOT)) not in allowed
    ]
    assert not offenders, (
        f"call pytorch_scripts_common.torchao_env.configure_torchao_env() instead: {offenders}"
    )

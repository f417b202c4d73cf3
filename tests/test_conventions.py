"""House rules that can be checked statically across every tool in the repository.

- Nothing runs at import time: no bare top-level calls, no environment writes at module level;
  `fire.Fire(...)` only under `if __name__ == "__main__":`.
- Every fire entry function documents every one of its parameters in its docstring (that docstring
  is the tool's --help).
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

"""Where a script's fire entry is: the ``run(main)`` / ``fire.Fire(main)`` call under its main guard.

Read from the source (the call runs only under ``python -m``), for the convention and README tests.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

# The calls that start a fire entry: fire itself, pytorch_scripts_common.cli.run (imported as `run` or
# used as `cli.run`) and pytorch_scripts_common.distributed.run (its per-rank wrapper).
FIRE_CALLS = {("fire", "Fire"), ("cli", "run"), ("distributed", "run")}


def is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
    )


def walk_import_time(node: ast.AST) -> Iterator[ast.AST]:
    """Like ast.walk, but does not enter function bodies (they do not run at import time)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        return
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from walk_import_time(child)


def calls_fire(node: ast.AST) -> ast.Call | None:
    """A ``fire.Fire(...)`` or ``run(...)`` (pytorch_scripts_common's wrappers of it) call."""
    for child in walk_import_time(node):
        if not isinstance(child, ast.Call):
            continue
        func = child.func
        if isinstance(func, ast.Name) and func.id == "run":
            return child
        is_attribute_call = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
        if is_attribute_call and (func.value.id, func.attr) in FIRE_CALLS:
            return child
    return None


def entry_call(tree: ast.Module) -> ast.Call | None:
    """The fire call under the module's ``if __name__ == "__main__":``, or None when it has none."""
    for node in tree.body:
        if is_main_guard(node) and (call := calls_fire(node)) is not None:
            return call
    return None

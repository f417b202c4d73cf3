"""The shell commands a README shows, and the check that keeps every README's commands honest.

Every README shows its commands in one form, run from the clone's root:

    .venv/bin/python -m <folder>.<script> --flag=value
    .venv/bin/torchrun --nproc_per_node N -m <folder>.main --flag=value

``readme_problems`` checks each command of a README or any other Markdown file (in its ```bash
blocks and in inline code that starts with an interpreter or torchrun): a repository module is run
with ``-m`` (never as ``path/script.py``) by a venv's interpreter, the module exists and has a fire
entry under its ``if __name__ == "__main__":``, and every flag is a parameter of that entry function
(or an alias its ``run(main, aliases=...)`` names) written ``--flag=value`` (a bare ``--flag`` only
for a bool). Other modules (``pytest``, ``venv``) must be importable; a script that is not in the
repository is the reader's own program and runs with their plain ``python``.
"""

from __future__ import annotations

import ast
import functools
import glob
import importlib
import importlib.util
import inspect
import re
import shlex
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.entry_points import entry_call

REPO_ROOT = Path(__file__).resolve().parents[1]
INTERPRETER = re.compile(r"(?:^|/)python(?:\d+(?:\.\d+)*)?$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", ";", "|"}
SKIPPED_FOLDERS = {".venv", ".git", "outputs", "__pycache__"}


def bash_block_commands(text: str, prefixes: str | tuple[str, ...]) -> list[list[str]]:
    """Commands of the ```bash blocks in ``text`` that start with one of ``prefixes``, shlex-split.

    Backslash continuations are joined first, so flags on continuation lines are seen; a comment is
    a ``#`` that starts a word (bash's rule), so ``--x=a#b`` stays one argument.
    """
    return [
        words
        for _, line in bash_block_lines(text)
        if line.startswith(prefixes)
        for words in [shlex.split(line)]
    ]


def bash_block_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every command line of the ```bash blocks, continuations joined, comments cut."""
    lines = []
    for block in re.finditer(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        first_line = text.count("\n", 0, block.start(1)) + 1
        offset = 0
        for line in re.split(r"(?<!\\)\n", block.group(1)):
            number, offset = first_line + offset, offset + line.count("\n") + 1
            line = re.split(r"(?:^|\s)#", line.replace("\\\n", " "), maxsplit=1)[0].strip()
            if line:
                lines.append((number, line))
    return lines


def inline_commands(text: str) -> list[tuple[int, str]]:
    """(line number, text) of the inline code spans that start with an interpreter or torchrun."""
    prose = re.sub(r"^```.*?^```", lambda block: "\n" * block.group(0).count("\n"), text, flags=re.S | re.M)
    spans = []
    for span in re.finditer(r"`([^`]+)`", prose):
        words = span.group(1).split()
        words = words[next((i for i, w in enumerate(words) if not ASSIGNMENT.match(w)), len(words)) :]
        if words and (INTERPRETER.search(words[0]) or words[0].endswith("torchrun")):
            spans.append((prose.count("\n", 0, span.start()) + 1, " ".join(span.group(1).split())))
    return spans


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ``&&``, ``||``, ``;``, ``|``), redirections and
    leading ``VAR=value`` assignments dropped."""
    commands: list[list[str]] = [[]]
    words = iter(shlex.split(line))
    for word in words:
        if word in SEPARATORS:
            commands.append([])
        elif re.match(r"^\d*[<>]", word):
            if re.fullmatch(r"\d*(?:>>?|<|>&)", word):
                next(words, None)  # the redirection's target
        elif commands[-1] or not (ASSIGNMENT.match(word) or word == "env"):
            commands[-1].append(word)
    return [command for command in commands if command]


def command_flags(args: list[str]) -> dict[str, str]:
    """The ``--flag=value`` words of ``args`` as {flag: value}; a bare ``--flag`` is ``"True"``."""
    flags = {}
    for word in args:
        if word.startswith("--"):
            name, has_value, value = word[2:].partition("=")
            flags[name] = value if has_value else "True"
    return flags


def markdown_files(root: Path = REPO_ROOT) -> list[Path]:
    """Every Markdown file of the repository: the READMEs, STYLE.md, committed results."""
    return sorted(
        path for path in root.rglob("*.md") if not SKIPPED_FOLDERS.intersection(path.relative_to(root).parts)
    )


def readme_commands(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, words) of every simple command ``path`` shows, blocks and inline code."""
    text = path.read_text(encoding="utf-8")
    lines = sorted(bash_block_lines(text) + inline_commands(text))
    return [(number, words) for number, line in lines for words in simple_commands(line)]


def readme_problems(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """Every problem of every command of one README, as ``README.md:LINE: `command`: problem``."""
    return [
        f"{path.relative_to(root)}:{number}: `{shlex.join(words)}`: {problem}"
        for number, words in readme_commands(path)
        for problem in command_problems(words, root)
    ]


def command_problems(words: list[str], root: Path = REPO_ROOT) -> list[str]:
    """What is wrong with one simple command (empty when it follows the one style)."""
    program, args = words[0], words[1:]
    if INTERPRETER.search(program):
        return _python_problems(program, args, root)
    if Path(program).name == "torchrun":
        return _torchrun_problems(program, args, root)
    return []


def _python_problems(program: str, args: list[str], root: Path) -> list[str]:
    if not args or args[0] == "-c":
        return []
    if args[0] == "-m":
        if len(args) < 2:
            return ["-m names no module"]
        return _module_problems(program, args[1], args[2:], root)
    if args[0].startswith("-"):
        return [f"interpreter option {args[0]}: write `{program} -m <module> --flag=value`"]
    module = _module_of_path(args[0], root)
    if module is not None:
        return [f"script form `{args[0]}`: write `.venv/bin/python -m {module}`"]
    if program != "python":
        return [
            f"`{args[0]}` is not a module of the repository; a program of the reader's own runs with `python`"
        ]
    return []


def _torchrun_problems(program: str, args: list[str], root: Path) -> list[str]:
    if not args:
        return []
    if "-m" not in args or args.index("-m") + 1 >= len(args):
        scripts = [arg for arg in args if arg.endswith(".py")]
        what = f"script form `{scripts[0]}`" if scripts else "no -m <module>"
        return [f"{what}: write `.venv/bin/torchrun --nproc_per_node N -m <folder>.main`"]
    index = args.index("-m")
    launcher, module, rest = args[:index], args[index + 1], args[index + 2 :]
    problems = [
        f"{word.partition('=')[0]} is not a torchrun option"
        for word in launcher
        if word.startswith("-") and word.partition("=")[0] not in _torchrun_options()
    ]
    if _is_repository_module(module, root) and program != ".venv/bin/torchrun":
        problems.append(f"`{program}`: run the clone's launcher, `.venv/bin/torchrun`")
    return problems + _module_problems(None, module, rest, root)


@functools.cache
def _torchrun_options() -> frozenset[str]:
    from torch.distributed import run

    return frozenset(option for action in run.get_args_parser()._actions for option in action.option_strings)


def _module_of_path(path: str, root: Path) -> str | None:
    """The module a repository ``.py`` path is (``graph_viz/main.py`` → ``graph_viz.main``), else None."""
    if not path.endswith(".py") or not (root / path).is_file():
        return None
    return path.removesuffix(".py").replace("/", ".")


def _is_repository_module(module: str, root: Path) -> bool:
    top = module.split(".")[0]
    return (root / top / "__init__.py").is_file() or (root / f"{top}.py").is_file()


def _module_problems(program: str | None, module: str, args: list[str], root: Path) -> list[str]:
    if not _is_repository_module(module, root):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return [f"no module {module}"]
        return (
            _path_problems((arg for arg in args if not arg.startswith("-")), root)
            if module == "pytest"
            else []
        )
    problems = []
    if program is not None and not program.endswith("bin/python"):
        problems.append(f"`{program}`: run the clone's interpreter, `.venv/bin/python`")
    file = root / (module.replace(".", "/") + ".py")
    if not file.is_file():
        return [*problems, f"no module {module} (no {file.relative_to(root)})"]
    entry = _fire_entry(module, file)
    if isinstance(entry, str):
        return [*problems, entry]
    function, aliases = entry
    return problems + flag_problems(function, aliases, args) + _path_problems(_values(args), root)


def _fire_entry(module: str, file: Path) -> tuple[Callable[..., Any], dict[str, str]] | str:
    """The entry function and its aliases (alias → parameter), or why there is none."""
    call = entry_call(ast.parse(file.read_text(encoding="utf-8")))
    if call is None or not call.args or not isinstance(call.args[0], ast.Name):
        return f'{module} has no `run(main)` / `fire.Fire(main)` under `if __name__ == "__main__":`'
    namespace = vars(importlib.import_module(module))
    function = namespace[call.args[0].id]
    aliases: dict[str, str] = {}
    for keyword in call.keywords:
        if keyword.arg == "aliases":
            value = eval(compile(ast.Expression(keyword.value), str(file), "eval"), dict(namespace))
            aliases = dict(value) if isinstance(value, dict) else {name: name for name in value}
    return function, aliases


def _is_bool(function: Callable[..., Any], parameter: inspect.Parameter | None) -> bool:
    if parameter is None:
        return False
    try:
        hint = typing.get_type_hints(function).get(parameter.name)
    except (NameError, TypeError):
        hint = None
    return hint is bool or isinstance(parameter.default, bool)


def flag_problems(function: Callable[..., Any], aliases: dict[str, str], args: list[str]) -> list[str]:
    """Flags of ``args`` that ``function`` does not take or that are not written ``--flag=value``,
    positional words beyond its required parameters, and required parameters not given."""
    if "--help" in args or "-h" in args:
        return []
    parameters = inspect.signature(function).parameters
    takes_any_flag = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    problems, given, positional = [], set(), []
    words = iter(enumerate(args))
    for index, word in words:
        if not word.startswith("--"):
            positional.append(word)
            continue
        name, has_value, _ = word[2:].partition("=")
        name = aliases.get(name, name)
        if name.startswith("no") and name not in parameters and _is_bool(function, parameters.get(name[2:])):
            name = name[2:]  # fire's --noflag, False
        elif name not in parameters and not takes_any_flag:
            problems.append(f"--{name}: {function.__module__}.{function.__name__} has no such parameter")
            continue
        given.add(name)
        following = args[index + 1] if index + 1 < len(args) else ""
        takes_a_value = following and not following.startswith("-")
        if not has_value and (takes_a_value or not _is_bool(function, parameters.get(name))):
            problems.append(
                f"{shlex.join([word, following] if takes_a_value else [word])}: write --{name}=<value>"
            )
            if takes_a_value:
                next(words, None)  # the flag's value
    # Positional words are for the required parameters only; an optional one is a flag.
    required = [
        n
        for n, p in parameters.items()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    slots = [
        name
        for name in required
        if name not in given and parameters[name].kind is not inspect.Parameter.KEYWORD_ONLY
    ]
    if len(positional) > len(slots) and not any(p.kind is p.VAR_POSITIONAL for p in parameters.values()):
        extra = shlex.join(positional[len(slots) :])
        problems.append(f"positional {extra}: write the optional parameters as --flag=value")
    given.update(slots[: len(positional)])
    problems += [f"--{name} is required" for name in required if name not in given]
    return problems


def _values(args: list[str]) -> Iterable[str]:
    """The positional words and the values of ``--flag=value``."""
    for word in args:
        if word.startswith("--"):
            yield word.partition("=")[2]
        elif not word.startswith("-"):
            yield word


def _path_problems(values: Iterable[str], root: Path) -> list[str]:
    """Values that name a path inside a folder of the repository (``graph_viz/fixtures/x.log``) that
    does not exist."""
    tracked = {path.name for path in root.iterdir() if (path / "__init__.py").is_file()}
    return [
        f"{value} does not exist"
        for value in values
        if "/" in value and value.split("/")[0] in tracked and not glob.glob(str(root / value))
    ]

"""Command-line front door of every tool: fire, argument types checked, one-line user errors.

``run(main)`` replaces ``fire.Fire(main)`` under ``if __name__ == "__main__":``. It

- checks each argument against the entry function's annotation before the function runs (fire
  passes ``--num_runs abc`` through as the string ``'abc'`` and ``--kl_threshold nan`` as a float
  NaN): ``int``, ``float`` (finite), ``bool``, ``str`` and ``X | None`` of those;
- prints a user mistake as one line, ``error: <what was wrong>: <how to fix it>``, and exits 2.
  User mistakes are ``ValueError`` (``UsageError``, ``json.JSONDecodeError``, ``UnicodeDecodeError``
  …) and the ``OSError``s of a bad path (missing file, exists, is a folder, permission denied);
  every other exception is a bug and keeps its traceback. ``PYTORCH_SCRIPTS_DEBUG=1`` shows the
  traceback of user mistakes too;
- refuses command-line words the entry function does not take (``--nmu_runs 3``, a third
  positional value) before the function runs: fire would run it with the rest and complain after;
  a missing required argument is the same one line (fire would print it above its usage block);
- turns SIGTERM into an exception like SIGINT's ``KeyboardInterrupt``, so that ``finally`` blocks
  and the output staging of ``pytorch_scripts_common.outputs`` clean up; both exit 128 + signal
  number with one line;
- accepts other spellings of a flag, ``aliases={"model_name": "model"}`` (the flag names of the
  scripts a tool replaces, and its own former names), rewriting the command line before fire reads
  it; an alias and its target given together are a user mistake. ``fixed_flags={"name": (value,
  reason)}`` accepts a flag of such a script whose only value here is what the tool always does
  (dropped) and refuses any other value with the reason;
- sets torchao's import-time environment (``pytorch_scripts_common.torchao_env``: its CUDA
  libraries are skipped on CPU-only torch builds only) before the tool runs.

``report`` replaces the printing of those lines (``pytorch_scripts_common.distributed`` prints them
from one rank only), ``sigterm_raises=False`` keeps SIGTERM's default (the process ends at once).

``signals_deferred()`` holds SIGINT / SIGTERM back until the end of a block that a signal must not
cut in half: starting a process pool (a pool half-started when the exception comes is never
terminated, and its workers print tracebacks as their parent's pipes close under them).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import shlex
import signal
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

__all__ = [
    "USER_ERRORS",
    "Terminated",
    "UsageError",
    "check_arguments",
    "parse_list",
    "rename_flags",
    "run",
    "signals_deferred",
]

DEBUG_ENV = "PYTORCH_SCRIPTS_DEBUG"


class UsageError(ValueError):
    """A user mistake. The message reads ``<what was wrong>: <how to fix it>``."""


class Terminated(BaseException):  # noqa: N818 (named like KeyboardInterrupt, its sibling)
    """Raised in the main thread when the process receives SIGTERM."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def describe_user_error(error: BaseException) -> str:
    """One line for a user mistake: an OSError as '<strerror>: <path>', anything else its message."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return f"{error.strerror.lower()}: {error.filename}"
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split("\n"))


def _scalar_types(annotation: Any) -> tuple[set[type], bool]:
    """The scalar types an annotation admits, and whether it admits None; empty set = not checked."""
    if annotation in (int, float, bool, str):
        return {annotation}, False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        scalars = {m for m in members if m in (int, float, bool, str)}
        others = [m for m in members if m not in scalars and m is not type(None)]
        if scalars and not others:
            return scalars, type(None) in members
    return set(), False


def _coerce(name: str, value: Any, allowed: set[type], allows_none: bool) -> Any:
    flag = f"--{name}"
    if value is None:
        if allows_none:
            return None
        raise UsageError(
            f"{flag} needs a value: pass {flag}=<{'|'.join(sorted(t.__name__ for t in allowed))}>"
        )
    if bool in allowed and isinstance(value, bool):
        return value
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if float in allowed and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise UsageError(f"{flag} is {value!r}: pass a finite number")
        return float(value) if int not in allowed else value
    if int in allowed and isinstance(value, float) and value.is_integer():
        return int(value)
    if str in allowed:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # fire reads `--name 2024` as a number
        if isinstance(value, tuple | list):
            return value  # fire reads `a,b` as a tuple; the tool parses it with parse_list
    wanted = " or ".join(
        {"int": "an integer", "float": "a number", "bool": "True/False", "str": "a string"}[t.__name__]
        for t in sorted(allowed, key=lambda t: t.__name__)
    )
    raise UsageError(f"{flag} is {value!r}: pass {wanted}")


def check_arguments(function: Callable[..., Any], bound: inspect.BoundArguments) -> None:
    """Check and coerce ``bound``'s arguments in place against ``function``'s scalar annotations."""
    hints = typing.get_type_hints(function)
    for name, value in list(bound.arguments.items()):
        parameter = bound.signature.parameters[name]
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or name not in hints:
            continue
        allowed, allows_none = _scalar_types(hints[name])
        if allowed:
            bound.arguments[name] = _coerce(name, value, allowed, allows_none)


def _checked(function: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise UsageError(f"{error}: see --help for the arguments") from None
        check_arguments(function, bound)
        return function(*bound.args, **bound.kwargs)

    return wrapper


def _raise_terminated(signum: int, frame: Any) -> NoReturn:
    raise Terminated(signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT / SIGTERM received inside the block are delivered again when it ends (see the module doc)."""
    caught: list[int] = []
    previous = {
        signum: signal.getsignal(signum)
        for signum in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(signum) not in (signal.SIG_IGN, None)
    }
    for signum in previous:
        signal.signal(signum, lambda received, frame: caught.append(received))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        signal.raise_signal(caught[0])  # the handler in place now: KeyboardInterrupt, Terminated or exit


def _print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _unconsumed_words(function: Callable[..., Any], argv: list[str]) -> list[str]:
    """The words of ``argv`` that fire would not pass to ``function`` (fire runs it, then fails on them)."""
    from fire import core, decorators, parser

    args, flag_args = parser.SeparateFlagArgs(argv)
    separator = parser.CreateParser().parse_known_args(flag_args)[0].separator
    after_separator: list[str] = []
    if separator in args:
        args, after_separator = args[: args.index(separator)], args[args.index(separator) + 1 :]
    try:
        _, _, remaining, _ = core._MakeParseFn(function, decorators.GetMetadata(function))(args)
    except core.FireError as error:
        raise _fire_usage_error(error) from None
    return [*remaining, *after_separator]


def _fire_usage_error(error: Exception) -> UsageError:
    """fire's refusal of a command line (it would print it under a usage block) as one line."""
    what, *values = error.args
    if what == "The function received no value for the required argument:" and values:
        name = values[0]
        return UsageError(f"missing argument --{name}: pass it in its place or as --{name}=..., see --help")
    if what == "Missing required flags:" and values:
        flags = " ".join(f"--{name}" for name in sorted(values[0]))
        return UsageError(f"missing argument {flags}: pass {flags.replace(' ', '=... ')}=..., see --help")
    what = " ".join([str(what).rstrip(":"), *(str(value) for value in values)])
    return UsageError(f"{what}: see --help for the arguments")


def _wants_help(argv: list[str]) -> bool:
    from fire import parser

    args, flag_args = parser.SeparateFlagArgs(argv)
    return "--help" in args or "-h" in args or parser.CreateParser().parse_known_args(flag_args)[0].help


def _flag_key(word: str) -> tuple[str, bool]:
    """The argument name of a flag word as fire reads it (``--model-name=x`` -> ``model_name``), and
    whether the word carries its value after ``=``."""
    stripped = word.lstrip("-")
    key, equals, _ = stripped.partition("=")
    return key.replace("-", "_"), bool(equals)


def rename_flags(
    argv: Sequence[str],
    aliases: Mapping[str, str],
    fixed_flags: Mapping[str, tuple[Any, str]] | None = None,
) -> list[str]:
    """``argv`` with each alias flag renamed to its target (``--model_name=x`` -> ``--model=x``,
    ``--model_name x`` -> ``--model x``, boolean ``--noflag`` forms too), and each fixed flag whose
    value is the accepted one removed. Words after fire's ``--`` separator are left alone.

    ``UsageError`` when two spellings of one argument are given (``--model_name a --model b``) or a
    fixed flag has another value than the accepted one.
    """
    from fire import core, parser

    fixed_flags = fixed_flags or {}
    args, flag_args = parser.SeparateFlagArgs(list(argv))
    separator = len(args) < len(argv)
    known = {*aliases, *aliases.values(), *fixed_flags}
    spelled: dict[str, str] = {}  # target argument -> the flag that set it
    out: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        index += 1
        if not core._IsFlag(word):
            out.append(word)
            continue
        key, has_value = _flag_key(word)
        bool_syntax = not has_value and (index == len(args) or core._IsFlag(args[index]))
        negated = bool_syntax and key.startswith("no") and key not in known and key[2:] in known
        name = key[2:] if negated else key
        takes_next = not has_value and not bool_syntax
        if name in fixed_flags:
            if has_value:
                raw = word.partition("=")[2]
            elif bool_syntax:
                raw = "False" if negated else "True"
            else:
                raw = args[index]
                index += 1
            accepted, reason = fixed_flags[name]
            if isinstance(accepted, bool) and raw.lower() in ("true", "false"):
                raw = raw.capitalize()
            value = parser.DefaultParseValue(raw)
            if value != accepted:
                raise UsageError(f"--{name}={value!r} is not supported: {reason}: drop --{name}")
            continue
        target = aliases.get(name, name)
        if target in spelled and spelled[target] != name:
            raise UsageError(
                f"--{spelled[target]} and --{name} both set --{target}: pass it once, as --{target}"
            )
        spelled[target] = name
        if name in aliases:
            renamed = f"--{'no' if negated else ''}{target}"
            word = f"{renamed}={word.partition('=')[2]}" if has_value else renamed
        out.append(word)
        if takes_next:
            out.append(args[index])
            index += 1
    return [*out, "--", *flag_args] if separator else out


def run(
    component: Callable[..., Any] | dict[str, Callable[..., Any]],
    *,
    aliases: Mapping[str, str] | None = None,
    fixed_flags: Mapping[str, tuple[Any, str]] | None = None,
    report: Callable[[str], None] = _print_to_stderr,
    sigterm_raises: bool = True,
) -> None:
    """``fire.Fire(component)`` with checked arguments and one-line user errors (see the module doc)."""
    import fire

    if aliases and callable(component):
        parameters = inspect.signature(component).parameters
        assert all(t in parameters for t in aliases.values()), (
            f"alias targets {aliases} not all in {parameters}"
        )
    argv = sys.argv[1:]
    check_words = False
    if isinstance(component, dict):
        component = {name: _checked(function) for name, function in component.items()}
    else:
        component = _checked(component)
        check_words = True
    if sigterm_raises:
        signal.signal(signal.SIGTERM, _raise_terminated)
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()  # before the tool (or anything it imports) imports torchao
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        if check_words and _wants_help(argv):
            # fire would otherwise run the function on the other words first
            argv, check_words = ["--help"], False
        elif aliases or fixed_flags:
            argv = rename_flags(argv, aliases or {}, fixed_flags)
        if check_words and (unknown := _unconsumed_words(component, argv)):
            raise UsageError(
                f"unknown argument{'s' if len(unknown) > 1 else ''} {shlex.join(unknown)}: "
                "see --help for the arguments"
            )
        fire.Fire(component, command=argv)
    except USER_ERRORS as error:
        if debug:
            raise
        report(f"error: {describe_user_error(error)}")
        sys.exit(2)
    except KeyboardInterrupt:
        report("error: interrupted (SIGINT); partial outputs were removed")
        sys.exit(128 + signal.SIGINT)
    except Terminated:
        report("error: terminated (SIGTERM); partial outputs were removed")
        sys.exit(128 + signal.SIGTERM)


def parse_list(value: Any, item_type: type = str, *, name: str) -> list[Any]:
    """A fire list argument as a list of ``item_type``.

    fire hands ``--sizes_mb 64,256`` over as the tuple ``(64, 256)``, ``--sizes_mb 64`` as ``64``,
    ``--configs a,b`` as ``('a', 'b')``, ``--configs=a`` as ``'a'`` and ``--configs "[a, b]"`` as a
    list; each becomes a flat list. Strings are split on commas; empty items are dropped.
    """
    if value is None:
        return []
    if isinstance(value, str):
        raw: Sequence[Any] = [part.strip() for part in value.split(",")]
    elif isinstance(value, tuple | list):
        raw = [part for item in value for part in (item.split(",") if isinstance(item, str) else [item])]
    else:
        raw = [value]
    items = []
    for item in raw:
        if isinstance(item, str):
            item = item.strip()
            if not item:
                continue
        items.append(_list_item(item, item_type, name, value))
    return items


def _list_item(item: Any, item_type: type, name: str, value: Any) -> Any:
    what, example = {int: ("integers", "4,8"), float: ("numbers", "0.5,1.5"), str: ("names", "a,b")}.get(
        item_type, (item_type.__name__, "a,b")
    )
    problem = UsageError(f"--{name} is {value!r}: pass comma-separated {what}, e.g. --{name}={example}")
    if item_type is str:
        return str(item)
    if isinstance(item, bool):
        raise problem
    try:
        converted = item_type(item)
    except (TypeError, ValueError):
        raise problem from None
    if item_type is int and isinstance(item, float) and not item.is_integer():
        raise problem
    if item_type is float and not math.isfinite(converted):
        raise problem
    return converted

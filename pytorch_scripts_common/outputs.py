"""Output paths: the guard every tool runs before its compute, and atomic publishing afterwards.

``check_output(output, inputs=..., overwrite=..., tool=..., kind="dir"|"file")`` refuses, before any
work is done:

- an output that resolves (symlinks followed) to an input, to a folder that contains an input, or
  to a path inside an input folder (``--output_dir`` = ``--model``, a log's own folder, ``~``);
- an existing output without ``overwrite=True``;
- with ``overwrite=True``, an existing folder that this tool did not write: every published folder
  carries a marker file (``MARKER``) naming its tool, and only such a folder (or an empty one) is
  replaced;
- an output location that cannot be written (checked by creating and removing a file in the
  nearest folder that exists; missing folders are created when the output is published).

It also removes what a killed earlier run of the same output left: temp folders / files of a dead
process, and finishes an interrupted swap.

``staged_dir(output, tool=...)`` / ``staged_file(output)`` yield a temp path next to the output;
when the block succeeds it is moved into place (an existing folder is swapped out first and deleted
only after the new one is in place), when it raises (including SIGINT / SIGTERM through
``pytorch_scripts_common.cli.run``) the temp path is removed. Nothing half-written is ever at the
output path. Temp names are ``.<name>.tmp-<pid>-<random>`` and ``.<name>.old-<pid>-<random>``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Literal

from pytorch_scripts_common.cli import UsageError

__all__ = ["MARKER", "check_output", "staged_dir", "staged_file"]

MARKER = ".pytorch_scripts_output"

PathLike = str | os.PathLike[str]


def _resolve(path: PathLike) -> pathlib.Path:
    return pathlib.Path(path).expanduser().resolve()


def _relation(output: pathlib.Path, source: pathlib.Path) -> str | None:
    if output == source:
        return "the same path as"
    if output in source.parents:
        return "a folder containing"
    if source in output.parents:
        return "inside"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(output: pathlib.Path, kind: str) -> Iterator[tuple[pathlib.Path, int]]:
    pattern = re.compile(rf"^\.{re.escape(output.name)}\.{kind}-(\d+)-")
    if not output.parent.is_dir():
        return
    for path in output.parent.iterdir():
        match = pattern.match(path.name)
        if match:
            yield path, int(match.group(1))


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(output: pathlib.Path) -> None:
    """Remove temp paths of dead processes next to ``output``; restore an interrupted swap."""
    for path, pid in _leftovers(output, "tmp"):
        if not _pid_alive(pid):
            _remove(path)
    for path, pid in _leftovers(output, "old"):
        if _pid_alive(pid):
            continue
        if output.exists():
            _remove(path)  # the swap finished, only its delete did not
        else:
            path.rename(output)  # killed between the two renames: the old output comes back


def marker_tool(folder: pathlib.Path) -> str | None:
    marker = folder / MARKER
    if not marker.is_file():
        return None
    return marker.read_text(encoding="utf-8", errors="replace").strip() or None


def _check_writable(folder: pathlib.Path) -> None:
    ancestor = folder
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"cannot write under {folder}: {ancestor} is a file: choose another output path")
    try:  # in the nearest existing folder: a refused or interrupted run leaves no empty folders
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise UsageError(
            f"cannot write to {folder} ({error.strerror or error}): choose a writable output location"
        ) from None


def check_output(
    output: PathLike,
    *,
    inputs: Iterable[PathLike | None] = (),
    overwrite: bool,
    tool: str,
    kind: Literal["dir", "file"] = "dir",
    flag: str = "output",
) -> pathlib.Path:
    """Validate ``output`` before any work (see the module doc); return it resolved."""
    if output is None or str(output) == "":
        raise UsageError(f"--{flag} is empty: pass an output path")
    resolved = _resolve(output)
    for source in inputs:
        if source is None or str(source) == "":
            continue
        relation = _relation(resolved, _resolve(source))
        if relation is not None:
            raise UsageError(
                f"--{flag} {output} is {relation} the input {source}: "
                "choose an output path outside the inputs"
            )
    if resolved.parent == resolved:
        raise UsageError(f"--{flag} {output} is the file-system root: choose an output path below it")
    clean_leftovers(resolved)
    if resolved.exists() or resolved.is_symlink():
        _check_existing(resolved, output, overwrite=overwrite, tool=tool, kind=kind, flag=flag)
    _check_writable(resolved.parent)
    return resolved


def _check_existing(
    resolved: pathlib.Path, output: PathLike, *, overwrite: bool, tool: str, kind: str, flag: str
) -> None:
    if kind == "dir" and not resolved.is_dir():
        raise UsageError(f"--{flag} {output} exists and is not a folder: choose a folder path")
    if kind == "file" and resolved.is_dir():
        raise UsageError(f"--{flag} {output} is a folder: pass a file path")
    if not overwrite:
        raise UsageError(f"--{flag} {output} exists: pass --overwrite to replace it, or choose another path")
    if kind == "dir" and any(resolved.iterdir()):
        written_by = marker_tool(resolved)
        if written_by != tool:
            by = f"was written by {written_by}" if written_by else f"has no {MARKER} marker"
            raise UsageError(
                f"--{flag} {output} {by}, so it is not an earlier output of {tool} and --overwrite will not "
                f"replace it: choose a new output folder, or remove it yourself"
            )


def _temp_name(output: pathlib.Path, kind: str) -> str:
    return f".{output.name}.{kind}-{os.getpid()}-"


def _default_mode(mode: int) -> int:
    """``mode`` under the process umask: mkdtemp / mkstemp make 0700 / 0600, outputs are not private."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def staged_dir(output: PathLike, *, tool: str) -> Iterator[pathlib.Path]:
    """A temp folder next to ``output``, published there (with the marker) when the block succeeds."""
    target = _resolve(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=_temp_name(target, "tmp"), dir=target.parent))
    try:
        staging.chmod(_default_mode(0o777))
        yield staging
        (staging / MARKER).write_text(f"{tool}\n", encoding="utf-8")
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: pathlib.Path, target: pathlib.Path) -> None:
    old = None
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        target.rmdir()
    elif target.exists() or target.is_symlink():
        old = pathlib.Path(tempfile.mkdtemp(prefix=_temp_name(target, "old"), dir=target.parent))
        old.rmdir()
        target.rename(old)
    staging.rename(target)
    if old is not None:
        _remove(old)


@contextlib.contextmanager
def staged_file(output: PathLike) -> Iterator[pathlib.Path]:
    """A temp file path next to ``output``, moved onto ``output`` when the block succeeds."""
    target = _resolve(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=_temp_name(target, "tmp"), dir=target.parent)
    os.close(handle)
    staging = pathlib.Path(name)
    try:
        staging.chmod(_default_mode(0o666))
        yield staging
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise

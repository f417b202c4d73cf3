"""pytorch_scripts_common.outputs: the output-path guard and atomic publishing."""

import os
import pathlib
import stat
import subprocess
import sys

import pytest

from pytorch_scripts_common.cli import UsageError
from pytorch_scripts_common.outputs import MARKER, check_output, staged_dir, staged_file


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "data" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize(
    ("output", "relation"),
    [
        (lambda m: m, "the same path as"),
        (lambda m: m.parent, "a folder containing"),
        (lambda m: m.parent.parent, "a folder containing"),
        (lambda m: m / "quantized", "inside"),
        (lambda m: m / "config.json", "inside"),
    ],
)
def test_outputs_that_overlap_an_input_are_refused_even_with_overwrite(model, output, relation):
    with pytest.raises(UsageError, match=f"is {relation} the input"):
        check_output(output(model), inputs=[model], overwrite=True, tool="t")
    assert (model / "config.json").read_text() == "{}"


def test_symlinks_are_followed(model, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(model.parent)
    with pytest.raises(UsageError, match="a folder containing the input"):
        check_output(link, inputs=[model], overwrite=True, tool="t")


def test_a_file_input_protects_its_folder(tmp_path):
    log = tmp_path / "logs" / "run.log"
    log.parent.mkdir()
    log.write_text("x")
    with pytest.raises(UsageError, match="a folder containing the input"):
        check_output(log.parent, inputs=[log], overwrite=True, tool="t")
    with pytest.raises(UsageError, match="the same path as the input"):
        check_output(log, inputs=[log], overwrite=True, tool="t", kind="file")
    assert check_output(log.parent / "out", inputs=[log], overwrite=False, tool="t") == log.parent / "out"


def test_existing_outputs_need_overwrite_and_the_tools_own_marker(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="exists: pass --overwrite"):
        check_output(out, overwrite=False, tool="t")
    with pytest.raises(UsageError, match=f"has no {MARKER} marker"):
        check_output(out, overwrite=True, tool="t")
    (out / MARKER).write_text("other_tool\n")
    with pytest.raises(UsageError, match="was written by other_tool"):
        check_output(out, overwrite=True, tool="t")
    (out / MARKER).write_text("t\n")
    assert check_output(out, overwrite=True, tool="t") == out


def test_empty_existing_folder_without_overwrite_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UsageError, match="exists: pass --overwrite"):
        check_output(out, overwrite=False, tool="t")
    assert check_output(out, overwrite=True, tool="t") == out


def test_kind_mismatches_and_root_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is not a folder"):
        check_output(tmp_path / "file", overwrite=True, tool="t")
    with pytest.raises(UsageError, match="is a folder"):
        check_output(tmp_path, overwrite=True, tool="t", kind="file")
    with pytest.raises(UsageError, match="file-system root"):
        check_output("/", overwrite=True, tool="t")
    with pytest.raises(UsageError, match="is a file"):
        check_output(tmp_path / "file" / "sub" / "out", overwrite=False, tool="t")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_unwritable_location_is_refused_before_any_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(UsageError, match="cannot write to"):
            check_output(locked / "out", overwrite=False, tool="t")
    finally:
        locked.chmod(stat.S_IRWXU)


def test_checking_creates_no_folders_and_publishing_creates_them(tmp_path):
    """A run refused (or interrupted) after the check leaves no empty folders behind."""
    for kind, staged in (("dir", staged_dir), ("file", staged_file)):
        output = tmp_path / kind / "a" / "b" / "out"
        check_output(output, overwrite=False, tool="t", kind=kind)
        assert not (tmp_path / kind).exists()
        with staged(output, **({"tool": "t"} if kind == "dir" else {})):
            pass
        assert output.exists()


def test_unwritable_nearest_existing_folder_is_refused_below_missing_folders():
    with pytest.raises(UsageError, match="cannot write to /proc/pytorch_scripts_a/b"):
        check_output("/proc/pytorch_scripts_a/b/out", overwrite=False, tool="t")


def test_unwritable_location_is_refused_for_root_too(tmp_path):
    # root ignores permission bits; a read-only bind is not available here, but /proc is never writable.
    with pytest.raises(UsageError, match="cannot write to"):
        check_output("/proc/pytorch_scripts_out", overwrite=False, tool="t")


def test_staged_dir_publishes_with_marker_and_swaps_the_old_output(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out, tool="t") as staging:
        (staging / "a.txt").write_text("1")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "1"
    assert (out / MARKER).read_text() == "t\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~current_umask()
    with staged_dir(out, tool="t") as staging:
        (staging / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def current_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_a_failure_leaves_the_old_output_and_no_temp(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out, tool="t") as staging:
        (staging / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), staged_dir(out, tool="t") as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("validation failed")
    assert (out / "a.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_file_is_atomic_and_not_private(tmp_path):
    out = tmp_path / "report.json"
    with pytest.raises(RuntimeError), staged_file(out) as staging:
        staging.write_text("half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with staged_file(out) as staging:
        staging.write_text("done")
    assert out.read_text() == "done"
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~current_umask()
    assert list(tmp_path.iterdir()) == [out]


def dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(process.stdout)


def test_leftovers_of_a_killed_run_are_removed_and_an_interrupted_swap_is_undone(tmp_path):
    pid = dead_pid()
    out = tmp_path / "out"
    stale = tmp_path / f".out.tmp-{pid}-abc"
    stale.mkdir()
    (stale / "big.bin").write_bytes(b"x" * 100)
    alive = tmp_path / f".out.tmp-{os.getpid()}-abc"  # a concurrent live run: left alone
    alive.mkdir()
    old = tmp_path / f".out.old-{pid}-abc"  # killed after moving the old output away
    old.mkdir()
    (old / MARKER).write_text("t\n")
    (old / "result.txt").write_text("previous")
    unrelated = tmp_path / ".other.tmp-1-abc"
    unrelated.mkdir()
    with pytest.raises(UsageError, match="exists: pass --overwrite"):
        check_output(out, overwrite=False, tool="t")
    assert not stale.exists() and alive.exists() and unrelated.exists()
    assert (out / "result.txt").read_text() == "previous"


def test_sigkill_during_staging_is_cleaned_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    code = (
        "import os, signal, sys\n"
        "from pytorch_scripts_common.outputs import staged_dir\n"
        f"with staged_dir({str(out)!r}, tool='t') as s:\n"
        "    (s / 'part.bin').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == -9
    assert [p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()] == [True]
    check_output(out, overwrite=False, tool="t")
    assert list(tmp_path.iterdir()) == []


def test_paths_are_returned_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_output("rel/out", overwrite=False, tool="t") == pathlib.Path(tmp_path / "rel" / "out")

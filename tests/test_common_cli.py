"""pytorch_scripts_common.cli: argument checks, one-line errors, signals, fire list arguments."""

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pytorch_scripts_common.cli import (
    Terminated,
    UsageError,
    check_arguments,
    parse_list,
    rename_flags,
    signals_deferred,
)
from tests.hostile_cli import default_sigint


def entry(count: int = 1, scale: float = 1.0, name: str = "x", flag: bool = False, limit: int | None = None):
    """Doc."""
    return count, scale, name, flag, limit


def checked(**kwargs):
    bound = inspect.signature(entry).bind(**kwargs)
    check_arguments(entry, bound)
    return entry(*bound.args, **bound.kwargs)


def test_arguments_of_the_right_type_pass_and_fire_numbers_become_strings():
    assert checked(count=3, scale=2, name=2024, flag=True, limit=None) == (3, 2.0, "2024", True, None)
    assert checked(count=4.0) == (4, 1.0, "x", False, None)
    assert checked(name=("a", "b"))[2] == ("a", "b")  # a fire list, left to parse_list


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": "abc"}, "--count is 'abc': pass an integer"),
        ({"count": 1.5}, "--count is 1.5: pass an integer"),
        ({"count": True}, "--count is True: pass an integer"),
        ({"scale": float("nan")}, "--scale is nan: pass a finite number"),
        ({"scale": float("inf")}, "--scale is inf: pass a finite number"),
        ({"scale": "abc"}, "--scale is 'abc': pass a number"),
        ({"flag": "yes"}, "--flag is 'yes': pass True/False"),
        ({"limit": "abc"}, "--limit is 'abc': pass an integer"),
        ({"name": None}, "--name needs a value"),
    ],
)
def test_wrong_argument_types_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError) as caught:
        checked(**kwargs)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("value", "item_type", "expected"),
    [
        ((64, 256), float, [64.0, 256.0]),  # --sizes_mb 64,256
        (64, int, [64]),  # --sizes_mb 64
        ("64,256", int, [64, 256]),
        (("int8wo", "int4wo"), str, ["int8wo", "int4wo"]),  # --configs int8wo,int4wo
        ("int8wo", str, ["int8wo"]),
        (["a, b", "c"], str, ["a", "b", "c"]),  # --configs "[a, b]" style
        (" a , ,b ", str, ["a", "b"]),
        (None, str, []),
        ((0, 1), str, ["0", "1"]),
    ],
)
def test_parse_list_flattens_every_form_fire_produces(value, item_type, expected):
    assert parse_list(value, item_type, name="sizes") == expected


@pytest.mark.parametrize(
    ("value", "item_type"), [("(64", float), ("a,2", int), ((1.5,), int), ("nan", float)]
)
def test_parse_list_rejects_items_of_the_wrong_type(value, item_type):
    with pytest.raises(UsageError, match="--sizes is .*: pass comma-separated") as error:
        parse_list(value, item_type, name="sizes")
    # the example has the type asked for (an integer list's example was "--sizes=a,b")
    example = {int: "--sizes=4,8", float: "--sizes=0.5,1.5"}[item_type]
    assert str(error.value).endswith(f"e.g. {example}")


SCRIPT = textwrap.dedent(
    '''
    import json, pathlib, sys, time
    from pytorch_scripts_common.cli import run

    def main(mode: str = "ok", num_runs: int = 1, marker: str = ""):
        """Test entry.

        Args:
            mode: what to do.
            num_runs: a count.
            marker: a file to write while sleeping.
        """
        if mode == "user":
            raise ValueError("input x.json is empty: pass a trace file")
        if mode == "missing":
            open("/nonexistent/file.json")
        if mode == "bug":
            raise KeyError("internal")
        if mode == "sleep":
            try:
                pathlib.Path(marker).write_text("started")
                time.sleep(60)
            finally:
                pathlib.Path(marker).write_text("cleaned up")
        print("ran", num_runs)

    if __name__ == "__main__":
        run(main)
    '''
)


def run_script(tmp_path, *args, env=None):
    script = tmp_path / "tool.py"
    script.write_text(SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_user_mistakes_print_one_line_and_exit_2(tmp_path):
    for args, line in [
        (["--mode", "user"], "error: input x.json is empty: pass a trace file"),
        (["--num_runs", "abc"], "error: --num_runs is 'abc': pass an integer"),
        (["--mode", "missing"], "error: no such file or directory: /nonexistent/file.json"),
    ]:
        result = run_script(tmp_path, *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == line
        assert "Traceback" not in result.stderr


def test_bugs_keep_their_traceback_and_the_debug_switch_shows_user_errors_in_full(tmp_path):
    bug = run_script(tmp_path, "--mode", "bug")
    assert bug.returncode == 1
    assert "Traceback" in bug.stderr and "KeyError: 'internal'" in bug.stderr
    debug = run_script(tmp_path, "--mode", "user", env={**os.environ, "PYTORCH_SCRIPTS_DEBUG": "1"})
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "ValueError: input x.json is empty" in debug.stderr


def test_success_runs_the_function(tmp_path):
    result = run_script(tmp_path, "--num_runs", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ran 3"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_run_cleanup_and_exit_with_one_line(tmp_path, signum, code):
    script = tmp_path / "tool.py"
    script.write_text(SCRIPT)
    marker = tmp_path / "marker"
    process = subprocess.Popen(
        [sys.executable, str(script), "--mode", "sleep", "--marker", str(marker)],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    assert marker.read_text() == "cleaned up"
    assert stderr.strip().startswith("error: interrupted" if signum == signal.SIGINT else "error: terminated")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--num_rusn", "3"], "error: unknown arguments --num_rusn 3: see --help for the arguments"),
        (["ok", "3", "x", "surplus"], "error: unknown argument surplus: see --help for the arguments"),
        (["--num_runs", "3", "-", "upper"], "error: unknown argument upper: see --help for the arguments"),
    ],
)
def test_unknown_words_are_refused_before_the_function_runs(tmp_path, args, line):
    # fire alone runs main() with the words it knows, then fails on the rest (exit 2 after the work).
    result = run_script(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == line
    assert "ran" not in result.stdout


REQUIRED_SCRIPT = textwrap.dedent(
    '''
    from pytorch_scripts_common.cli import run

    def main(source: str, target: str, *, level: int):
        """Test entry.

        Args:
            source: an input.
            target: an output.
            level: a required flag.
        """
        print("ran", source, target, level)

    if __name__ == "__main__":
        run(main)
    '''
)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["a"], "error: missing argument --target: pass it in its place or as --target=..., see --help"),
        ([], "error: missing argument --source: pass it in its place or as --source=..., see --help"),
        (["a", "b"], "error: missing argument --level: pass --level=..., see --help"),
    ],
)
def test_missing_required_arguments_are_one_line(tmp_path, args, line):
    """fire alone prints "ERROR: The function received no value ..." above its usage block."""
    script = tmp_path / "tool.py"
    script.write_text(REQUIRED_SCRIPT)
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == line
    assert "ran" not in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--num_runs", "3", "--help"], ["--", "--help"]])
def test_help_anywhere_shows_help_without_running(tmp_path, args):
    result = run_script(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "--num_runs" in result.stdout + result.stderr
    assert "ran" not in result.stdout


REPORT_SCRIPT = SCRIPT.replace(
    "run(main)", "run(main, report=lambda line: print('REPORTED ' + line), sigterm_raises=False)"
)


def test_report_replaces_the_printing_and_sigterm_can_keep_its_default(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(REPORT_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), "--mode", "user"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stdout.strip() == "REPORTED error: input x.json is empty: pass a trace file"
    assert result.stderr == ""
    marker = tmp_path / "marker"
    process = subprocess.Popen([sys.executable, str(script), "--mode", "sleep", "--marker", str(marker)])
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM  # killed at once: no cleanup ran, no exit 143
    assert marker.read_text() == "started"


ALIASES = {"model_name": "model", "model_path": "model", "quant_type": "recipe", "no_cache": "cache"}
FIXED = {"save_model_to_disk": (True, "the model is always saved to --output_dir")}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model_name", "M", "--quant_type", "fp8"], ["--model", "M", "--recipe", "fp8"]),
        (["--model_name=M", "--quant_type=fp8"], ["--model=M", "--recipe=fp8"]),
        (["--model-name", "M"], ["--model", "M"]),  # fire reads hyphens as underscores
        (["-model_name", "M"], ["--model", "M"]),  # and one leading hyphen as two
        (["--model_path", "--x"], ["--model", "--x"]),  # bool syntax: renamed all the same
        (["--nono_cache"], ["--nocache"]),  # fire's --noflag form of a boolean alias
        (["--model", "M", "pos", "--other", "v"], ["--model", "M", "pos", "--other", "v"]),
        (["--model_name", "M", "--", "--help"], ["--model", "M", "--", "--help"]),  # fire's own flags
        (["--", "--model_name"], ["--", "--model_name"]),
        (["--save_model_to_disk", "True", "--model_name", "M"], ["--model", "M"]),
        (["--save_model_to_disk=true"], []),
        (["--save_model_to_disk"], []),
        (["--model_name", "-1"], ["--model", "-1"]),  # a negative number is a value
    ],
)
def test_rename_flags_maps_every_spelling_fire_accepts(argv, expected):
    assert rename_flags(argv, ALIASES, FIXED) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--model_name", "A", "--model", "B"],
            "--model_name and --model both set --model: pass it once, as --model",
        ),
        (
            ["--model=B", "--model_path=A"],
            "--model and --model_path both set --model: pass it once, as --model",
        ),
        (["--model_name", "A", "--model_path", "B"], "--model_name and --model_path both set --model"),
        (
            ["--save_model_to_disk", "False"],
            "--save_model_to_disk=False is not supported: the model is always saved to --output_dir: "
            "drop --save_model_to_disk",
        ),
        (["--nosave_model_to_disk"], "--save_model_to_disk=False is not supported"),
    ],
)
def test_rename_flags_refuses_two_spellings_and_unsupported_fixed_values(argv, message):
    with pytest.raises(UsageError) as caught:
        rename_flags(argv, ALIASES, FIXED)
    assert str(caught.value).startswith(message)


ALIAS_SCRIPT = SCRIPT.replace(
    "run(main)",
    "run(main, aliases={'runs': 'num_runs', 'kind': 'mode'}, "
    "fixed_flags={'legacy': (True, 'this tool always does it')})",
)


@pytest.mark.parametrize(
    ("args", "returncode", "stdout", "stderr"),
    [
        (["--runs", "4", "--legacy", "True"], 0, "ran 4", ""),
        (["--runs=5"], 0, "ran 5", ""),
        (
            ["--runs", "4", "--num_runs", "5"],
            2,
            "",
            "error: --runs and --num_runs both set --num_runs: pass it once, as --num_runs",
        ),
        (
            ["--legacy=False"],
            2,
            "",
            "error: --legacy=False is not supported: this tool always does it: drop --legacy",
        ),
        (["--kind", "user"], 2, "", "error: input x.json is empty: pass a trace file"),
    ],
)
def test_aliases_in_a_subprocess(tmp_path, args, returncode, stdout, stderr):
    script = tmp_path / "tool.py"
    script.write_text(ALIAS_SCRIPT)
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == returncode, result.stderr
    assert result.stdout.strip() == stdout
    assert result.stderr.strip() == stderr


@pytest.mark.parametrize(
    ("signum", "exception"), [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)]
)
def test_signals_deferred_delivers_a_signal_at_the_end_of_the_block(signum, exception):
    def raise_terminated(received, frame):
        raise Terminated(received)

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    steps = []
    try:
        with pytest.raises(exception), signals_deferred():
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # the handler would have run by now
            steps.append("block finished")
        assert steps == ["block finished"]
        assert signal.getsignal(signal.SIGTERM) is raise_terminated  # the handlers are back
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def test_signals_deferred_without_a_signal_changes_nothing():
    before = signal.getsignal(signal.SIGTERM)
    with signals_deferred():
        pass
    assert signal.getsignal(signal.SIGTERM) is before

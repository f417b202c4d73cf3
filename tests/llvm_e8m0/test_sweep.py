"""The sweep CLI: fast mode end to end, failure on a documented-behaviour mismatch, full-mode resume."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llvm_e8m0 import sweep
from pytorch_scripts_common.cli import UsageError
from pytorch_scripts_common.outputs import MARKER
from tests.module_cli import run_module
from tests.readme_commands import bash_block_commands

REPO = Path(__file__).resolve().parents[2]


def run_sweep_cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("llvm_e8m0.sweep", *args, timeout=300)


def class_counts(payload: dict, pair: str) -> dict[str, int]:
    return dict(zip(sweep.CLASS_NAMES, payload["pair_counts"][pair], strict=True))


def test_fast_sweep_cli(tmp_path, apfloat_library):
    out = tmp_path / "fast"
    result = run_sweep_cli("--output_dir", str(out), "--num_random", "20000", "--num_workers", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    markdown = (out / "results.md").read_text()
    assert "**PASS: every converter matched its documented behaviour**" in markdown
    assert markdown.startswith("# llvm_e8m0 sweep results (fast)\n") and "PARTIAL" not in markdown
    assert "## Pairwise disagreements by input class" in markdown
    assert "## First examples per input class" in markdown
    payload = json.loads((out / "results.json").read_text())
    assert payload["complete"] and payload["num_values"] > 20000 - 100
    assert all(v == 0 for v in payload["mismatches"].values())
    # Findings the README states, on this input set:
    rne_vs_rna = class_counts(payload, "llvm_rne|llvm_rna")
    assert rne_vs_rna["-denormal"] >= 1 and sum(rne_vs_rna.values()) == rne_vs_rna["-denormal"]
    assert class_counts(payload, "llvm_rne|torch")["+normal"] == 0  # same rounding on positive normals
    assert class_counts(payload, "llvm_rne|ml_dtypes")["+normal"] == 0
    assert class_counts(payload, "llvm_rne|ref_rne")["+normal"] > 0  # ties: LLVM always rounds up
    assert class_counts(payload, "llvm_rne|ref_rna")["+normal"] == 0
    assert class_counts(payload, "torch|ml_dtypes")["+zero"] == 1
    assert class_counts(payload, "torchao_ceil|torchao_rceil")["+inf"] == 1
    assert sum(payload["pair_counts"]["ref_rtz|ref_rtn"]) == 0
    assert payload["deviations"]["torchao_rceil"] > 0  # the float32 log2 collapse is exercised
    assert sum(payload["deviations"].values()) == payload["deviations"]["torchao_rceil"]
    with pytest.raises(ValueError, match="exists: pass --overwrite"):
        sweep.main(output_dir=str(out), num_random=100)
    assert (out / MARKER).read_text() == "llvm_e8m0.sweep\n"  # --overwrite may replace it later
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast"]  # no temp folder left


@pytest.mark.slow
def test_default_fast_sweep_on_two_worker_processes(tmp_path, apfloat_library):
    """The README's default command (1M random inputs, 2 spawned workers), end to end."""
    out = tmp_path / "default"
    result = run_sweep_cli("--output_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((out / "results.json").read_text())
    assert payload["num_values"] > 1_000_000 and all(v == 0 for v in payload["mismatches"].values())


def test_mismatch_with_documented_behaviour_fails(tmp_path, monkeypatch, apfloat_library):
    from llvm_e8m0 import implementations

    real_build = implementations.build_registry

    def broken_registry(llvm_threads=None):
        registry = real_build(llvm_threads)
        real_torch = registry["torch"]
        registry["torch"] = lambda bits: np.where(bits == 0x3FC00000, 0x7F, real_torch(bits)).astype(np.uint8)
        return registry

    monkeypatch.setattr(implementations, "build_registry", broken_registry)
    with pytest.raises(SystemExit) as excinfo:
        sweep.main(
            output_dir=str(tmp_path / "broken"),
            num_random=1000,
            num_workers=1,
            implementations="torch,ml_dtypes,llvm_rne",
        )
    assert "torch" in str(excinfo.value.code)
    markdown = (tmp_path / "broken" / "results.md").read_text()
    assert "MISMATCH torch: 0x3fc00000 (1.5) gave 0x7f, expected 0x80" in markdown
    assert "FAIL: torch" in markdown


def test_full_mode_resumes_from_state(tmp_path, apfloat_library):
    kwargs = {
        "mode": "full",
        "output_dir": str(tmp_path / "full"),
        "chunk_size": 4096,
        "max_chunks": 2,
        "num_workers": 1,
        "implementations": "llvm_rne,torch,ml_dtypes",
    }
    sweep.main(**kwargs)
    state = json.loads((tmp_path / "full" / "state.json").read_text())
    assert state["done"] == [0, 1] and state["num_values"] == 8192
    assert (tmp_path / "full" / MARKER).is_file()
    sweep.main(**kwargs)  # resumes: the next two chunks, not the same ones again
    payload = json.loads((tmp_path / "full" / "results.json").read_text())
    assert payload["done"] == [0, 1, 2, 3] and payload["num_values"] == 4 * 4096
    assert not payload["complete"]
    assert [i["chunks"] for i in payload["invocations"]] == [2, 2]  # both invocations' timings kept
    markdown = (tmp_path / "full" / "results.md").read_text()
    assert "over 2 invocation(s)" in markdown
    # 4 of 2^20 chunks is no full sweep: the title, the first line and the verdict say so
    assert markdown.startswith("# llvm_e8m0 sweep results (full, partial)\n")
    assert "**PARTIAL: 4 of 1,048,576 chunks swept (16,384 of 4,294,967,296 inputs): run the same" in markdown
    assert "PASS: every converter matched its documented behaviour on the 4 chunks swept so far; " in markdown
    assert "1,048,572 chunks not swept yet**" in markdown
    # Inputs 0..16383 are +0 and positive subnormals: torch and ml_dtypes differ only on +0.
    assert class_counts(payload, "torch|ml_dtypes") == dict.fromkeys(sweep.CLASS_NAMES, 0) | {"+zero": 1}
    with pytest.raises(ValueError, match="delete the state file"):
        sweep.main(**(kwargs | {"implementations": "llvm_rne,torch"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no temp folder or file left


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "exhaustive"}, r"--mode is 'exhaustive': pass --mode fast or --mode full"),
        ({"mode": "full", "chunk_size": 1000}, r"--chunk_size is 1000: mode=full needs a power of two"),
        ({"mode": "full", "chunk_size": 2}, r"--chunk_size is 2: mode=full needs a power of two from 2\^12"),
        ({"mode": "full", "chunk_size": 2**33}, r"--chunk_size is 8589934592"),
        ({"chunk_size": 0}, r"--chunk_size is 0: pass a positive integer"),
        ({"implementations": "torch,nonexistent"}, r"unknown: nonexistent"),
        ({"implementations": "torch"}, r"pass two or more different names"),
        ({"implementations": "torch,torch"}, r"pass two or more different names"),
        ({"implementations": 5}, r"unknown: 5"),
        ({"num_random": -1}, r"--num_random is -1: pass 0 to 134217728"),
        ({"num_random": 10**13}, r"--num_random is 10000000000000: pass 0 to 134217728 \(2\^27\), or use"),
        ({"num_workers": 0}, r"--num_workers is 0: pass 1 to"),
        ({"num_workers": 10_000}, r"--num_workers is 10000: pass 1 to"),
        ({"seed": -1}, r"--seed is -1: pass a non-negative integer"),
        ({"max_chunks": -1}, r"--max_chunks is -1"),
        ({"reference_samples": -5}, r"--reference_samples is -5"),
        ({"state_file": "s.json"}, r"--state_file s.json: only mode=full keeps a state"),
    ],
)
def test_bad_arguments_are_usage_errors_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=message):
        sweep.main(**({"output_dir": str(tmp_path / "out")} | kwargs))
    assert list(tmp_path.iterdir()) == []  # nothing written


FULL = {
    "mode": "full",
    "chunk_size": 4096,
    "max_chunks": 1,
    "num_workers": 1,
    "implementations": "torch,ml_dtypes",
}


def test_output_and_state_paths_that_overlap_are_refused(tmp_path):
    out = tmp_path / "out"
    for state_file, message in [
        (out / "results.json", r"is inside --output_dir .*: leave --state_file empty"),
        (out / "sub" / "s.json", r"is inside --output_dir"),
        (out, r"is inside --output_dir"),
    ]:
        with pytest.raises(UsageError, match=message):
            sweep.main(**FULL, output_dir=str(out), state_file=str(state_file))
    (tmp_path / "folder").mkdir()
    with pytest.raises(UsageError, match=r"--state_file .*folder is a folder: pass a file path"):
        sweep.main(**FULL, output_dir=str(out), state_file=str(tmp_path / "folder"))
    with pytest.raises(UsageError, match=r"--output_dir .*s/out is inside the input .*/s: choose an output"):
        sweep.main(**FULL, output_dir=str(tmp_path / "s" / "out"), state_file=str(tmp_path / "s"))
    assert not out.exists()


def test_overwrite_replaces_only_an_earlier_output_of_the_sweep(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(
            UsageError, match="exists: pass --overwrite|has no .pytorch_scripts_output marker"
        ):
            sweep.main(output_dir=str(mine), overwrite=overwrite, num_random=10, num_workers=1)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        sweep.main(output_dir=str(a_file), overwrite=True, num_random=10, num_workers=1)


def test_an_external_state_file_resumes_and_stays_outside_the_output(tmp_path, apfloat_library):
    kwargs = FULL | {"output_dir": str(tmp_path / "out"), "state_file": str(tmp_path / "keep" / "state.json")}
    sweep.main(**kwargs)
    sweep.main(**kwargs)  # resumes from the external state; replaces its own earlier output
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["done"] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MARKER, "results.json", "results.md"]
    assert json.loads((tmp_path / "keep" / "state.json").read_text())["done"] == [0, 1]


def test_the_state_is_saved_before_the_first_chunk(tmp_path):
    settings = sweep.check_arguments("full", 0, 0, 4096, 1, 0, 500, "torch,ml_dtypes")
    paths = sweep.check_paths(settings, str(tmp_path / "out"), "", overwrite=False)
    acc = sweep.Accumulator(settings.config, settings.names)
    sweep.prepare_state(paths, acc)  # an interrupted first run must still resume
    assert json.loads((tmp_path / "out" / "state.json").read_text())["done"] == []
    assert (tmp_path / "out" / MARKER).is_file()
    again = sweep.check_paths(settings, str(tmp_path / "out"), "", overwrite=False)
    assert again.resuming and sweep.load_state(again.state, settings).done == set()


def small_state(settings) -> dict:
    """A real state: two chunks of three converters, accumulated as the sweep does."""
    acc = sweep.Accumulator(settings.config, settings.names)
    for chunk_id in (0, 3):
        counts = {f"{a}|{b}": [chunk_id, 1, 0, 0, 2, 0, 0, 0, 0, 0] for a, b in [("torch", "ml_dtypes")]}
        acc.add(
            sweep.ChunkResult(
                chunk_id,
                settings.chunk_size,
                dict.fromkeys(settings.names, 0.5),
                dict.fromkeys(settings.names, 0),
                {"torch": 1},
                {n: [] for n in settings.names},
                dict.fromkeys(settings.names, 10),
                counts,
                {"torch|ml_dtypes": {"+zero": [0], "+normal": [0x3FC00000]}},
            )
        )
    acc.invocations.append(
        {"elapsed_s": 1.5, "chunks": 2, "num_workers": 1, "load_average_start": 0.5, "load_average_end": 0.7}
    )
    return acc.to_json()


def mutate(value, rng, depth=0):
    """One random structural change somewhere inside ``value`` (a JSON tree), in place where possible."""
    replacements = [None, "x", -1, 1.5, True, [], {}, 2**40, float("nan"), [[1, 2]], {"x": 1}]
    if isinstance(value, dict) and value and (depth == 0 or rng.random() < 0.8):
        key = rng.choice(sorted(value))
        action = rng.random()
        if action < 0.2:
            del value[key]
        elif action < 0.5 or not isinstance(value[key], dict | list):
            value[key] = replacements[rng.integers(len(replacements))]
        else:
            value[key] = mutate(value[key], rng, depth + 1)
        return value
    if isinstance(value, list) and value:
        index = int(rng.integers(len(value)))
        if rng.random() < 0.3:
            value.append(
                value[index] if rng.random() < 0.5 else replacements[rng.integers(len(replacements))]
            )
        elif isinstance(value[index], dict | list) and rng.random() < 0.5:
            value[index] = mutate(value[index], rng, depth + 1)
        else:
            value[index] = replacements[rng.integers(len(replacements))]
        return value
    return replacements[rng.integers(len(replacements))]


def test_corrupted_states_are_refused_with_one_message_fuzzed(tmp_path):
    """300 seeded mutations of a real state (structure and bytes): each one loads as a state the sweep
    can use, or is a UsageError naming the file; nothing else (no KeyError, TypeError, ...)."""
    import copy

    settings = sweep.check_arguments("full", 0, 0, 4096, 1, 0, 500, "torch,ml_dtypes,llvm_rne")
    good = small_state(settings)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(good))
    assert sweep.load_state(path, settings).to_json() == good
    rng = np.random.default_rng(0)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(200):
        path.write_text(json.dumps(mutate(copy.deepcopy(good), rng)))
        outcomes[_load_or_refuse(path, settings)] += 1
    text = json.dumps(good).encode()
    for _ in range(100):
        data = bytearray(text)
        position = int(rng.integers(len(data)))
        if rng.random() < 0.5:
            data = data[:position]  # truncated (a killed writer without staging)
        else:
            data[position] = int(rng.integers(256))  # one corrupted byte
        path.write_bytes(bytes(data))
        outcomes[_load_or_refuse(path, settings)] += 1
    assert outcomes["refused"] > 250, outcomes  # nearly every mutation breaks the state


def _load_or_refuse(path, settings) -> str:
    try:
        acc = sweep.load_state(path, settings)
    except UsageError as error:
        assert str(path) in str(error) and (
            "delete it" in str(error) or "delete the state file" in str(error)
        )
        return "refused"
    sweep._conditions_lines(acc, {})  # what the results need from it works
    sweep._behaviour_lines(acc)
    sweep._pairwise_lines(acc, {n: n for n in acc.names})
    return "loaded"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"is not a sweep state \(Expecting value: line 1 column 1"),
        ("[]", r"is corrupted \(a JSON list, not an object\)"),
        ('{"config": 1}', r"was written with config 1, not"),
        ("[" * 100_000, r"is not a sweep state"),
    ],
    ids=["empty", "list", "wrong_config", "deep_nesting"],
)
def test_unusable_state_files_are_one_line_errors(tmp_path, content, message):
    state = tmp_path / "state.json"
    state.write_text(content)
    with pytest.raises(UsageError, match=message):
        sweep.main(**FULL, output_dir=str(tmp_path / "out"), state_file=str(state))
    assert state.read_text() == content  # the input is never rewritten


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--num_random", "abc"], "error: --num_random is 'abc': pass an integer"),
        (["--num_random", "nan"], "error: --num_random is 'nan': pass an integer"),
        (["--overwrite", "abc"], "error: --overwrite is 'abc': pass True/False"),
        (["--frobnicate", "3"], "error: unknown arguments --frobnicate 3: see --help for the arguments"),
    ],
)
def test_command_line_mistakes_are_one_line_and_exit_2(tmp_path, args, line):
    result = run_sweep_cli("--output_dir", str(tmp_path / "out"), *args)
    assert result.returncode == 2 and result.stderr.strip() == line, result.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_an_empty_state_file_is_one_line_on_the_command_line(tmp_path):
    (tmp_path / "state.json").write_text("")
    result = run_sweep_cli(
        "--mode", "full", "--output_dir", str(tmp_path / "out"), "--state_file", str(tmp_path / "state.json")
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: --state_file ") and len(result.stderr.splitlines()) == 1


def test_classify_covers_every_class():
    bits = np.array(
        [
            0,
            0x80000000,
            1,
            0x80000001,
            0x3F800000,
            0xBF800000,
            0x7F800000,
            0xFF800000,
            0x7FC00000,
            0xFFC00000,
        ],
        dtype=np.uint32,
    )
    assert [sweep.CLASS_NAMES[c] for c in sweep.classify(bits)] == list(sweep.CLASS_NAMES)


def test_readme_commands_use_real_arguments():
    """Every README command is `.venv/bin/python -m llvm_e8m0.<script>`; its flags are that main()'s."""
    import importlib

    readme = (REPO / "llvm_e8m0" / "README.md").read_text()
    commands = bash_block_commands(readme, (".venv/bin/python", "LLVM_CONFIG="))
    modules = []
    for command in commands:
        python = command.index(".venv/bin/python")
        assert command[python + 1] == "-m" and command[python + 2].startswith("llvm_e8m0."), command
        modules.append(command[python + 2])
    assert {module.split(".")[1] for module in modules} == {
        "build",
        "sweep",
        "compare_llvm_versions",
        "benchmark_throughput",
    }, modules
    for command, module_name in zip(commands, modules, strict=True):
        parameters = inspect.signature(importlib.import_module(module_name).main).parameters
        for flag in (arg[2:].split("=")[0] for arg in command if arg.startswith("--")):
            assert flag in parameters, f"README: {module_name} has no --{flag}"


def test_implementations_subset_given_as_a_tuple(tmp_path, apfloat_library):
    """fire turns `--implementations a,b` into a tuple; main() accepts both spellings."""
    sweep.main(
        output_dir=str(tmp_path / "t"), num_random=500, num_workers=1, implementations=("torch", "ml_dtypes")
    )
    payload = json.loads((tmp_path / "t" / "results.json").read_text())
    assert payload["config"]["names"] == ["torch", "ml_dtypes"]
    assert list(payload["pair_counts"]) == ["torch|ml_dtypes"]


def naive_pairwise_disagreements(bits, outputs, names):
    """The definition: compare every pair element by element, class by class."""
    classes = sweep.classify(bits)
    counts, examples = {}, {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            differs = outputs[a] != outputs[b]
            counts[f"{a}|{b}"] = [int(np.count_nonzero(differs & (classes == c))) for c in range(10)]
            by_class = {
                sweep.CLASS_NAMES[c]: [int(x) for x in bits[differs & (classes == c)][: sweep.MAX_EXAMPLES]]
                for c in range(10)
                if np.any(differs & (classes == c))
            }
            if by_class:
                examples[f"{a}|{b}"] = by_class
    return counts, examples


@pytest.mark.parametrize("case", ["sorted_few_changes", "sorted_noisy", "unsorted", "single", "empty"])
def test_segmented_pair_counting_equals_elementwise_definition(case):
    rng = np.random.default_rng(7)
    names = ("a", "b", "c", "d")
    size = {"single": 1, "empty": 0}.get(case, 50_000)
    bits = rng.integers(0, 2**32, size=size, dtype=np.uint64).astype(np.uint32)
    if case != "unsorted":
        bits = np.sort(bits)
    base = (bits >> 24).astype(np.uint8)  # piecewise constant over sorted inputs
    outputs = {
        "a": base,
        "b": np.where(bits % 1000 == 0, base ^ 1, base).astype(np.uint8),  # isolated disagreements
        "c": np.where((bits >> 20) % 3 == 0, 0xFF, base).astype(np.uint8),  # long disagreeing runs
        "d": rng.integers(0, 2, size=size).astype(np.uint8)
        if case == "sorted_noisy"
        else base.copy(),  # a change at almost every position
    }
    assert sweep.pairwise_disagreements(bits, outputs, names) == naive_pairwise_disagreements(
        bits, outputs, names
    )


def without_llvm_env(tmp_path: Path) -> dict[str, str]:
    """This environment with LLVM_CONFIG at a path that does not exist and an empty library cache:
    the sweep's default LLVM cannot be found or built."""
    import os

    env = dict(os.environ)
    env.pop("LLVM_DIR", None)
    return env | {"LLVM_CONFIG": str(tmp_path / "no-llvm-config"), "PYTORCH_SCRIPTS_CACHE_DIR": str(tmp_path)}


def test_an_llvm_that_cannot_be_used_is_one_line_before_any_work(tmp_path):
    out = tmp_path / "out"
    env = without_llvm_env(tmp_path)
    result = run_module("llvm_e8m0.sweep", f"--output_dir={out}", "--num_random=100", env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: llvm-config not found at '{env['LLVM_CONFIG']}' (LLVM_CONFIG); fix the path or unset it"
    )
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_converters_without_llvm_run_without_it(tmp_path):
    out = tmp_path / "out"
    result = run_module(
        "llvm_e8m0.sweep",
        f"--output_dir={out}",
        "--num_random=100",
        "--num_workers=1",
        "--implementations=torch,ml_dtypes",
        env=without_llvm_env(tmp_path),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["versions"]["LLVM"] == "not used"


def test_a_worker_that_cannot_start_fails_the_sweep_instead_of_hanging(tmp_path):
    # The pool's workers set up every selected converter; an LLVM converter without an LLVM raises
    # there. multiprocessing.Pool restarts a worker whose initializer raised, forever: the sweep
    # waited for results that never came. require_llvm() (skipped here) normally refuses this first.
    code = (
        "import pathlib, tempfile\n"
        "from llvm_e8m0 import sweep\n"
        "settings = sweep.check_arguments('fast', 100, 0, 2**22, 2, 0, 500, 'llvm_rne,torch')\n"
        "acc = sweep.Accumulator(settings.config, settings.names)\n"
        "with tempfile.TemporaryDirectory() as folder:\n"
        "    tasks = sweep.make_tasks(settings, acc, pathlib.Path(folder))\n"
        "    sweep.run_chunks(acc, tasks, settings, lambda invocation: None)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=without_llvm_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ValueError: llvm-config not found at")


@pytest.mark.parametrize("size", [0, 1, 2, 1000])
def test_sorted_unique_is_np_unique(size):
    rng = np.random.default_rng(size)
    bits = rng.integers(0, 64, size=size, dtype=np.uint64).astype(np.uint32)  # many repeats
    result = sweep.sorted_unique(bits)
    assert result.dtype == np.uint32 and np.array_equal(result, np.unique(bits))

"""The sweep CLI: fast mode end to end, failure on a documented-behaviour mismatch, full-mode resume."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llvm_e8m0 import sweep
from tests.readme_commands import bash_block_commands

REPO = Path(__file__).resolve().parents[2]


def run_sweep_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "llvm_e8m0" / "sweep.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )


def class_counts(payload: dict, pair: str) -> dict[str, int]:
    return dict(zip(sweep.CLASS_NAMES, payload["pair_counts"][pair], strict=True))


def test_fast_sweep_cli(tmp_path, apfloat_library):
    out = tmp_path / "fast"
    result = run_sweep_cli("--output_dir", str(out), "--num_random", "20000", "--num_workers", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    markdown = (out / "results.md").read_text()
    assert "PASS: every converter matched its documented behaviour" in markdown
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
    with pytest.raises(ValueError, match="overwrite=True"):
        sweep.main(output_dir=str(out), num_random=100)


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
    sweep.main(**kwargs)  # resumes: the next two chunks, not the same ones again
    payload = json.loads((tmp_path / "full" / "results.json").read_text())
    assert payload["done"] == [0, 1, 2, 3] and payload["num_values"] == 4 * 4096
    assert not payload["complete"]
    assert [i["chunks"] for i in payload["invocations"]] == [2, 2]  # both invocations' timings kept
    assert "over 2 invocation(s)" in (tmp_path / "full" / "results.md").read_text()
    # Inputs 0..16383 are +0 and positive subnormals: torch and ml_dtypes differ only on +0.
    assert class_counts(payload, "torch|ml_dtypes") == dict.fromkeys(sweep.CLASS_NAMES, 0) | {"+zero": 1}
    with pytest.raises(ValueError, match="delete the state file"):
        sweep.main(**(kwargs | {"implementations": "llvm_rne,torch"}))


def test_bad_arguments_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="mode="):
        sweep.main(mode="exhaustive", output_dir=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="power of two"):
        sweep.main(mode="full", chunk_size=1000, output_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="unknown"):
        sweep.main(implementations="torch,nonexistent", output_dir=str(tmp_path / "c"))


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
    """Every `--flag` in README.md's llvm_e8m0/<script>.py commands is a parameter of that main()."""
    import importlib

    readme = (REPO / "llvm_e8m0" / "README.md").read_text()
    commands = bash_block_commands(readme, (".venv/bin/python llvm_e8m0/", "LLVM_CONFIG="))
    scripts = [next(arg for arg in command if arg.startswith("llvm_e8m0/")) for command in commands]
    assert {Path(script).stem for script in scripts} == {
        "build",
        "sweep",
        "compare_llvm_versions",
        "benchmark_throughput",
    }, scripts
    for command, script in zip(commands, scripts, strict=True):
        module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
        parameters = inspect.signature(module.main).parameters
        for flag in (arg[2:].split("=")[0] for arg in command if arg.startswith("--")):
            assert flag in parameters, f"README: {script} has no --{flag}"


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

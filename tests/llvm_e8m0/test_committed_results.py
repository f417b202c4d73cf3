"""The committed sweep results are complete, passing, from this environment, and quoted faithfully.

``llvm_e8m0/results/full`` is the exhaustive 2^32 sweep (too long for the suite: ~30 min on two
cores), produced by the README's documented command; these tests keep it and the README honest.
"""

import json
import re
from pathlib import Path

import pytest

from llvm_e8m0 import sweep
from llvm_e8m0.implementations import IMPLEMENTATION_NAMES

FOLDER = Path(__file__).resolve().parents[2] / "llvm_e8m0"
FULL = FOLDER / "results" / "full" / "results.json"
FAST = FOLDER / "results" / "fast" / "results.json"


@pytest.fixture(scope="module")
def full():
    return json.loads(FULL.read_text())


def test_full_sweep_covers_every_input_and_every_converter(full):
    assert full["complete"] and full["config"]["mode"] == "full"
    assert full["num_values"] == sweep.FULL_SWEEP_SIZE == 2**32
    assert sorted(full["done"]) == list(range(sweep.FULL_SWEEP_SIZE // full["config"]["chunk_size"]))
    assert tuple(full["config"]["names"]) == IMPLEMENTATION_NAMES
    assert all(count == 0 for count in full["mismatches"].values()), full["mismatch_examples"]
    # Every vectorized expectation is checked on every input; the scalar reference on samples.
    for name in IMPLEMENTATION_NAMES:
        if name.startswith("ref_"):
            assert 0 < full["checked"][name] < full["num_values"], name
        else:
            assert full["checked"][name] == full["num_values"], name


def test_full_sweep_counts_are_consistent(full):
    class_sizes = {
        "+zero": 1,
        "-zero": 1,
        "+denormal": 2**23 - 1,
        "-denormal": 2**23 - 1,
        "+normal": 254 * 2**23,
        "-normal": 254 * 2**23,
        "+inf": 1,
        "-inf": 1,
        "+nan": 2**23 - 1,
        "-nan": 2**23 - 1,
    }
    assert sum(class_sizes.values()) == 2**32
    for pair, counts in full["pair_counts"].items():
        for class_name, count in zip(sweep.CLASS_NAMES, counts, strict=True):
            assert 0 <= count <= class_sizes[class_name], (pair, class_name)
    # Facts stated in the README that hold by construction of the modes:
    assert sum(full["pair_counts"]["ref_rtz|ref_rtn"]) == 0  # positive-only value set: same rounding
    assert sum(full["pair_counts"]["llvm_rne|llvm_rna"]) == 1  # only -2^-128
    assert full["deviations"]["torchao_rceil"] > 0
    assert sum(full["deviations"].values()) == full["deviations"]["torchao_rceil"]


def test_results_come_from_the_installed_versions(full):
    import ml_dtypes
    import torch
    import torchao

    from llvm_e8m0 import llvm_lib

    installed = {
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "LLVM": llvm_lib.llvm_version(),
    }
    for results in (full, json.loads(FAST.read_text())):
        for key, version in installed.items():
            assert results["versions"][key] == version, (
                f"committed results were made with {key} {results['versions'][key]}, installed {version}: "
                "re-run the sweep commands in llvm_e8m0/README.md"
            )


def test_readme_quotes_the_committed_counts(full):
    """Every 'a vs b' row of the README's full-sweep table equals results/full/results.json."""
    readme = (FOLDER / "README.md").read_text()
    section = readme.split("**Full 2^32 sweep over all 16 converters**", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\w+) vs (\w+) \|(.*)\|$", section, flags=re.MULTILINE)
    assert len(rows) >= 10, section
    header = re.search(r"^\| pair \|(.*)\|$", section, flags=re.MULTILINE).group(1)
    columns = [c.strip() for c in header.split("|")]
    for a, b, cells in rows:
        counts = dict(zip(sweep.CLASS_NAMES, full["pair_counts"][f"{a}|{b}"], strict=True))
        quoted = [int(c.strip().replace(",", "")) for c in cells.split("|")]
        for column, value in zip(columns, quoted, strict=True):
            actual = sum(counts[c] for c in column.split(" + "))
            assert value == actual, (a, b, column, value, actual)

"""gpu/download_wheels: the wheel list, the image's package list, and the closure check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpu.download_wheels import WHEELS, closure_problems, pinned_versions, read_image_packages
from tests.gpu.test_run_checks import make_wheel

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_carries_torchao_compressed_tensors_and_fire_at_pinned_versions():
    versions = pinned_versions()
    assert {"torchao", "compressed-tensors", "fire"} <= set(versions)
    assert set(versions) == {name.replace("_", "-") for name in WHEELS}
    assert versions["torchao"] == "0.18.0"  # the first release whose extensions load on torch >= 2.11
    assert all(versions.values())


def test_image_list_has_the_gpu_stack_and_not_what_is_carried():
    image = read_image_packages()
    assert image["torch"] == "2.11.0" and image["transformers"] == "5.17.0"
    assert {"triton", "safetensors", "rich", "jinja2", "pytest", "numpy"} <= set(image)
    assert image["rich"] is None  # listed without a version
    # a carried wheel shadows the image's copy; only typing-extensions on purpose (pydantic needs
    # >= 4.16.0 and the image's version is not known)
    assert set(pinned_versions()) & set(image) == {"typing-extensions"}


def test_closure_check_finds_missing_unsatisfied_and_duplicate_requirements(tmp_path):
    requires = (
        "beta>=2",
        "torch>=2.10",
        "gamma; sys_platform == 'win32'",
        "delta; extra == 'dev'",
        "epsilon",
    )
    make_wheel(tmp_path, "alpha", "1.0", (*requires, "torch<2.11; python_version < '3.9'"))
    make_wheel(tmp_path, "beta", "1.5")
    image = {"torch": "2.11.0", "rich": None}
    problems = closure_problems(sorted(tmp_path.glob("*.whl")), image)
    assert problems == [
        "alpha needs beta>=2, but carried beta is 1.5",
        "alpha needs epsilon: neither carried nor in the image; add it to WHEELS",
    ]
    make_wheel(tmp_path, "beta", "2.0")
    problems = closure_problems(sorted(tmp_path.glob("*.whl")), image)
    assert problems[0] == "two wheels of beta (1.5, 2.0): pip refuses to install both"
    image_torch_too_old = {"torch": "2.9.0"}
    problems = closure_problems([tmp_path / "alpha-1.0-py3-none-any.whl"], image_torch_too_old)
    assert "alpha needs torch>=2.10, but the image's torch is 2.9.0" in problems


@pytest.mark.skipif(
    not list((REPO_ROOT / ".whl").glob("*.whl")), reason="no .whl/ here: run gpu.download_wheels"
)
def test_downloaded_wheels_close_over_the_image_and_fit_the_tree_limit():
    result = subprocess.run(
        [sys.executable, "-m", "gpu.download_wheels", "--check_only=True"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "close over the image's packages" in result.stdout

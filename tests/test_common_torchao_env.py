"""pytorch_scripts_common.torchao_env: TORCHAO_FORCE_SKIP_LOADING_SO_FILES=1 on CPU-only torch only,
never over a value already set; decided from torch's version tag without importing torch when it can."""

import importlib.metadata
import os
import subprocess
import sys

import pytest
import torch

from pytorch_scripts_common import torchao_env
from pytorch_scripts_common.torchao_env import (
    SKIP_SO_FILES,
    configure_torchao_env,
    cpu_only_from_libraries,
    cpu_only_from_version,
)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2.9.0+cpu", True),
        ("2.4.1+cpu.cxx11.abi", True),
        ("2.9.0+CPU", True),
        ("2.9.0+cu128", False),
        ("2.9.0+rocm6.4", False),
        ("2.9.0", None),  # PyPI's default wheel: CUDA on Linux x86_64, CPU elsewhere
        ("2.8.0a0+5228986c39.nv25.06", None),  # NGC's builds
        ("2.10.0.dev20250101+cpu", True),
    ],
)
def test_what_the_version_tag_says(version, expected):
    assert cpu_only_from_version(version) is expected


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["libc10.so", "libtorch_cpu.so", "libtorch.so"], True),
        (["libc10.so", "libtorch_cpu.so", "libtorch_cuda.so"], False),
        (["libtorch_cpu.so", "libtorch_hip.so"], False),
        (["torch_cpu.dll", "torch_cuda.dll"], False),
        (["torch_cpu.dll"], True),
        (["something_else.so"], None),
        ([], None),
    ],
)
def test_what_the_shipped_libraries_say(tmp_path, names, expected):
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert cpu_only_from_libraries(tmp_path) is expected
    assert cpu_only_from_libraries(tmp_path / "missing") is None


def test_without_the_version_tag_the_libraries_decide_without_importing_torch(monkeypatch, tmp_path):
    (tmp_path / "libtorch_cpu.so").write_bytes(b"")
    (tmp_path / "libtorch_cuda.so").write_bytes(b"")
    monkeypatch.delitem(sys.modules, "torch")  # torch_is_cpu_only must not need it (nor import it)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.9.0")
    monkeypatch.setattr(torchao_env, "_torch_lib_dir", lambda: tmp_path)
    assert torchao_env.torch_is_cpu_only() is False
    assert "torch" not in sys.modules
    (tmp_path / "libtorch_cuda.so").unlink()
    assert torchao_env.torch_is_cpu_only() is True
    monkeypatch.setattr(torchao_env, "_torch_lib_dir", lambda: None)  # no torch installed at all
    assert torchao_env.torch_is_cpu_only() is True


@pytest.mark.parametrize(
    ("cuda", "hip", "cpu_only"), [(None, None, True), ("12.8", None, False), (None, "6.4.0", False)]
)
def test_an_imported_torch_decides_by_its_build(monkeypatch, cuda, hip, cpu_only):
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.version, "hip", hip)
    assert torchao_env.torch_is_cpu_only() is cpu_only


@pytest.mark.parametrize("cpu_only", [True, False])
def test_set_on_cpu_only_builds_only(monkeypatch, cpu_only):
    monkeypatch.delenv(SKIP_SO_FILES, raising=False)
    monkeypatch.setattr(torchao_env, "torch_is_cpu_only", lambda: cpu_only)
    configure_torchao_env()
    assert os.environ.get(SKIP_SO_FILES) == ("1" if cpu_only else None)


@pytest.mark.parametrize("value", ["0", "1", ""])
def test_a_value_already_set_is_never_changed(monkeypatch, value):
    monkeypatch.setenv(SKIP_SO_FILES, value)
    monkeypatch.setattr(torchao_env, "torch_is_cpu_only", lambda: pytest.fail("no need to look at torch"))
    configure_torchao_env()
    assert os.environ[SKIP_SO_FILES] == value


def test_this_torch_is_decided_without_importing_torch_and_as_torch_version_says():
    cpu_only = torch.version.cuda is None and torch.version.hip is None
    code = (
        "import os, sys\n"
        "from pytorch_scripts_common.torchao_env import configure_torchao_env\n"
        "configure_torchao_env()\n"
        f"print('torch' in sys.modules, os.environ.get('{SKIP_SO_FILES}'))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != SKIP_SO_FILES}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "1" if cpu_only else "None"]


TOOL = """
import os
from pytorch_scripts_common.cli import run


def main():
    \"\"\"Print the variable as the tool sees it.\"\"\"
    print(os.environ.get("TORCHAO_FORCE_SKIP_LOADING_SO_FILES"))


if __name__ == "__main__":
    run(main)
"""


@pytest.mark.parametrize("preset", [None, "0"])
def test_cli_run_configures_before_the_tool_runs(tmp_path, preset):
    script = tmp_path / "tool.py"
    script.write_text(TOOL)
    env = {key: value for key, value in os.environ.items() if key != SKIP_SO_FILES}
    if preset is not None:
        env[SKIP_SO_FILES] = preset
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    expected = preset if preset is not None else ("1" if torchao_env.torch_is_cpu_only() else "None")
    assert result.stdout.strip() == expected

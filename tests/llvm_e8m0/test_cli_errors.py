"""Argument mistakes on llvm_e8m0's other entry points (build, benchmark_throughput,
compare_llvm_versions): one line, exit 2, before any work. The sweep's are in test_sweep.py."""

import pytest

from llvm_e8m0 import benchmark_throughput, compare_llvm_versions
from pytorch_scripts_common.cli import UsageError
from tests.module_cli import run_module


@pytest.mark.parametrize(
    ("module", "args", "line"),
    [
        ("llvm_e8m0.build", ["--force", "abc"], "error: --force is 'abc': pass True/False"),
        ("llvm_e8m0.build", ["--fetch_debian", "abc"], "error: --fetch_debian is 'abc': pass an integer"),
        (
            "llvm_e8m0.build",
            ["--fetch_debian", "19"],
            "error: fetch_debian=19: Float8E8M0FNU needs LLVM >= 20: pass --fetch_debian=20 or later",
        ),
        (
            "llvm_e8m0.benchmark_throughput",
            ["--chunk_size", "abc"],
            "error: --chunk_size is 'abc': pass an integer",
        ),
        ("llvm_e8m0.compare_llvm_versions", ["--seed", "1.5"], "error: --seed is 1.5: pass an integer"),
        (
            "llvm_e8m0.compare_llvm_versions",
            ["--llvm_dir", "/nonexistent"],
            "error: /nonexistent (--llvm_dir) has no include/llvm/ADT/APFloat.h; "
            "point --llvm_dir at an LLVM prefix",
        ),
    ],
)
def test_command_line_mistakes_are_one_line_and_exit_2(module, args, line):
    result = run_module(module, *args, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == line


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_size": 0}, r"--chunk_size is 0: pass 1 to 268435456"),
        ({"chunk_size": 2**40}, r"--chunk_size is 1099511627776: pass 1 to 268435456"),
        ({"num_runs": 0}, r"--num_runs is 0: pass an integer >= 1"),
        ({"num_warmup": -1}, r"--num_warmup is -1"),
        ({"num_workers": 0}, r"--num_workers is 0"),
        ({"seed": -1}, r"--seed is -1"),
    ],
)
def test_benchmark_arguments_out_of_range(kwargs, message):
    with pytest.raises(UsageError, match=message):
        benchmark_throughput.main(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"--llvm_dir '', --fetch_debian 0: give exactly one of them"),
        ({"llvm_dir": "/x", "fetch_debian": 22}, r"give exactly one of them"),
        ({"llvm_dir": "/x", "num_random": 2**40}, r"--num_random is 1099511627776: pass 0 to 134217728"),
        ({"llvm_dir": "/x", "seed": -1}, r"--seed is -1"),
    ],
)
def test_compare_arguments_out_of_range(kwargs, message):
    with pytest.raises(UsageError, match=message):
        compare_llvm_versions.main(**kwargs)


@pytest.mark.parametrize(
    ("use_flag", "setting"),
    [(True, "point --llvm_dir at a newer one"), (False, "point LLVM_CONFIG / LLVM_DIR at")],
)
def test_an_llvm_too_old_names_the_setting_that_chose_it(tmp_path, monkeypatch, use_flag, setting):
    from llvm_e8m0 import build

    config = tmp_path / "bin" / "llvm-config"  # a prefix whose llvm-config says LLVM 14
    config.parent.mkdir()
    config.write_text('#!/bin/sh\ncase "$1" in --version) echo 14.0.6;; *) echo;; esac\n')
    config.chmod(0o755)
    monkeypatch.delenv("LLVM_CONFIG", raising=False)
    monkeypatch.setenv("LLVM_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=rf"LLVM 14.0.6 from .* is too old: .*; {setting}"):
        build.build_library(llvm_dir=str(tmp_path)) if use_flag else build.find_llvm()

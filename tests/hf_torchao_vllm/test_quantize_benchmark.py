"""benchmark_generation: smoke run (numbers are not asserted: performance claims live in the README
table, measured by the script) and its argument validation."""

from __future__ import annotations

import pytest

from hf_torchao_vllm import benchmark_generation


@pytest.mark.slow
def test_benchmark_prints_a_table(capsys):
    benchmark_generation.main(
        recipes="none,int8_weight_only",
        modes="eager",
        prompt_tokens=8,
        # 15 decode steps, medians of 3 after a warm-up: well above the timing noise at load 8
        new_tokens=16,
        num_warmup=1,
        num_runs=3,
    )
    out = capsys.readouterr().out
    assert "decode tok/s" in out
    assert "int8_weight_only" in out
    assert "1.00x" in out  # the bf16 baseline row


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modes": "jit"}, r"unknown mode 'jit': choose from eager, compiled"),
        ({"hidden_size": 100}, r"hidden_size=100 must be a multiple of 128"),
        ({"recipes": "int3"}, r"unknown recipe 'int3'"),
        ({"new_tokens": 1}, r"new_tokens >= 2"),
        ({"recipes": "nvfp4"}, r"not supported on cpu"),
    ],
)
def test_benchmark_bad_arguments(kwargs, message):
    import torch

    if kwargs.get("recipes") == "nvfp4" and torch.cuda.is_available():
        pytest.skip("nvfp4 is refused on CPU only")
    with pytest.raises(ValueError, match=message):
        benchmark_generation.main(**kwargs)


def test_decode_time_below_the_noise_is_an_error_not_a_huge_speed(monkeypatch):
    """The decode time is the difference of two medians; when noise makes it zero or negative the
    benchmark says so instead of printing billions of tokens per second."""
    import pytorch_scripts_common
    from pytorch_scripts_common.cli import UsageError

    medians = iter([0.050, 0.049])  # generate(1 token), then generate(new_tokens): noise won

    class Result:
        def __init__(self):
            self.median_s = next(medians)

    monkeypatch.setattr(pytorch_scripts_common, "benchmark", lambda call, num_warmup, num_runs: Result())
    with pytest.raises(UsageError, match=r"below the timing noise.*--new_tokens"):
        benchmark_generation.time_generation(None, None, new_tokens=4, mode="eager", num_warmup=0, num_runs=1)

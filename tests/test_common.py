import math
import random
import time

import numpy as np
import pytest
import torch

from pytorch_scripts_common import benchmark, compute_sqnr, get_device, set_seed


def test_set_seed_makes_random_numpy_and_torch_repeat():
    set_seed(123)
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_seed(123)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0]
    assert first[1] == second[1]
    assert torch.equal(first[2], second[2])
    set_seed(124)
    assert random.random() != first[0]


@pytest.mark.parametrize("bad_seed", [-1, 1.5, "3", True])
def test_set_seed_rejects_non_integer_seeds(bad_seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        set_seed(bad_seed)


def test_get_device_matches_cuda_availability():
    assert get_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_benchmark_measures_a_known_sleep():
    sleep_s = 0.02
    result = benchmark(lambda: time.sleep(sleep_s), num_warmup=1, num_runs=5, device="cpu")
    assert len(result.times_s) == 5
    # time.sleep never returns early; 15 ms of slack covers scheduler wake-up on a loaded 2-core box.
    assert sleep_s <= result.median_s < sleep_s + 0.015, result


def test_benchmark_runs_warmup_then_timed_calls():
    calls = []
    result = benchmark(lambda: calls.append(1), num_warmup=2, num_runs=7, device="cpu")
    assert len(calls) == 9
    assert result.num_warmup == 2 and len(result.times_s) == 7


@pytest.mark.parametrize(("num_warmup", "num_runs"), [(-1, 5), (0, 0)])
def test_benchmark_rejects_bad_counts(num_warmup, num_runs):
    with pytest.raises(ValueError):
        benchmark(lambda: None, num_warmup=num_warmup, num_runs=num_runs, device="cpu")


def test_sqnr_of_identical_tensors_is_inf():
    x = torch.randn(64, 64)
    assert compute_sqnr(x, x.clone()) == math.inf


def test_sqnr_of_known_noise_matches_the_analytic_value():
    # ||x|| / ||x - y|| = 1 / 0.01 exactly when y = 0.99 x, so SQNR = 20 * log10(100) = 40 dB.
    x = torch.randn(1000, dtype=torch.float64)
    assert compute_sqnr(x, 0.99 * x) == pytest.approx(40.0, abs=1e-9)


def test_sqnr_of_gaussian_noise_is_close_to_the_power_ratio():
    # Unit-variance signal, noise of std 0.1: SQNR -> 10 * log10(1 / 0.01) = 20 dB as N grows;
    # with 1e6 samples the estimate's standard error is ~0.01 dB.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1_000_000, generator=generator, dtype=torch.float64)
    noise = 0.1 * torch.randn(1_000_000, generator=generator, dtype=torch.float64)
    assert compute_sqnr(x, x + noise) == pytest.approx(20.0, abs=0.05)


def test_sqnr_works_on_bfloat16_inputs():
    x = torch.randn(256, 256)
    sqnr = compute_sqnr(x, x.to(torch.bfloat16))
    # bf16 keeps 8 significand bits: relative rounding error ~2^-9 RMS, so ~ 50 dB.
    assert 45.0 < sqnr < 60.0


def test_sqnr_rejects_shape_mismatch_and_non_finite_values():
    with pytest.raises(ValueError, match="equal shapes"):
        compute_sqnr(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="non-finite"):
        compute_sqnr(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]))


def test_sqnr_of_zero_reference_with_noise_is_minus_inf():
    assert compute_sqnr(torch.zeros(4), torch.ones(4)) == -math.inf

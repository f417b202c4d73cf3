"""pytorch_scripts_common.distributed on CPU: the comparison rule, launch checks, device and backend
choice, process-group set-up / teardown (world size 1, gloo) and the torchrun entry wrapper."""

import json
import math
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.distributed as dist

from pytorch_scripts_common import distributed
from pytorch_scripts_common.cli import UsageError
from pytorch_scripts_common.distributed import Tolerance, check_true, compare
from tests.torchrun_launch import free_port

# --- Tolerance ------------------------------------------------------------------------------------


def test_tolerances_print_their_rule():
    assert str(Tolerance.exact("r")) == "exact"
    assert str(Tolerance.elementwise(1e-6, 1e-7, "r")) == "rtol=1e-06 atol=1e-07"
    assert str(Tolerance.scaled(3e-2, "r")) == "max|diff| <= 0.03 max|ref|"
    assert str(Tolerance.sqnr(30.0, "r")) == "SQNR >= 30 dB"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Tolerance.elementwise(0.0, 0.0, "r"), "use Tolerance.exact"),
        (lambda: Tolerance.scaled(0.0, "r"), "use Tolerance.exact"),
        (lambda: Tolerance.exact(" "), "needs its reason"),
        (lambda: Tolerance.elementwise(-1e-6, 1e-7, "r"), "finite and non-negative"),
        (lambda: Tolerance.scaled(math.nan, "r"), "finite and non-negative"),
        (lambda: Tolerance("loose", "r"), "unknown tolerance kind"),
    ],
)
def test_exactness_is_asked_for_by_name_and_every_tolerance_has_a_reason(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --- compare --------------------------------------------------------------------------------------


def test_exact_catches_one_ulp_and_counts_minus_zero_as_zero():
    ref = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    one_ulp = ref.clone()
    one_ulp[2, 3] = torch.nextafter(one_ulp[2, 3], torch.tensor(math.inf))
    exact = Tolerance.exact("r")
    same = compare("same", ref, ref.clone(), exact)
    assert same.passed and same.bitwise_equal and same.detail == "" and same.sqnr_db is None
    result = compare("one ulp", ref, one_ulp, exact)
    assert not result.passed and not result.bitwise_equal
    assert result.max_abs_err == (one_ulp[2, 3] - ref[2, 3]).abs().item()
    assert result.detail.startswith("not exact: max |diff| ")
    assert compare("signed zero", torch.zeros(3), -torch.zeros(3), exact).passed  # as torch.equal
    assert compare("empty", torch.zeros(0), torch.zeros(0), exact).passed


def test_exact_in_bfloat16_is_exact_in_bfloat16():
    ref = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    test = ref.clone()
    test[1] = 2.0 + 2.0**-6  # one bfloat16 ulp above 2 (8 significant bits)
    assert test[1] != ref[1] and test[1].item() == 2.015625
    assert not compare("bf16", ref, test, Tolerance.exact("r")).passed


def test_elementwise_rule_is_atol_plus_rtol_times_ref():
    ref = torch.tensor([1.0, 100.0], dtype=torch.float64)
    tol = Tolerance.elementwise(1e-2, 1e-3, "r")
    assert compare("inside", ref, ref + torch.tensor([1.0e-2, 1.0], dtype=torch.float64), tol).passed
    outside = compare("outside", ref, ref + torch.tensor([1.2e-2, 0.0], dtype=torch.float64), tol)
    assert not outside.passed
    assert outside.detail.startswith("outside rtol=1e-02 atol=1e-03: max |diff| 0.012")
    assert outside.max_rel_err == pytest.approx(1.2e-2)


def test_scaled_rule_is_relative_to_the_largest_reference_value():
    a = torch.tensor([1.0, 2.0, -4.0])
    off = a + torch.tensor([0.0, 0.0, 1e-6])
    measured = compare("x", a, off, Tolerance.scaled(1e-6, "r"))  # 1e-6 / 4 = 2.5e-7 of max |ref|
    assert measured.passed and measured.scaled_err == pytest.approx((off[2] - a[2]).abs().item() / 4)
    assert not compare("x", a, off, Tolerance.scaled(1e-7, "r")).passed
    zeros = torch.zeros(3)
    assert compare("zero ref", zeros, zeros.clone(), Tolerance.scaled(1e-7, "r")).passed
    assert not compare("zero ref", zeros, zeros + 1e-30, Tolerance.scaled(1e-7, "r")).passed  # inf ratio


def test_sqnr_rule_uses_the_threshold():
    generator = torch.Generator().manual_seed(0)
    ref = torch.randn(1000, generator=generator)
    noisy = ref + 1e-2 * ref.norm() / math.sqrt(1000) * torch.randn(1000, generator=generator)  # ~40 dB
    passed = compare("40 dB", ref, noisy, Tolerance.sqnr(30.0, "r"))
    assert passed.passed and 35.0 < passed.sqnr_db < 45.0
    assert not compare("40 dB", ref, noisy, Tolerance.sqnr(50.0, "r")).passed


@pytest.mark.parametrize(
    "tolerance",
    [
        Tolerance.exact("r"),
        Tolerance.elementwise(1.0, 1.0, "loose"),
        Tolerance.scaled(1.0, "loose"),
        Tolerance.sqnr(0.0, "loose"),
    ],
    ids=str,
)
def test_every_kind_fails_on_shape_dtype_and_non_finite_values(tolerance):
    zeros = torch.zeros(2)
    shape = compare("shape", zeros, torch.zeros(3), tolerance)
    assert not shape.passed and shape.detail.startswith("shape/dtype mismatch: ref (2,) torch.float32")
    assert not compare("dtype", zeros, zeros.double(), tolerance).passed
    for bad in (math.nan, math.inf):
        assert compare("bad", zeros, torch.tensor([0.0, bad]), tolerance).detail == "non-finite values"
        assert not compare("bad ref", torch.tensor([bad, 0.0]), torch.tensor([bad, 0.0]), tolerance).passed


def test_yes_no_checks_record_their_detail_only_on_failure():
    assert check_true("placed", True, "placements ...").bitwise_equal
    failed = check_true("placed", False, "placements (Replicate(),)")
    assert not failed.passed and failed.tolerance is None and failed.detail == "placements (Replicate(),)"


# --- launch checks, device and backend ------------------------------------------------------------

TORCHRUN_ENV = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}


def test_world_size_needs_torchrun_and_names_the_command(monkeypatch):
    for name in distributed.TORCHRUN_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UsageError, match=r"not launched by torchrun .*: run e.g. torchrun -m x.main"):
        distributed.torchrun_world_size("torchrun -m x.main")
    for name, value in {**TORCHRUN_ENV, "MASTER_PORT": "1", "WORLD_SIZE": "3"}.items():
        monkeypatch.setenv(name, value)
    assert distributed.torchrun_world_size("cmd") == 3
    for bad in ("abc", "0", "-2", ""):
        monkeypatch.setenv("WORLD_SIZE", bad)
        with pytest.raises(UsageError, match="is not a positive integer"):
            distributed.torchrun_world_size("cmd")


@pytest.mark.parametrize("timeout_s", [0, -1, 86_400.5, 1e12])
def test_timeouts_outside_the_range_are_usage_errors(timeout_s):
    with pytest.raises(UsageError, match=r"--timeout_s is .*: pass a number of seconds in \(0, 86400\]"):
        distributed.check_timeout(timeout_s)


def test_cpu_gets_gloo_and_no_set_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    device = distributed.rank_device()
    assert device == torch.device("cpu") and distributed.backend_for(device) == "gloo" and calls == []


def test_cuda_gets_nccl_and_set_device_of_the_local_rank(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.setenv("LOCAL_RANK", "1")
    device = distributed.rank_device()
    assert device == torch.device("cuda", 1) and distributed.backend_for(device) == "nccl"
    assert calls == [torch.device("cuda", 1)]
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UsageError, match=r"LOCAL_RANK 2 has no GPU \(2 visible\): launch at most"):
        distributed.rank_device()


# --- process group (world size 1, gloo) -----------------------------------------------------------


@pytest.fixture
def one_rank(monkeypatch):
    for name, value in {**TORCHRUN_ENV, "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    barriers = []
    real_barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: (barriers.append(1), real_barrier(*a, **k)))
    yield barriers
    if dist.is_initialized():
        dist.destroy_process_group()


def test_process_group_sets_up_gloo_with_the_timeout_and_tears_down_after_a_barrier(one_rank):
    with distributed.process_group(timeout_s=30) as device:
        assert device == torch.device("cpu")
        assert dist.is_initialized() and dist.get_backend() == "gloo" and dist.get_world_size() == 1
        tensor = torch.ones(2)
        dist.all_reduce(tensor)
        assert one_rank == []
    assert one_rank == [1] and not dist.is_initialized()


def test_process_group_is_destroyed_without_a_barrier_when_the_body_raises(one_rank):
    with pytest.raises(RuntimeError, match="rank failed"), distributed.process_group(timeout_s=30):
        raise RuntimeError("rank failed")
    assert one_rank == [] and not dist.is_initialized()


# --- run(): the torchrun entry wrapper ------------------------------------------------------------

ENTRY = textwrap.dedent(
    '''
    from pytorch_scripts_common import distributed
    from pytorch_scripts_common.cli import UsageError

    def main(mode: str = "ok", num_steps: int = 1):
        """Test entry.

        Args:
            mode: what to do.
            num_steps: a count.
        """
        if mode == "user":
            raise UsageError("--mode user is wrong: pass --mode ok")
        if mode == "bug":
            raise KeyError("internal")
        print("done", num_steps)
        if mode == "checks_failed":
            raise SystemExit(1)
        if mode == "message":
            raise SystemExit("3 checks failed")

    if __name__ == "__main__":
        distributed.run(main)
    '''
)


def run_entry(
    tmp_path, local_rank: str, *args: str
) -> tuple[subprocess.CompletedProcess, dict | None, float]:
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    error_file = tmp_path / f"error-{local_rank}.json"
    env = {"LOCAL_RANK": local_rank, "TORCHELASTIC_ERROR_FILE": str(error_file), "PATH": "/usr/bin:/bin"}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120, env=env
    )
    recorded = json.loads(error_file.read_text()) if error_file.exists() else None
    return result, recorded, time.monotonic() - start


def test_a_user_mistake_is_one_line_on_local_rank_zero_and_the_line_in_the_error_file(tmp_path):
    for args, line in [
        (("--mode", "user"), "error: --mode user is wrong: pass --mode ok"),
        (("--num_steps", "abc"), "error: --num_steps is 'abc': pass an integer"),
        (("--num_stpes", "2"), "error: unknown arguments --num_stpes 2: see --help for the arguments"),
    ]:
        result, recorded, _ = run_entry(tmp_path, "0", *args)
        assert result.returncode == 2 and result.stderr == line + "\n" and result.stdout == ""
        assert recorded["message"]["message"] == line
        assert recorded["message"]["extraInfo"]["py_callstack"] == line  # what torchrun's summary shows


def test_the_error_file_is_complete_or_absent(tmp_path, monkeypatch, capsys):
    """A rank stopped (SIGTERM) while writing must not leave an empty error file: torchrun reads every
    rank's file as JSON and its own summary then fails. Here the write fails half-way instead."""

    def dump_half(value, file):
        file.write('{"message": ')
        raise OSError("stopped while writing")

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(distributed.json, "dump", dump_half)
    distributed._report_from_local_rank_zero("error: x: y")
    assert capsys.readouterr().err == "error: x: y\n" and not error_file.exists()
    monkeypatch.undo()
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("LOCAL_RANK", "0")
    distributed._report_from_local_rank_zero("error: x: y")
    assert json.loads(error_file.read_text())["message"]["message"] == "error: x: y"


def test_other_local_ranks_stay_silent_and_exit_after_local_rank_zero(tmp_path):
    result, recorded, seconds = run_entry(tmp_path, "1", "--mode", "user")
    assert result.returncode == 2 and result.stderr == ""
    assert recorded["message"]["message"] == "error: --mode user is wrong: pass --mode ok"
    assert seconds >= distributed.OTHER_RANKS_EXIT_DELAY_S


def test_a_bug_keeps_its_traceback_also_in_the_error_file(tmp_path):
    result, recorded, _ = run_entry(tmp_path, "0", "--mode", "bug")
    assert result.returncode == 1 and "Traceback" in result.stderr and "KeyError: 'internal'" in result.stderr
    assert "KeyError: 'internal'" in recorded["message"]["extraInfo"]["py_callstack"]


def test_success_and_failed_checks_exit_with_their_code_and_the_output_flushed(tmp_path):
    result, recorded, _ = run_entry(tmp_path, "0", "--num_steps", "3")
    assert result.returncode == 0 and result.stdout == "done 3\n" and recorded is None
    result, _, _ = run_entry(tmp_path, "0", "--mode", "checks_failed")
    assert result.returncode == 1 and result.stdout == "done 1\n" and result.stderr == ""
    result, _, _ = run_entry(tmp_path, "0", "--mode", "message")
    assert result.returncode == 1 and result.stdout == "done 1\n" and result.stderr == "3 checks failed\n"
    result, _, _ = run_entry(tmp_path, "0", "--help")
    assert result.returncode == 0 and "--num_steps" in result.stdout + result.stderr

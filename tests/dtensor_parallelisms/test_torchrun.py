"""Launch dtensor_parallelisms.main under torchrun on CPU (gloo) and inspect what rank 0 printed.

Each launch costs 10-25 s on this machine (process start-up and imports, per rank), so one launch
checks several modes. Every launch has a timeout: a hung collective fails the test instead of the suite.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

import dtensor_parallelisms
from tests.module_cli import run_module
from tests.torchrun_launch import (
    assert_one_line_user_error,
    environment_without_torchrun,
    free_port,
    local_launcher_args,
)

REPO_ROOT = pathlib.Path(dtensor_parallelisms.__file__).resolve().parents[1]
MODULE = ("-m", "dtensor_parallelisms.main")  # the README's form: torchrun ... -m dtensor_parallelisms.main
LAUNCH_TIMEOUT_S = 240


def torchrun(
    nproc: int, *args: str, launcher_args: tuple[str, ...] | None = None
) -> subprocess.CompletedProcess:
    if launcher_args is None:
        launcher_args = tuple(local_launcher_args(nproc))
    command = [sys.executable, "-m", "torch.distributed.run", *launcher_args, *MODULE, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, cwd=REPO_ROOT, env=env, check=False
    )


def output_of(result: subprocess.CompletedProcess) -> str:
    """Everything a failing test should show: exit code, stdout and the ranks' stderr (tail)."""
    stderr_tail = result.stderr[-6000:]
    return f"exit code {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{stderr_tail}"


def assert_passed(result: subprocess.CompletedProcess, modes: list[str]) -> None:
    assert result.returncode == 0, output_of(result)
    assert "ALL CHECKS PASSED" in result.stdout, output_of(result)
    assert not re.search(r"\bFAIL", result.stdout), output_of(result)
    for mode in modes:
        assert re.search(rf"^== mode {mode} \(mesh .*\): PASSED$", result.stdout, flags=re.M), output_of(
            result
        )
    assert result.stdout.count("torch 2.") == 1, "only rank 0 prints results"


def row(stdout: str, name: str) -> tuple[str, float, str]:
    """(result, max abs err, tolerance) of the table row ``name``."""
    match = re.search(
        rf"^{re.escape(name)}\s+(ok|FAIL)\s+(\S+)\s+\S+\s+(exact|rtol=\S+ atol=\S+|SQNR >= \S+ dB)",
        stdout,
        re.M,
    )
    assert match, f"no row {name!r} in:\n{stdout}"
    return match.group(1), float(match.group(2)), match.group(3)


FSDP_STEP_ROWS = ["logits", "loss", "input grad", "param grads", "params after AdamW"]


@pytest.mark.distributed
def test_world_size_2_fsdp_mixed_precision_tp_sp():
    result = torchrun(2, "--mode", "fsdp,tp,sp", "--mixed_precision")
    assert_passed(result, ["fsdp", "tp", "sp"])
    out = result.stdout
    for name in ["fsdp: local shard = chunk(dim 0)[rank]", "fsdp: full_tensor() = original"]:
        assert row(out, name) == ("ok", 0.0, "exact")
    # FSDP2 with bf16 params and fp32 reduction equals a hand-made bf16-compute/fp32-master step exactly
    for name in FSDP_STEP_ROWS:
        assert row(out, f"fsdp bf16 params / fp32 reduce: {name}") == ("ok", 0.0, "exact")
    status, _, tolerance = row(out, "bf16 vs fp32 reference: param grads")
    assert (status, tolerance) == ("ok", "SQNR >= 30 dB")
    # The two TP implementations agree exactly where they do the same arithmetic (no bias) ...
    assert row(out, "tp vs hand-written tp: layer 0 attention output") == ("ok", 0.0, "exact")
    for name in [
        "sp: block output is a plain (B, S/P, D) sequence shard",
        "sp: logits are a vocab-sharded DTensor",
    ]:
        assert re.search(rf"^{re.escape(name)}.*\s+ok\s+-\s+-\s+yes/no$", out, flags=re.M), name
    # ... and both differ from the reference by float32 reduction order only: small but not zero.
    for label in ["hand-written tp", "tp (parallelize_module)", "sp + loss_parallel"]:
        status, err, tolerance = row(out, f"{label}: logits")
        assert status == "ok" and tolerance != "exact" and 0.0 < err < 5e-6, (label, err)


@pytest.mark.distributed
def test_world_size_4_all_modes_exact_fsdp_and_2d_mesh():
    result = torchrun(4, "--mode", "all")
    assert_passed(result, ["fsdp", "tp", "sp", "fsdp_tp"])
    out = result.stdout
    assert "== mode fsdp_tp (mesh dp=2 x tp=2): PASSED" in out
    for name in FSDP_STEP_ROWS:
        assert row(out, f"fsdp: {name}") == ("ok", 0.0, "exact")  # measured exact at world size 4
    assert row(out, "fsdp_tp: local shard = tp slice, then dp chunk(dim 0)") == ("ok", 0.0, "exact")
    status, _, _ = row(out, "fsdp_tp: params after AdamW")
    assert status == "ok"


@pytest.mark.distributed
def test_different_inputs_per_rank_fail_the_checks_with_non_zero_exit():
    # The deliberate mistake: FSDP averages gradients of different batches, the reference saw one batch.
    result = torchrun(2, "--mode", "fsdp", "--input_seed_per_rank")
    assert result.returncode != 0, output_of(result)
    assert "CHECKS FAILED" in result.stdout, output_of(result)
    assert row(result.stdout, "fsdp: param grads")[0] == "FAIL"
    assert re.search(r"^FAILED rank 1: fsdp: ", result.stdout, flags=re.M), "rank 1's failures reach rank 0"


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("nproc", "args", "message"),
    [
        # one mistake found in main against the world size, one found by the CLI layer before main; the
        # other mistakes take one of these two paths (test_units and the hostile CLI table check them)
        (2, ("--mode", "fsdp_tp"), "error: mode 'fsdp_tp' needs world_size = dp_size * tp_size"),
        (2, ("--timeout_s", "abc"), "error: --timeout_s is 'abc': pass an integer"),
    ],
    ids=["fsdp_tp_on_2", "timeout_abc"],
)
def test_argument_mistakes_are_one_line_from_one_rank_and_a_non_zero_exit(nproc, args, message):
    result = torchrun(nproc, *args)
    assert_one_line_user_error(result, message)
    assert "ALL CHECKS PASSED" not in result.stdout


@pytest.mark.distributed
@pytest.mark.slow
def test_world_size_3_fsdp_needs_its_stated_tolerance():
    result = torchrun(3, "--mode", "fsdp")
    assert_passed(result, ["fsdp"])
    # Averaging 3 equal gradients rounds: not exact, within the stated tolerance (~1.5e-8 measured).
    status, err, tolerance = row(result.stdout, "fsdp: param grads")
    assert status == "ok" and tolerance == "rtol=1e-06 atol=1e-07" and err > 0.0
    assert row(result.stdout, "fsdp: logits") == ("ok", 0.0, "exact")


@pytest.mark.distributed
@pytest.mark.slow
def test_world_size_1_degenerate_run_is_exact_for_fsdp():
    result = torchrun(1, "--mode", "fsdp,tp,sp")
    assert_passed(result, ["fsdp", "tp", "sp"])
    assert row(result.stdout, "fsdp: param grads") == ("ok", 0.0, "exact")


@pytest.mark.distributed
@pytest.mark.slow
def test_multi_node_rendezvous_flags_with_two_agents_on_localhost():
    # The README's multi-node command, both "nodes" on this machine: two torchrun agents, one process
    # each, meeting at a c10d rendezvous endpoint.
    endpoint = f"127.0.0.1:{free_port()}"
    launcher = ("--nnodes", "2", "--nproc_per_node", "1", "--rdzv_id", "dtp-test", "--rdzv_backend", "c10d")
    agents = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *launcher, "--rdzv_endpoint", endpoint]
            + [*MODULE, "--mode", "fsdp,tp"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for agent in agents:
            stdout, stderr = agent.communicate(timeout=LAUNCH_TIMEOUT_S)
            outputs.append(subprocess.CompletedProcess(agent.args, agent.returncode, stdout, stderr))
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    for result in outputs:
        assert result.returncode == 0, output_of(result)
    printed = [r for r in outputs if "ALL CHECKS PASSED" in r.stdout]
    assert len(printed) == 1, "exactly one agent hosts global rank 0"
    assert "world_size 2" in printed[0].stdout


def test_plain_python_without_torchrun_exits_non_zero_with_the_command_to_use():
    env = environment_without_torchrun()
    result = run_module("dtensor_parallelisms.main", "--mode", "fsdp", env=env, timeout=LAUNCH_TIMEOUT_S)
    assert result.returncode == 2, output_of(result)
    assert result.stderr.startswith("error: not launched by torchrun"), output_of(result)
    assert len(result.stderr.splitlines()) == 1, output_of(result)
    assert ".venv/bin/torchrun --nproc_per_node 2 -m dtensor_parallelisms.main" in result.stderr

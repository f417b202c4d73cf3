"""gpu/run_checks: the plan, the runner (timeouts, failures, budget), packing, and CPU runs of the driver.

The GPU run itself cannot happen here; these tests keep its script from rotting: every --flag of the
CUDA plan must name a parameter of the tool it is passed to, and the CPU plan runs the same step
builders, runner and collectors for real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from gpu import plan as plan_module
from gpu import runner
from gpu.plan import Step, check_flags, plan, select
from gpu.runner import child_env, note_sigterm, pack, run_steps

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUPS = {
    "environment",
    "gpu_tests",
    "graph_viz",
    "perf_traces",
    "test_ao",
    "hf_torchao_vllm",
    "distributed",
    "vllm",
}


def python_step(name: str, code: str, **kwargs) -> Step:
    return Step(name, kwargs.pop("group", "synthetic"), [sys.executable, "-c", code], **kwargs)


def test_cuda_plan_covers_every_group_with_unique_names_and_known_dependencies():
    steps = plan(sys.executable, "cuda", quick=False)
    names = [step.name for step in steps]
    assert len(names) == len(set(names))
    assert {step.group for step in steps} == GROUPS
    seen: set[str] = set()
    for step in steps:
        assert set(step.after) <= seen, f"{step.name} needs a step planned after it"
        seen.add(step.name)
    skipped = {step.name: step.skip_reason for step in steps if step.skip_reason}
    assert list(skipped) == ["vllm"], skipped  # on CUDA only vLLM (it cannot travel) is left out
    # every fixture program in both log formats, every recipe chain, every test_ao run
    from graph_viz.make_sample_logs import SAMPLE_LOGS

    for log_format in plan_module.GRAPH_VIZ_FORMATS:
        for program in SAMPLE_LOGS:
            assert f"graph_viz_html_{log_format}_{program}" in names
    for run in plan_module.QUANTIZE_RUNS:
        assert {f"quantize_{run}", f"convert_{run}", f"validate_{run}"} <= set(names)
    by_name = {step.name: step for step in steps}
    assert by_name["graph_viz_log_default_mlp_train"].env["TORCH_TRACE"] == "graph_viz/torch_trace/mlp_train"
    assert by_name["graph_viz_log_short_mlp_train"].env["TORCH_LOGS_FORMAT"] == "short"
    assert "TORCH_LOGS_FORMAT" not in by_name["graph_viz_log_default_mlp_train"].env
    assert "--device=cuda" in by_name["test_ao_small"].args
    assert "--fp8_emulation_on_cpu=True" not in by_name["quantize_dense-fp8-row"].args


def test_cpu_plan_skips_only_what_needs_cuda_and_says_why():
    steps = plan(sys.executable, "cpu", quick=False)
    skipped = {step.name: step.skip_reason for step in steps if step.skip_reason}
    cuda_only = {name for name, reason in skipped.items() if reason.startswith("needs CUDA: ")}
    assert cuda_only == {
        "nvidia_smi",
        *(
            f"{kind}_{run}"
            for run in ("dense-fp8-block", "moe-fp8-block")
            for kind in ("quantize", "convert", "validate")
        ),
    }
    assert set(skipped) - cuda_only == {"vllm"}
    by_name = {step.name: step for step in steps}
    assert "--fp8_emulation_on_cpu=True" in by_name["quantize_dense-fp8-row"].args  # the recipe's CPU opt-in
    assert "--device=cpu" in by_name["test_ao_small"].args
    assert child_env("cpu", "", 1)["CUDA_VISIBLE_DEVICES"] == ""
    assert child_env("cuda", "", 1)["TORCHAO_FORCE_SKIP_LOADING_SO_FILES"] == "0"  # real kernels on CUDA
    assert child_env("cuda", "", 1)["HF_HUB_OFFLINE"] == "1"


def test_parallel_steps_share_the_cores_between_their_thread_pools(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # tests/conftest.py sets it for the suite
    cores = os.cpu_count() or 1
    shared = child_env("cpu", "", 2 * cores)  # more steps than cores: one thread each
    assert shared["OMP_NUM_THREADS"] == shared["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
    assert shared["OMP_WAIT_POLICY"] == "PASSIVE"
    assert child_env("cpu", "", 1)["OMP_NUM_THREADS"] == str(cores)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert child_env("cpu", "", 2 * cores)["OMP_NUM_THREADS"] == "3"  # the user's value is kept


def test_select_brings_dependencies_and_refuses_unknown_names():
    steps = plan(sys.executable, "cpu", quick=False)
    select(steps, quick=False, names=["validate_dense-int4", "distributed"])
    running = {step.name for step in steps if not step.skip_reason}
    assert running == {
        "environment",
        "quantize_dense-int4",
        "convert_dense-int4",
        "validate_dense-int4",
        "torchrun_dtensor_parallelisms",
        "torchrun_dp2ep",
    }
    with pytest.raises(ValueError, match="unknown steps or groups \\['nonsense'\\]"):
        select(plan(sys.executable, "cpu", quick=False), quick=False, names=["nonsense"])


def test_flag_check_finds_a_flag_the_tool_does_not_take_and_a_positional_argument():
    steps = plan(sys.executable, "cuda", quick=False)
    by_name = {step.name: step for step in steps}
    by_name["test_ao_small"].args.append("--no_such_flag=1")
    by_name["graph_viz_html_short_mlp_train"].args.append("positional")
    problems = check_flags(sys.executable, steps, child_env("cuda", "", 1))
    assert len(problems) == 2, problems
    assert problems[0] == "graph_viz_html_short_mlp_train: 'positional' is not --name=value"
    assert problems[1].startswith(
        "test_ao_small: test_ao:main has no parameter 'no_such_flag' (it takes model,"
    )


def test_runner_timeout_kills_the_group_failure_skips_dependents_and_budget_skips(tmp_path):
    grandchild_pid = tmp_path / "grandchild.pid"
    spawn_and_hang = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(grandchild_pid)!r}, 'w').write(str(child.pid)); "
        "print('spawned', flush=True); time.sleep(120)"
    )
    steps = [
        python_step("hangs", spawn_and_hang, timeout_s=3),
        python_step("fails", "import sys; print('broken'); sys.exit(3)"),
        python_step("after_fails", "print('never')", after=("fails",)),
        python_step("works", "print('hello from works')"),
    ]
    started = time.monotonic()
    results, ended = run_steps(steps, tmp_path, child_env("cpu", "", 4), started + 60, max_parallel=4)
    assert ended == "completed"
    assert results["hangs"]["status"] == "timeout" and results["hangs"]["cut_by_budget"] is False
    assert "spawned" in results["hangs"]["log_tail"]
    pid = int(grandchild_pid.read_text())
    state = Path(f"/proc/{pid}/stat")
    assert not state.exists() or state.read_text().split(") ")[1].startswith("Z"), "grandchild survived"
    assert results["fails"] == results["fails"] | {"status": "failed", "returncode": 3}
    assert "broken" in results["fails"]["log_tail"]
    assert results["after_fails"] == {
        "status": "skipped",
        "skip_reason": "needs fails, which did not succeed",
    }
    assert results["works"]["status"] == "ok" and "hello from works" in results["works"]["log_tail"]
    assert (tmp_path / "logs" / "works.log").read_text() == "hello from works\n"

    late = [python_step("late", "print(1)")]
    results, _ = run_steps(late, tmp_path, child_env("cpu", "", 1), time.monotonic() + 1, max_parallel=1)
    assert results["late"] == {"status": "skipped", "skip_reason": "time budget spent before it could start"}


def test_runner_cuts_a_step_at_the_budget_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "MIN_STEP_S", 0.5)
    steps = [python_step("slow", "import time; time.sleep(60)", timeout_s=100)]
    deadline = time.monotonic() + 2
    results, _ = run_steps(steps, tmp_path, child_env("cpu", "", 1), deadline, max_parallel=1)
    assert results["slow"]["status"] == "timeout" and results["slow"]["cut_by_budget"] is True


def test_sigterm_twice_stops_running_steps_and_skips_pending_ones(tmp_path):
    steps = [
        python_step("hangs", "import time; print('up', flush=True); time.sleep(120)", timeout_s=100),
        python_step("waits", "print(1)", after=("hangs",)),
    ]
    previous = signal.getsignal(signal.SIGTERM)
    interrupted = note_sigterm()
    timers = [threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM)) for delay in (2.0, 2.1)]
    for timer in timers:  # GNU timeout signals the driver and then its process group
        timer.start()
    try:
        results, ended = run_steps(
            steps, tmp_path, child_env("cpu", "", 2), time.monotonic() + 60, 2, interrupted
        )
        time.sleep(0.5)  # the second signal lands after the loop: it must not raise
    finally:
        for timer in timers:
            timer.cancel()
        signal.signal(signal.SIGTERM, previous)
    assert ended == "interrupted: SIGTERM"
    assert results["hangs"]["status"] == "interrupted" and "up" in results["hangs"]["log_tail"]
    assert results["waits"] == {"status": "skipped", "skip_reason": "interrupted: SIGTERM"}


def test_pack_leaves_out_weights_tmp_and_big_files_and_splits_into_parts(tmp_path, monkeypatch):
    work, staging = tmp_path / "work", tmp_path / "staging"
    (work / "logs").mkdir(parents=True)
    (work / "tmp" / "cache").mkdir(parents=True)
    staging.mkdir()
    (work / "logs" / "a.log").write_bytes(os.urandom(3000))  # random: gzip cannot shrink it below a part
    (work / "model.safetensors").write_bytes(b"w" * 10)
    (work / "tmp" / "cache" / "x").write_text("cache")
    (work / "huge.json").write_bytes(b"{}" * 3000)
    monkeypatch.setattr(runner, "MAX_PACKED_FILE_BYTES", 5000)
    monkeypatch.setattr(runner, "PART_BYTES", 1024)
    parts, left_out = pack(work, staging)
    assert sorted(item["path"] for item in left_out) == ["huge.json", "model.safetensors"]
    assert [p.name for p in parts] == [f"gpu_checks.tar.gz.part{i:02d}" for i in range(len(parts))]
    assert len(parts) >= 3 and all(p.stat().st_size <= 1024 for p in parts)
    joined = tmp_path / "joined.tar.gz"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))  # README: cat the parts
    with tarfile.open(joined) as tar:
        assert tar.getnames() == ["gpu_checks/logs/a.log"]
        assert tar.extractfile("gpu_checks/logs/a.log").read() == (work / "logs" / "a.log").read_bytes()


def test_downstream_steps_and_collectors_on_committed_fixtures(tmp_path):
    """The planned graph_viz and enrichment commands, run on committed CPU fixtures (no compile)."""
    steps = {step.name: step for step in plan(sys.executable, "cpu", quick=False)}
    (tmp_path / "graph_viz" / "logs" / "short").mkdir(parents=True)
    shutil.copy(
        REPO_ROOT / "graph_viz/fixtures/logs/mlp_train.log", tmp_path / "graph_viz/logs/short/mlp_train.log"
    )
    shutil.copytree(REPO_ROOT / "perf_traces/fixtures/cpu_train", tmp_path / "perf_traces" / "train")
    chosen = [steps["graph_viz_html_short_mlp_train"], steps["perf_traces_enrich_train"]]
    for step in chosen:
        step.after = ()  # their inputs are the fixtures copied above
    results, _ = run_steps(chosen, tmp_path, child_env("cpu", "", 2), time.monotonic() + 120, max_parallel=2)
    graph_viz = results["graph_viz_html_short_mlp_train"]
    assert graph_viz["status"] == "ok", graph_viz["log_tail"]
    model = json.loads((tmp_path / "graph_viz/html/short/mlp_train/model.json").read_text())
    metrics = graph_viz["metrics"]
    assert metrics["num_kernels"] == len(model["kernels"]) > 0
    assert metrics["kernels_linked"] == sum(1 for k in model["kernels"] if k["nodes"])
    assert metrics["kernels_by_kind"].get("cpp", 0) > 0 and "triton" not in metrics["kernels_by_kind"]
    assert metrics["graphs"] == {g["title"]: len(g["nodes"]) for g in model["graphs"]}
    enrich = results["perf_traces_enrich_train"]
    assert enrich["status"] == "ok", enrich["log_tail"]
    events = json.loads((tmp_path / "perf_traces/train/trace_enriched.json").read_text())["traceEvents"]
    matched = sum(
        1 for e in events if e.get("ph") == "X" and any(k.startswith("inductor_") for k in e.get("args", {}))
    )  # complete events only: the kernel table's instant events carry inductor_* args too
    assert sum(c["matched"] for c in enrich["metrics"]["matched_by_category"].values()) == matched > 0
    assert any(line.startswith("events matched: ") for line in enrich["metrics"]["printed_summary"])


def test_dry_run_of_the_cuda_plan_checks_every_flag():
    result = subprocess.run(
        [sys.executable, "-m", "gpu.run_checks", "--dry_run=True"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "flag check: the --flags of all" in result.stdout
    assert "TORCHAO_FORCE_SKIP_LOADING_SO_FILES=0" in result.stdout
    assert "quantize_dense-fp8-block: run" in result.stdout
    assert "-m torch.distributed.run --standalone --nproc_per_node=1 -m dp2ep.main" in result.stdout


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel with one module ``<name>`` (names with underscores only)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    dist_info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "")
        archive.writestr(f"{dist_info}/METADATA", metadata)
        archive.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{dist_info}/RECORD", "")
    return path


def run_script(out: Path, wheel_dir: Path, *flags: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, WHEEL_DIR=str(wheel_dir))
    return subprocess.run(
        ["bash", "gpu/run_checks.sh", str(out), "--cpu=True", "--quick=True", *flags],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=timeout, check=False,
    )  # fmt: skip


def read_tarball(out: Path) -> dict[str, bytes]:
    with tarfile.open(out / "gpu_checks.tar.gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_script_installs_wheels_runs_selected_cpu_steps_and_packs(tmp_path):
    """The carried wheels reach the steps; --steps leaves the rest out and says so (every step of
    --quick runs in test_quick_cpu_run_of_every_group)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "gpu_checks_probe", "1.0")
    out = tmp_path / "out"
    result = run_script(out, wheels, "--steps=environment")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["quick"] is True and summary["ended"] == "completed"
    assert summary["install_wheels"]["returncode"] == 0
    assert summary["environment"]["carried"] == {"gpu_checks_probe": "1.0"}  # the children saw the site
    assert summary["environment"]["cuda_available"] is False
    ran = {name for name, r in summary["steps"].items() if r["status"] != "skipped"}
    assert ran == {"environment"}
    assert summary["steps"]["quantize_dense-fp8-block"]["skip_reason"].startswith("needs CUDA: ")
    assert summary["steps"]["vllm"]["skip_reason"].startswith("vLLM cannot travel")
    assert summary["steps"]["graph_viz_log_short_mlp_train"]["skip_reason"] == "not part of --quick"
    assert summary["steps"]["graph_viz_log_short_mlp_inference"]["skip_reason"] == "not selected by --steps"
    files = read_tarball(out)
    assert {"gpu_checks/plan.txt", "gpu_checks/install_wheels.log"} <= set(files)
    assert summary["tarball"]["files"] == ["gpu_checks.tar.gz"] and sorted(os.listdir(out)) == [
        "gpu_checks.tar.gz",
        "summary.json",
    ]
    again = run_script(out, wheels, "--steps=environment")
    assert again.returncode == 2 and "pass --overwrite=True" in again.stderr


def test_script_without_output_folder_is_a_one_line_error():
    result = subprocess.run(
        ["bash", "gpu/run_checks.sh"], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: no output folder given")


@pytest.mark.slow
def test_script_hard_limit_interrupts_the_driver_which_still_packs(tmp_path):
    # 15 s: the environment step takes ~6 s, profiling (a torch.compile) ~20 s even on an idle machine
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, WHEEL_DIR=str(tmp_path), HARD_LIMIT_S="15")
    result = subprocess.run(
        ["bash", "gpu/run_checks.sh", str(out), "--cpu=True", "--steps=perf_traces_profile_train"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 143, (
        result.stdout[-2000:] + result.stderr[-2000:]
    )  # SIGTERM, as cli.run exits
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ended"] == "interrupted: SIGTERM"
    assert {r["status"] for r in summary["steps"].values()} <= {"ok", "interrupted", "skipped"}
    assert summary["steps"]["perf_traces_profile_train"]["status"] in ("interrupted", "skipped")
    assert "gpu_checks/plan.txt" in read_tarball(out)


@pytest.mark.slow
def test_quick_cpu_run_of_every_group(tmp_path):
    """Every step of --quick on CPU: the same builders, runner and collectors as the GPU run."""
    out = tmp_path / "out"
    result = run_script(out, tmp_path / "no_wheels", "--max_parallel=2", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    ran = {name: r for name, r in summary["steps"].items() if r["status"] != "skipped"}
    assert {r["group"] for r in ran.values()} == GROUPS - {"vllm"}
    assert all(r["status"] == "ok" for r in ran.values()), {n: r["status"] for n, r in ran.items()}
    log = ran["graph_viz_log_short_mlp_inference"]["metrics"]
    assert log["kernels"]["cpp_pybinding"] > 0 and log["kernels"]["triton"] == 0
    html = ran["graph_viz_html_short_mlp_inference"]["metrics"]
    assert html["kernels_linked"] == html["num_kernels"] > 0
    enrich = ran["perf_traces_enrich_inference"]["metrics"]["matched_by_category"]
    assert enrich["cpu_op"]["matched"] > 0
    quality = ran["quantize_dense-int4"]["metrics"]["quality"]
    assert quality["logits_sqnr_db"] > 20  # int4 weight-only on the trained model: 33-36 dB measured
    assert "validation passed" in ran["validate_dense-int4"]["log_tail"]
    assert "ALL CHECKS PASSED" in ran["torchrun_dtensor_parallelisms"]["log_tail"]
    assert ran["test_ao_small"]["metrics"]["configs"]["int8wo"]["status"] == "ok"
    files = read_tarball(out)
    assert b"PASSED" in files["gpu_checks/logs/torchrun_dp2ep.log"]
    report = json.loads(files["gpu_checks/test_ao/small/report.json"])
    assert report["device"] == "cpu" and [c["name"] for c in report["configs"]] == ["int8wo"]
    assert "gpu_checks/graph_viz/logs/short/mlp_inference.log" in files
    assert "gpu_checks/perf_traces/inference/trace_enriched.json" in files
    assert not any(name.endswith(".safetensors") for name in files)
    assert any(item["path"].endswith("model.safetensors") for item in summary["tarball"]["left_out"])

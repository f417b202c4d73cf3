"""Hostile command lines for every entry point, and the check each must pass.

``CASES`` is a table: an entry point, the words a careless or hostile user types after it, and the
start of the one ``error:`` line expected. ``check_refused(case, tmp_path)`` runs the command from
``tmp_path`` (relative default outputs land there) in a process forked from a warm interpreter
(tests/forked_cli.py: torch and friends imported once; a ``fresh`` case in a plain subprocess, for the
CLIs no other test starts that way) and asserts what every user mistake must give: exit status 2,
exactly one line on stderr starting with ``error:`` (warnings that libraries print on import are other
lines), no ``Traceback``, and nothing under ``tmp_path`` written, changed or removed (inputs included).
tests/test_conventions.py checks that every entry point has a case.

Words may hold placeholders, filled from the scratch inputs ``make_inputs`` lays out:
``{tmp}`` (the scratch root), ``{out}`` (an output path that does not exist), ``{trace}`` / ``{log}``
(a profiler trace and its inductor output_code log, in folder ``{pair}``), ``{gv_log}`` (a
TORCH_LOGS log alone in folder ``{gv_dir}``), ``{empty}`` (an empty file), ``{foreign}`` (a
non-empty folder no tool wrote), ``{missing}`` (a path that does not exist).

``SIGNAL_CASES`` / ``check_signal(case, tmp_path)``: a writing tool signalled mid-run (SIGTERM to
its main process, or Ctrl-C's SIGINT to its whole process group) exits 128 + signal with its one
line, and leaves no output, no temp path, no traceback from any process and no process running.
``default_sigint`` is the ``preexec_fn`` of any test process that must receive SIGINT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys

from tests.forked_cli import run_forked

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def default_sigint() -> None:
    """``preexec_fn`` of a process started to receive SIGINT: the default disposition back. A shell
    cannot trap a signal that was ignored when it started, Python installs no KeyboardInterrupt
    handler for it, and a background job (``pytest &``) starts with SIGINT ignored, which its
    children inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclasses.dataclass(frozen=True)
class Case:
    module: str  # run as `python -m <module>`
    words: tuple[str, ...]
    expected: str  # the error line starts with "error: " + this
    slow: bool = False  # the entry point imports torch before it checks (seconds in a fresh process)
    fresh: bool = False  # a plain subprocess instead of a fork: for CLIs no other test starts fresh

    @property
    def id(self) -> str:
        return f"{self.module.rsplit('.', 1)[-1]}:{' '.join(self.words)[:60]}"


def case(
    module: str, words: str | list[str], expected: str, *, slow: bool = False, fresh: bool = False
) -> Case:
    return Case(module, tuple(words.split() if isinstance(words, str) else words), expected, slow, fresh)


ENRICH = "add_inductor_metadata_to_perf_trace"
CONVERT = "hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors"
VALIDATE = "hf_torchao_vllm.validate_compressed_tensors_checkpoint"
QUANTIZE = "hf_torchao_vllm.quantize_hf_model_with_torchao"

CASES: list[Case] = [
    # enrichment of a profiler trace
    case(ENRICH, "{trace} {log} {out}.json --top abc", "--top is 'abc': pass an integer"),
    case(ENRICH, "{trace} {log} {out}.json --top -1", "--top is -1"),
    case(ENRICH, "{trace} {log} {trace} --overwrite", "--modified_perf_trace_file {trace} is the same path"),
    case(ENRICH, "{trace} {log} {log} --overwrite", "--modified_perf_trace_file {log} is the same path"),
    case(ENRICH, "{trace} {log} {out}.json --kernel_summary_file {log} --overwrite", "--kernel_summary_file"),
    case(ENRICH, "{missing} {log} {out}.json", "--perf_trace_file {missing} is not a file"),
    case(ENRICH, "{empty} {log} {out}.json", "{empty}"),
    case(ENRICH, "{trace} {log}", "missing argument --modified_perf_trace_file"),
    case(ENRICH, "{trace} {log} {out}.json --tpo 3", "unknown arguments --tpo 3"),
    # graph_viz
    case("graph_viz.main", "{gv_log} {gv_dir} --overwrite", "--output_dir {gv_dir} is a folder containing"),
    case("graph_viz.main", "{gv_log} {tmp} --overwrite", "--output_dir {tmp} is a folder containing"),
    case("graph_viz.main", "{gv_log} {foreign} --overwrite", "--output_dir {foreign} has no"),
    case("graph_viz.main", "{missing} {out}", "log {missing} does not exist"),
    case("graph_viz.main", "{gv_log}", "missing argument --output_dir"),
    case("graph_viz.main", "{gv_log} {out} --strict abc", "--strict is 'abc': pass True/False"),
    case(
        "graph_viz.make_sample_logs", "--output_dir {out} --only nosuch", "unknown sample log(s) ['nosuch']"
    ),
    case("graph_viz.make_sample_logs", "--output_dir {out} --log_format bogus", "--log_format"),
    case("graph_viz.make_sample_logs", "--output_dir {foreign} --overwrite", "--output_dir {foreign} has no"),
    case("graph_viz.benchmark", "--num_runs 0", "--num_runs is 0"),
    case("graph_viz.benchmark", "--num_runs abc", "--num_runs is 'abc': pass an integer"),
    case("graph_viz.benchmark", "--layers abc", "--layers is 'abc'"),
    case("graph_viz.benchmark", ["--layers", ""], "--layers is ''"),
    case("graph_viz.benchmark", "--layers 3,-1", "--layers"),
    case("graph_viz.benchmark", "--backend eager", "--backend is 'eager'"),
    case("graph_viz.benchmark", "--repeats 3", "unknown arguments --repeats 3"),
    # perf_traces
    case("perf_traces.benchmark", "--sizes_mb abc", "--sizes_mb is 'abc'"),
    case("perf_traces.benchmark", ["--sizes_mb", ""], "--sizes_mb"),
    case("perf_traces.benchmark", "--sizes_mb nan", "--sizes_mb"),
    case("perf_traces.benchmark", "--sizes_mb -4", "--sizes_mb"),
    case("perf_traces.benchmark", "--num_repeats 0", "--num_repeats"),
    case(
        "perf_traces.make_synthetic_trace", "{trace} {trace} --overwrite", "--output_file {trace} is the same"
    ),
    case("perf_traces.make_synthetic_trace", "{trace} {out}.json --target_mb nan", "--target_mb"),
    case("perf_traces.make_synthetic_trace", "{trace} {out}.json --target_mb -1", "--target_mb"),
    case(
        "perf_traces.make_synthetic_trace", "{missing} {out}.json", "--source_trace {missing} is not a file"
    ),
    case("perf_traces.profile_compiled_model", "{out} --mode bogus", "--mode is 'bogus'", slow=True),
    case("perf_traces.profile_compiled_model", "{out} --num_layers 0", "--num_layers is 0", slow=True),
    case("perf_traces.profile_compiled_model", "{out} --hidden_dim abc", "--hidden_dim is 'abc'", slow=True),
    case(
        "perf_traces.profile_compiled_model",
        "{foreign} --overwrite",
        "--output_dir {foreign} has no",
        slow=True,
    ),
    # llvm_e8m0
    case("llvm_e8m0.sweep", "--output_dir {out} --num_random abc", "--num_random is 'abc': pass an integer"),
    case("llvm_e8m0.sweep", "--output_dir {out} --num_random -3", "--num_random is -3"),
    case("llvm_e8m0.sweep", "--output_dir {out} --mode full --state_file {empty}", "--state_file {empty}"),
    case("llvm_e8m0.sweep", "--output_dir {out} --implementations nosuch", "--implementations"),
    case("llvm_e8m0.sweep", "--output_dir {out} --num_workers 0", "--num_workers"),
    case("llvm_e8m0.sweep", "--output_dir {foreign} --overwrite", "--output_dir {foreign} has no"),
    case("llvm_e8m0.build", "--fetch_debian abc", "--fetch_debian is 'abc'"),
    case("llvm_e8m0.benchmark_throughput", "--num_runs 0", "--num_runs is 0"),
    case("llvm_e8m0.compare_llvm_versions", "--num_random nan", "--num_random is"),
    # torchrun scripts, started without torchrun or with bad arguments
    case("dtensor_parallelisms.main", "--timeout_s abc", "--timeout_s is 'abc': pass an integer", slow=True),
    case("dtensor_parallelisms.main", "--lr nan", "--lr is", slow=True),
    case("dtensor_parallelisms.main", "--mode bogus", "unknown mode ['bogus']", slow=True),
    case("dp2ep.main", "--timeout_s nan", "--timeout_s is", slow=True),
    case("dp2ep.main", ["--num_experts", ""], "--num_experts is empty", slow=True),
    case("dp2ep.main", "--num_experts abc", "--num_experts is 'abc'", slow=True),
    case("dp2ep.main", "--dim 0", "--dim is 0: pass a positive integer", slow=True),
    # gpu
    case("gpu.run_checks", "--budget_s nan", "--budget_s is"),
    case("gpu.run_checks", "--max_parallel -1", "--max_parallel"),
    case("gpu.run_checks", "--steps nosuch --dry_run", "--steps"),
    case("gpu.run_checks", "--cpu --budget_s 10 --output_dir {out}", "--budget_s=10.0 leaves no time to run"),
    case("gpu.download_wheels", "--output_dir {foreign} --overwrite", "--output_dir {foreign} has no"),
    case("gpu.download_wheels", "--check_only abc", "--check_only is 'abc'"),
    # test_ao.py
    case("test_ao", "--device tpu", "--device 'tpu'", slow=True),
    case("test_ao", "--configs nosuch", "--configs", slow=True),
    case("test_ao", "--num_runs 0", "--batch_size/--seq_len/--num_runs must be >= 1", slow=True),
    case("test_ao", "--group_size abc", "--group_size is 'abc'", slow=True),
    case("test_ao", "--output_dir {empty}", "cannot write under {empty}", slow=True),
    # hf_torchao_vllm (argument checks only; the tools' own tests cover their inputs)
    case(
        CONVERT,
        "--model {missing} --output_dir {out}",
        "torchao checkpoint {missing} does not exist: pass a checkpoint directory",
        slow=True,
    ),
    case(
        CONVERT,
        "--dir_source {foreign} --dir_target {tmp} --overwrite",
        "{foreign} has no config.json",
        slow=True,
    ),
    case(
        VALIDATE, "--dir_source {missing} --dir_target {out} --kl_threshold=nan", "--kl_threshold", slow=True
    ),
    case(QUANTIZE, "--recipe nosuch --output_dir {out}", "unknown recipe 'nosuch'", slow=True),
    case(QUANTIZE, "--group_size abc --output_dir {out}", "--group_size is 'abc'", slow=True),
    case("hf_torchao_vllm.run_pipeline", "--max_tokens abc --output_dir {out}", "--max_tokens", slow=True),
    case("hf_torchao_vllm.inspect_checkpoint", "{missing}", "", slow=True),
    case(
        "hf_torchao_vllm.evaluate_quality",
        "{missing} --max_tokens -1",
        "--max_tokens -1 / --seq_len 256",
        slow=True,
        fresh=True,
    ),
    case(
        "hf_torchao_vllm.evaluate_quality",
        "{missing} --seq_len 0",
        "--max_tokens 2048 / --seq_len 0",
        slow=True,
    ),
    case(
        "hf_torchao_vllm.evaluate_quality",
        "{foreign} --json_output {foreign}/q.json",
        "--json_output {foreign}/q.json is inside the input {foreign}",
        slow=True,
    ),
    case("hf_torchao_vllm.benchmark_conversion", "--size_mb nan", "--size_mb", slow=True),
    case("hf_torchao_vllm.benchmark_generation", "--num_runs 0", "", slow=True, fresh=True),
    case(
        "hf_torchao_vllm.architecture_matrix",
        "--architectures nosuch --output_dir {out}",
        "--architectures ['nosuch']",
        fresh=True,
    ),
    case(
        "hf_torchao_vllm.run_quantized_model_in_vllm",
        "{missing} --tensor_parallel_size 0",
        "--max_tokens 16 / --tensor_parallel_size 0",
        slow=True,
    ),
    case(
        "hf_torchao_vllm.run_quantized_model_in_vllm", "{missing} --max_tokens 0", "--max_tokens 0", slow=True
    ),
    case("hf_torchao_vllm.train_tiny_models", "--output_dir {out} --learning_rate nan", "--learning_rate"),
    case("hf_torchao_vllm.train_tiny_models", "--output_dir {out} --models nosuch", "unknown model 'nosuch'"),
    case(
        "hf_torchao_vllm.train_tiny_models",
        "--output_dir {out} --num_steps_dense -5",
        "--num_steps_dense is -5",
    ),
]


def make_inputs(root: pathlib.Path) -> dict[str, str]:
    """Lay out the scratch inputs under ``root``; return the placeholder values."""
    pair = root / "pair"
    pair.mkdir()
    fixture = REPO_ROOT / "perf_traces" / "fixtures" / "cpu_train_short"
    shutil.copy(fixture / "trace.json", pair / "trace.json")
    shutil.copy(fixture / "output_code.log", pair / "output_code.log")
    gv_dir = root / "gv"
    gv_dir.mkdir()
    shutil.copy(REPO_ROOT / "graph_viz" / "fixtures" / "logs" / "mlp_inference.log", gv_dir / "mlp.log")
    (root / "empty.json").write_bytes(b"")
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work\n")
    return {
        "tmp": str(root),
        "out": str(root / "out"),
        "pair": str(pair),
        "trace": str(pair / "trace.json"),
        "log": str(pair / "output_code.log"),
        "gv_dir": str(gv_dir),
        "gv_log": str(gv_dir / "mlp.log"),
        "empty": str(root / "empty.json"),
        "foreign": str(foreign),
        "missing": str(root / "missing" / "nothing.json"),
    }


def tree_state(root: pathlib.Path) -> dict[str, str]:
    """Every path under ``root``: files by sha256, folders and symlinks by kind / target."""
    state = {}
    for directory, folders, files in os.walk(root):
        for name in folders:
            state[os.path.join(directory, name)] = "dir"
        for name in files:
            path = pathlib.Path(directory, name)
            state[str(path)] = (
                f"link {os.readlink(path)}"
                if path.is_symlink()
                else hashlib.sha256(path.read_bytes()).hexdigest()
            )
    return state


def command(case: Case | SignalCase, values: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", case.module, *(word.format(**values) for word in case.words)]


def check_refused(case: Case, tmp_path: pathlib.Path) -> None:
    """Run ``case`` from ``tmp_path`` and assert the refusal described in the module doc."""
    values = make_inputs(tmp_path)
    before = tree_state(tmp_path)
    words = command(case, values)
    env = {**os.environ, "COLUMNS": "200"}
    if case.fresh:
        result = subprocess.run(words, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    else:
        result = run_forked(case.module, words[3:], cwd=tmp_path, env=env, timeout=300)  # after python -m M
    shown = (
        f"exit {result.returncode}\n--- stderr ---\n{result.stderr[-4000:]}\n"
        f"--- stdout ---\n{result.stdout[-1000:]}"
    )
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr, shown
    error_lines = [line for line in result.stderr.splitlines() if line.lower().startswith("error")]
    assert len(error_lines) == 1, shown
    assert error_lines[0].startswith("error: " + case.expected.format(**values)), shown
    assert tree_state(tmp_path) == before, f"the refused command wrote under {tmp_path}\n{shown}"


@dataclasses.dataclass(frozen=True)
class SignalCase:
    """A command that writes ``output`` (a placeholder), sent ``signum`` once ``ready`` says it is
    mid-run: ``"staging"`` (the temp path next to the output exists), ``"child"`` (a child process
    whose command line contains ``child`` has spent ``min_cpu_s`` CPU seconds: a pool worker or a
    compile subprocess) or ``"running"`` (the main process has spent ``min_cpu_s``: imports done,
    computing). ``to_group``: to every process of the run, as a terminal's Ctrl-C; otherwise to the
    main process only, as ``kill PID``."""

    module: str
    words: tuple[str, ...]
    output: str
    ready: str
    child: str = ""
    min_cpu_s: float = 0.0
    signum: int = signal.SIGTERM
    to_group: bool = False
    slow: bool = False

    @property
    def id(self) -> str:
        to = "group" if self.to_group else "main"
        return f"{self.module.rsplit('.', 1)[-1]}-{signal.Signals(self.signum).name}-{to}"


# One per family of tools that write (hf_torchao_vllm's converter and gpu/run_checks have their own
# in tests/hf_torchao_vllm/test_convert_hostile.py and tests/gpu/test_run_checks.py).
SIGNAL_CASES = [
    # a 300 MB trace streamed into the staged file
    SignalCase(
        "perf_traces.make_synthetic_trace",
        ("{trace}", "{out}.json", "--target_mb", "300"),
        "{out}.json",
        "staging",
    ),
    # the profiled program runs in a child process, inside the staged folder
    SignalCase("perf_traces.profile_compiled_model", ("{out}",), "{out}", "child", slow=True),
    # the sample program compiles in a child process
    SignalCase(
        "graph_viz.make_sample_logs",
        ("--output_dir", "{out}", "--only", "mlp_inference"),
        "{out}",
        "child",
        slow=True,
    ),
    # spawned pool workers, signalled while the pool starts
    SignalCase(
        "llvm_e8m0.sweep",
        ("--output_dir", "{out}", "--num_random", "20000000"),
        "{out}",
        "child",
        child="spawn_main",
        slow=True,
    ),
    # Ctrl-C reaches the workers too, here while they compute
    SignalCase(
        "llvm_e8m0.sweep",
        ("--output_dir", "{out}", "--num_random", "20000000"),
        "{out}",
        "child",
        child="spawn_main",
        min_cpu_s=4,
        signum=signal.SIGINT,
        to_group=True,
        slow=True,
    ),
    # one process benchmarking in a loop; the report is written at the end
    SignalCase(
        "test_ao",
        ("--output_dir", "{out}", "--num_runs", "100000"),
        "{out}",
        "running",
        min_cpu_s=5,
        slow=True,
    ),
]

SIGNAL_LINES = {
    signal.SIGTERM: "error: terminated (SIGTERM); partial outputs were removed",
    signal.SIGINT: "error: interrupted (SIGINT); partial outputs were removed",
}


def group_processes(group: int) -> list[int]:
    """Pids of the live (not zombie) processes of process group ``group``."""
    pids = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def cpu_seconds(pid: int) -> float:
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _command_line(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_ready(case: SignalCase, process: subprocess.Popen, output: pathlib.Path) -> bool:
    if case.ready == "staging":
        return any(output.parent.glob(f".{output.name}.tmp-*"))
    if case.ready == "child":
        return any(
            case.child in _command_line(pid) and cpu_seconds(pid) >= case.min_cpu_s
            for pid in group_processes(process.pid)
            if pid != process.pid
        )
    assert case.ready == "running", case.ready
    return cpu_seconds(process.pid) >= case.min_cpu_s


def check_signal(case: SignalCase, tmp_path: pathlib.Path, timeout_s: float = 240) -> None:
    """Start ``case`` in its own process group, signal it mid-run and assert: exit 128 + signal, the
    one line of that signal, no traceback (workers included), no output and no temp path, inputs
    unchanged, and no process of the run left."""
    import time

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    values = make_inputs(scratch)
    output = pathlib.Path(case.output.format(**values))
    before = tree_state(scratch)
    with open(tmp_path / "stdout.txt", "w") as stdout:
        process = subprocess.Popen(
            command(case, values),
            cwd=scratch,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=default_sigint,
            env={**os.environ, "COLUMNS": "200"},
        )
        try:
            deadline = time.monotonic() + timeout_s
            while not _is_ready(case, process, output):
                assert process.poll() is None, (
                    f"{case.id} ended before it was mid-run: {process.stderr.read()}"
                )
                assert time.monotonic() < deadline, f"{case.id} never got mid-run ({case.ready})"
                time.sleep(0.05)
            if case.to_group:
                os.killpg(process.pid, case.signum)
            else:
                process.send_signal(case.signum)
            _, stderr = process.communicate(timeout=120)
            survivors = group_processes(process.pid)
            for _ in range(50):  # a worker being reaped by its pool may take a moment
                if not survivors:
                    break
                time.sleep(0.1)
                survivors = group_processes(process.pid)
        finally:
            if process.poll() is None or group_processes(process.pid):
                os.killpg(process.pid, signal.SIGKILL)
    shown = f"exit {process.returncode}\n--- stderr ---\n{stderr[-4000:]}"
    assert process.returncode == 128 + case.signum, shown
    assert "Traceback" not in stderr, shown
    assert [line for line in stderr.splitlines() if line.startswith("error")] == [
        SIGNAL_LINES[case.signum]
    ], shown
    assert not survivors, f"processes of the run outlived it: {survivors}\n{shown}"
    assert not output.exists() and not output.is_symlink(), f"{output} was written\n{shown}"
    assert tree_state(scratch) == before, f"the run left paths under {scratch}\n{shown}"

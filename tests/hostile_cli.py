"""Hostile command lines for every entry point, and the check each must pass.

``CASES`` is a table: an entry point, the words a careless or hostile user types after it, and the
start of the one ``error:`` line expected. ``check_refused(case, tmp_path)`` runs the command in a
subprocess from ``tmp_path`` (relative default outputs land there) and asserts what every user
mistake must give: exit status 2, exactly one line on stderr starting with ``error:`` (warnings that
libraries print on import are other lines), no ``Traceback``, and nothing under ``tmp_path`` written,
changed or removed (inputs included). tests/test_conventions.py checks that every entry point has a
case.

Words may hold placeholders, filled from the scratch inputs ``make_inputs`` lays out:
``{tmp}`` (the scratch root), ``{out}`` (an output path that does not exist), ``{trace}`` / ``{log}``
(a profiler trace and its inductor output_code log, in folder ``{pair}``), ``{gv_log}`` (a
TORCH_LOGS log alone in folder ``{gv_dir}``), ``{empty}`` (an empty file), ``{foreign}`` (a
non-empty folder no tool wrote), ``{missing}`` (a path that does not exist).
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
    slow: bool = False  # the entry point imports torch before it checks (a few seconds)

    @property
    def id(self) -> str:
        return f"{self.module.rsplit('.', 1)[-1]}:{' '.join(self.words)[:60]}"


def case(module: str, words: str | list[str], expected: str, *, slow: bool = False) -> Case:
    return Case(module, tuple(words.split() if isinstance(words, str) else words), expected, slow)


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
        "--dir_source {missing} --dir_target {out}",
        "source directory {missing} does not exist",
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
    case("hf_torchao_vllm.evaluate_quality", "{missing} --max_tokens -1", "", slow=True),
    case("hf_torchao_vllm.benchmark_conversion", "--size_mb nan", "--size_mb", slow=True),
    case("hf_torchao_vllm.benchmark_generation", "--num_runs 0", "", slow=True),
    case(
        "hf_torchao_vllm.architecture_matrix",
        "--architectures nosuch --output_dir {out}",
        "--architectures ['nosuch']",
    ),
    case("hf_torchao_vllm.run_quantized_model_in_vllm", "{missing} --tensor_parallel_size 0", "", slow=True),
    case("hf_torchao_vllm.train_tiny_models", "--output_dir {out} --learning_rate nan", "--learning_rate"),
    case("hf_torchao_vllm.train_tiny_models", "--output_dir {out} --models nosuch", "unknown model 'nosuch'"),
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


def command(case: Case, values: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", case.module, *(word.format(**values) for word in case.words)]


def check_refused(case: Case, tmp_path: pathlib.Path) -> None:
    """Run ``case`` from ``tmp_path`` and assert the refusal described in the module doc."""
    values = make_inputs(tmp_path)
    before = tree_state(tmp_path)
    result = subprocess.run(
        command(case, values),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
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

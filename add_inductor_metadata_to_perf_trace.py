"""Add Inductor kernel metadata (source code, graph, nodes, ATen ops) to a profiler trace.

Input: a Chrome trace from ``torch.profiler`` of a ``torch.compile``d program and the
``TORCH_LOGS=output_code`` log of the same run (``perf_traces.profile_compiled_model`` writes such
a pair). Output: the same trace where every kernel event that could be matched carries
``inductor_kernel_id``, ``inductor_graph_kind``, ``inductor_source_nodes`` and
``inductor_op_summary`` in its args, and one ``inductor kernel <id>`` event per kernel (on the
"Inductor kernels" track) holds its source code, graph and call() lines; next to it, an HTML chart
of the time per kernel (``<output>.kernels.html``). A table of the top kernels is printed.
See ``perf_traces/README.md``.

    .venv/bin/python -m add_inductor_metadata_to_perf_trace --perf_trace_file=trace.json \
        --torch_logs_file=output_code.log --modified_perf_trace_file=trace_enriched.json
"""

from __future__ import annotations

import gzip
import os
import pathlib
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from pytorch_scripts_common.cli import UsageError, run

if TYPE_CHECKING:
    from perf_traces.enrich import EnrichPlan

TOOL = "add_inductor_metadata_to_perf_trace"
GZIP_LEVEL = 6  # zlib's default


def _default_summary_file(modified_perf_trace_file: str) -> str:
    stem = modified_perf_trace_file.removesuffix(".gz").removesuffix(".json")
    return f"{stem}.kernels.html"


def _write_trace(plan: EnrichPlan, target: pathlib.Path, compress: bool, helper: Any) -> None:
    """The enriched trace at ``target``, gzip-compressed if ``compress`` (for an output name ending in
    .gz, as torch.profiler writes one, and as Perfetto and chrome://tracing open it): written plain
    beside it first, since the writer writes at offsets."""
    if not compress:
        plan.write(str(target), helper=helper)
        return
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as work_dir:
        plain = os.path.join(work_dir, "enriched.json")
        plan.write(plain, helper=helper)
        with open(plain, "rb") as source, gzip.open(target, "wb", compresslevel=GZIP_LEVEL) as compressed:
            shutil.copyfileobj(source, compressed, 16 << 20)


def _check_outputs(
    inputs: list[str], modified_perf_trace_file: str, summary_file: str, overwrite: bool
) -> tuple[pathlib.Path, pathlib.Path]:
    """Both output paths checked before any work (not an input, not a folder, --overwrite); resolved."""
    from pytorch_scripts_common.outputs import check_output

    trace_target = check_output(
        modified_perf_trace_file,
        inputs=inputs,
        overwrite=overwrite,
        tool=TOOL,
        kind="file",
        flag="modified_perf_trace_file",
    )
    summary_target = check_output(
        summary_file,
        inputs=[*inputs, modified_perf_trace_file],
        overwrite=overwrite,
        tool=TOOL,
        kind="file",
        flag="kernel_summary_file",
    )
    return trace_target, summary_target


def main(
    perf_trace_file: str,
    torch_logs_file: str,
    modified_perf_trace_file: str,
    kernel_summary_file: str | None = None,
    top: int = 20,
    overwrite: bool = False,
    strict: bool = False,
    allow_no_match: bool = False,
) -> None:
    """Enrich a torch.profiler Chrome trace with the Inductor output code of the same run.

    Args:
        perf_trace_file: Chrome trace JSON written by torch.profiler (export_chrome_trace), or its .gz.
        torch_logs_file: TORCH_LOGS=output_code log of the same run (any format), or its TORCH_TRACE folder.
        modified_perf_trace_file: where to write the enriched trace (gzip for a .gz name; appears complete).
        kernel_summary_file: HTML chart of time per kernel (default: <modified_perf_trace_file>.kernels.html).
        top: number of kernels in the printed table and the chart, the most time first.
        overwrite: replace earlier outputs at these paths.
        strict: turn log-parser warnings (malformed or truncated output code) into errors.
        allow_no_match: write an unchanged copy when no event matched (default: exit with an error).
    """
    from perf_traces.enrich import match_trace
    from perf_traces.kernel_summary import print_table, render_html
    from perf_traces.log_kernels import compiled_graphs
    from perf_traces.trace_stream import helper_process, readable_trace, wants_helper
    from pytorch_scripts_common.inductor_log import read_inductor_log
    from pytorch_scripts_common.outputs import staged_file

    if not os.path.isfile(perf_trace_file):
        raise UsageError(f"--perf_trace_file {perf_trace_file} is not a file: pass an existing path")
    if not os.path.exists(torch_logs_file):
        raise UsageError(
            f"--torch_logs_file {torch_logs_file} does not exist: pass a log file or a TORCH_TRACE folder"
        )
    if top < 1:
        raise UsageError(f"--top is {top}: pass a number of kernels >= 1")
    summary_file = kernel_summary_file or _default_summary_file(modified_perf_trace_file)
    trace_target, summary_target = _check_outputs(
        [perf_trace_file, torch_logs_file], modified_perf_trace_file, summary_file, overwrite
    )

    # a second process for the halves of a large trace: forked now, while this one is small
    with helper_process(wants_helper(perf_trace_file)) as helper:
        log = read_inductor_log(torch_logs_file, strict=strict)
        for line, message in log.warnings[:20]:
            print(f"warning: {torch_logs_file}:{line}: {message}")
        if log.num_warnings > 20:
            print(f"... {log.num_warnings - 20} more warnings")
        graphs = compiled_graphs(log)
        if not graphs:
            print(
                f"warning: {torch_logs_file} has no output code "
                "(capture it with TORCH_LOGS=output_code, or TORCH_TRACE=<folder>)"
            )
        with readable_trace(perf_trace_file, str(trace_target.parent)) as trace_path:
            plan = match_trace(trace_path, graphs, helper=helper)
            if plan.summary.num_matched == 0 and not allow_no_match:
                print("\n".join(plan.summary.lines()))
                raise UsageError(
                    f"0 events matched: {plan.summary.zero_match_reason}: nothing written to "
                    f"{modified_perf_trace_file}; pass --allow_no_match to write an unchanged copy anyway"
                )
            stats = plan.kernel_stats()
            with staged_file(trace_target) as trace_staging, staged_file(summary_target) as summary_staging:
                _write_trace(plan, trace_staging, trace_target.name.endswith(".gz"), helper)
                summary_staging.write_text(
                    render_html(stats, top, trace_name=os.path.basename(perf_trace_file)), encoding="utf-8"
                )
    for line in plan.summary.lines():
        print(line)
    if stats:
        print_table(stats, top)
    print(f"wrote {modified_perf_trace_file} and {summary_file}")


if __name__ == "__main__":
    run(main)

"""Add Inductor kernel metadata (source code, output-code module, graph nodes) to a profiler trace.

Input: a Chrome trace from ``torch.profiler`` of a ``torch.compile``d program and the
``TORCH_LOGS=output_code`` log of the same run (``perf_traces/profile_compiled_model.py`` writes such
a pair). Output: the same trace with, on every kernel event that could be matched, ``args`` entries
``inductor_kernel_source``, ``inductor_aot_id``, ``inductor_graph_kind`` (forward / backward /
inference), ``inductor_source_nodes``, ``inductor_aten_ops``, ``inductor_kernel_path`` … The trace is
streamed (never loaded whole) and the output written atomically. See ``perf_traces/README.md``.

    python add_inductor_metadata_to_perf_trace.py --perf_trace_file trace.json \
        --torch_logs_file output_code.log --modified_perf_trace_file trace_enriched.json
"""

import os

import fire


def main(
    perf_trace_file: str,
    torch_logs_file: str,
    modified_perf_trace_file: str,
    overwrite: bool = False,
    strict: bool = False,
    allow_no_match: bool = False,
) -> None:
    """Enrich a torch.profiler Chrome trace with the Inductor output code of the same run.

    Args:
        perf_trace_file: Chrome trace JSON written by torch.profiler (export_chrome_trace); streamed.
        torch_logs_file: TORCH_LOGS=output_code log of the same run (any format), or its TORCH_TRACE folder.
        modified_perf_trace_file: where to write the enriched trace (atomically: temp file, then rename).
        overwrite: replace modified_perf_trace_file if it exists.
        strict: fail on output-code text the parser cannot read (malformed, truncated) instead of warning.
        allow_no_match: write an unchanged copy when no event matched (default: exit with an error).
    """
    from perf_traces.enrich import NoMatchError, enrich_trace
    from pytorch_scripts_common.inductor_log import read_inductor_log

    if not os.path.isfile(perf_trace_file):
        raise ValueError(f"perf_trace_file={perf_trace_file!r} is not a file; pass an existing path")
    if not os.path.exists(torch_logs_file):
        raise ValueError(
            f"torch_logs_file={torch_logs_file!r} does not exist; pass a log file or TORCH_TRACE folder"
        )
    if os.path.abspath(modified_perf_trace_file) == os.path.abspath(perf_trace_file):
        raise ValueError(
            f"modified_perf_trace_file={modified_perf_trace_file!r} is the input trace; choose another path"
        )
    if os.path.exists(modified_perf_trace_file) and not overwrite:
        raise ValueError(
            f"modified_perf_trace_file={modified_perf_trace_file!r} exists; pass --overwrite to replace it"
        )
    target_dir = os.path.dirname(os.path.abspath(modified_perf_trace_file))
    if not os.path.isdir(target_dir):
        raise ValueError(f"directory of modified_perf_trace_file={modified_perf_trace_file!r} does not exist")

    log = read_inductor_log(torch_logs_file, strict=strict)
    for line, message in log.warnings[:20]:
        print(f"warning: {torch_logs_file}:{line}: {message}")
    if log.num_warnings > 20:
        print(f"... {log.num_warnings - 20} more warnings")
    modules = log.modules
    if not modules:
        print(
            f"warning: {torch_logs_file} has no output code "
            "(capture it with TORCH_LOGS=output_code, or TORCH_TRACE=<folder>)"
        )
    try:
        summary = enrich_trace(
            perf_trace_file, modules, modified_perf_trace_file, allow_no_match=allow_no_match
        )
    except NoMatchError as error:
        print("\n".join(error.summary.lines()))
        raise ValueError(
            f"{error} -- nothing written to {modified_perf_trace_file!r}; pass --allow_no_match to write an "
            "unchanged copy anyway"
        ) from None
    for line in summary.lines():
        print(line)
    print(f"wrote {modified_perf_trace_file}")


if __name__ == "__main__":
    fire.Fire(main)

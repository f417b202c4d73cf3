"""Benchmark: streaming enrichment vs a plain json.load/json.dump implementation on synthetic traces.

For each size, a synthetic trace is generated (``make_synthetic_trace``, from a real fixture pair) in
a temporary directory (never the repository), then each implementation runs ``num_repeats`` times in
a fresh subprocess; wall time and CPU time (user + sys of that subprocess, from ``wait4``; medians)
and peak RSS (``ru_maxrss``, max over repeats) are reported, with the ratio baseline / streaming from
the same run. On a shared machine the wall time includes waiting for a core; the CPU time of these
single-threaded programs is what their wall time would be on an idle machine (minus I/O waits).
A third row reports a decode-only pass of ijson's C backend (``ijson.items(f, "traceEvents.item")``)
as a reference for what JSON streaming costs on this machine. The baseline is skipped above
``baseline_max_mb`` (its RSS is several times the file size); skipped cells say so.

    python -m perf_traces.benchmark                       # 16 MB x 3 repeats: about a minute
    python -m perf_traces.benchmark --sizes_mb 1024 --num_repeats 1 --baseline_max_mb 1024
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import fire

IMPLEMENTATIONS = ("streaming", "json_load_dump", "ijson_decode_only")
_DEFAULT_FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "cpu_train")

# Child programs: argv = [trace, log, output]. Each prints nothing on success.
_CHILD_CODE = {
    "streaming": (
        "import sys\n"
        "from perf_traces.enrich import enrich_trace\n"
        "from pytorch_scripts_common.inductor_log import read_inductor_log\n"
        "summary = enrich_trace(sys.argv[1], read_inductor_log(sys.argv[2]).modules, sys.argv[3])\n"
        "print(summary.num_matched)\n"
    ),
    "json_load_dump": (
        "import sys\n"
        "from perf_traces.enrich import enrich_trace\n"
        "from pytorch_scripts_common.inductor_log import read_inductor_log\n"
        "modules = read_inductor_log(sys.argv[2]).modules\n"
        "summary = enrich_trace(sys.argv[1], modules, sys.argv[3], in_memory=True)\n"
        "print(summary.num_matched)\n"
    ),
    "ijson_decode_only": (
        "import sys\n"
        "import ijson\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    count = sum(1 for _ in ijson.items(f, 'traceEvents.item', use_float=True))\n"
        "print(count, ijson.backend)\n"
    ),
}


def _measure(implementation: str, trace: str, log: str, output: str) -> tuple[float, float, float, str]:
    """Fork a child that execs the implementation; use wait4 for its own peak RSS (KB on Linux)."""
    read_fd, write_fd = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: become the implementation's interpreter
        os.close(read_fd)
        os.dup2(write_fd, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.execv(sys.executable, [sys.executable, "-c", _CHILD_CODE[implementation], trace, log, output])
    os.close(write_fd)
    with os.fdopen(read_fd) as child_stdout:
        stdout = child_stdout.read()
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{implementation} failed with exit status {os.waitstatus_to_exitcode(status)}")
    cpu_s = usage.ru_utime + usage.ru_stime
    return elapsed, cpu_s, usage.ru_maxrss / 1024.0, stdout.strip()


def main(
    sizes_mb: str = "16",
    num_repeats: int = 3,
    baseline_max_mb: float = 256.0,
    fixture_dir: str = _DEFAULT_FIXTURE,
    work_dir: str | None = None,
    implementations: str = ",".join(IMPLEMENTATIONS),
) -> None:
    """Time streaming enrichment against json.load/json.dump on synthetic traces; print a table.

    Args:
        sizes_mb: comma-separated synthetic trace sizes in MB (10**6 bytes), e.g. "64,256,1024".
        num_repeats: runs per implementation and size (median time reported).
        baseline_max_mb: skip the json.load/json.dump baseline above this size (its RSS is many x the file).
        fixture_dir: directory with the real trace.json + output_code.log the synthetic trace is made from.
        work_dir: where to write the temporary traces (default: a new temp dir, deleted afterwards).
        implementations: comma-separated subset of IMPLEMENTATIONS; must include streaming.
    """
    sizes = [float(size) for size in str(sizes_mb).split(",") if str(size).strip()]
    if not sizes or any(size <= 0 for size in sizes):
        raise ValueError(f"sizes_mb={sizes_mb!r} must be positive numbers separated by commas")
    chosen = [name.strip() for name in str(implementations).split(",") if name.strip()]
    if "streaming" not in chosen or any(name not in IMPLEMENTATIONS for name in chosen):
        raise ValueError(
            f"implementations={implementations!r} must include 'streaming', from {IMPLEMENTATIONS}"
        )
    if num_repeats < 1:
        raise ValueError(f"num_repeats={num_repeats} must be >= 1")
    source_trace = os.path.join(fixture_dir, "trace.json")
    source_log = os.path.join(fixture_dir, "output_code.log")
    for path in (source_trace, source_log):
        if not os.path.isfile(path):
            raise ValueError(f"{path} is missing; fixture_dir must hold trace.json and output_code.log")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if work_dir is not None and os.path.commonpath([os.path.abspath(work_dir), repo_root]) == repo_root:
        raise ValueError(f"work_dir={work_dir!r} is inside the repository; use a temp directory")
    import importlib.metadata

    import ijson

    from perf_traces.make_synthetic_trace import make_synthetic_trace

    rows = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for size in sizes:
            trace = os.path.join(tmp, f"synthetic_{size:g}mb.json")
            start = time.perf_counter()
            copies, num_events = make_synthetic_trace(source_trace, trace, int(size * 1e6))
            generation_s = time.perf_counter() - start
            actual_mb = os.path.getsize(trace) / 1e6
            print(
                f"generated {actual_mb:.1f} MB ({num_events} events, {copies} copies) in {generation_s:.1f} s"
            )
            results = {}
            for implementation in chosen:
                if implementation == "json_load_dump" and size > baseline_max_mb:
                    results[implementation] = None
                    continue
                times, cpu_times, rss, outputs = [], [], [], []
                for _ in range(num_repeats):
                    output = os.path.join(tmp, f"out_{implementation}.json")
                    elapsed, cpu_s, peak_mb, stdout = _measure(implementation, trace, source_log, output)
                    times.append(elapsed)
                    cpu_times.append(cpu_s)
                    rss.append(peak_mb)
                    outputs.append(stdout)
                    if os.path.exists(output):
                        output_mb = os.path.getsize(output) / 1e6
                        os.unlink(output)
                    else:
                        output_mb = 0.0
                results[implementation] = (
                    statistics.median(times),
                    statistics.median(cpu_times),
                    max(rss),
                    outputs[-1],
                    output_mb,
                )
                print(f"  {implementation}: {results[implementation]}")
            rows.append((actual_mb, num_events, results))
            os.unlink(trace)

    print()
    print(
        f"torch {importlib.metadata.version('torch')}, ijson backend {ijson.backend}, "
        f"python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs; median of {num_repeats} run(s), each in a fresh subprocess"
    )
    header = (
        f"{'trace MB':>9} {'events':>10} {'implementation':<18} {'wall s':>8} {'CPU s':>8} {'MB/CPU s':>9} "
        f"{'peak RSS MB':>12} {'output MB':>10} {'x vs streaming (CPU s)':>23}"
    )
    print(header)
    for actual_mb, num_events, results in rows:
        streaming_cpu_s = results["streaming"][1]
        for implementation in chosen:
            result = results[implementation]
            if result is None:
                print(f"{actual_mb:>9.1f} {num_events:>10d} {implementation:<18} skipped (> baseline_max_mb)")
                continue
            elapsed, cpu_s, peak_mb, _, output_mb = result
            print(
                f"{actual_mb:>9.1f} {num_events:>10d} {implementation:<18} {elapsed:>8.2f} {cpu_s:>8.2f} "
                f"{actual_mb / cpu_s:>9.1f} {peak_mb:>12.1f} {output_mb:>10.1f} "
                f"{cpu_s / streaming_cpu_s:>23.2f}"
            )


if __name__ == "__main__":
    fire.Fire(main)

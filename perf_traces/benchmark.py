"""Benchmark: the enrichment CLI against a plain copy of the same file, on synthetic traces.

For each size, a synthetic trace is generated (``make_synthetic_trace``, from a real fixture pair) in
a temporary directory (never the repository). Then, alternately ``num_repeats`` times, each
implementation runs in a fresh subprocess:

- ``copy``: ``shutil.copyfile`` of the trace (what ``cp`` does: the kernel copies the bytes), the
  baseline: reading and writing the file at I/O speed;
- ``enrich``: ``add_inductor_metadata_to_perf_trace.py``'s ``main`` with the fixture's log (the trace
  with the kernel table, the HTML chart, the printed table).

Reported per implementation: median wall time with its min-max, CPU time (user + sys of the process
and of its forked reader, from ``wait4``), MB of input per wall second and per CPU second, peak RSS
(main process + forked reader, each from ``getrusage``), output MB and output / input, and the wall
time as a multiple of the copy's in the same run, with the 1-minute load average before each run.
On a shared machine the wall time includes waiting for a core; compare the CPU time too.

    python -m perf_traces.benchmark                       # 16 MB x 3 repeats: well under a minute
    python -m perf_traces.benchmark --sizes_mb 1024 --num_repeats 3
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from pytorch_scripts_common.cli import UsageError, parse_list, run

IMPLEMENTATIONS = ("copy", "enrich")
_DEFAULT_FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "cpu_train")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Child programs: argv = [trace, log, output]. Their last stdout line: "<peak RSS KB> <reader's peak RSS KB>".
_RSS_LINE = (
    "from resource import RUSAGE_CHILDREN, RUSAGE_SELF, getrusage\n"
    "print(getrusage(RUSAGE_SELF).ru_maxrss, getrusage(RUSAGE_CHILDREN).ru_maxrss)\n"
)
_CHILD_CODE = {
    "copy": "import shutil, sys\nshutil.copyfile(sys.argv[1], sys.argv[3])\n" + _RSS_LINE,
    "enrich": (
        "import runpy, sys\n"
        f"script = {os.path.join(_REPO_ROOT, 'add_inductor_metadata_to_perf_trace.py')!r}\n"
        "sys.argv = [script, '--perf_trace_file', sys.argv[1], '--torch_logs_file', sys.argv[2],\n"
        "            '--modified_perf_trace_file', sys.argv[3], '--top', '5']\n"
        "runpy.run_path(script, run_name='__main__')\n" + _RSS_LINE
    ),
}


def _measure(implementation: str, trace: str, log: str, output: str) -> dict[str, float]:
    """Fork a child that execs the implementation; wall time, CPU time (wait4) and peak RSS."""
    load_average = os.getloadavg()[0]
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
    main_kb, reader_kb = (float(value) for value in stdout.strip().splitlines()[-1].split())
    output_mb = os.path.getsize(output) / 1e6
    for path in (output, output.removesuffix(".json") + ".kernels.html"):
        if os.path.exists(path):
            os.unlink(path)
    return {
        "wall_s": elapsed,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mb": (main_kb + reader_kb) / 1024,
        "output_mb": output_mb,
        "load": load_average,
    }


def _row(name: str, input_mb: float, runs: list[dict[str, float]], copy_wall_s: float) -> str:
    walls = [run_["wall_s"] for run_ in runs]
    wall = statistics.median(walls)
    cpu = statistics.median(run_["cpu_s"] for run_ in runs)
    output_mb = runs[-1]["output_mb"]
    return (
        f"| {name} | {wall:.2f} ({min(walls):.2f}-{max(walls):.2f}) | {cpu:.2f} | {input_mb / wall:.0f} | "
        f"{input_mb / cpu:.0f} | {max(run_['rss_mb'] for run_ in runs):.0f} | {output_mb:.1f} | "
        f"{output_mb / input_mb:.3f} | {wall / copy_wall_s:.1f} | "
        f"{min(run_['load'] for run_ in runs):.1f}-{max(run_['load'] for run_ in runs):.1f} |"
    )


def main(
    sizes_mb: str = "16",
    num_repeats: int = 3,
    fixture_dir: str = _DEFAULT_FIXTURE,
    work_dir: str | None = None,
) -> None:
    """Time the enrichment CLI against a plain copy of the same synthetic trace; print a table.

    Args:
        sizes_mb: comma-separated synthetic trace sizes in MB (10**6 bytes), e.g. 64,256,1024.
        num_repeats: runs per implementation and size (median, min-max reported); the two alternate.
        fixture_dir: directory with the real trace.json + output_code.log the synthetic trace is made from.
        work_dir: where to write the temporary traces (default: a new temp dir, deleted afterwards).
    """
    sizes = parse_list(sizes_mb, float, name="sizes_mb")
    if not sizes or any(size <= 0 for size in sizes):
        raise UsageError(f"--sizes_mb is {sizes_mb!r}: pass sizes > 0 separated by commas, e.g. 64,256")
    if num_repeats < 1:
        raise UsageError(f"--num_repeats is {num_repeats}: pass a number >= 1")
    source_trace = os.path.join(fixture_dir, "trace.json")
    source_log = os.path.join(fixture_dir, "output_code.log")
    for path in (source_trace, source_log):
        if not os.path.isfile(path):
            raise UsageError(f"{path} is missing: --fixture_dir must hold trace.json and output_code.log")
    if work_dir is not None and os.path.commonpath([os.path.abspath(work_dir), _REPO_ROOT]) == _REPO_ROOT:
        raise UsageError(f"--work_dir {work_dir} is inside the repository: use a temp directory")
    import importlib.metadata

    from perf_traces.make_synthetic_trace import make_synthetic_trace

    rows = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for size in sizes:
            trace = os.path.join(tmp, f"synthetic_{size:g}mb.json")
            start = time.perf_counter()
            copies, num_events = make_synthetic_trace(source_trace, trace, int(size * 1e6))
            input_mb = os.path.getsize(trace) / 1e6
            print(
                f"generated {input_mb:.1f} MB ({num_events} events, {copies} copies) in "
                f"{time.perf_counter() - start:.1f} s"
            )
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in IMPLEMENTATIONS}
            for repeat in range(num_repeats):
                for implementation in IMPLEMENTATIONS:
                    output = os.path.join(tmp, f"out_{implementation}.json")
                    runs[implementation].append(_measure(implementation, trace, source_log, output))
                    print(f"  {implementation} #{repeat + 1}: {runs[implementation][-1]}")
            rows.append((input_mb, num_events, runs))
            os.unlink(trace)

    print()
    print(
        f"msgspec {importlib.metadata.version('msgspec')}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs; median (min-max) of {num_repeats} run(s), each in a fresh subprocess"
    )
    for input_mb, num_events, runs in rows:
        copy_wall_s = statistics.median(run_["wall_s"] for run_ in runs["copy"])
        print()
        print(f"{input_mb:.1f} MB trace, {num_events} events:")
        print()
        print(
            "| implementation | wall s | CPU s | MB/s (wall) | MB per CPU s | peak RSS MB | output MB "
            "| output / input | wall x copy | load avg |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name in IMPLEMENTATIONS:
            print(_row(name, input_mb, runs[name], copy_wall_s))


if __name__ == "__main__":
    run(main)

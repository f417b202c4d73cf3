"""Differential sweep of every float32 -> e8m0 converter: pairwise disagreements by input class.

Two input sets:

* ``mode=fast`` (default, ~10 s on 2 idle cores): structured special values (every exponent
  field x both signs x mantissas at 1, 1.5 (the tie), 2 - ulp, ... ; every subnormal power of two,
  its neighbours and ties; +-0, +-inf, quiet and signalling NaNs) plus ``num_random`` uniformly
  random bit patterns.
* ``mode=full``: all 2^32 bit patterns in ``chunk_size`` chunks on ``num_workers`` processes
  (~24 min for all 16 converters on 2 idle cores), resumable: finished chunks are recorded in
  ``state_file`` and skipped when re-run.

Every converter is also checked against its documented behaviour (``expected.py``) on every input
(the pure-Python reference on a sample of each chunk and on every structured value); any mismatch
makes the run exit non-zero after the results are written. Output: ``results.md`` (the tables,
also printed) and ``results.json`` in ``output_dir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import json
import multiprocessing
import os
import platform
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np

CLASS_NAMES = (
    "+zero",
    "-zero",
    "+denormal",
    "-denormal",
    "+normal",
    "-normal",
    "+inf",
    "-inf",
    "+nan",
    "-nan",
)
MAX_EXAMPLES = 3  # first examples kept per (pair, class) and per mismatching converter
MAX_PATTERNS_PER_CLASS = 10  # rows of the "first examples" table per input class
STRUCTURED_MANTISSAS = (
    0x000000,  # 1.0 (or +-0 / inf)
    0x000001,
    0x000002,
    0x000003,  # 1 + tiny: RCEIL's float32 log2 collapses these
    0x000011,
    0x000040,
    0x000400,
    0x1FFFFF,
    0x200000,  # 1.25
    0x3FFFFF,
    0x400000,  # 1.5: the tie between 2^k and 2^(k+1)
    0x400001,
    0x600000,  # 1.75
    0x77FFFF,
    0x780000,  # 1.9375: torchao EVEN's threshold for float8_e4m3fn (mbits = 3)
    0x780001,
    0x7FFFFE,
    0x7FFFFF,  # 2 - ulp
)
FULL_SWEEP_SIZE = 2**32


def classify(bits: np.ndarray) -> np.ndarray:
    """Class index into CLASS_NAMES for each float32 bit pattern."""
    sign = (bits >> 31).astype(np.int8)
    exponent_field = (bits >> 23) & 0xFF
    mantissa_zero = (bits & 0x7FFFFF) == 0
    base = np.where(
        exponent_field == 0,
        np.where(mantissa_zero, 0, 1),
        np.where(exponent_field == 0xFF, np.where(mantissa_zero, 3, 4), 2),
    ).astype(np.int8)
    return base * 2 + sign


def structured_inputs() -> np.ndarray:
    """Special values: every exponent x both signs x STRUCTURED_MANTISSAS, plus subnormal edges."""
    exponents = np.arange(256, dtype=np.uint32)
    signs = np.array([0, 1], dtype=np.uint32)
    mantissas = np.array(STRUCTURED_MANTISSAS, dtype=np.uint32)
    grid = (signs[:, None, None] << 31) | (exponents[None, :, None] << 23) | mantissas[None, None, :]
    powers = np.uint32(1) << np.arange(23, dtype=np.uint32)  # every subnormal power of two
    subnormal = np.concatenate([powers, powers + 1, powers - 1, powers * 3, powers * 3 + 1, powers * 3 - 1])
    subnormal = subnormal[(subnormal > 0) & (subnormal < (1 << 23))].astype(np.uint32)
    subnormal = np.concatenate([subnormal, subnormal | np.uint32(1 << 31)])
    return np.unique(np.concatenate([grid.ravel(), subnormal]))


def fast_inputs(num_random: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(structured, random) sorted unique float32 bit patterns for mode=fast."""
    rng = np.random.default_rng(seed)
    random_bits = np.unique(
        rng.integers(0, FULL_SWEEP_SIZE, size=num_random, dtype=np.uint64).astype(np.uint32)
    )
    return structured_inputs(), random_bits


@dataclasses.dataclass
class ChunkResult:
    chunk_id: int
    num_values: int
    seconds: dict[str, float]
    mismatches: dict[str, int]
    deviations: dict[str, int]
    mismatch_examples: dict[str, list[list[int]]]  # name -> [[bits, actual, expected], ...]
    checked: dict[str, int]
    pair_counts: dict[str, list[int]]  # "a|b" -> counts per class
    pair_examples: dict[str, dict[str, list[int]]]  # "a|b" -> class name -> [bits, ...]


_WORKER: dict[str, Any] = {}


def _init_worker(llvm_threads: int, torch_threads: int) -> None:
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    import torch

    from llvm_e8m0.expected import build_expected
    from llvm_e8m0.implementations import build_registry

    torch.set_num_threads(torch_threads)
    _WORKER["converters"] = build_registry(llvm_threads=llvm_threads)
    _WORKER["expected"] = build_expected()
    # Warm up (library load, torchao import, torch lazy init) so chunk timings are steady state.
    warmup_bits = structured_inputs()[:4096]
    for converter in _WORKER["converters"].values():
        converter(warmup_bits)


def pairwise_disagreements(
    bits: np.ndarray, outputs: dict[str, np.ndarray], names: tuple[str, ...]
) -> tuple[dict[str, list[int]], dict[str, dict[str, list[int]]]]:
    """Per pair of converters: disagreement counts per input class, and the first disagreeing inputs.

    Exact, and cheap because every converter's output is piecewise constant over sorted inputs: the
    chunk is cut into segments at every position where the input class or any converter's output
    changes (one comparison pass per converter instead of one per pair), and each pair is then
    compared once per segment. Returns ``("a|b" -> counts per CLASS_NAMES index,
    "a|b" -> class name -> up to MAX_EXAMPLES input bit patterns, in input order)``.
    """
    classes = classify(bits)
    if bits.size == 0:
        return {f"{a}|{b}": [0] * len(CLASS_NAMES) for a, b in itertools.combinations(names, 2)}, {}
    boundary = classes[1:] != classes[:-1]
    for name in names:
        boundary |= outputs[name][1:] != outputs[name][:-1]
    starts = np.concatenate([[0], np.flatnonzero(boundary) + 1])  # [num_segments]
    lengths = np.diff(np.append(starts, bits.size))
    segment_class = classes[starts]
    segment_output = {name: outputs[name][starts] for name in names}
    pair_counts, pair_examples = {}, {}
    for a, b in itertools.combinations(names, 2):
        differs = segment_output[a] != segment_output[b]
        counts = np.bincount(segment_class[differs], weights=lengths[differs], minlength=len(CLASS_NAMES))
        pair_counts[f"{a}|{b}"] = [int(c) for c in counts]
        examples: dict[str, list[int]] = {}
        for cls in np.flatnonzero(counts):
            found: list[int] = []
            for segment in np.flatnonzero(differs & (segment_class == cls)):
                start = int(starts[segment])
                take = min(int(lengths[segment]), MAX_EXAMPLES - len(found))
                found += [int(x) for x in bits[start : start + take]]
                if len(found) == MAX_EXAMPLES:
                    break
            examples[CLASS_NAMES[cls]] = found
        if examples:
            pair_examples[f"{a}|{b}"] = examples
    return pair_counts, pair_examples


def process_chunk(
    chunk_id: int, bits: np.ndarray, names: tuple[str, ...], reference_samples: int, check_all_reference: bool
) -> ChunkResult:
    from llvm_e8m0.expected import SAMPLED_EXPECTATIONS, decompose

    converters, expectations = _WORKER["converters"], _WORKER["expected"]
    outputs, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        outputs[name] = converters[name](bits)
        seconds[name] = time.perf_counter() - start

    mismatches, deviations, mismatch_examples, checked = {}, {}, {}, {}
    if check_all_reference or bits.size <= reference_samples:
        sample = np.arange(bits.size)
    else:
        sample = np.sort(np.random.default_rng(chunk_id).choice(bits.size, reference_samples, replace=False))
    fields = decompose(bits)  # shared by every vectorized expectation
    for name in names:
        sampled = name in SAMPLED_EXPECTATIONS
        index = sample if sampled else slice(None)
        checked_bits, actual = bits[index], outputs[name][index]
        expectation = expectations[name](checked_bits, fields=None if sampled else fields)
        ok = expectation.matches(actual)
        bad = np.flatnonzero(~ok)
        mismatches[name] = int(bad.size)
        checked[name] = int(checked_bits.size)
        mismatch_examples[name] = [
            [int(checked_bits[i]), int(actual[i]), int(expectation.expected[i])] for i in bad[:MAX_EXAMPLES]
        ]
        if expectation.deviation_mask is not None:
            deviations[name] = int(np.count_nonzero(expectation.deviation_mask))

    pair_counts, pair_examples = pairwise_disagreements(bits, outputs, names)
    return ChunkResult(
        chunk_id,
        int(bits.size),
        seconds,
        mismatches,
        deviations,
        mismatch_examples,
        checked,
        pair_counts,
        pair_examples,
    )


def _full_chunk(args: tuple[int, int, tuple[str, ...], int]) -> ChunkResult:
    chunk_id, chunk_size, names, reference_samples = args
    start = chunk_id * chunk_size
    bits = np.arange(start, start + chunk_size, dtype=np.uint64).astype(np.uint32)
    return process_chunk(chunk_id, bits, names, reference_samples, check_all_reference=False)


def _fast_chunk(args: tuple[int, np.ndarray, tuple[str, ...], int, bool]) -> ChunkResult:
    chunk_id, bits, names, reference_samples, check_all_reference = args
    return process_chunk(chunk_id, bits, names, reference_samples, check_all_reference)


class Accumulator:
    """Sums ChunkResults; (de)serialised as the resumable state."""

    def __init__(self, config: dict[str, Any], names: tuple[str, ...]) -> None:
        self.config = config
        self.names = names
        self.done: set[int] = set()
        self.num_values = 0
        self.seconds = dict.fromkeys(names, 0.0)
        self.values_timed = dict.fromkeys(names, 0)
        self.mismatches = dict.fromkeys(names, 0)
        self.deviations = dict.fromkeys(names, 0)
        self.checked = dict.fromkeys(names, 0)
        self.mismatch_examples: dict[str, list[list[int]]] = {n: [] for n in names}
        self.pair_counts = {f"{a}|{b}": [0] * len(CLASS_NAMES) for a, b in itertools.combinations(names, 2)}
        self.pair_examples: dict[str, dict[str, list[int]]] = {}
        # One entry per invocation that added chunks (a resumed full sweep has several): wall time,
        # chunks, workers and the 1-minute load average before and after, so timings can be judged.
        self.invocations: list[dict[str, Any]] = []

    def add(self, result: ChunkResult) -> None:
        assert result.chunk_id not in self.done, f"chunk {result.chunk_id} counted twice"
        self.done.add(result.chunk_id)
        self.num_values += result.num_values
        for name in self.names:
            self.seconds[name] += result.seconds[name]
            self.values_timed[name] += result.num_values
            self.mismatches[name] += result.mismatches[name]
            self.deviations[name] += result.deviations.get(name, 0)
            self.checked[name] += result.checked[name]
            room = MAX_EXAMPLES - len(self.mismatch_examples[name])
            self.mismatch_examples[name].extend(result.mismatch_examples[name][: max(room, 0)])
        for pair, counts in result.pair_counts.items():
            self.pair_counts[pair] = [x + y for x, y in zip(self.pair_counts[pair], counts, strict=True)]
        # Keep the examples of the lowest bit patterns (chunks may finish out of order).
        for pair, by_class in result.pair_examples.items():
            kept = self.pair_examples.setdefault(pair, {})
            for cls, examples in by_class.items():
                kept[cls] = sorted(set(kept.get(cls, []) + examples))[:MAX_EXAMPLES]

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "done": sorted(self.done),
            "num_values": self.num_values,
            "seconds": self.seconds,
            "values_timed": self.values_timed,
            "mismatches": self.mismatches,
            "deviations": self.deviations,
            "checked": self.checked,
            "mismatch_examples": self.mismatch_examples,
            "pair_counts": self.pair_counts,
            "pair_examples": self.pair_examples,
            "invocations": self.invocations,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], names: tuple[str, ...]) -> Accumulator:
        acc = cls(data["config"], names)
        acc.done = set(data["done"])
        for key in (
            "num_values",
            "seconds",
            "values_timed",
            "mismatches",
            "deviations",
            "checked",
            "mismatch_examples",
            "pair_counts",
            "pair_examples",
        ):
            setattr(acc, key, data[key])
        acc.invocations = data.get("invocations", [])
        return acc


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _f32_repr(bits: int) -> str:
    value = np.array([bits], dtype=np.uint32).view(np.float32)[0]
    return f"{float(value):.9g}"


def _e8m0_repr(code: int) -> str:
    return "NaN" if code == 0xFF else f"2^{code - 127}"


def render_markdown(acc: Accumulator, versions: dict[str, str]) -> str:
    from llvm_e8m0.implementations import build_registry

    names = acc.names
    lines = [
        f"# llvm_e8m0 sweep results ({acc.config['mode']})",
        "",
        f"- inputs: {acc.num_values:,} float32 bit patterns ({len(acc.done)} chunks); "
        f"mode={acc.config['mode']}, config={json.dumps(acc.config, sort_keys=True)}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}",
        f"- wall time {sum(i['elapsed_s'] for i in acc.invocations):.1f} s on {os.cpu_count()} CPUs over "
        f"{len(acc.invocations)} invocation(s): "
        + "; ".join(
            f"{i['chunks']} chunks in {i['elapsed_s']:.1f} s on {i['num_workers']} workers, 1-min load "
            f"average {i['load_average_start']:.2f} before / {i['load_average_end']:.2f} after"
            for i in acc.invocations
        ),
        "",
        "## Documented behaviour check (a mismatch fails the run)",
        "",
        "| converter | inputs checked | mismatches | documented deviations from exact rounding "
        "| M values/s (one worker) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        rate = acc.values_timed[name] / acc.seconds[name] / 1e6 if acc.seconds[name] else float("nan")
        counts = f"{acc.checked[name]:,} | {acc.mismatches[name]:,} | {acc.deviations[name]:,}"
        lines.append(f"| {name} | {counts} | {rate:.1f} |")
    failing = [n for n in names if acc.mismatches[n]]
    for name in failing:
        for bits, actual, expected in acc.mismatch_examples[name]:
            given = f"gave 0x{actual:02x}, expected 0x{expected:02x}"
            lines.append(f"- MISMATCH {name}: 0x{bits:08x} ({_f32_repr(bits)}) {given}")
    lines += ["", "## Pairwise disagreements (all classes)", ""]
    short = {name: f"c{i}" for i, name in enumerate(names)}
    lines.append("Columns: " + ", ".join(f"{short[n]} = {n}" for n in names) + ".")
    lines.append("")
    lines.append("| | " + " | ".join(short[n] for n in names) + " |")
    lines.append("| --- |" + " ---: |" * len(names))
    for a in names:
        row = []
        for b in names:
            if a == b:
                row.append("-")
            else:
                pair = f"{a}|{b}" if f"{a}|{b}" in acc.pair_counts else f"{b}|{a}"
                row.append(f"{sum(acc.pair_counts[pair]):,}")
        lines.append(f"| {short[a]} {a} | " + " | ".join(row) + " |")
    lines += ["", "## Pairwise disagreements by input class (pairs that disagree somewhere)", ""]
    lines.append("| pair | " + " | ".join(CLASS_NAMES) + " |")
    lines.append("| --- |" + " ---: |" * len(CLASS_NAMES))
    for pair, counts in acc.pair_counts.items():
        if any(counts):
            lines.append(f"| {pair.replace('|', ' vs ')} | " + " | ".join(f"{c:,}" for c in counts) + " |")
    # First examples: per class, the lowest disagreeing inputs over all pairs, with every output.
    converters = build_registry(llvm_threads=1)
    lines += [
        "",
        "## First examples per input class (input bits -> every converter's e8m0 bits)",
        "",
        "From the first disagreeing inputs of every pair, the lowest input of each distinct agreement",
        f"pattern (which converters agree with which), at most {MAX_PATTERNS_PER_CLASS} per class.",
        "",
        "| class | input | value | " + " | ".join(short[n] for n in names) + " |",
        "| --- | --- | --- |" + " ---: |" * len(names),
    ]
    for cls in CLASS_NAMES:
        candidates = sorted({b for by_class in acc.pair_examples.values() for b in by_class.get(cls, [])})
        if not candidates:
            continue
        candidate_bits = np.array(candidates, dtype=np.uint32)
        outs = np.stack([converters[n](candidate_bits) for n in names])  # [converter, candidate]
        seen_patterns: set[tuple[int, ...]] = set()
        for i, bits in enumerate(candidates):
            column = outs[:, i]
            pattern = tuple(int(np.argmax(column == value)) for value in column)
            if pattern in seen_patterns or len(seen_patterns) == MAX_PATTERNS_PER_CLASS:
                continue
            seen_patterns.add(pattern)
            cells = " | ".join(f"0x{int(v):02x}" for v in column)
            lines.append(f"| {cls} | 0x{bits:08x} | {_f32_repr(bits)} | {cells} |")
    lines += ["", "e8m0 codes: 0x00 = 2^-127, 0x7f = 2^0, 0xfe = 2^127, 0xff = NaN.", ""]
    verdict = (
        "FAIL: " + ", ".join(failing) if failing else "PASS: every converter matched its documented behaviour"
    )
    lines += [f"**{verdict}**", ""]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    import ml_dtypes
    import torch
    import torchao

    from llvm_e8m0 import llvm_lib

    return {
        "LLVM": llvm_lib.llvm_version(),
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def main(
    mode: str = "fast",
    output_dir: str = "llvm_e8m0_results",
    overwrite: bool = False,
    num_random: int = 1_000_000,
    seed: int = 0,
    chunk_size: int = 2**22,
    num_workers: int = 2,
    state_file: str = "",
    max_chunks: int = 0,
    reference_samples: int = 500,
    implementations: str = "",
) -> None:
    """Differential float32 -> e8m0 sweep; writes results.md / results.json into output_dir.

    Args:
        mode: "fast" (structured specials + num_random random patterns) or "full" (all 2^32 patterns).
        output_dir: folder for results.md and results.json (created).
        overwrite: replace existing results in output_dir.
        num_random: mode=fast only: how many uniformly random float32 bit patterns to add.
        seed: mode=fast only: seed of the random patterns.
        chunk_size: inputs per chunk (mode=full: must divide 2^32, i.e. a power of two <= 2^32).
        num_workers: worker processes (1 = in this process); the LLVM threads split the cores between them.
        state_file: mode=full: resumable state (default: <output_dir>/state.json); re-run to resume.
        max_chunks: stop after this many new chunks (0 = no limit); for timing a partial sweep.
        reference_samples: per chunk, inputs checked against the slow pure-Python reference.
        implementations: comma-separated subset of converters (default: all).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from llvm_e8m0.implementations import IMPLEMENTATION_NAMES

    if mode not in ("fast", "full"):
        raise ValueError(f"mode={mode!r}; use mode=fast or mode=full")
    if isinstance(implementations, list | tuple):  # fire parses "a,b" on the command line as a tuple
        implementations = ",".join(str(name) for name in implementations)
    names = tuple(s.strip() for s in implementations.split(",") if s.strip()) or IMPLEMENTATION_NAMES
    unknown = [n for n in names if n not in IMPLEMENTATION_NAMES]
    if unknown or len(names) < 2:
        raise ValueError(
            f"implementations={implementations!r}: need >= 2 of {IMPLEMENTATION_NAMES}, unknown {unknown}"
        )
    if chunk_size < 1 or (mode == "full" and (chunk_size & (chunk_size - 1) or chunk_size > FULL_SWEEP_SIZE)):
        raise ValueError(f"chunk_size={chunk_size}: use a power of two <= 2^32 (e.g. 4194304)")
    if num_workers < 1 or num_random < 0 or max_chunks < 0 or reference_samples < 0:
        raise ValueError(
            f"num_workers={num_workers}, num_random={num_random}, max_chunks={max_chunks}, "
            f"reference_samples={reference_samples}: use num_workers >= 1 and non-negative counts"
        )
    out = Path(output_dir)
    results_md, results_json = out / "results.md", out / "results.json"
    state_path = Path(state_file) if state_file else out / "state.json"
    resuming = mode == "full" and state_path.is_file()
    if results_md.exists() and not overwrite and not resuming:
        raise ValueError(f"{results_md} exists; pass overwrite=True or choose another output_dir")
    out.mkdir(parents=True, exist_ok=True)

    config = {
        "mode": mode,
        "chunk_size": chunk_size,
        "names": list(names),
        "reference_samples": reference_samples,
    }
    if mode == "fast":
        config |= {"num_random": num_random, "seed": seed}
    acc = Accumulator(config, names)
    if resuming:
        saved = json.loads(state_path.read_text())
        if saved.get("config") != config:
            raise ValueError(
                f"{state_path} was written with config {saved.get('config')}, not {config}; "
                "re-run with the same arguments, or delete the state file to start over"
            )
        acc = Accumulator.from_json(saved, names)

    cores = len(os.sched_getaffinity(0))
    llvm_threads = max(1, cores // num_workers)
    if mode == "fast":
        structured, random_bits = fast_inputs(num_random, seed)
        tasks: list[Any] = [(0, structured, names, reference_samples, True)]
        for i, start in enumerate(range(0, random_bits.size, chunk_size)):
            tasks.append((i + 1, random_bits[start : start + chunk_size], names, reference_samples, False))
        worker_fn: Any = _fast_chunk
    else:
        num_chunks = FULL_SWEEP_SIZE // chunk_size
        tasks = [(i, chunk_size, names, reference_samples) for i in range(num_chunks) if i not in acc.done]
        worker_fn = _full_chunk
    if max_chunks:
        tasks = tasks[:max_chunks]

    load_average_start = os.getloadavg()[0]
    start_s, last_save = time.perf_counter(), time.perf_counter()
    new_chunks = 0

    def this_invocation() -> dict[str, Any]:
        return {
            "finished_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(time.perf_counter() - start_s, 1),
            "chunks": new_chunks,
            "num_workers": num_workers,
            "load_average_start": load_average_start,
            "load_average_end": os.getloadavg()[0],
        }

    context = multiprocessing.get_context("spawn")
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} chunks"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(progress)
        if num_workers == 1:  # in this process: no spawn start-up cost
            _init_worker(llvm_threads, llvm_threads)
            results: Any = map(worker_fn, tasks)
        else:
            pool = stack.enter_context(
                context.Pool(num_workers, initializer=_init_worker, initargs=(llvm_threads, llvm_threads))
            )
            results = pool.imap_unordered(worker_fn, tasks)
        bar = progress.add_task(f"e8m0 sweep ({mode})", total=len(tasks))
        for result in results:
            acc.add(result)
            new_chunks += 1
            progress.advance(bar)
            if mode == "full" and time.perf_counter() - last_save > 10:
                # An interrupted run keeps its partial invocation record (the chunks it finished).
                state = acc.to_json() | {"invocations": [*acc.invocations, this_invocation()]}
                write_atomic(state_path, json.dumps(state))
                last_save = time.perf_counter()
    acc.invocations.append(this_invocation())
    if mode == "full":
        write_atomic(state_path, json.dumps(acc.to_json()))

    _init_worker(1, 1)  # the report re-runs converters on the handful of example inputs
    info = versions()
    markdown = render_markdown(acc, info)
    payload = acc.to_json() | {
        "versions": info,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "complete": mode == "fast" or len(acc.done) == FULL_SWEEP_SIZE // chunk_size,
    }
    write_atomic(results_json, json.dumps(payload, indent=1))
    write_atomic(results_md, markdown)
    print(markdown)
    print(f"wrote {results_md} and {results_json}")
    failing = [n for n in names if acc.mismatches[n]]
    if failing:
        raise SystemExit(f"documented-behaviour mismatches in: {', '.join(failing)} (see {results_md})")


if __name__ == "__main__":
    fire.Fire(main)

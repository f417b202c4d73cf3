"""Differential sweep of every float32 -> e8m0 converter: pairwise disagreements by input class.

Two input sets:

* ``mode=fast`` (default, ~10 s on 2 idle cores): structured special values (every exponent
  field x both signs x mantissas at 1, 1.5 (the tie), 2 - ulp, ... ; every subnormal power of two,
  its neighbours and ties; +-0, +-inf, quiet and signalling NaNs) plus ``num_random`` uniformly
  random bit patterns.
* ``mode=full``: all 2^32 bit patterns in ``chunk_size`` chunks on ``num_workers`` processes,
  resumable: finished chunks are recorded in ``state_file`` (at the start, every 10 s and at the
  end) and skipped when re-run.

Every converter is also checked against its documented behaviour (``expected.py``) on every input
(the pure-Python reference on a sample of each chunk and on every structured value); any mismatch
makes the run exit non-zero after the results are written. Output: ``results.md`` (the tables,
also printed) and ``results.json`` in ``output_dir``, published together when the run ends
(``pytorch_scripts_common.outputs``: refused over an input or over a folder this tool did not write).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import json
import math
import multiprocessing
import os
import platform
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pytorch_scripts_common.cli import UsageError, parse_list, run, signals_deferred
from pytorch_scripts_common.outputs import check_output, staged_dir, staged_file

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
TOOL = "llvm_e8m0.sweep"  # the marker of its output folders (pytorch_scripts_common.outputs)
STATE_NAME = "state.json"  # the default state file, inside output_dir
MAX_NUM_RANDOM = 2**27  # 0.5 GiB of uint32 inputs; beyond that, mode=full covers every pattern
MIN_FULL_CHUNK_SIZE = 2**12  # at most 2^20 chunks to schedule and record
STATE_SAVE_INTERVAL_S = 10.0


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


def sorted_unique(bits: np.ndarray) -> np.ndarray:
    """``np.unique(bits)`` by sorting: numpy 2.3's np.unique hashes integer arrays, and on tens of
    millions of random uint32 that took about a minute on 2 CPUs where a sort takes under a second."""
    ordered = np.sort(bits)
    keep = np.ones(ordered.size, dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def fast_inputs(num_random: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(structured, random) sorted unique float32 bit patterns for mode=fast."""
    rng = np.random.default_rng(seed)
    random_bits = sorted_unique(
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


def _init_pool_worker(llvm_threads: int, torch_threads: int, names: tuple[str, ...]) -> None:
    # Ctrl-C reaches every process of the terminal's job: the main process handles it and
    # terminates the pool, so a worker ignores it (instead of printing a KeyboardInterrupt traceback).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _init_worker(llvm_threads, torch_threads, names)
    except Exception as error:  # noqa: BLE001 - handed to the main process by the first task
        # A pool whose initializer raises replaces the dead worker and runs the initializer again,
        # forever: the main process would wait for results that never come.
        _WORKER["init_error"] = error


def _init_worker(llvm_threads: int, torch_threads: int, names: tuple[str, ...]) -> None:
    """Set up this process's converters; only those in ``names`` are warmed up (and so loaded)."""
    import torch

    from llvm_e8m0.expected import build_expected
    from llvm_e8m0.implementations import build_registry

    torch.set_num_threads(torch_threads)
    _WORKER["converters"] = build_registry(llvm_threads=llvm_threads)
    _WORKER["expected"] = build_expected()
    # Warm up (library load, torchao import, torch lazy init) so chunk timings are steady state.
    warmup_bits = structured_inputs()[:4096]
    for name in names:
        _WORKER["converters"][name](warmup_bits)


def uses_llvm(names: tuple[str, ...]) -> bool:
    return any(name.startswith("llvm_") for name in names)


def require_llvm(names: tuple[str, ...]) -> None:
    """Build (or find cached) the APFloat library before any work when a converter needs it, so that
    a missing, too old or misconfigured LLVM is one line up front, not a failure in every worker."""
    if uses_llvm(names):
        from llvm_e8m0.build import build_library

        build_library()


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


def _fast_chunk(args: tuple[int, str, int, int, tuple[str, ...], int, bool]) -> ChunkResult:
    """One mode=fast chunk: the structured inputs (``source`` empty), or ``source[start:stop]``, a
    slice of the random inputs saved by ``make_tasks``."""
    chunk_id, source, start, stop, names, reference_samples, check_all_reference = args
    bits = np.array(np.load(source, mmap_mode="r")[start:stop]) if source else structured_inputs()
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


def _f32_repr(bits: int) -> str:
    value = np.array([bits], dtype=np.uint32).view(np.float32)[0]
    return f"{float(value):.9g}"


def _e8m0_repr(code: int) -> str:
    return "NaN" if code == 0xFF else f"2^{code - 127}"


def render_markdown(acc: Accumulator, versions: dict[str, str]) -> str:
    """results.md: conditions, the documented-behaviour check, pairwise disagreements, first examples."""
    short = {name: f"c{i}" for i, name in enumerate(acc.names)}
    failing = [n for n in acc.names if acc.mismatches[n]]
    verdict = (
        "FAIL: " + ", ".join(failing) if failing else "PASS: every converter matched its documented behaviour"
    )
    missing = missing_chunks(acc)
    if missing:
        verdict += f" on the {len(acc.done):,} chunks swept so far; {missing:,} chunks not swept yet"
    lines = [
        *_conditions_lines(acc, versions),
        *_behaviour_lines(acc),
        *_pairwise_lines(acc, short),
        *_first_examples_lines(acc, short),
        "e8m0 codes: 0x00 = 2^-127, 0x7f = 2^0, 0xfe = 2^127, 0xff = NaN.",
        "",
        f"**{verdict}**",
        "",
    ]
    return "\n".join(lines)


def missing_chunks(acc: Accumulator) -> int:
    """Chunks of a full sweep not swept yet (``--max_chunks``, an interrupted run); 0 for mode=fast."""
    if acc.config["mode"] != "full":
        return 0
    return FULL_SWEEP_SIZE // acc.config["chunk_size"] - len(acc.done)


def _conditions_lines(acc: Accumulator, versions: dict[str, str]) -> list[str]:
    missing = missing_chunks(acc)
    partial = (
        [
            f"**PARTIAL: {len(acc.done):,} of {len(acc.done) + missing:,} chunks swept "
            f"({acc.num_values:,} of {FULL_SWEEP_SIZE:,} inputs): run the same command again to continue.**",
            "",
        ]
        if missing
        else []
    )
    invocations = "; ".join(
        f"{i['chunks']} chunks in {i['elapsed_s']:.1f} s on {i['num_workers']} workers, 1-min load "
        f"average {i['load_average_start']:.2f} before / {i['load_average_end']:.2f} after"
        for i in acc.invocations
    )
    return [
        f"# llvm_e8m0 sweep results ({acc.config['mode']}{', partial' if missing else ''})",
        "",
        *partial,
        f"- inputs: {acc.num_values:,} float32 bit patterns ({len(acc.done)} chunks); "
        f"mode={acc.config['mode']}, config={json.dumps(acc.config, sort_keys=True)}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}",
        f"- wall time {sum(i['elapsed_s'] for i in acc.invocations):.1f} s on {os.cpu_count()} CPUs over "
        f"{len(acc.invocations)} invocation(s): {invocations}",
        "",
    ]


def _behaviour_lines(acc: Accumulator) -> list[str]:
    lines = [
        "## Documented behaviour check (a mismatch fails the run)",
        "",
        "| converter | inputs checked | mismatches | documented deviations from exact rounding "
        "| M values/s (one worker) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in acc.names:
        rate = acc.values_timed[name] / acc.seconds[name] / 1e6 if acc.seconds[name] else float("nan")
        counts = f"{acc.checked[name]:,} | {acc.mismatches[name]:,} | {acc.deviations[name]:,}"
        lines.append(f"| {name} | {counts} | {rate:.1f} |")
    for name in (n for n in acc.names if acc.mismatches[n]):
        for bits, actual, expected in acc.mismatch_examples[name]:
            given = f"gave 0x{actual:02x}, expected 0x{expected:02x}"
            lines.append(f"- MISMATCH {name}: 0x{bits:08x} ({_f32_repr(bits)}) {given}")
    return [*lines, ""]


def _pairwise_lines(acc: Accumulator, short: dict[str, str]) -> list[str]:
    names = acc.names
    lines = ["## Pairwise disagreements (all classes)", ""]
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
    return [*lines, ""]


def _first_examples_lines(acc: Accumulator, short: dict[str, str]) -> list[str]:
    """Per class, the lowest disagreeing inputs over all pairs, with every converter's output."""
    from llvm_e8m0.implementations import build_registry

    names = acc.names
    converters = build_registry(llvm_threads=1)
    lines = [
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
    return [*lines, ""]


def versions(names: tuple[str, ...]) -> dict[str, str]:
    import ml_dtypes
    import torch
    import torchao

    from llvm_e8m0 import llvm_lib

    return {
        "LLVM": llvm_lib.llvm_version() if uses_llvm(names) else "not used",
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated arguments of one sweep."""

    mode: str
    names: tuple[str, ...]
    chunk_size: int
    num_random: int
    seed: int
    num_workers: int
    max_chunks: int
    reference_samples: int

    @property
    def config(self) -> dict[str, Any]:
        """What the results depend on: recorded in the state and results, compared when resuming."""
        config = {
            "mode": self.mode,
            "chunk_size": self.chunk_size,
            "names": list(self.names),
            "reference_samples": self.reference_samples,
        }
        if self.mode == "fast":
            config |= {"num_random": self.num_random, "seed": self.seed}
        return config

    @property
    def num_full_chunks(self) -> int:
        return FULL_SWEEP_SIZE // self.chunk_size


@dataclasses.dataclass(frozen=True)
class Paths:
    output_dir: Path  # resolved; published as a whole when the run ends
    state: Path | None  # mode=full: the resumable state (default: inside output_dir)
    resuming: bool


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
        output_dir: folder for results.md and results.json (created; replaced only with overwrite).
        overwrite: replace an earlier output_dir of this tool.
        num_random: mode=fast only: how many uniformly random float32 bit patterns to add (<= 2^27).
        seed: mode=fast only: seed of the random patterns.
        chunk_size: inputs per chunk (mode=full: a power of two from 2^12 to 2^32).
        num_workers: worker processes (1 = in this process); the LLVM threads split the cores between them.
        state_file: mode=full: resumable state (default: <output_dir>/state.json); re-run to resume.
        max_chunks: stop after this many new chunks (0 = no limit); for timing a partial sweep.
        reference_samples: per chunk, inputs checked against the slow pure-Python reference.
        implementations: comma-separated subset of converters (default: all).
    """
    settings = check_arguments(
        mode, num_random, seed, chunk_size, num_workers, max_chunks, reference_samples, implementations
    )
    paths = check_paths(settings, output_dir, state_file, overwrite)
    require_llvm(settings.names)
    acc = (
        load_state(paths.state, settings) if paths.resuming else Accumulator(settings.config, settings.names)
    )
    save_state = prepare_state(paths, acc)
    with tempfile.TemporaryDirectory(prefix="e8m0_sweep_inputs-") as inputs_dir:
        run_chunks(acc, make_tasks(settings, acc, Path(inputs_dir)), settings, save_state)
    results_md = publish_results(acc, settings, paths)
    failing = [name for name in settings.names if acc.mismatches[name]]
    if failing:
        raise SystemExit(f"documented-behaviour mismatches in: {', '.join(failing)} (see {results_md})")


def check_arguments(
    mode: str,
    num_random: int,
    seed: int,
    chunk_size: int,
    num_workers: int,
    max_chunks: int,
    reference_samples: int,
    implementations: Any,
) -> Settings:
    """``Settings`` from the command-line values; ``UsageError`` naming the first mistake."""
    from llvm_e8m0.implementations import IMPLEMENTATION_NAMES

    if mode not in ("fast", "full"):
        raise UsageError(f"--mode is {mode!r}: pass --mode fast or --mode full")
    names = tuple(parse_list(implementations, str, name="implementations")) or IMPLEMENTATION_NAMES
    unknown = [n for n in names if n not in IMPLEMENTATION_NAMES]
    if unknown or len(set(names)) < 2 or len(set(names)) != len(names):
        raise UsageError(
            f"--implementations {','.join(names)}: pass two or more different names of "
            f"{', '.join(IMPLEMENTATION_NAMES)} (unknown: {', '.join(unknown) or 'none'})"
        )
    if chunk_size < 1:
        raise UsageError(f"--chunk_size is {chunk_size}: pass a positive integer")
    if mode == "full" and (
        chunk_size & (chunk_size - 1) or not MIN_FULL_CHUNK_SIZE <= chunk_size <= FULL_SWEEP_SIZE
    ):
        raise UsageError(
            f"--chunk_size is {chunk_size}: mode=full needs a power of two from 2^12 to 2^32 (e.g. 4194304)"
        )
    if not 0 <= num_random <= MAX_NUM_RANDOM:
        raise UsageError(
            f"--num_random is {num_random}: pass 0 to {MAX_NUM_RANDOM} (2^27), or use --mode full"
        )
    max_workers = max(2, len(os.sched_getaffinity(0)))
    if not 1 <= num_workers <= max_workers:
        raise UsageError(
            f"--num_workers is {num_workers}: pass 1 to {max_workers} (the CPUs this process may use)"
        )
    for flag, value in (("seed", seed), ("max_chunks", max_chunks), ("reference_samples", reference_samples)):
        if value < 0:
            raise UsageError(f"--{flag} is {value}: pass a non-negative integer")
    return Settings(mode, names, chunk_size, num_random, seed, num_workers, max_chunks, reference_samples)


def check_paths(settings: Settings, output_dir: str, state_file: str, overwrite: bool) -> Paths:
    """Where results and state go, checked before any work (``pytorch_scripts_common.outputs``).

    The output folder is replaced as a whole when the results are published, so a state file inside
    it must be the default ``<output_dir>/state.json`` (it is carried over); a state file elsewhere
    must not contain the output folder. Resuming may replace the output folder of the run it resumes.
    """
    if settings.mode == "fast":
        if state_file:
            raise UsageError(f"--state_file {state_file}: only mode=full keeps a state; drop --state_file")
        out = check_output(output_dir, overwrite=overwrite, tool=TOOL, flag="output_dir")
        return Paths(out, None, resuming=False)
    out = Path(output_dir).expanduser().resolve()
    state = Path(state_file).expanduser().resolve() if state_file else out / STATE_NAME
    state_inside = out in state.parents or state == out
    if state_inside and state != out / STATE_NAME:
        raise UsageError(
            f"--state_file {state_file} is inside --output_dir {output_dir}, which is replaced when the "
            f"results are published: leave --state_file empty (then {out / STATE_NAME}) or put it elsewhere"
        )
    if not state_inside:
        check_output(state, overwrite=True, tool=TOOL, kind="file", flag="state_file")
    resuming = state.is_file()
    out = check_output(
        output_dir,
        inputs=[] if state_inside else [state],
        overwrite=overwrite or resuming,
        tool=TOOL,
        flag="output_dir",
    )
    return Paths(out, state, resuming)


def load_state(path: Path, settings: Settings) -> Accumulator:
    """The accumulated counts of an earlier run with the same config; ``UsageError`` if unusable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise UsageError(
            f"--state_file {path} is not a sweep state ({error}): delete it to start over"
        ) from None
    if isinstance(data, dict) and "config" in data and data["config"] != settings.config:
        raise UsageError(
            f"{path} was written with config {data['config']}, not {settings.config}: re-run with the "
            "same arguments, or delete the state file to start over"
        )
    problem = state_problem(data, settings)
    if problem:
        raise UsageError(f"--state_file {path} is corrupted ({problem}): delete it to start over")
    return Accumulator.from_json(data, settings.names)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    )


def _per_name_problem(
    data: dict[str, Any], key: str, names: tuple[str, ...], check: Callable[[Any], bool]
) -> str:
    values = data[key]
    if not isinstance(values, dict) or set(values) != set(names):
        return f"{key} does not hold one value per converter"
    bad = [name for name in names if not check(values[name])]
    return f"{key}[{bad[0]!r}] is {values[bad[0]]!r}" if bad else ""


def _examples_problem(data: dict[str, Any], names: tuple[str, ...]) -> str:
    pairs = {f"{a}|{b}" for a, b in itertools.combinations(names, 2)}
    examples = data["mismatch_examples"]
    if not isinstance(examples, dict) or set(examples) != set(names):
        return "mismatch_examples does not hold one list per converter"
    for name, rows in examples.items():
        if not isinstance(rows, list) or not all(
            isinstance(row, list) and len(row) == 3 and all(_is_count(x) and x < 2**32 for x in row)
            for row in rows
        ):
            return f"mismatch_examples[{name!r}] is not a list of [input, output, expected] bit patterns"
    counts = data["pair_counts"]
    if not isinstance(counts, dict) or set(counts) != pairs:
        return "pair_counts does not hold one row per pair of converters"
    for pair, row in counts.items():
        if not isinstance(row, list) or len(row) != len(CLASS_NAMES) or not all(_is_count(x) for x in row):
            return f"pair_counts[{pair!r}] is not {len(CLASS_NAMES)} counts"
    by_pair = data["pair_examples"]
    if not isinstance(by_pair, dict) or not set(by_pair) <= pairs:
        return "pair_examples names unknown pairs"
    for pair, by_class in by_pair.items():
        if not isinstance(by_class, dict) or not set(by_class) <= set(CLASS_NAMES):
            return f"pair_examples[{pair!r}] names unknown input classes"
        if not all(
            isinstance(bits, list) and all(_is_count(x) and x < 2**32 for x in bits)
            for bits in by_class.values()
        ):
            return f"pair_examples[{pair!r}] holds something other than float32 bit patterns"
    return ""


def state_problem(data: Any, settings: Settings) -> str:
    """What is wrong with a state read from disk (empty string: nothing), checked before it is used."""
    keys = ("config", "done", "num_values", "seconds", "values_timed", "mismatches", "deviations", "checked")
    keys += ("mismatch_examples", "pair_counts", "pair_examples")
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    missing = [key for key in keys if key not in data]
    if missing:
        return f"no {', '.join(missing)}"
    done = data["done"]
    if not isinstance(done, list) or not all(_is_count(i) and i < settings.num_full_chunks for i in done):
        return f"done is not a list of chunk numbers below {settings.num_full_chunks}"
    if len(set(done)) != len(done):
        return "done lists a chunk twice"
    if data["num_values"] != len(done) * settings.chunk_size or isinstance(data["num_values"], bool):
        return f"num_values {data['num_values']!r} is not {len(done)} chunks of {settings.chunk_size}"
    for key, check in (
        ("seconds", _is_seconds),
        ("values_timed", _is_count),
        ("mismatches", _is_count),
        ("deviations", _is_count),
        ("checked", _is_count),
    ):
        problem = _per_name_problem(data, key, settings.names, check)
        if problem:
            return problem
    problem = _examples_problem(data, settings.names)
    if problem:
        return problem
    invocations = data.get("invocations", [])
    fields = ("elapsed_s", "chunks", "num_workers", "load_average_start", "load_average_end")
    if not isinstance(invocations, list) or not all(
        isinstance(i, dict) and all(_is_seconds(i.get(field)) for field in fields) for i in invocations
    ):
        return "invocations is not a list of timing records"
    return ""


def prepare_state(paths: Paths, acc: Accumulator) -> Callable[[dict[str, Any] | None], None]:
    """mode=full: make sure the state has a home and is saved before the first chunk (an interrupted
    run always resumes); return the function that saves it (``None`` for mode=fast)."""
    if paths.state is None:
        return lambda invocation: None
    if paths.state.parent == paths.output_dir and not paths.output_dir.exists():
        with staged_dir(paths.output_dir, tool=TOOL):
            pass  # an empty output folder with this tool's marker, for the state to live in

    def save(invocation: dict[str, Any] | None) -> None:
        state = acc.to_json()
        if invocation is not None:  # an interrupted run keeps the record of the chunks it finished
            state["invocations"] = [*acc.invocations, invocation]
        with staged_file(paths.state) as staging:
            staging.write_text(json.dumps(state), encoding="utf-8")

    save(None)
    return save


def make_tasks(
    settings: Settings, acc: Accumulator, inputs_dir: Path
) -> list[tuple[Callable[[Any], ChunkResult], Any]]:
    """(worker function, arguments) per chunk still to do, at most ``max_chunks``.

    A task is a few hundred bytes: mode=fast's random inputs go to ``inputs_dir/random_bits.npy``
    and each task names its slice. (A task holding megabytes of inputs can leave the pool's task
    thread blocked in a half-written pipe message when the pool is terminated, e.g. on Ctrl-C, and
    ``Pool.terminate()`` then waits for that thread forever.)"""
    names, samples = settings.names, settings.reference_samples
    if settings.mode == "fast":
        _, random_bits = fast_inputs(settings.num_random, settings.seed)
        source = str(inputs_dir / "random_bits.npy")
        np.save(source, random_bits)
        tasks: list[tuple[Callable[[Any], ChunkResult], Any]] = [
            (_fast_chunk, (0, "", 0, 0, names, samples, True))
        ]
        for i, start in enumerate(range(0, random_bits.size, settings.chunk_size)):
            tasks.append(
                (_fast_chunk, (i + 1, source, start, start + settings.chunk_size, names, samples, False))
            )
    else:
        tasks = [
            (_full_chunk, (i, settings.chunk_size, names, samples))
            for i in range(settings.num_full_chunks)
            if i not in acc.done
        ]
    return tasks[: settings.max_chunks] if settings.max_chunks else tasks


def _call(task: tuple[Callable[[Any], ChunkResult], Any]) -> ChunkResult:
    if "init_error" in _WORKER:
        raise _WORKER["init_error"]
    function, arguments = task
    return function(arguments)


def run_chunks(
    acc: Accumulator,
    tasks: list[tuple[Callable[[Any], ChunkResult], Any]],
    settings: Settings,
    save_state: Callable[[dict[str, Any] | None], None],
) -> None:
    """Run ``tasks`` on ``num_workers`` processes into ``acc``, with a progress bar; saves the state
    every ``STATE_SAVE_INTERVAL_S`` and records this invocation (time, chunks, load average)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    llvm_threads = max(1, len(os.sched_getaffinity(0)) // settings.num_workers)
    invocation = Invocation(settings.num_workers)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} chunks"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    last_save = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(progress)
        if settings.num_workers == 1:  # in this process: no spawn start-up cost
            _init_worker(llvm_threads, llvm_threads, settings.names)
            results: Iterable[ChunkResult] = map(_call, tasks)
        else:
            spawn = multiprocessing.get_context("spawn")
            with signals_deferred():  # a pool cut off while starting would never be terminated
                pool = stack.enter_context(
                    spawn.Pool(
                        settings.num_workers, _init_pool_worker, (llvm_threads, llvm_threads, settings.names)
                    )
                )
            results = pool.imap_unordered(_call, tasks)
        bar = progress.add_task(f"e8m0 sweep ({settings.mode})", total=len(tasks))
        for result in results:
            acc.add(result)
            invocation.chunks += 1
            progress.advance(bar)
            if time.perf_counter() - last_save > STATE_SAVE_INTERVAL_S:
                save_state(invocation.record())
                last_save = time.perf_counter()
    acc.invocations.append(invocation.record())
    save_state(None)


class Invocation:
    """Wall time, chunks, workers and the 1-minute load average before and after, of one invocation
    (a resumed full sweep has several), so that the timings in the results can be judged."""

    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers
        self.chunks = 0
        self.start_s = time.perf_counter()
        self.load_average_start = os.getloadavg()[0]

    def record(self) -> dict[str, Any]:
        return {
            "finished_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(time.perf_counter() - self.start_s, 1),
            "chunks": self.chunks,
            "num_workers": self.num_workers,
            "load_average_start": self.load_average_start,
            "load_average_end": os.getloadavg()[0],
        }


def publish_results(acc: Accumulator, settings: Settings, paths: Paths) -> Path:
    """Write results.md / results.json (and the default state) into a new output folder, swapped in
    whole; print the markdown. Returns the published results.md."""
    _init_worker(1, 1, settings.names)  # the report re-runs converters on the handful of example inputs
    info = versions(settings.names)
    markdown = render_markdown(acc, info)
    payload = acc.to_json() | {
        "versions": info,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "complete": missing_chunks(acc) == 0,
    }
    with staged_dir(paths.output_dir, tool=TOOL) as staging:
        (staging / "results.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        (staging / "results.md").write_text(markdown, encoding="utf-8")
        if paths.state is not None and paths.state.parent == paths.output_dir:
            (staging / STATE_NAME).write_text(json.dumps(acc.to_json()), encoding="utf-8")
    print(markdown)
    results_md = paths.output_dir / "results.md"
    print(f"wrote {results_md} and {paths.output_dir / 'results.json'}")
    return results_md


if __name__ == "__main__":
    run(main)

"""Make a large synthetic Chrome trace by repeating a real small trace's steps, for benchmarks.

Copy ``k`` of the source's non-metadata events is shifted by ``k`` x (the source's time span + 1 ms) in
``ts`` and by ``k`` x (largest id + 1) in ``External id`` / ``correlation`` / flow ``id``, so the result
looks like many profiled steps of the same compiled program: every kernel event in it can be matched
against the source's output-code log. Metadata (``ph: "M"``) events and the other top-level keys are
written once. Written incrementally (one copy at a time); the file appears only when complete.

    python -m perf_traces.make_synthetic_trace --source_trace perf_traces/fixtures/cpu_train/trace.json \
        --output_file /tmp/big_trace.json --target_mb 1024
"""

from __future__ import annotations

import json
import os
import re

from pytorch_scripts_common.cli import UsageError, run
from pytorch_scripts_common.outputs import check_output, staged_file

_ID_ARG_KEYS = ("External id", "correlation")
_TS_PLACEHOLDER = "\x00TS\x00"
_ID_PLACEHOLDER = "\x00ID{}\x00"
_PLACEHOLDER_RE = re.compile(r'"\\u0000(TS|ID\d+)\\u0000"')


def _template(event: dict) -> list:
    """Split the event's JSON around its ts and ids: [text, ("ts", value), text, ("id", value), ...]."""
    event = json.loads(json.dumps(event))
    values: list[tuple[str, float | int]] = []
    if isinstance(event.get("ts"), int | float):
        values.append(("ts", event["ts"]))
        event["ts"] = _TS_PLACEHOLDER
    if event.get("ph") in ("s", "f", "t") and isinstance(event.get("id"), int):
        values.append(("id", event["id"]))
        event["id"] = _ID_PLACEHOLDER.format(len(values) - 1)
    args = event.get("args")
    if isinstance(args, dict):
        for key in _ID_ARG_KEYS:
            if isinstance(args.get(key), int) and args[key] >= 0:
                values.append(("id", args[key]))
                args[key] = _ID_PLACEHOLDER.format(len(values) - 1)
    # json.dumps writes the placeholders as "\u0000TS\u0000" / "\u0000ID<n>\u0000"; split the text there
    pieces = _PLACEHOLDER_RE.split(json.dumps(event))
    parts: list = []
    for position, piece in enumerate(pieces):
        if position % 2 == 0:
            parts.append(piece)
        elif piece == "TS":
            parts.append(("ts", values[0][1]))
        else:
            parts.append(values[int(piece[2:])])
    return parts


def make_synthetic_trace(source_trace: str, output_file: str, target_bytes: int) -> tuple[int, int]:
    """Write the synthetic trace; return (number of copies, number of events written)."""
    with open(source_trace, encoding="utf-8") as source_file:
        source = json.load(source_file)
    if not isinstance(source, dict) or not isinstance(source.get("traceEvents"), list):
        raise ValueError(f"source_trace={source_trace!r} is not a Chrome trace with a 'traceEvents' list")
    events = [event for event in source["traceEvents"] if isinstance(event, dict)]
    metadata = [event for event in events if event.get("ph") == "M"]
    repeated = [event for event in events if event.get("ph") != "M"]
    if not repeated:
        raise ValueError(f"source_trace={source_trace!r} has no non-metadata events to repeat")
    timestamps = [event["ts"] for event in repeated if isinstance(event.get("ts"), int | float)]
    ends = [
        event["ts"] + event.get("dur", 0) for event in repeated if isinstance(event.get("ts"), int | float)
    ]
    period_us = (max(ends) - min(timestamps)) + 1000.0
    ids = [0]
    for event in repeated:
        if event.get("ph") in ("s", "f", "t") and isinstance(event.get("id"), int):
            ids.append(event["id"])
        for key in _ID_ARG_KEYS:
            value = event.get("args", {}).get(key) if isinstance(event.get("args"), dict) else None
            if isinstance(value, int):
                ids.append(value)
    id_period = max(ids) + 1
    templates = [_template(event) for event in repeated]
    others = {key: value for key, value in source.items() if key != "traceEvents"}

    num_events = 0
    copies = 0
    with staged_file(output_file) as staging, open(staging, "w", encoding="utf-8") as out:
        out.write("{\n")
        for key, value in others.items():
            out.write(f"  {json.dumps(key)}: {json.dumps(value)},\n")
        out.write('  "traceEvents": [\n')
        separator = ""
        for event in metadata:
            out.write(separator + json.dumps(event))
            separator = ",\n"
            num_events += 1
        while out.tell() < target_bytes or copies == 0:
            ts_offset = copies * period_us
            id_offset = copies * id_period
            pieces = []
            for parts in templates:
                text = [separator]
                for part in parts:
                    if isinstance(part, str):
                        text.append(part)
                    elif part[0] == "ts":
                        text.append(f"{part[1] + ts_offset:.3f}")
                    else:
                        text.append(str(part[1] + id_offset))
                pieces.append("".join(text))
                separator = ",\n"
            out.write("".join(pieces))
            num_events += len(templates)
            copies += 1
        out.write("\n  ]\n}\n")
    return copies, num_events


def main(source_trace: str, output_file: str, target_mb: float = 64.0, overwrite: bool = False) -> None:
    """Write a synthetic trace of about target_mb MB by repeating source_trace's events.

    Args:
        source_trace: a real (small) Chrome trace, e.g. perf_traces/fixtures/cpu_train/trace.json.
        output_file: where to write the synthetic trace (appears only when complete).
        target_mb: approximate size in MB (10**6 bytes); at least one copy is written.
        overwrite: replace an earlier output_file.
    """
    if not os.path.isfile(source_trace):
        raise UsageError(f"--source_trace {source_trace} is not a file: pass an existing trace")
    if target_mb <= 0:
        raise UsageError(f"--target_mb is {target_mb}: pass a size > 0")
    check_output(
        output_file,
        inputs=[source_trace],
        overwrite=overwrite,
        tool="make_synthetic_trace",
        kind="file",
        flag="output_file",
    )
    copies, num_events = make_synthetic_trace(source_trace, output_file, int(target_mb * 1e6))
    size_mb = os.path.getsize(output_file) / 1e6
    print(f"wrote {output_file}: {size_mb:.1f} MB, {num_events} events ({copies} copies of {source_trace})")


if __name__ == "__main__":
    run(main)

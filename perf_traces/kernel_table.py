"""Step 6 of the enrichment: the kernel table, and what each matched event carries.

Every matched kernel (and extern call) gets a short id (``k0``, ``k1`` … in the order the trace first
shows them) and one instant event (``ph: "i"``, category ``inductor_kernel_table``) on a track of its
own ("Inductor kernels"), placed at its first use, whose args hold everything the matched events
share: the kernel's source, graph (AOT id, kind, compile id, output-code file), nodes, ATen ops,
log line and its ``call()`` lines. Each matched event carries only the id, its graph kind, its
source nodes and a short op summary (``event_args``), so the source is stored once per kernel.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from perf_traces.log_index import KERNEL_TABLE_CATEGORY, KERNEL_TABLE_EVENT_PREFIX, LogIndex
from perf_traces.matching import KernelMatch, Matcher

__all__ = ["KernelTable", "event_args"]

# pid above any Linux pid (pid_max <= 2**22), so it cannot collide with the profiled process, and below
# 2**32, which Perfetto needs
_TABLE_PID = 1 << 30
_TABLE_TID = 1


def _without_empty(args: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in args.items() if value is not None and value != []}


def _key(match: KernelMatch) -> tuple:
    if match.kernel is not None:
        return ("kernel", id(match.graph), match.kernel.name)
    return ("extern", id(match.graph), id(match.call))


class KernelTable:
    """Short ids for the matched kernels and extern calls, in the order the trace first shows them;
    and the matched rows as arrays (``rows``, ``codes`` into ``objects``, ``launch_rows``, and
    ``key_of_code``: the entry of each code)."""

    def __init__(self, matcher: Matcher) -> None:
        self.log: LogIndex = matcher.log
        records = matcher.records
        self.rows, self.codes, self.launch_rows = matcher.matched_arrays()
        self.objects = matcher.objects
        # the first event of each match object, then of each key (kernel or extern call)
        indexes = np.frombuffer(records.index, np.int64)[self.rows]
        first_row = np.full(len(self.objects), -1, np.int64)
        order = np.lexsort((indexes, self.codes))
        group_starts = np.flatnonzero(np.r_[True, np.diff(self.codes[order]) != 0]) if order.size else order
        first_row[self.codes[order[group_starts]]] = self.rows[order[group_starts]]
        first_by_key: dict[tuple, tuple[int, int]] = {}  # key -> (event index, code)
        for code, row in enumerate(first_row.tolist()):
            if row >= 0:
                key = _key(self.objects[code])
                first_by_key[key] = min(
                    first_by_key.get(key, (records.index[row], code)), (records.index[row], code)
                )
        self.ids: dict[tuple, str] = {}
        self.entries: list[tuple[str, KernelMatch, float]] = []  # (id, a match of it, ts of its first use)
        for key, (_, code) in sorted(first_by_key.items(), key=lambda item: item[1]):
            self.ids[key] = f"k{len(self.ids)}"
            row = int(first_row[code])
            ts = records.ts[row] if records.ts[row] == records.ts[row] else 0.0  # nan: a GPU row without ts
            self.entries.append((self.ids[key], self.objects[code], ts))
        entry_of_key = {key: position for position, key in enumerate(self.ids)}
        self.key_of_code = np.array(
            [entry_of_key.get(_key(match), -1) for match in self.objects] or [-1], np.int64
        )

    def __len__(self) -> int:
        return len(self.entries)

    def id_of(self, match: KernelMatch) -> str:
        return self.ids[_key(match)]

    def call_index(self, match: KernelMatch) -> int | None:
        """Which of its kernel's call() lines ran, when the kernel has several."""
        if match.kernel is None or match.call is None:
            return None
        calls = self.log.graph_index[id(match.graph)].kernel_calls.get(match.kernel.name, [])
        if len(calls) < 2:
            return None
        return next(position for position, call in enumerate(calls) if call is match.call)

    def entry_args(self, kernel_id: str, match: KernelMatch) -> dict[str, Any]:
        """The table event's args: everything about the kernel (or extern call) that events share."""
        graph = match.graph
        common = {
            "inductor_aot_id": graph.aot_id,
            "inductor_graph_kind": graph.graph_kind,
            "inductor_compile_id": graph.compile_id,
            "inductor_output_code_path": graph.output_code_path,
        }
        if match.kernel is None:
            assert match.call is not None
            return _without_empty(
                {
                    "inductor_kernel_id": kernel_id,
                    "inductor_extern_call": match.call.code,
                    **common,
                    "inductor_source_nodes": match.call.source_nodes,
                    "inductor_aten_ops": match.call.aten_ops,
                    "inductor_log_line": match.call.line_number,
                }
            )
        kernel = match.kernel
        calls = self.log.graph_index[id(graph)].kernel_calls.get(kernel.name, [])
        return _without_empty(
            {
                "inductor_kernel_id": kernel_id,
                "inductor_kernel": kernel.name,
                "inductor_kernel_backend": kernel.backend,
                **common,
                "inductor_kernel_path": kernel.kernel_path,
                "inductor_source_nodes": kernel.source_nodes,
                "inductor_aten_ops": kernel.aten_ops,
                "inductor_ops_from_kernel_name": kernel.ops_from_name,
                "inductor_log_line": kernel.line_number,
                "inductor_calls": [
                    {
                        "call": call.code,
                        "source_nodes": call.source_nodes,
                        "aten_ops": call.aten_ops,
                        "log_line": call.line_number,
                    }
                    for call in calls
                ],
                "inductor_kernel_source": kernel.source,
            }
        )

    def events_json(self) -> list[bytes]:
        """The table's events: a named track, and one instant event per entry at its first use."""
        track = {"pid": _TABLE_PID, "tid": _TABLE_TID}
        events: list[dict[str, Any]] = [
            {"ph": "M", "name": "process_name", **track, "args": {"name": "Inductor kernels"}},
            {
                "ph": "M",
                "name": "thread_name",
                **track,
                "args": {"name": "source, nodes, ATen ops per kernel id"},
            },
        ]
        for kernel_id, match, ts in self.entries:
            what = (
                match.kernel.name if match.kernel is not None else (match.call.target if match.call else "?")
            )
            label = f"{KERNEL_TABLE_EVENT_PREFIX}{kernel_id[1:]}: {what} [{match.graph.aot_id or '?'}]"
            events.append(
                {
                    "ph": "i",
                    "s": "t",
                    "cat": KERNEL_TABLE_CATEGORY,
                    "name": label,
                    **track,
                    "ts": ts,
                    "args": self.entry_args(kernel_id, match),
                }
            )
        return [json.dumps(event, ensure_ascii=False).encode() for event in events]


def event_args(table: KernelTable, match: KernelMatch, launch_op: str | None) -> dict[str, Any]:
    """What a matched event carries: the kernel id, graph kind, nodes and a short op summary (plus
    which call() line when its kernel has several, the match note, and a GPU kernel's launch op)."""
    return _without_empty(
        {
            "inductor_kernel_id": table.id_of(match),
            "inductor_graph_kind": match.graph.graph_kind,
            "inductor_source_nodes": match.source_nodes,
            "inductor_op_summary": match.op_summary or None,
            "inductor_call_index": table.call_index(match),
            "inductor_match_note": match.note,
            "inductor_launch_op": launch_op,
        }
    )

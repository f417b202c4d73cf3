"""Per-kernel time summary of an enriched trace: a rich table on the terminal and an HTML bar chart.

``KernelStats`` holds, per kernel id of the enrichment's kernel table, the number and total duration
(µs, from the events' ``dur``) of its matched CPU events (C++ kernel ops, Triton launch ops, extern
``aten::`` and custom ops) and of its GPU kernels (linked through ``External id``). Rows are sorted by device
time, then CPU time. The HTML page is rendered by an autoescaping jinja2 template and loads nothing
from the network (inline CSS, no scripts).
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perf_traces.enrich import KernelMatch

__all__ = ["KernelStats", "print_table", "render_html"]

_TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


@dataclasses.dataclass
class KernelStats:
    """Times of one kernel (or extern call) over the trace, in µs."""

    kernel_id: str
    name: str  # the kernel's name in the output code, or the extern call's op ("aten::mm")
    graph: str  # the graph's AOT id, e.g. "0_forward"
    graph_kind: str
    source_nodes: list[str]
    aten_ops: list[str]
    cpu_count: int = 0
    cpu_total_us: float = 0.0
    device_count: int = 0
    device_total_us: float = 0.0

    @classmethod
    def of(cls, kernel_id: str, match: KernelMatch) -> KernelStats:
        if match.kernel is not None:
            name = match.kernel.name
            calls = [call for call in match.graph.calls if call.kind == "kernel" and call.target == name]
            nodes = [*match.kernel.source_nodes, *(node for call in calls for node in call.source_nodes)]
            ops = [*match.kernel.aten_ops, *(op for call in calls for op in call.aten_ops)]
        else:
            name = match.call.target if match.call else "?"
            nodes, ops = match.source_nodes, match.aten_ops
        return cls(
            kernel_id=kernel_id,
            name=name,
            graph=match.graph.aot_id or "?",
            graph_kind=match.graph.graph_kind,
            source_nodes=list(dict.fromkeys(nodes)),
            aten_ops=list(dict.fromkeys(ops)),
        )

    def add_many(self, count: int, total_us: float, *, on_device: bool) -> None:
        if on_device:
            self.device_count += count
            self.device_total_us += total_us
        else:
            self.cpu_count += count
            self.cpu_total_us += total_us

    @property
    def cpu_mean_us(self) -> float:
        return self.cpu_total_us / self.cpu_count if self.cpu_count else 0.0

    @property
    def device_mean_us(self) -> float:
        return self.device_total_us / self.device_count if self.device_count else 0.0

    def sort_key(self) -> tuple[float, float, str]:
        return (-self.device_total_us, -self.cpu_total_us, self.kernel_id)


def _short(items: list[str], limit: int = 60) -> str:
    text = ", ".join(items)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_table(stats: list[KernelStats], top: int, console: Any = None) -> None:
    """The ``top`` rows of ``stats`` as a rich table (names are shown as text, never as markup)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: wide enough for the names, no wrapping
            console = Console(width=200)
    has_device = any(row.device_count for row in stats)
    table = Table(title=f"time per kernel (top {min(top, len(stats))} of {len(stats)}, sorted by time)")
    for header in ("id", "kernel", "graph"):
        table.add_column(header)
    if has_device:
        for header in ("device ms", "device mean µs", "GPU kernels"):
            table.add_column(header, justify="right")
    for header in ("CPU ms", "CPU mean µs", "CPU events"):
        table.add_column(header, justify="right")
    table.add_column("source nodes")
    table.add_column("ATen ops")
    for row in stats[:top]:
        device = (
            [f"{row.device_total_us / 1e3:.3f}", f"{row.device_mean_us:.1f}", str(row.device_count)]
            if has_device
            else []
        )
        table.add_row(
            Text(row.kernel_id),
            Text(row.name),
            Text(row.graph),
            *device,
            f"{row.cpu_total_us / 1e3:.3f}",
            f"{row.cpu_mean_us:.1f}",
            str(row.cpu_count),
            Text(_short(row.source_nodes)),
            Text(_short(row.aten_ops)),
        )
    console.print(table)


def render_html(stats: list[KernelStats], top: int, trace_name: str) -> str:
    """A self-contained page: a bar per kernel (device and CPU time), sorted by time, ``top`` rows."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATE_DIR), autoescape=True, undefined=jinja2.StrictUndefined
    )
    shown = stats[:top]
    scale = max([max(row.device_total_us, row.cpu_total_us) for row in shown] + [1e-9])
    rows = [
        {
            "stats": row,
            "device_width": 100.0 * row.device_total_us / scale,
            "cpu_width": 100.0 * row.cpu_total_us / scale,
            "nodes": ", ".join(row.source_nodes),
            "ops": ", ".join(row.aten_ops),
        }
        for row in shown
    ]
    return env.get_template("kernel_summary.html.j2").render(
        trace_name=trace_name,
        rows=rows,
        num_kernels=len(stats),
        has_device=any(row.device_count for row in stats),
    )

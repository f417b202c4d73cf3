"""One parser for torch.compile's inductor logs, shared by graph_viz and perf_traces.

``read_inductor_log(path)`` (a log file or a TORCH_TRACE folder) / ``parse_inductor_log_text(text)``
return an ``InductorLog``: the AOT graphs (``graphs``: joint / forward / backward / inference, their
nodes with dtype, shape, bytes and ``# File:`` source), the output-code modules (``modules``: kernels
with their source-node comments, the ``call()`` statements), ``runs``, ``warnings`` (line, message)
and the ``skipped`` line counts. Which log forms are read: ``records``; graph text: ``graph_text``;
module text: ``output_code``; linking and runs: ``reader``.

The log is untrusted text: it is read with regexes and a bracket-aware splitter, never imported,
``exec``-ed or ``eval``-ed. A line that looks like graph or output-code text but cannot be read is a
warning with its line number (``strict=True``: ``LogParseError``); user output, Python warnings and
other log records are skipped and counted.
"""

from pytorch_scripts_common.inductor_log.graph_text import call_parts, names_in, split_args
from pytorch_scripts_common.inductor_log.output_code import ops_from_kernel_name
from pytorch_scripts_common.inductor_log.reader import parse_inductor_log_text, read_inductor_log
from pytorch_scripts_common.inductor_log.structures import (
    CallSite,
    Graph,
    InductorLog,
    KernelDefinition,
    LogParseError,
    Node,
    OutputCodeModule,
    Run,
    tensor_bytes,
)

__all__ = [
    "CallSite",
    "Graph",
    "InductorLog",
    "KernelDefinition",
    "LogParseError",
    "Node",
    "OutputCodeModule",
    "Run",
    "call_parts",
    "names_in",
    "ops_from_kernel_name",
    "parse_inductor_log_text",
    "read_inductor_log",
    "split_args",
    "tensor_bytes",
]

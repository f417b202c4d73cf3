"""Read a log file, a TORCH_TRACE folder or text into an ``InductorLog``; link modules to graphs.

After the records are read (``records`` splits, ``graph_text`` / ``output_code`` parse):

- each output-code module ``N_forward`` / ``N_inference`` / ``N_backward`` gets the latest graph of
  its kind before it, in the same stream (process / rank / file), with AOT id N (or none yet: cache
  hits and TORCH_TRACE print no AOT id; there the dynamo compile id must agree), and such graphs
  take N from their module (a joint graph from its forward);
- runs: within a stream, a graph or module whose AOT id and kind were already seen starts a new run
  (a second program writing to the same log, or ``torch._dynamo.reset()``), with a warning; tools
  relate graphs only within a run.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
from collections.abc import Iterable

from pytorch_scripts_common.inductor_log.graph_text import COLD_HEADER_RE, GraphReader, graph_kind_and_id
from pytorch_scripts_common.inductor_log.output_code import read_module
from pytorch_scripts_common.inductor_log.records import JSON_OBJECT_START_RE, Record, Splitter
from pytorch_scripts_common.inductor_log.structures import (
    Graph,
    InductorLog,
    LogParseError,
    OutputCodeModule,
    Run,
)

MAX_WARNINGS = 2000


class _Reader:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.log = InductorLog()
        self.file_label = ""  # set per file when a folder holds several
        self.file_order: dict[str, int] = {}
        self.formats: set[str] = set()

    def warn(self, line: int, message: str, *, strict: bool = True) -> None:
        """A parse warning; with ``strict`` (graph or output-code text not understood) strict mode raises."""
        if self.file_label:
            message = f"{self.file_label}: {message}"
        if strict and self.strict:
            raise LogParseError(f"line {line}: {message}")
        self.log.num_warnings += 1
        if len(self.log.warnings) < MAX_WARNINGS:
            self.log.warnings.append((line, message))

    def read_lines(self, lines: Iterable[str], file_label: str = "") -> None:
        self.file_label = file_label
        self.file_order.setdefault(file_label, len(self.file_order))
        counted = _Counted(lines)
        split = Splitter(self.consume).feed(counted)
        self.log.num_lines += counted.count
        for what, count in split.skipped.items():
            self.log.skipped[what] = self.log.skipped.get(what, 0) + count
        for number, line in split.stray:
            self.warn(
                number, f"graph or output-code text outside any graph or module: {line.strip()[:120]!r}"
            )
        self.formats |= split.formats
        self.attach_paths(split.paths)

    def consume(self, record: Record) -> int:
        if record.kind == "graph":
            return self.read_graph(record)
        if record.kind == "output_code":
            return self.read_output_code(record)
        return 0

    def read_graph(self, record: Record) -> int:
        lines = record.lines
        title, start, line = record.title, 0, record.line
        if not title:
            first = next((i for i, (_, text) in enumerate(lines) if text.strip()), None)
            header = COLD_HEADER_RE.match(lines[first][1]) if first is not None else None
            if header:
                title, start, line = header.group(1), first + 1, lines[first][0]
            else:
                title = "Graph"
                if not record.started_bare:
                    self.warn(record.line, "TRACED GRAPH without a '===== <title> =====' line after it")
        kind, compile_id = graph_kind_and_id(title)
        graph = Graph(
            index=-1,
            kind=kind,
            compile_id=compile_id,
            title=title + (" (from cache)" if record.from_cache else ""),
            from_cache=record.from_cache,
            line=line,
            dynamo_compile_id=record.compile_id,
            stream=record.stream,
            source_file=self.file_label,
        )
        consumed = start + GraphReader(graph, lines[start:], self.warn, bounded=record.bounded).read()
        if record.bounded:
            for number, text in lines[consumed:]:
                if text.strip():
                    self.warn(
                        number, f"{graph.title}: unreadable text after the graph {text.strip()[:120]!r}"
                    )
        self.log.graphs.append(graph)
        return consumed

    def read_output_code(self, record: Record) -> int:
        module, consumed = read_module(
            record.lines, self.warn, line_number=record.line, bounded=record.bounded
        )
        if module is None:
            if record.bounded or not record.started_bare:
                self.warn(record.line, "'Output code:' record without module text (no '# AOT ID:' line)")
            return consumed
        module.compile_id = record.compile_id or None
        module.output_code_path = record.output_code_path or None
        module.stream = record.stream
        module.source_file = self.file_label
        self.log.modules.append(module)
        return consumed

    def attach_paths(self, paths: list[tuple[int, str, str]]) -> None:
        """``Output code written to: <path>`` belongs to the module just before it in its stream."""
        modules = sorted(
            (m for m in self.log.modules if m.source_file == self.file_label), key=lambda m: m.line_number
        )
        for number, stream, path in paths:
            before = [m for m in modules if m.line_number < number and (m.stream == stream or not stream)]
            if before and before[-1].output_code_path is None:
                before[-1].output_code_path = path

    def finish(self) -> InductorLog:
        log = self.log
        order = self.file_order
        log.graphs.sort(key=lambda g: (order[g.source_file], g.line))
        log.modules.sort(key=lambda m: (order[m.source_file], m.line_number))
        for index, graph in enumerate(log.graphs):
            graph.index = index
        for index, module in enumerate(log.modules):
            module.index = index
        self.link_modules_to_graphs()
        self.assign_runs()
        log.format = "+".join(sorted(self.formats))
        return log

    def link_modules_to_graphs(self) -> None:
        graphs = self.log.graphs
        for module in self.log.modules:
            if module.aot_id is None:
                continue
            number, _, part = module.aot_id.partition("_")
            wanted = ("backward",) if part == "backward" else ("forward", "inference")
            candidates = [
                g
                for g in graphs
                if g.source_file == module.source_file
                and g.stream == module.stream
                and g.line < module.line_number
                and g.module is None
                and g.kind in wanted
                and g.compile_id in (number, "?")
                and _same_compile(g.dynamo_compile_id, module.compile_id)
            ]
            if not candidates:
                continue
            if len(candidates) > 1:  # two runs in one stream (ranks in one short-format log)
                candidates = [g for g in candidates if _inputs_agree(g, module)] or candidates
            graph = candidates[-1]
            graph.module = module.index
            module.graph = graph.index
            if part == "inference":
                graph.kind = "inference"
            if graph.compile_id == "?":
                graph.compile_id = number
                joints = [
                    g
                    for g in graphs
                    if g.kind == "joint"
                    and g.compile_id == "?"
                    and g.source_file == graph.source_file
                    and g.stream == graph.stream
                    and g.line < graph.line
                    and _same_compile(g.dynamo_compile_id, graph.dynamo_compile_id)
                ]
                if joints:
                    joints[-1].compile_id = number
        for graph in graphs:
            if graph.compile_id == "?":
                graph.compile_id = f"?{graph.index}"
            elif graph.title.endswith(" graph"):  # TORCH_TRACE titles carry no AOT id
                graph.title = f"{graph.title} {graph.compile_id}"

    def assign_runs(self) -> None:
        log = self.log
        order = self.file_order
        items: list[tuple[tuple[int, int], object]] = [
            ((order[g.source_file], g.line), g) for g in log.graphs
        ]
        items += [((order[m.source_file], m.line_number), m) for m in log.modules]
        items.sort(key=lambda item: item[0])
        current: dict[tuple[str, str], tuple[Run, dict[tuple[str, ...], int]]] = {}
        for (_, line), item in items:
            stream_key = (item.source_file, item.stream)
            if isinstance(item, Graph):
                key: tuple[str, ...] = ("graph", item.kind, item.compile_id)
                what = f"{item.title} (AOT id {item.compile_id})" if item.from_cache else item.title
            else:
                key = ("module", item.aot_id or f"?{item.index}")
                what = f"output code {item.aot_id!r}"
                if item.graph is not None:  # a module belongs to its graph's run
                    item.run = log.graphs[item.graph].run
                    state = current.get(stream_key)
                    if state is not None and state[0].index == item.run:
                        state[1].setdefault(key, line)
                    continue
            state = current.get(stream_key)
            if state is not None and key in state[1]:
                first = state[1][key]
                self.file_label = item.source_file
                self.warn(
                    line,
                    f"{what} appears again (first at line {first}): a new run in the same log (another "
                    "program, or torch._dynamo.reset()); graphs and kernels are related only within a run",
                    strict=False,
                )
                state = None
            if state is None:
                run = Run(index=len(log.runs), stream=" ".join(p for p in stream_key if p), line=line)
                log.runs.append(run)
                state = current[stream_key] = (run, {})
            state[1].setdefault(key, line)
            item.run = state[0].index
        self.file_label = ""


# `assert_size_stride(primals_3, (6, 8), (8, 1), 'input')` in call(): an input's size and stride
ASSERT_SIZE_STRIDE_RE = re.compile(r"^assert_size_stride\((\w+), \(([^()]*)\), \(([^()]*)\)")


def _dims(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _inputs_agree(graph: Graph, module: OutputCodeModule) -> bool:
    """No input size or stride that ``module``'s call() asserts contradicts ``graph``'s placeholders."""
    placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    for statement in module.statements:
        match = ASSERT_SIZE_STRIDE_RE.match(statement.code)
        node = placeholders.get(match.group(1)) if match else None
        if node is None or not node.shape and not node.stride:
            continue
        if (_dims(match.group(2)), _dims(match.group(3))) != (_dims(node.shape), _dims(node.stride)):
            return False
    return True


def _same_compile(graph_compile_id: str, module_compile_id: str | None) -> bool:
    return not graph_compile_id or not module_compile_id or graph_compile_id == module_compile_id


class _Counted:
    """Iterates lines and counts them."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = lines
        self.count = 0

    def __iter__(self):
        for line in self.lines:
            self.count += 1
            yield line


def parse_inductor_log_text(text: str, *, strict: bool = False) -> InductorLog:
    """Parse a whole log given as text (see the package docstring for the forms understood)."""
    reader = _Reader(strict)
    reader.read_lines(io.StringIO(text))
    return reader.finish()


def read_inductor_log(path: str | os.PathLike[str], *, strict: bool = False) -> InductorLog:
    """Parse a log file, or a TORCH_TRACE folder (every ``*.log`` in it, one stream each).

    Files are read as UTF-8 with undecodable bytes replaced, split at ``\n`` only (line numbers as
    ``grep -n`` counts them: a progress bar's ``\r`` does not start a line; ``\r\n`` ends one).
    Raises ``FileNotFoundError`` for a missing path, ``ValueError`` for a folder without ``*.log``
    files, ``LogParseError`` in strict mode.
    """
    path = pathlib.Path(path)
    reader = _Reader(strict)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".log")
        if not files:
            raise ValueError(
                f"{path} is a folder with no *.log file: pass a log file, or the TORCH_TRACE folder "
                "the program wrote (dedicated_log_torch_trace_*.log)"
            )
        labels = [file.name if len(files) > 1 else "" for file in files]
    else:
        files, labels = [path], [""]
    for file, label in zip(files, labels, strict=True):
        with open(file, encoding="utf-8", errors="replace", newline="\n") as handle:
            if JSON_OBJECT_START_RE.match(handle.read(64)):
                reader.log.json_files.append(str(file))
                reader.file_label = label
                reader.warn(
                    1,
                    "this file is JSON (a torch.profiler trace?), not a compile log: pass the log "
                    "written with TORCH_LOGS=output_code (or a TORCH_TRACE folder)",
                )
            handle.seek(0)
            reader.read_lines(handle, label)
    return reader.finish()

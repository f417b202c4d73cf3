"""Split a log, in any of the forms torch writes it, into graph and output-code records.

Line forms (each may carry torchrun's / torch's rank prefixes ``[rank0]:``, ``[default1]:`` first):

- torch's default format: every line of a record carries the same glog prefix
  ``V1123 18:56:37.289000 6703 torch/_inductor/graph.py:2722] [0/0] [__output_code] <text>``
  (process id, source location, dynamo compile id, artifact); records of several processes or
  ranks may interleave line by line: a record continues on the lines with its exact prefix.
- ``TORCH_LOGS_FORMAT=short`` (``logging.BASIC_FORMAT``) and any plain ``logging`` handler: the first
  line ``INFO:torch._functorch...__aot_graphs:TRACED GRAPH`` / ``...: Output code: `` carries the
  prefix, the rest of the record follows bare; the record ends at the next prefixed line of its rank
  or where its text ends (a graph's ``return``, a module's ``compiled_module_main(...)``).
- bare text: output code starting at ``# AOT ID: [...]`` (the ``.py`` file the log points at), or a
  graph starting at ``class GraphModule(torch.nn.Module):``.
- ``TORCH_TRACE`` files (what tlparse reads): glog prefix + a JSON object per record, its payload on
  the following lines, each prefixed by a tab. ``aot_joint_graph``, ``aot_forward_graph``,
  ``aot_backward_graph``, ``aot_inference_graph`` and ``inductor_output_code`` are read; the
  compile id comes from ``frame_id`` / ``frame_compile_id`` / ``attempt``.

Lines outside records are sorted into what they are (user output, Python warnings and tracebacks,
other log records, other trace records) and counted; only a line that looks like graph or
output-code text outside any record is a parse warning.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable

# "[rank0]:" / "[default0]:" / "[trainer1]:" / "[0]:" (torch's formatter under torch.distributed,
# torchrun --tee / --local-ranks-filter); several may stack.
RANK_PREFIX_RE = re.compile(r"^(?:\[[A-Za-z_]*\d+\]:)+")
# Terminal colour codes: torch colours graph code (print_readable(colored=True)) whenever its stdout
# is a terminal, also when the log itself goes to a file (`prog.py 2> log.txt`).
ANSI_SGR_RE = re.compile(r"\x1b\[[0-9;]*m")
# "V1123 18:56:37.289000 6703 torch/_inductor/graph.py:2722] [0/0] [__output_code] "
GLOG_RE = re.compile(r"^[VIWEDC]\d{4} \d\d:\d\d:\d\d\.\d+ +(\d+) [^\]]*?:\d+\]((?: \[[^\]\s]*\])*)(?: |$)")
COMPILE_ID_TAG_RE = re.compile(r"\[(!?\d+/\d+(?:/\d+)?(?:_\d+)?)\]")
# First characters of glog levels (V, I, W, E, D, C) and of logging's level names.
LEVEL_INITIALS = frozenset("VIWEDC")
# "INFO:torch._inductor.codecache.__output_code:Output code: " (logging.BASIC_FORMAT)
SHORT_RE = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):[\w.]+:")
# Record starts, in the message of a prefixed line (or anywhere in a plain-handler line).
TRACED_GRAPH_RE = re.compile(r"(?:^|[\s:\]-])TRACED GRAPH\s*$")
CACHE_GRAPH_RE = re.compile(r"(?:^|[\s:\]-])(Joint|Forward|Backward|Inference) graph \(from cache\)\s*$")
OUTPUT_CODE_RE = re.compile(r"(?:^|[\s:\]-])Output code:(?!\s*written to:)(?: (.*))?$")
OUTPUT_WRITTEN_RE = re.compile(r"(?:^|[\s:\]-])Output code written to: (\S.*)$")
# A message that starts a record even when its prefix repeats the previous record's (same source
# line within the same millisecond).
RECORD_START_RE = re.compile(
    r"^(?:TRACED GRAPH\s*$|Output code(?: written to)?:|\w+ graph \(from cache\)\s*$)"
)
AOT_ID_LINE_RE = re.compile(r"^# AOT ID: \[")
CLASS_LINE_RE = re.compile(r"^class \w+\(torch\.nn\.Module\):\s*$")
# "/path/x.py:605: UserWarning: ..." and the source line Python prints under it.
PY_WARNING_RE = re.compile(r"^\S.*:\d+: \w*(?:Warning|Error): ")
TRACEBACK_RE = re.compile(r'^(?:Traceback \(most recent call last\):|  File ".*", line \d+)')
# Graph / output-code text that is not inside a record: what --strict fails on.
COMPILE_TEXT_RE = re.compile(
    r"^\s+\w+: \"[^\"]*\" = torch\.ops\.|^\w+ = async_compile\.|^\s*def call\((?:self, )?args\):"
    r"|^\s*extern_kernels\.\w+\(|^\s*# (?:Topologically Sorted|Unsorted) Source Nodes:"
    r"|^\s*={3,} \w+ graph \d* ?={3,}\s*$"
)
TRACE_GRAPH_KINDS = {
    "aot_joint_graph": "joint",
    "aot_forward_graph": "forward",
    "aot_backward_graph": "backward",
    "aot_inference_graph": "inference",
}


@dataclasses.dataclass
class Record:
    kind: str  # "graph", "output_code", "path"
    line: int  # 1-based line of the record's first line
    stream: str  # "pid 4242", "rank 1", "pid 4242 rank 1", "" (one unnamed stream)
    rank: str = ""
    pid: str = ""
    title: str = ""  # graphs: "Forward graph (from cache)", trace "Forward graph"; "" = from the text
    from_cache: bool = False
    compile_id: str = ""  # dynamo's "0/0"
    output_code_path: str = ""
    lines: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    bounded: bool = True  # every line is the record's (prefixed continuation, trace payload)
    prefix: str = ""  # the glog prefix its continuation lines repeat
    trace: bool = False
    started_bare: bool = False  # opened by its own text (`# AOT ID:` / `class ...:`), no log line


@dataclasses.dataclass
class Split:
    # Output-code paths ("Output code written to:"), in order: (line, stream, path).
    paths: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    stray: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # compile text outside records
    formats: set[str] = dataclasses.field(default_factory=set)


Consume = Callable[[Record], int]


class Splitter:
    """One pass over the lines of one file, handing each finished record to ``consume``.

    ``consume(record)`` parses it and returns how many of its lines it used; the rest of a record
    continued by bare lines (user output after a graph) goes back to the outside-line sorting.
    """

    def __init__(self, consume: Consume) -> None:
        self.consume = consume
        self.result = Split()
        self.prefixed: dict[tuple[str, str], Record] = {}  # (rank, pid) -> open prefixed record
        self.bare: dict[str, Record] = {}  # rank -> open record continued by bare lines
        self.trace: dict[str, Record | None] = {}  # rank -> open trace record (None: skipped payload)
        self.traces: list[Record] = []
        self.fresh: dict[str, Record] = {}  # rank -> prefixed record that has no continuation yet
        self.last_warning: dict[str, int] = {}  # rank -> line of the last Python warning

    def skip(self, what: str) -> None:
        self.result.skipped[what] = self.result.skipped.get(what, 0) + 1

    def feed(self, lines: Iterable[str]) -> Split:
        for number, raw in enumerate(lines, start=1):
            if "\x1b" in raw:
                raw = ANSI_SGR_RE.sub("", raw)
            self.line(number, raw.rstrip("\r\n"))
        for key in list(self.prefixed):
            self.close(self.prefixed.pop(key))
        for rank in list(self.bare):
            self.end_bare(rank)
        for record in self.traces:
            self.consume(record)
        return self.result

    def close(self, record: Record) -> None:
        consumed = self.consume(record)
        if record.started_bare:
            consumed = max(consumed, 1)  # its first line opened it: never fed back to open it again
        if not record.bounded and consumed < len(record.lines):
            self.outside(record.lines[consumed:], record.rank)

    def end_bare(self, rank: str) -> None:
        while rank in self.bare:  # closing can open another bare record from its leftover lines
            self.close(self.bare.pop(rank))
        self.fresh.pop(rank, None)
        self.trace.pop(rank, None)

    def line(self, number: int, line: str) -> None:
        rank = ""
        first = line[:1]
        if first == "[" and (rank_match := RANK_PREFIX_RE.match(line)):
            rank = re.search(r"\d+", rank_match.group(0)).group(0)
            line = line[rank_match.end() :]
            first = line[:1]
        if first not in LEVEL_INITIALS:  # the first-character test keeps bare module text cheap
            self.bare_line(number, rank, line)
            return
        glog = GLOG_RE.match(line)
        if glog:
            self.glog_line(number, rank, line, glog)
            return
        short = SHORT_RE.match(line)
        if short:
            self.result.formats.add("short")
            self.end_bare(rank)
            stream = f"rank {rank}" if rank else ""
            if self.start(number, rank, "", stream, line[short.end() :], prefix="") is None:
                self.skip("other log records")
            return
        self.bare_line(number, rank, line)

    def glog_line(self, number: int, rank: str, line: str, glog: re.Match[str]) -> None:
        pid = glog.group(1)
        prefix = line[: glog.end()].rstrip()
        message = line[glog.end() :]
        key = (rank, pid)
        open_record = self.prefixed.get(key)
        if open_record is not None and open_record.prefix == prefix and not RECORD_START_RE.match(message):
            open_record.lines.append((number, message))
            self.fresh.pop(rank, None)
            return
        if open_record is not None:
            self.close(self.prefixed.pop(key))
        bare = self.bare.get(rank)
        if bare is not None and bare.prefix == prefix and not RECORD_START_RE.match(message):
            bare.lines.append((number, message))  # a prefixed record that went on bare, then prefixed again
            return
        self.end_bare(rank)
        stream = f"pid {pid}" + (f" rank {rank}" if rank else "")
        if message.startswith("{"):
            self.trace_line(number, rank, pid, stream, message)
            return
        self.result.formats.add("default")
        compile_id = COMPILE_ID_TAG_RE.search(glog.group(2))
        record = self.start(
            number,
            rank,
            pid,
            stream,
            message,
            prefix=prefix,
            compile_id=compile_id.group(1) if compile_id else "",
        )
        if record is None:
            self.skip("other log records")

    def start(
        self,
        number: int,
        rank: str,
        pid: str,
        stream: str,
        message: str,
        *,
        prefix: str,
        compile_id: str = "",
    ) -> Record | None:
        """Open a record if ``message`` starts one; a path line is noted. None when it is neither."""
        written = OUTPUT_WRITTEN_RE.search(message)
        if written:
            self.result.paths.append((number, stream, written.group(1).strip()))
            return Record("path", number, stream)  # nothing to open
        if TRACED_GRAPH_RE.search(message):
            record = Record("graph", number, stream)
        elif cache := CACHE_GRAPH_RE.search(message):
            record = Record("graph", number, stream, title=f"{cache.group(1)} graph", from_cache=True)
        elif code := OUTPUT_CODE_RE.search(message):
            record = Record("output_code", number, stream)
            rest = (code.group(1) or "").strip()
            if rest:  # module text on the same line
                record.lines.append((number, rest))
        else:
            return None
        record.rank, record.pid, record.compile_id, record.prefix = rank, pid, compile_id, prefix
        if prefix:
            self.prefixed[(rank, pid)] = record
            self.fresh[rank] = record
        else:
            record.bounded = False
            self.bare[rank] = record
        return record

    def trace_line(self, number: int, rank: str, pid: str, stream: str, message: str) -> None:
        self.result.formats.add("trace")
        try:
            metadata = json.loads(message)
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict):
            self.skip("other log records")
            return
        kind = next((k for k in metadata if k in TRACE_GRAPH_KINDS or k == "inductor_output_code"), None)
        if kind is None:
            self.skip("other trace records")
            self.trace[rank] = None  # its payload lines are skipped with it
            return
        if isinstance(metadata.get("rank"), int):
            stream = f"{stream} rank {metadata['rank']}"
        record = Record(
            "output_code" if kind == "inductor_output_code" else "graph", number, stream, rank, pid
        )
        record.trace = True
        record.compile_id = trace_compile_id(metadata)
        details = metadata.get(kind)
        if kind == "inductor_output_code" and isinstance(details, dict):
            path = details.get("file_path") or details.get("filename")
            record.output_code_path = path if isinstance(path, str) else ""
        elif kind != "inductor_output_code":
            record.title = f"{TRACE_GRAPH_KINDS[kind].capitalize()} graph"
        self.trace[rank] = record
        self.traces.append(record)

    def bare_line(self, number: int, rank: str, line: str) -> None:
        if line.startswith("\t") and rank in self.trace:  # a TORCH_TRACE payload line
            record = self.trace[rank]
            if record is None:
                self.skip("other trace records")
            else:
                record.lines.append((number, line[1:]))
            return
        self.trace.pop(rank, None)
        record = self.bare.get(rank)
        if record is None and rank in self.fresh:  # a prefixed first line, bare continuation lines
            record = self.fresh.pop(rank)
            self.prefixed.pop((rank, record.pid), None)
            record.bounded = False
            self.bare[rank] = record
        if record is not None:
            record.lines.append((number, line))
            return
        self.outside([(number, line)], rank)

    def outside(self, lines: list[tuple[int, str]], rank: str) -> None:
        """Lines outside records: start bare records, else sort them into what they are."""
        stream = f"rank {rank}" if rank else ""
        position = 0
        while position < len(lines):
            number, line = lines[position]
            position += 1
            stripped = line.strip()
            if not stripped:
                continue
            if AOT_ID_LINE_RE.match(line) or CLASS_LINE_RE.match(line):
                self.result.formats.add("bare")
                kind = "output_code" if line.startswith("#") else "graph"
                record = Record(kind, number, stream, rank, bounded=False, started_bare=True)
                record.lines = [(number, line), *lines[position:]]
                self.bare[rank] = record
                return
            started = self.start(number, rank, "", stream, line, prefix="")
            if started is not None:
                self.result.formats.add("plain")
                if started.kind != "path":
                    started.lines.extend(lines[position:])
                    return
                continue
            if PY_WARNING_RE.match(line):
                self.skip("warnings and tracebacks")
                self.last_warning[rank] = number
            elif self.last_warning.get(rank) == number - 1 and line.startswith("  "):
                self.skip("warnings and tracebacks")  # the source line Python prints under a warning
            elif TRACEBACK_RE.match(line):
                self.skip("warnings and tracebacks")
            elif COMPILE_TEXT_RE.search(line):
                self.result.stray.append((number, line))
            else:
                self.skip("user output")


def is_log_line(line: str) -> bool:
    """Whether ``line`` has the prefix of a torch logging record (default or short format)."""
    line = RANK_PREFIX_RE.sub("", ANSI_SGR_RE.sub("", line))
    return bool(GLOG_RE.match(line) or SHORT_RE.match(line))


# What a JSON object starts with: a torch.profiler trace is one, a log never is.
JSON_OBJECT_START_RE = re.compile(r'^\ufeff?\s*\{\s*"')


def trace_compile_id(metadata: dict) -> str:
    """dynamo's compile id of a trace record: "0/0", "0/1_1" (attempt 1), "!0/0/0" (compiled autograd)."""
    frame, frame_compile = metadata.get("frame_id"), metadata.get("frame_compile_id")
    if not isinstance(frame, int) or not isinstance(frame_compile, int):
        return ""
    compile_id = f"{frame}/{frame_compile}"
    if isinstance(metadata.get("compiled_autograd_id"), int):
        compile_id = f"!{metadata['compiled_autograd_id']}/{compile_id}"
    if isinstance(metadata.get("attempt"), int) and metadata["attempt"]:
        compile_id += f"_{metadata['attempt']}"
    return compile_id

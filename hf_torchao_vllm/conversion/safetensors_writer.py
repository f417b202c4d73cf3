"""Writing safetensors files without a second in-memory copy of their tensors (``write_safetensors``),
copying unchanged byte ranges of a source file in the kernel and computing repacked tensors while
they are written (``RepackPlan``). The converter's writer; files are read by ``checkpoint_reader``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import errno
import json
import mmap
import os
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from hf_torchao_vllm.conversion.checkpoint_reader import SAFETENSORS_DTYPES, ShardReader

# os.write / os.sendfile move at most this many bytes per call (Linux caps one call near 2 GiB).
_IO_CHUNK_BYTES = 1 << 30


def _write_all(fd: int, data: memoryview) -> None:
    data = data.cast("B")
    while data:
        written = os.write(fd, data[:_IO_CHUNK_BYTES])
        data = data[written:]


def _send_all(out_fd: int, in_fd: int, offset: int, nbytes: int) -> bool:
    """Copy ``nbytes`` of ``in_fd`` from ``offset`` to ``out_fd`` in the kernel; False if unsupported."""
    if not hasattr(os, "sendfile"):
        return False
    first = True
    while nbytes:
        try:
            sent = os.sendfile(out_fd, in_fd, offset, min(nbytes, _IO_CHUNK_BYTES))
        except OSError as e:
            if first and e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                return False  # e.g. a platform whose sendfile needs a socket; nothing was written
            raise
        first = False
        if sent == 0:
            raise ValueError(f"source file shrank while it was copied (at byte {offset}): run again")
        offset += sent
        nbytes -= sent
    return True


def write_safetensors(
    path: str,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    sources: Iterable[ShardReader | RepackPlan] = (),
) -> int:
    """Write ``tensors`` as a safetensors file, streaming each tensor's bytes (no full-file buffer).

    ``safetensors.torch.save_file`` first copies every tensor into a ``bytes`` object, which doubles
    the peak memory of a shard; this writer emits the same format (8-byte little-endian header
    length, JSON header, then the raw little-endian data) tensor by tensor. Tensors that are
    unchanged byte ranges of one of the ``sources`` (views ``ShardReader`` returned) are copied file
    to file by the kernel (``sendfile``), as ``cp`` does, without their pages entering the process;
    a ``RepackPlan`` placeholder is computed from its source as it is written; other tensors are
    written from memory. Mapped source pages are dropped after each tensor.

    Layout, for copy speed: the data section holds the tensors that come from ``sources`` in the
    order of their source bytes (so runs of them are contiguous in both files and go in one
    ``sendfile``), then the others by name; the header is padded with spaces (the format allows it)
    so that the longest run starts at the offset within a 64 KiB block that equals its source's
    offset within a page. The kernel copies through 64 KiB pipe chunks and allocates the target's
    page-cache folios per chunk: a run whose chunks start inside a 64 KiB block, or whose bytes sit
    at another in-page offset than in the source, copied at 0.42 s CPU per 1.1 GB here instead of
    0.27 s. Returns the number of data bytes written.
    """
    sources = list(sources)
    readers = [s for s in sources if isinstance(s, ShardReader)]
    plans = [s for s in sources if isinstance(s, RepackPlan)]
    for name, t in tensors.items():
        if t.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
    positions = {name: _source_position(tensors[name], readers, plans) for name in tensors}
    order = sorted(tensors, key=lambda n: (positions[n] is None, positions[n] or (0, 0), n))
    begins: dict[str, int] = {}
    offset = 0
    for name in order:
        begins[name] = offset
        offset += tensors[name].numel() * tensors[name].element_size()
    segments = _segments(order, tensors, begins, readers)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        t = tensors[name]
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [begins[name], begins[name] + t.numel() * t.element_size()],
        }
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * _header_padding(len(header_bytes), segments)
    # Written next to ``path`` and renamed: never truncates a file that tensors may be mmap-ing.
    tmp_path = f"{path}.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            _write_all(fd, memoryview(len(header_bytes).to_bytes(8, "little") + header_bytes))
            for segment in segments:
                _write_segment(fd, segment, sources)
        finally:
            os.close(fd)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    return offset


@dataclasses.dataclass
class _CopyRun:
    """Consecutive tensors that are one contiguous byte range of ``reader``'s file."""

    reader: ShardReader
    source_offset: int
    begin: int  # offset in the data section being written
    nbytes: int
    tensors: list[torch.Tensor]


def _source_position(
    tensor: torch.Tensor, readers: list[ShardReader], plans: list[RepackPlan]
) -> tuple[int, int] | None:
    """(reader index, file offset) of the source bytes of ``tensor`` (a view, or a placeholder of
    a repacked view), or None for a tensor computed in memory."""
    for plan in plans:
        source = plan.source_of(tensor)
        if source is not None:
            tensor = source
            break
    for index, reader in enumerate(readers):
        start = reader.source_offset(tensor)
        if start is not None:
            return index, start
    return None


def _segments(
    order: list[str], tensors: dict[str, torch.Tensor], begins: dict[str, int], readers: list[ShardReader]
) -> list[_CopyRun | torch.Tensor]:
    """The data section as copy runs (views of one reader, contiguous there) and single tensors."""
    segments: list[_CopyRun | torch.Tensor] = []
    for name in order:
        tensor = tensors[name]
        nbytes = tensor.numel() * tensor.element_size()
        found = [(r, start) for r in readers if (start := r.source_offset(tensor)) is not None]
        if not found or not nbytes:
            segments.append(tensor)
            continue
        reader, start = found[0]
        last = segments[-1] if segments else None
        if isinstance(last, _CopyRun) and last.reader is reader and last.source_offset + last.nbytes == start:
            last.nbytes += nbytes
            last.tensors.append(tensor)
        else:
            segments.append(_CopyRun(reader, start, begins[name], nbytes, [tensor]))
    return segments


# The kernel's sendfile / splice copies in chunks of the pipe size (16 pages).
_SPLICE_CHUNK_BYTES = 16 * mmap.PAGESIZE


def _header_padding(json_len: int, segments: list[_CopyRun | torch.Tensor]) -> int:
    """Spaces after the JSON header (see ``write_safetensors``): the data start stays 8-byte aligned,
    and the longest copy run lands at its source's in-page offset within the first page of a
    64 KiB block of the target file."""
    minimum = -json_len % 8
    runs = [s for s in segments if isinstance(s, _CopyRun)]
    if not runs:
        return minimum
    run = max(runs, key=lambda r: r.nbytes)
    wanted = run.source_offset % mmap.PAGESIZE  # the run's target offset modulo the chunk size
    padding = (wanted - (8 + json_len + run.begin)) % _SPLICE_CHUNK_BYTES
    return padding if (8 + json_len + padding) % 8 == 0 else minimum


def _write_segment(fd: int, segment: _CopyRun | torch.Tensor, sources: list[Any]) -> None:
    if isinstance(segment, _CopyRun):
        if _send_all(fd, segment.reader.fileno(), segment.source_offset, segment.nbytes):
            return
        tensors = segment.tensors  # no sendfile to files here: write the views from memory
    else:
        tensors = [segment]
    for tensor in tensors:
        if not tensor.numel():
            continue
        if not any(plan.write(fd, tensor) for plan in sources if isinstance(plan, RepackPlan)):
            flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
            _write_all(fd, memoryview(flat.numpy()))
        for source in sources:
            source.drop_pages()


class RepackPlan:
    """Repacked tensors computed while they are written: one pass from the source to the file.

    Within ``repack_into(plan)``, ``_pack_int32``'s 8-bit path does not compute its result: it
    returns a placeholder of the right shape and dtype and records the source bytes and the byte
    XOR to apply. ``write_safetensors(..., sources=[plan, ...])`` writes each placeholder by XOR-ing
    its source in chunks through one cache-sized buffer: the source is read once (from the page
    cache, through the memory map), the file written once, and no tensor-sized memory is allocated
    (fresh memory costs a page fault per page, and under memory pressure reclaim: more than the
    XOR). A placeholder's memory is reserved but inaccessible (``PROT_NONE``): code that read it
    before it was written would crash the process instead of using garbage. ``reset()`` once the
    shard is written (the converter does it after each shard).
    """

    CHUNK_BYTES = 4 << 20

    def __init__(self) -> None:
        self._entries: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # placeholder, source, xor
        self._scratch: np.ndarray | None = None

    def defer_xor(self, source: torch.Tensor, value: int) -> torch.Tensor:
        """A placeholder for ``source ^ value`` (uint8, any shape), written by ``write``."""
        if source.numel() == 0:
            return torch.empty(source.shape, dtype=torch.uint8)
        reserved = mmap.mmap(-1, source.numel(), prot=0)
        with warnings.catch_warnings():  # "not writable": it is not even readable, see above
            warnings.simplefilter("ignore", UserWarning)
            placeholder = torch.frombuffer(reserved, dtype=torch.uint8)
        self._entries.append((placeholder, source.reshape(-1), value))
        return placeholder.view(source.shape)

    def _find(self, tensor: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        """(source bytes, xor) of ``tensor`` if it is a contiguous view of a placeholder."""
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            return None
        nbytes = tensor.numel() * tensor.element_size()
        for placeholder, source, value in self._entries:
            start = tensor.data_ptr() - placeholder.data_ptr()
            if start >= 0 and start + nbytes <= placeholder.numel():
                return source[start : start + nbytes], value
        return None

    def source_of(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The source bytes ``tensor`` will be computed from, if it is a placeholder."""
        found = self._find(tensor)
        return None if found is None else found[0]

    def write(self, fd: int, tensor: torch.Tensor) -> bool:
        """Write ``tensor`` if it is (a contiguous view of) a placeholder; False otherwise."""
        found = self._find(tensor)
        if found is None:
            return False
        self._write_xor(fd, found[0].numpy(), found[1])
        return True

    def _write_xor(self, fd: int, source: np.ndarray, value: int) -> None:
        if self._scratch is None:
            self._scratch = np.empty(self.CHUNK_BYTES, dtype=np.uint8)
        for begin in range(0, source.size, self.CHUNK_BYTES):
            chunk = source[begin : begin + self.CHUNK_BYTES]
            out = self._scratch[: chunk.size]
            np.bitwise_xor(chunk, value, out=out)
            _write_all(fd, memoryview(out))

    def drop_pages(self) -> None:
        """Nothing is mapped here (for the writer's ``sources`` interface)."""

    def reset(self) -> None:
        self._entries.clear()


_REPACK_PLAN: contextvars.ContextVar[RepackPlan | None] = contextvars.ContextVar("repack_plan", default=None)


@contextlib.contextmanager
def repack_into(plan: RepackPlan) -> Iterator[RepackPlan]:
    """Within the block, ``convert_parameter`` defers 8-bit repacking to ``plan`` (see ``RepackPlan``)."""
    token = _REPACK_PLAN.set(plan)
    try:
        yield plan
    finally:
        _REPACK_PLAN.reset(token)


def active_repack_plan() -> RepackPlan | None:
    """The ``RepackPlan`` of the enclosing ``repack_into`` block, if any."""
    return _REPACK_PLAN.get()

"""torchao checkpoint -> compressed-tensors checkpoint, shard by shard from memory-mapped shards
(``convert_checkpoint``), with its summary: the steps of
``python -m hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors`` (described there)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from hf_torchao_vllm.conversion import checkpoint_reader, safetensors_writer, schemes
from hf_torchao_vllm.conversion.checkpoint_names import CheckpointNaming
from pytorch_scripts_common.outputs import MARKER, check_output, staged_dir

TOOL = "hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors"


@dataclasses.dataclass
class ConversionSummary:
    """What a conversion did: modules per scheme label, bytes, time and memory."""

    dir_target: str
    num_shards: int
    source_bytes: int
    target_bytes: int
    largest_shard_bytes: int
    seconds: float
    rss_before_bytes: int
    peak_rss_bytes: int
    modules_per_scheme: dict[str, int]
    ignore: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)  # see schemes.conversion_notes

    @property
    def peak_rss_delta_bytes(self) -> int:
        return self.peak_rss_bytes - self.rss_before_bytes


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """High-water mark of this process's RSS (``VmHWM``; unlike ``ru_maxrss`` it is not inherited
    from a parent across fork + exec, and ``_reset_peak_rss`` can reset it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak includes whatever came before the shard loop: an overestimate


def _glibc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _map_large_allocations() -> None:
    """Make glibc serve allocations above 256 KiB with mmap, returned to the OS on free.

    By default glibc raises that threshold after the first large free, so later tensors land on
    the heap, which fragments and never shrinks: the shard loop's RSS then creeps up shard after
    shard. Fixing the threshold (M_MMAP_THRESHOLD = -3) keeps peak memory at what is live.
    A no-op without glibc.
    """
    libc = _glibc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, 256 * 1024)


def _release_freed_memory() -> None:
    """Give freed heap pages back to the OS between shards; a no-op without glibc."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _ignore_list(ckpt: checkpoint_reader.TorchaoCheckpoint, quantized_modules: set[str]) -> list[str]:
    """Linear modules left in high precision (stored names), found from the checkpoint (never per model)."""
    naming = ckpt.naming
    plain_weights = {
        p.removesuffix(".weight")
        for p, m in ckpt.params.items()
        if m["_type"] == "Tensor" and p.endswith(".weight")
    }
    linear = naming.linear_modules()
    if linear is None:
        return sorted(m for m in plain_weights if not re.search(r"(norm|embed)", m))
    ignored = {m for m in plain_weights if naming.memory_module(m) in linear}
    # lm_head may be tied to the embedding and then has no tensor of its own; vLLM still has it.
    if "lm_head" in linear and "lm_head" not in {naming.memory_module(m) for m in quantized_modules}:
        ignored.add(naming.stored_name("lm_head.weight").removesuffix(".weight"))
    return sorted(ignored)


def _under_both_names(naming: CheckpointNaming, modules: Iterable[str]) -> dict[str, str]:
    """Stored module name -> itself and, where transformers renames it, its in-memory name -> the
    stored one: compressed-tensors matches targets and ignore against the loading model's module
    names, which are the in-memory ones in transformers and the checkpoint's (through the model's
    own mapper) in vLLM."""
    out = {}
    for module in modules:
        out[module] = module
        out.setdefault(naming.memory_module(module), module)
    return out


def convert_checkpoint(
    dir_source: str,
    dir_target: str,
    overwrite: bool = False,
    validate: bool = False,
    report: Callable[[ConversionSummary], None] | None = None,
) -> ConversionSummary:
    """Convert ``dir_source`` to ``dir_target`` shard by shard; see the module docstring.

    The output is written to a temp folder next to ``dir_target`` and moved there only when
    everything succeeded, including validation (``validate=True``: compressed-tensors'
    decompression vs torchao, and transformers' logits). ``report`` is called with the summary
    once the conversion is written, before validation.
    """
    start = time.perf_counter()
    ckpt = checkpoint_reader.open_torchao_checkpoint(dir_source)
    target = check_output(dir_target, inputs=[dir_source], overwrite=overwrite, tool=TOOL, flag="output_dir")
    # Import everything the shard loop uses up front, so the loop's memory is the tensors' alone.
    import compressed_tensors.compressors.pack_quantized.helpers  # noqa: F401
    import torchao.prototype.mx_formats.utils  # noqa: F401
    from compressed_tensors import __version__ as ct_version

    with staged_dir(target, tool=TOOL) as staging:
        shards = _convert_shards(ckpt, str(staging))
        ignore = _ignore_list(ckpt, set(shards.module_schemes))
        names = _under_both_names(ckpt.naming, [*shards.module_schemes, *ignore])
        quant_config = schemes.build_quantization_config(
            {alias: shards.module_schemes[m] for alias, m in names.items() if m in shards.module_schemes},
            sorted(alias for alias, m in names.items() if m in ignore),
            ct_version,
        )
        _write_config_and_index(ckpt, str(staging), quant_config, shards)
        _copy_other_files(ckpt, str(staging))
        counts: dict[str, int] = {}
        for scheme in shards.module_schemes.values():
            counts[scheme.label] = counts.get(scheme.label, 0) + 1
        summary = ConversionSummary(
            dir_target=str(target),
            num_shards=len(ckpt.shard_files),
            source_bytes=shards.source_bytes,
            target_bytes=shards.target_bytes,
            largest_shard_bytes=shards.largest_shard_bytes,
            seconds=time.perf_counter() - start,
            rss_before_bytes=shards.rss_before_bytes,
            peak_rss_bytes=shards.peak_rss_bytes,
            modules_per_scheme=counts,
            ignore=ignore,
            notes=schemes.conversion_notes(ckpt.params),
        )
        if report is not None:
            report(summary)
        if validate:
            from hf_torchao_vllm.conversion.validate import run_validation

            try:
                run_validation(dir_source, str(staging))
            except SystemExit:
                print(f"error: the conversion failed validation: {target} was not written", file=sys.stderr)
                raise
    return summary


@dataclasses.dataclass
class _ShardLoopResult:
    module_schemes: dict[str, schemes.CtScheme]
    weight_map: dict[str, str]
    source_bytes: int
    target_bytes: int
    largest_shard_bytes: int
    rss_before_bytes: int
    peak_rss_bytes: int


def _convert_shards(ckpt: checkpoint_reader.TorchaoCheckpoint, out_dir: str) -> _ShardLoopResult:
    """Convert and write each shard in turn, at about the speed of copying it.

    Source tensors are read-only views of the memory-mapped shards; those that pass through
    unchanged (fp8 / int8 weights, scales, plain tensors) are copied file to file by the kernel,
    8-bit weights offset into int32 words are computed chunk by chunk as they are written
    (``RepackPlan``). Mapped pages are dropped after each parameter and each written tensor, so RSS
    holds only what other schemes compute (int4 packing, expert splits) for one shard.
    """
    from rich.progress import Progress

    _map_large_allocations()
    rss_before = _current_rss_bytes()
    _reset_peak_rss()
    result = _ShardLoopResult({}, {}, 0, 0, 0, rss_before, rss_before)
    repack = safetensors_writer.RepackPlan()
    with Progress(transient=True) as progress, safetensors_writer.repack_into(repack):
        shard_task = progress.add_task("shards", total=len(ckpt.shard_files))
        for shard in ckpt.shard_files:
            params = ckpt.params_in_shard(shard)
            tensor_task = progress.add_task(f"  {shard}", total=len(params))
            handles: dict[str, checkpoint_reader.ShardReader] = {}
            out: dict[str, Any] = {}
            shard_path = os.path.join(ckpt.directory, shard)
            for param in params:
                meta = ckpt.params[param]
                parts = checkpoint_reader.load_param_parts(ckpt, param, handles)
                if meta["_type"] == "Tensor":
                    _add_output(out, result.weight_map, param, parts["tensor"], shard_path)
                else:
                    with checkpoint_reader.input_errors_of(shard_path, param, meta, parts):
                        shape = parts["qdata"].shape
                        slices = ckpt.expert_slices(param, shape) if len(shape) == 3 else None
                        conversions = schemes.convert_parameter(param, meta, parts, slices)
                    for conv in conversions:
                        result.module_schemes[conv.module] = conv.scheme
                        for leaf, tensor in conv.tensors.items():
                            _add_output(out, result.weight_map, f"{conv.module}.{leaf}", tensor, shard_path)
                del parts
                for handle in handles.values():
                    handle.drop_pages()
                progress.advance(tensor_task)
            shard_source_bytes = os.path.getsize(os.path.join(ckpt.directory, shard))
            result.source_bytes += shard_source_bytes
            result.largest_shard_bytes = max(result.largest_shard_bytes, shard_source_bytes)
            result.target_bytes += safetensors_writer.write_safetensors(
                os.path.join(out_dir, shard), out, {"format": "pt"}, sources=[repack, *handles.values()]
            )
            result.weight_map.update(dict.fromkeys(out, shard))
            del out
            for handle in handles.values():
                handle.close()
            handles.clear()
            repack.reset()
            _release_freed_memory()
            progress.remove_task(tensor_task)
            progress.advance(shard_task)
    result.peak_rss_bytes = _peak_rss_bytes()
    return result


def _add_output(
    out: dict[str, Any], written: dict[str, str], name: str, tensor: Any, shard_path: str
) -> None:
    """Add one output tensor; two source tensors that map to the same name would lose one of them."""
    if name in out or name in written:
        raise ValueError(
            f"{shard_path}: two tensors of the checkpoint become {name!r} in compressed-tensors (e.g. a "
            "plain tensor next to a quantized one of the same name): re-save the checkpoint"
        )
    out[name] = tensor


def _write_config_and_index(
    ckpt: checkpoint_reader.TorchaoCheckpoint,
    out_dir: str,
    quant_config: dict[str, Any],
    shards: _ShardLoopResult,
) -> None:
    config = dict(ckpt.config)
    config["quantization_config"] = quant_config
    with open(os.path.join(out_dir, checkpoint_reader.CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    if ckpt.is_sharded:
        index = {
            "metadata": {"total_size": shards.target_bytes},
            "weight_map": dict(sorted(shards.weight_map.items())),
        }
        with open(os.path.join(out_dir, checkpoint_reader.INDEX_FILE), "w") as f:
            json.dump(index, f, indent=2)


def _copy_other_files(ckpt: checkpoint_reader.TorchaoCheckpoint, out_dir: str) -> None:
    """Copy the files that are not weights, config or index (tokenizer, generation config, ...)."""
    written = set(ckpt.shard_files) | {checkpoint_reader.CONFIG_FILE, checkpoint_reader.INDEX_FILE, MARKER}
    for name in sorted(os.listdir(ckpt.directory)):
        src = os.path.join(ckpt.directory, name)
        if name not in written and os.path.isfile(src):
            shutil.copyfile(src, os.path.join(out_dir, name))


def print_summary(summary: ConversionSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"compressed-tensors checkpoint for {summary.dir_target}")
    table.add_column("scheme")
    table.add_column("modules", justify="right")
    for label, count in sorted(summary.modules_per_scheme.items()):
        table.add_row(label, str(count))
    table.add_row("ignored (high precision)", str(len(summary.ignore)))
    console = Console()
    console.print(table)
    mb = 1e6
    console.print(
        f"{summary.num_shards} shard(s), {summary.source_bytes / mb:.1f} MB -> "
        f"{summary.target_bytes / mb:.1f} MB of tensor data in {summary.seconds:.1f} s; peak RSS growth "
        f"{summary.peak_rss_delta_bytes / mb:.1f} MB "
        f"(largest shard {summary.largest_shard_bytes / mb:.1f} MB)"
    )
    for note in summary.notes:
        console.print(f"note: {note}", markup=False)

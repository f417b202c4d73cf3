"""Convert a torchao checkpoint (``quant_method: torchao``) to a compressed-tensors checkpoint.

Reads config.json's torchao ``quantization_config`` and the safetensors shards one at a time,
maps every torchao tensor subclass to the compressed-tensors tensors vLLM loads (see
``ct_checkpoint`` for the table), writes ``model*.safetensors`` (+ index when sharded), a
config.json whose ``quantization_config`` is a compressed-tensors config (one config group per
distinct scheme, an ``ignore`` list of the Linear modules left in high precision), and copies every
other file. Shards are memory-mapped; tensors that pass through unchanged are copied file to file
by the kernel and repacked ones go through one reused buffer, so memory stays near one shard.

Output safety: ``dir_target`` may not be ``dir_source``, a folder containing it, or a path inside
it; an existing ``dir_target`` is replaced only with ``--overwrite`` and only if this tool wrote it;
its location must be writable (all checked before any work). The output is written to a temp folder
next to ``dir_target`` and moved there only after it passed validation (``--validate``, default on:
``validate_compressed_tensors_checkpoint``). SIGINT / SIGTERM remove the temp folder; a later run
removes one left by SIGKILL. Corrupted input is reported as one line naming the file.

    python -m hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors \\
        --dir_source=outputs/quantized --dir_target=outputs/quantized_ct
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from hf_torchao_vllm import ct_checkpoint as ctc
from pytorch_scripts_common.cli import run
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


def _ignore_list(ckpt: ctc.TorchaoCheckpoint, quantized_modules: set[str]) -> list[str]:
    """Linear modules left in high precision, found from the checkpoint (never per model)."""
    plain_weights = {
        p.removesuffix(".weight")
        for p, m in ckpt.params.items()
        if m["_type"] == "Tensor" and p.endswith(".weight")
    }
    linear = ctc.linear_module_names(ckpt.config)
    if linear is not None:
        # lm_head may be tied to the embedding and then has no tensor of its own; vLLM still has it.
        return sorted((linear & plain_weights) | ({"lm_head"} & linear - quantized_modules))
    return sorted(m for m in plain_weights if not re.search(r"(norm|embed)", m))


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
    ckpt = ctc.open_torchao_checkpoint(dir_source)
    target = check_output(dir_target, inputs=[dir_source], overwrite=overwrite, tool=TOOL, flag="dir_target")
    # Import everything the shard loop uses up front, so the loop's memory is the tensors' alone.
    import compressed_tensors.compressors.pack_quantized.helpers  # noqa: F401
    import torchao.prototype.mx_formats.utils  # noqa: F401
    from compressed_tensors import __version__ as ct_version

    with staged_dir(target, tool=TOOL) as staging:
        shards = _convert_shards(ckpt, str(staging))
        ignore = _ignore_list(ckpt, set(shards.module_schemes))
        quant_config = ctc.build_quantization_config(shards.module_schemes, ignore, ct_version)
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
        )
        if report is not None:
            report(summary)
        if validate:
            from hf_torchao_vllm.validate_compressed_tensors_checkpoint import run_validation

            try:
                run_validation(dir_source, str(staging))
            except SystemExit:
                print(f"error: the conversion failed validation: {target} was not written", file=sys.stderr)
                raise
    return summary


@dataclasses.dataclass
class _ShardLoopResult:
    module_schemes: dict[str, ctc.CtScheme]
    weight_map: dict[str, str]
    source_bytes: int
    target_bytes: int
    largest_shard_bytes: int
    rss_before_bytes: int
    peak_rss_bytes: int


def _convert_shards(ckpt: ctc.TorchaoCheckpoint, out_dir: str) -> _ShardLoopResult:
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
    repack = ctc.RepackPlan()
    with Progress(transient=True) as progress, ctc.repack_into(repack):
        shard_task = progress.add_task("shards", total=len(ckpt.shard_files))
        for shard in ckpt.shard_files:
            params = ckpt.params_in_shard(shard)
            tensor_task = progress.add_task(f"  {shard}", total=len(params))
            handles: dict[str, ctc.ShardReader] = {}
            out: dict[str, Any] = {}
            shard_path = os.path.join(ckpt.directory, shard)
            for param in params:
                meta = ckpt.params[param]
                parts = ctc.load_param_parts(ckpt, param, handles)
                if meta["_type"] == "Tensor":
                    _add_output(out, result.weight_map, param, parts["tensor"], shard_path)
                else:
                    with ctc.input_errors_of(shard_path, param, meta, parts):
                        conversions = ctc.convert_parameter(param, meta, parts)
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
            result.target_bytes += ctc.write_safetensors(
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
    ckpt: ctc.TorchaoCheckpoint, out_dir: str, quant_config: dict[str, Any], shards: _ShardLoopResult
) -> None:
    config = dict(ckpt.config)
    config["quantization_config"] = quant_config
    with open(os.path.join(out_dir, ctc.CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    if ckpt.is_sharded:
        index = {
            "metadata": {"total_size": shards.target_bytes},
            "weight_map": dict(sorted(shards.weight_map.items())),
        }
        with open(os.path.join(out_dir, ctc.INDEX_FILE), "w") as f:
            json.dump(index, f, indent=2)


def _copy_other_files(ckpt: ctc.TorchaoCheckpoint, out_dir: str) -> None:
    """Copy the files that are not weights, config or index (tokenizer, generation config, ...)."""
    written = set(ckpt.shard_files) | {ctc.CONFIG_FILE, ctc.INDEX_FILE, MARKER}
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


def main(dir_source: str, dir_target: str, overwrite: bool = False, validate: bool = True) -> None:
    """Convert a torchao checkpoint directory to compressed-tensors (see the module docstring).

    Args:
        dir_source: torchao checkpoint directory (config.json with quant_method torchao, safetensors).
        dir_target: directory to write the compressed-tensors checkpoint to (published only when complete).
        overwrite: replace dir_target if an earlier run of this tool wrote it.
        validate: before publishing, compare every decompressed weight with torchao's dequantization
            and check that transformers loads the result (exits 1 on a mismatch, writing nothing).
    """
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    summary = convert_checkpoint(
        dir_source, dir_target, overwrite=overwrite, validate=validate, report=print_summary
    )
    print(f"wrote {summary.dir_target}")


if __name__ == "__main__":
    run(main)

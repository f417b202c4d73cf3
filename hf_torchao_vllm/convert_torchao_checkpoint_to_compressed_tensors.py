"""Convert a torchao checkpoint (``quant_method: torchao``) to a compressed-tensors checkpoint.

Reads config.json's torchao ``quantization_config`` and the safetensors shards one at a time,
maps every torchao tensor subclass to the compressed-tensors tensors vLLM loads (see
``ct_checkpoint`` for the table), writes ``model*.safetensors`` (+ index when sharded), a
config.json whose ``quantization_config`` is a compressed-tensors config (one config group per
distinct scheme, an ``ignore`` list of the Linear modules left in high precision), and copies every
other file. Output goes to a temporary directory next to the target that is renamed at the end.
With ``validate=True`` (default) the result is checked by ``validate_compressed_tensors_checkpoint``.

    python -m hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors \\
        --dir_source=outputs/quantized --dir_target=outputs/quantized_ct
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from typing import Any

from hf_torchao_vllm import ct_checkpoint as ctc
from pytorch_scripts_common.outputs import MARKER


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


TOOL = "hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors"


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
    dir_source: str, dir_target: str, overwrite: bool = False, validate: bool = False
) -> ConversionSummary:
    """Convert ``dir_source`` to ``dir_target`` shard by shard; see the module docstring.

    The output is written to a staging folder next to ``dir_target`` and moved there only when the
    conversion (and, with ``validate``, the validation) succeeded; ``dir_target`` may not be, contain
    or lie inside ``dir_source``."""
    # Import everything the shard loop uses up front, so the loop's memory is the tensors' alone.
    import compressed_tensors.compressors.pack_quantized.helpers  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torchao.prototype.mx_formats.utils  # noqa: F401
    from compressed_tensors import __version__ as ct_version
    from rich.progress import Progress

    from pytorch_scripts_common.outputs import check_output, staged_dir

    start = time.perf_counter()
    ckpt = ctc.open_torchao_checkpoint(dir_source)
    target = check_output(dir_target, inputs=[dir_source], overwrite=overwrite, tool=TOOL, flag="dir_target")
    with staged_dir(target, tool=TOOL) as staging:
        tmp_dir = str(staging)
        _map_large_allocations()
        rss_before = _current_rss_bytes()
        _reset_peak_rss()
        module_schemes: dict[str, ctc.CtScheme] = {}
        weight_map: dict[str, str] = {}
        source_bytes = target_bytes = largest = 0
        with Progress(transient=True) as progress:
            shard_task = progress.add_task("shards", total=len(ckpt.shard_files))
            for shard in ckpt.shard_files:
                params = ckpt.params_in_shard(shard)
                tensor_task = progress.add_task(f"  {shard}", total=len(params))
                handles: dict[str, Any] = {}
                out: dict = {}
                for param in params:
                    meta = ckpt.params[param]
                    parts = ctc.load_param_parts(ckpt, param, handles)
                    if meta["_type"] == "Tensor":
                        out[param] = parts["tensor"]
                    else:
                        for conv in ctc.convert_parameter(param, meta, parts):
                            module_schemes[conv.module] = conv.scheme
                            for leaf, tensor in conv.tensors.items():
                                out[f"{conv.module}.{leaf}"] = tensor
                    del parts
                    progress.advance(tensor_task)
                handles.clear()
                shard_source_bytes = os.path.getsize(os.path.join(ckpt.directory, shard))
                source_bytes += shard_source_bytes
                largest = max(largest, shard_source_bytes)
                target_bytes += ctc.write_safetensors(os.path.join(tmp_dir, shard), out, {"format": "pt"})
                weight_map.update(dict.fromkeys(out, shard))
                del out
                _release_freed_memory()
                progress.remove_task(tensor_task)
                progress.advance(shard_task)
        peak_rss = _peak_rss_bytes()

        ignore = _ignore_list(ckpt, set(module_schemes))
        quant_config = ctc.build_quantization_config(module_schemes, ignore, ct_version)
        config = dict(ckpt.config)
        config["quantization_config"] = quant_config
        with open(os.path.join(tmp_dir, ctc.CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        if ckpt.is_sharded:
            index = {"metadata": {"total_size": target_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            with open(os.path.join(tmp_dir, ctc.INDEX_FILE), "w") as f:
                json.dump(index, f, indent=2)
        written = set(ckpt.shard_files) | {ctc.CONFIG_FILE, ctc.INDEX_FILE}
        for name in sorted(os.listdir(ckpt.directory)):
            src = os.path.join(ckpt.directory, name)
            if name not in written and os.path.isfile(src) and name != MARKER:
                shutil.copyfile(src, os.path.join(tmp_dir, name))
        if validate:
            from hf_torchao_vllm.validate_compressed_tensors_checkpoint import run_validation

            run_validation(dir_source, tmp_dir)
    counts: dict[str, int] = {}
    for scheme in module_schemes.values():
        counts[scheme.label] = counts.get(scheme.label, 0) + 1
    return ConversionSummary(
        dir_target=os.path.abspath(dir_target),
        num_shards=len(ckpt.shard_files),
        source_bytes=source_bytes,
        target_bytes=target_bytes,
        largest_shard_bytes=largest,
        seconds=time.perf_counter() - start,
        rss_before_bytes=rss_before,
        peak_rss_bytes=peak_rss,
        modules_per_scheme=counts,
        ignore=ignore,
    )


def print_summary(summary: ConversionSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"compressed-tensors checkpoint written to {summary.dir_target}")
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
        dir_target: directory to write the compressed-tensors checkpoint to (created atomically).
        overwrite: replace an earlier output of this tool at dir_target.
        validate: before publishing, compare every decompressed weight with torchao's dequantization
            and check that transformers loads the result (exit 1 and no output on a mismatch).
    """
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    summary = convert_checkpoint(dir_source, dir_target, overwrite=overwrite, validate=validate)
    print_summary(summary)


if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main)

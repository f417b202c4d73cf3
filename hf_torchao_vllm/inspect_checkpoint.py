"""Read-only summary of a torchao or compressed-tensors (or plain) HF checkpoint directory.

Per stored tensor: name, stored type (``plain``, the torchao subclass a flattened component belongs
to, e.g. ``Int8Tensor:qdata``, or the compressed-tensors role such as ``weight_packed`` /
``weight_scale``), dtype, shape, bytes; per torchao weight one row with its subclass, component
shapes (qdata, scale) and total bytes. Also the ``quantization_config`` and totals.

Files are only opened for reading: safetensors headers through ``safe_open`` (no tensor data is
read), ``.bin`` files through ``torch.load(weights_only=True, mmap=True)``. Sharded checkpoints are
read through their ``*.index.json``. Problems (unreadable shard, index pointing at a missing file,
malformed metadata) are warnings and the rest is still summarized; ``--strict`` makes them errors.

    python -m hf_torchao_vllm.inspect_checkpoint \\
        --checkpoint_dir=outputs/hf_torchao_vllm/dense-int8_weight_only
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections import Counter
from pathlib import Path

import torch

# compressed-tensors tensor-name suffixes (compressed_tensors.compressors.*) -> role
COMPRESSED_TENSORS_ROLES = (
    "weight_packed",
    "weight_scale",
    "weight_zero_point",
    "weight_shape",
    "weight_global_scale",
    "weight_g_idx",
    "input_scale",
    "input_global_scale",
    "input_zero_point",
    "output_scale",
)
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U16": 2, "U32": 4, "U64": 8, "F4": 0.5, "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
}  # fmt: skip


@dataclasses.dataclass
class TensorEntry:
    name: str
    file: str
    dtype: str
    shape: list[int]
    num_bytes: int
    stored_type: str = "plain"


@dataclasses.dataclass
class WeightEntry:
    """One logical (possibly quantized) weight, grouping its stored components."""

    name: str
    stored_type: str
    dtype: str
    shape: list[int]
    scale_shape: list[int] | None
    num_bytes: int
    components: list[str]


@dataclasses.dataclass
class CheckpointSummary:
    checkpoint_dir: str
    format: str  # torchao | compressed-tensors | plain | other quant_method
    quantization_config: dict | None
    tensors: list[TensorEntry]
    weights: list[WeightEntry]
    warnings: list[str]

    @property
    def total_bytes(self) -> int:
        return sum(t.num_bytes for t in self.tensors)

    def as_dict(self) -> dict:
        return {
            "checkpoint_dir": self.checkpoint_dir,
            "format": self.format,
            "quantization_config": self.quantization_config,
            "total_bytes": self.total_bytes,
            "num_tensors": len(self.tensors),
            "stored_type_counts": dict(Counter(w.stored_type for w in self.weights)),
            "weights": [dataclasses.asdict(w) for w in self.weights],
            "tensors": [dataclasses.asdict(t) for t in self.tensors],
            "warnings": self.warnings,
        }


class _Problems:
    def __init__(self, strict: bool):
        self.strict = strict
        self.messages: list[str] = []

    def report(self, message: str) -> None:
        if self.strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=3)
        self.messages.append(message)


def weight_files(checkpoint_dir: Path, problems: _Problems) -> list[Path]:
    """The weight files of a checkpoint: from an index (sharded) or the single-file names."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = checkpoint_dir / index_name
        if not index_path.is_file():
            continue
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
            if not all(isinstance(shard, str) for shard in weight_map.values()):
                raise TypeError("weight_map values are not all file names")
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as error:
            problems.report(f"{index_path}: malformed index ({error}); falling back to listing the directory")
            break
        files = []
        for shard in sorted(set(weight_map.values())):
            shard_path = checkpoint_dir / shard
            if Path(shard).name != shard or not _is_file(shard_path):
                problems.report(f"{index_path}: weight_map points to a missing or outside file {shard!r}")
                continue
            files.append(shard_path)
        return files
    return sorted(
        p
        for p in checkpoint_dir.iterdir()
        if p.is_file() and p.suffix in (".safetensors", ".bin") and "index" not in p.name
    )


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for names the OS refuses (too long, a NUL byte) instead of raising."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _role_of(name: str, torchao_types: dict[str, str]) -> tuple[str, str]:
    """(logical weight name, stored type) of one stored tensor name."""
    module, _, leaf = name.rpartition(".")
    # torchao flattening: "<module>._<param>_<component>", e.g. "mlp.up_proj._weight_qdata"
    if leaf.startswith("_"):
        for param_key, subclass in torchao_types.items():
            param_module, _, param_leaf = param_key.rpartition(".")
            prefix = f"_{param_leaf}_"
            if param_module == module and leaf.startswith(prefix):
                return param_key, f"{subclass}:{leaf[len(prefix) :]}"
    for role in COMPRESSED_TENSORS_ROLES:
        if leaf == role:
            return f"{module}.weight", role
    return name, "plain"


def _read_safetensors(path: Path, problems: _Problems) -> tuple[list[TensorEntry], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    entries, metadata = [], {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            for key in handle.keys():  # noqa: SIM118 -- safe_open handles are not iterable
                tensor_slice = handle.get_slice(key)
                shape = list(tensor_slice.get_shape())
                dtype = tensor_slice.get_dtype()
                numel = 1
                for dim in shape:
                    numel *= dim
                entries.append(
                    TensorEntry(key, path.name, dtype, shape, int(numel * DTYPE_BYTES.get(dtype, 1)))
                )
    except (SafetensorError, OSError, ValueError) as error:
        problems.report(f"{path}: unreadable safetensors file ({error})")
        return [], {}
    torchao_types = {}
    for key, value in metadata.items():
        if "." not in key:
            continue  # e.g. "format": "pt"
        try:
            meta = json.loads(value)
        except (json.JSONDecodeError, TypeError, RecursionError):
            problems.report(f"{path}: metadata entry {key!r} is not JSON")
            continue
        if isinstance(meta, dict) and meta.get("_type") not in (None, "Tensor"):
            torchao_types[key] = str(meta["_type"])
    return entries, torchao_types


def _read_bin(path: Path, problems: _Problems) -> tuple[list[TensorEntry], dict[str, str]]:
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    import torchao  # noqa: F401 -- registers torchao tensor subclasses as safe globals for weights_only
    from torchao.utils import TorchAOBaseTensor

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 -- any unpickling failure of untrusted input is reported
        problems.report(f"{path}: unreadable .bin file ({type(error).__name__}: {error})")
        return [], {}
    if not isinstance(state_dict, dict):
        problems.report(f"{path}: not a state dict (got {type(state_dict).__name__})")
        return [], {}
    entries, torchao_types = [], {}
    for key, value in state_dict.items():
        if isinstance(value, TorchAOBaseTensor):
            torchao_types[key] = type(value).__name__
            module, _, leaf = key.rpartition(".")
            for component in getattr(value, "tensor_data_names", []):
                inner = getattr(value, component)
                entries.append(
                    TensorEntry(
                        f"{module}._{leaf}_{component}", path.name, str(inner.dtype).removeprefix("torch."),
                        list(inner.shape), inner.numel() * inner.element_size(),
                    )
                )  # fmt: skip
        elif isinstance(value, torch.Tensor):
            entries.append(
                TensorEntry(key, path.name, str(value.dtype).removeprefix("torch."), list(value.shape),
                            value.numel() * value.element_size())
            )  # fmt: skip
    return entries, torchao_types


def inspect_checkpoint(checkpoint_dir: str | Path, strict: bool = False) -> CheckpointSummary:
    """Summarize a checkpoint directory without modifying it."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        raise ValueError(f"checkpoint_dir {str(checkpoint_dir)!r} is not a directory")
    problems = _Problems(strict)
    quantization_config = None
    config_path = directory / "config.json"
    if config_path.is_file():
        try:
            quantization_config = json.loads(config_path.read_text()).get("quantization_config")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, RecursionError) as error:
            problems.report(f"{config_path}: malformed config.json ({error})")
    else:
        problems.report(f"{directory}: no config.json")
    files = weight_files(directory, problems)
    if not files:
        raise ValueError(
            f"{directory}: no weight files (*.safetensors / *.bin, or shards listed in an index)"
        )
    tensors: list[TensorEntry] = []
    torchao_types: dict[str, str] = {}
    for path in files:
        reader = _read_safetensors if path.suffix == ".safetensors" else _read_bin
        file_entries, file_types = reader(path, problems)
        tensors.extend(file_entries)
        torchao_types.update(file_types)
    grouped: dict[str, list[TensorEntry]] = {}
    for entry in tensors:
        weight_name, entry.stored_type = _role_of(entry.name, torchao_types)
        grouped.setdefault(weight_name, []).append(entry)
    weights = [_weight_entry(name, parts) for name, parts in grouped.items()]
    quant_method = (
        (quantization_config or {}).get("quant_method") if isinstance(quantization_config, dict) else None
    )
    return CheckpointSummary(
        checkpoint_dir=str(directory),
        format=quant_method or "plain",
        quantization_config=quantization_config,
        tensors=tensors,
        weights=sorted(weights, key=lambda w: w.name),
        warnings=problems.messages,
    )


def _weight_entry(name: str, parts: list[TensorEntry]) -> WeightEntry:
    by_role = {p.stored_type.rpartition(":")[2] if ":" in p.stored_type else p.stored_type: p for p in parts}
    main = by_role.get("qdata") or by_role.get("weight_packed") or by_role.get("plain") or parts[0]
    scale = by_role.get("scale") or by_role.get("weight_scale")
    if any(":" in p.stored_type for p in parts):
        stored_type = parts[0].stored_type.partition(":")[0]
    elif len(parts) > 1 or main.stored_type != "plain":
        stored_type = "compressed-tensors:" + "+".join(sorted(by_role))
    else:
        stored_type = "plain"
    return WeightEntry(
        name=name,
        stored_type=stored_type,
        dtype=main.dtype,
        shape=main.shape,
        scale_shape=scale.shape if scale is not None else None,
        num_bytes=sum(p.num_bytes for p in parts),
        components=sorted(p.name for p in parts),
    )


def print_summary(summary: CheckpointSummary, show_tensors: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    table = Table(title=f"{summary.checkpoint_dir} ({summary.format})")
    for column in ("weight", "stored type", "dtype", "shape", "scale shape", "bytes"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for weight in summary.weights:
        scale_shape = "-" if weight.scale_shape is None else "x".join(map(str, weight.scale_shape))
        shape = "x".join(map(str, weight.shape))
        table.add_row(
            weight.name, weight.stored_type, weight.dtype, shape, scale_shape, f"{weight.num_bytes:,}"
        )
    console.print(table)
    if show_tensors:
        tensor_table = Table(title="stored tensors")
        for column in ("tensor", "file", "stored type", "dtype", "shape", "bytes"):
            tensor_table.add_column(column)
        for t in summary.tensors:
            tensor_table.add_row(
                t.name, t.file, t.stored_type, t.dtype, "x".join(map(str, t.shape)), f"{t.num_bytes:,}"
            )
        console.print(tensor_table)
    console.print("quantization_config:", json.dumps(summary.quantization_config, indent=1)[:4000])
    counts = Counter(w.stored_type for w in summary.weights)
    console.print(
        f"totals: {len(summary.weights)} weights, {len(summary.tensors)} stored tensors, "
        f"{summary.total_bytes:,} bytes; by stored type: {dict(counts)}"
    )
    for message in summary.warnings:
        console.print(f"[yellow]warning:[/yellow] {message}")


def main(
    checkpoint_dir: str,
    show_tensors: bool = False,
    json_output: str | None = None,
    strict: bool = False,
    overwrite: bool = False,
) -> None:
    """Print a read-only summary of a torchao / compressed-tensors / plain HF checkpoint directory.

    Args:
        checkpoint_dir: directory with config.json and *.safetensors or *.bin (sharded or not).
        show_tensors: also list every stored tensor (flattened torchao components, compressed-tensors roles).
        json_output: also write the summary as JSON to this file (must be outside checkpoint_dir).
        strict: turn warnings (unreadable shard, missing shard, malformed metadata) into errors.
        overwrite: replace an existing json_output.
    """
    from pytorch_scripts_common.outputs import check_output, staged_file

    target = None
    if json_output is not None:
        target = check_output(
            json_output,
            inputs=[checkpoint_dir],
            overwrite=overwrite,
            tool=TOOL,
            kind="file",
            flag="json_output",
        )
    summary = inspect_checkpoint(checkpoint_dir, strict=strict)
    print_summary(summary, show_tensors)
    if target is not None:
        with staged_file(target) as staging:
            staging.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
        print(f"wrote {target}")


TOOL = "hf_torchao_vllm.inspect_checkpoint"

if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main)

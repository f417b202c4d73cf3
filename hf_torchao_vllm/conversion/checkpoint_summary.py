"""Read-only summary of a torchao, compressed-tensors or plain HF checkpoint directory
(``inspect_checkpoint``), read by ``checkpoint_reader`` with its problems as warnings: the steps of
``python -m hf_torchao_vllm.inspect_checkpoint`` (described there)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

from hf_torchao_vllm.conversion.checkpoint_names import CheckpointNaming
from hf_torchao_vllm.conversion.checkpoint_reader import (
    CONFIG_FILE,
    SAFETENSORS_DTYPES,
    Problems,
    flattened_bin,
    merge_torchao_metadata,
    parse_torchao_metadata,
    read_json_object,
    read_safetensors_header,
    weight_files,
)

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


@dataclasses.dataclass
class StoredTensor:
    name: str
    file: str
    dtype: str  # the safetensors dtype name (checkpoint_reader.SAFETENSORS_DTYPES), for .bin files too
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
    tensors: list[StoredTensor]
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


def _read_weight_file(path: Path, problems: Problems) -> tuple[list[StoredTensor], dict[str, str]]:
    """The stored tensors of one weight file and its torchao metadata; ([], {}) when unreadable."""
    try:
        if path.suffix == ".safetensors":
            header = read_safetensors_header(str(path))
            entries = [
                StoredTensor(name, path.name, e.dtype_name, list(e.shape), e.end - e.begin)
                for name, e in sorted(header.tensors.items())
            ]
            return entries, header.metadata
        tensors, metadata = flattened_bin(str(path))
    except ValueError as error:
        problems.report(str(error))
        return [], {}
    entries = [
        StoredTensor(name, path.name, SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)), list(t.shape),
                     t.numel() * t.element_size())
        for name, t in tensors.items()
    ]  # fmt: skip
    return entries, metadata


def _quantization_config(directory: Path, problems: Problems) -> dict | None:
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        problems.report(f"{directory}: no config.json")
        return None
    try:
        return read_json_object(str(config_path), "config").get("quantization_config")
    except ValueError as error:
        problems.report(str(error))
        return None


def inspect_checkpoint(checkpoint_dir: str | Path, strict: bool = False) -> CheckpointSummary:
    """Summarize a checkpoint directory without modifying it."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        raise ValueError(f"--model {str(checkpoint_dir)!r} is not a directory: pass a checkpoint directory")
    problems = Problems(strict)
    quantization_config = _quantization_config(directory, problems)
    files = [directory / name for name in weight_files(str(directory), problems)]
    if not files:
        raise ValueError(
            f"{directory}: no weight files (*.safetensors / *.bin, or shards listed in an index): "
            "pass a Hugging Face checkpoint directory"
        )
    tensors: list[StoredTensor] = []
    file_metadata: list[dict[str, str]] = []
    for path in files:
        file_entries, metadata = _read_weight_file(path, problems)
        tensors.extend(file_entries)
        file_metadata.append(metadata)
    naming = CheckpointNaming(str(directory)) if (directory / CONFIG_FILE).is_file() else None
    params = parse_torchao_metadata(
        merge_torchao_metadata(file_metadata), [t.name for t in tensors], str(directory), problems, naming
    )
    torchao_types = {name: meta["_type"] for name, meta in params.items() if meta["_type"] != "Tensor"}
    grouped: dict[str, list[StoredTensor]] = {}
    for entry in tensors:
        weight_name, entry.stored_type = _role_of(entry.name, torchao_types)
        grouped.setdefault(weight_name, []).append(entry)
    weights = [_weight_entry(name, parts) for name, parts in grouped.items()]
    quant_method = quantization_config.get("quant_method") if isinstance(quantization_config, dict) else None
    return CheckpointSummary(
        checkpoint_dir=str(directory),
        format=quant_method or "plain",
        quantization_config=quantization_config,
        tensors=tensors,
        weights=sorted(weights, key=lambda w: w.name),
        warnings=problems.messages,
    )


def _weight_entry(name: str, parts: list[StoredTensor]) -> WeightEntry:
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


TOOL = "hf_torchao_vllm.inspect_checkpoint"

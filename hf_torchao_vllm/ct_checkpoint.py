"""Reading torchao checkpoints shard by shard, and the torchao → compressed-tensors tensor mapping.

A torchao checkpoint saved by transformers (``quant_method: torchao``) stores each quantized
parameter ``<module>.<param>`` as several plain tensors ``<module>._<param>_<part>`` (``qdata``,
``scale``, ``zero_point``, ``per_tensor_scale``) plus a JSON entry in the safetensors header
metadata under ``<module>.<param>`` that names the tensor subclass and its attributes. This module
reads that layout without loading the model, and maps each subclass to the tensor names, dtypes
and layouts of compressed-tensors 0.17 (what vLLM's compressed-tensors loader reads):

=========================================  ==========================  ===============================
torchao tensor (config)                    compressed-tensors format   tensors written per module
=========================================  ==========================  ===============================
Float8Tensor + act kwargs (fp8 dynamic)    float-quantized             weight (fp8), weight_scale (f32)
Float8Tensor, no act kwargs (fp8 w-only)   naive-quantized             weight (fp8), weight_scale (f32)
Int8Tensor + act kwargs (W8A8)             int-quantized               weight (i8), weight_scale (f32)
Int8Tensor, no act kwargs (W8A16)          pack-quantized (8 bit)      weight_packed (i32), weight_scale,
                                                                       weight_shape (i64 [2])
IntxUnpackedToInt8Tensor (int4 w-only)     pack-quantized (4 bit)      weight_packed (i32), weight_scale,
                                                                       weight_shape, [weight_zero_point]
NVFP4Tensor (nvfp4 weight-only)            nvfp4-pack-quantized        weight_packed (u8), weight_scale
                                                                       (fp8, un-swizzled),
                                                                       weight_global_scale (f32 [1])
=========================================  ==========================  ===============================

NVFP4 global scale: torchao multiplies (``w = q * scale_e4m3 * per_tensor_scale``);
compressed-tensors and vLLM divide (``w = q * scale_e4m3 / weight_global_scale``), so the converter
writes ``weight_global_scale = 1 / per_tensor_scale`` (``1.0`` when torchao has no per-tensor
scale). ``1 / (1 / p)`` is not always ``p`` in float32, so NVFP4 is compared with a tolerance.

FP8 dynamic activations: torchao's activation lower bound (``hp_value_lb``; recipes.py sets 1e-12 on
CPU against NaN from all-zero rows) has no compressed-tensors field; bounds up to 2**-9 are dropped
because vLLM floors the scale at least as high itself (see ``FP8_ACTIVATION_LB_MAX``), larger bounds
and upper bounds are refused.

MoE: transformers stores routed experts as fused 3D parameters (``mlp.experts.gate_up_proj``
[E, 2I, H], ``mlp.experts.down_proj`` [E, H, I]). compressed-tensors schemes apply to 2D Linear
weights, and both vLLM's ``RoutedExperts.load_weights`` and transformers' compressed-tensors
loader (``DecompressExperts``) read quantized experts per expert, so quantized 3D experts are
unfused into ``mlp.experts.<e>.gate_proj`` / ``up_proj`` / ``down_proj``. Unquantized fused
experts keep their fused names (both loaders accept them).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import errno
import json
import math
import mmap
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

__all__ = [
    "CONFIG_FILE",
    "INDEX_FILE",
    "SUPPORTED_TORCHAO_TYPES",
    "CtScheme",
    "ModuleConversion",
    "TorchaoCheckpoint",
    "build_quantization_config",
    "convert_parameter",
    "open_torchao_checkpoint",
    "torchao_dequantize",
]

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"

# The torchao tensor subclasses this converter maps (name -> what it becomes).
SUPPORTED_TORCHAO_TYPES = {
    "Float8Tensor": "FP8 (dynamic per-row / per-tensor / 1x128-128x128 block, or weight-only)",
    "Int8Tensor": "int8 W8A8 (int-quantized) or W8A16 (pack-quantized)",
    "IntxUnpackedToInt8Tensor": "intN weight-only, e.g. int4 W4A16 (pack-quantized)",
    "NVFP4Tensor": "NVFP4 weight-only (nvfp4-pack-quantized, NVFP4A16)",
    "MXTensor": "MXFP8 / MXFP4 (mxfp8-quantized / mxfp4-pack-quantized)",
}
# Subclasses torchao can save that have no compressed-tensors equivalent here, with the reason.
UNSUPPORTED_TORCHAO_TYPES = {
    "Int4Tensor": "its zero point lives in the float domain and its packing is mslk-specific; "
    "quantize with IntxWeightOnlyConfig(weight_dtype=torch.int4) instead",
    "Int4TilePackedTo4dTensor": "its tile packing is a CUDA tinygemm layout; "
    "quantize with IntxWeightOnlyConfig(weight_dtype=torch.int4) instead",
    "Int4PlainInt32Tensor": "its zero point lives in the float domain; "
    "quantize with IntxWeightOnlyConfig(weight_dtype=torch.int4) instead",
}


def _supported_help() -> str:
    return "; ".join(f"{name}: {what}" for name, what in SUPPORTED_TORCHAO_TYPES.items())


# --------------------------------------------------------------------------------------------
# Reading the checkpoint
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TorchaoCheckpoint:
    """A torchao checkpoint directory, read from its headers only (no tensor data loaded).

    ``shard_files``: safetensors shard file names in index order. ``stored_to_shard``: stored
    tensor name -> shard file. ``params``: logical parameter name (``<module>.<param>``) -> its
    metadata dict (``_type``, ``_data``, ``_tensor_data_names``); plain tensors have ``_type``
    ``Tensor``. ``config``: the parsed config.json.
    """

    directory: str
    config: dict[str, Any]
    shard_files: list[str]
    stored_to_shard: dict[str, str]
    params: dict[str, dict[str, Any]]
    is_sharded: bool

    @property
    def quantization_config(self) -> dict[str, Any]:
        return self.config["quantization_config"]

    def stored_names(self, param: str) -> list[str]:
        """Stored tensor names that make up logical parameter ``param``."""
        meta = self.params[param]
        if meta["_type"] == "Tensor":
            return [param]
        module, _, leaf = param.rpartition(".")
        return [f"{module}._{leaf}_{part}" for part in meta["_tensor_data_names"]]

    def owner_shard(self, param: str) -> str:
        """The shard that holds the parameter's first stored tensor (where it is converted)."""
        return self.stored_to_shard[self.stored_names(param)[0]]

    def params_in_shard(self, shard: str) -> list[str]:
        return [p for p in self.params if self.owner_shard(p) == shard]


def _read_json(path: str, what: str) -> Any:
    """Parse a JSON file; a user mistake (ValueError naming ``path``) when it is not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        problem = "is nested too deeply" if isinstance(e, RecursionError) else f"is not valid JSON ({e})"
        raise ValueError(f"{what} {path} {problem}: re-save the checkpoint") from e


def read_json_object(path: str, what: str) -> dict[str, Any]:
    value = _read_json(path, what)
    if not isinstance(value, dict):
        raise ValueError(
            f"{what} {path} holds a JSON {type(value).__name__}, not an object: re-save the checkpoint"
        )
    return value


def read_shard_index(directory: str) -> tuple[list[str], dict[str, str] | None]:
    """The safetensors shard files of a Hugging Face checkpoint directory, in index order, and the
    index's ``weight_map`` (None for a single ``model.safetensors``). Every listed shard exists."""
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index_path):
        index = read_json_object(index_path, "index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"index {index_path} has no 'weight_map' object: re-save the checkpoint")
        for key, shard in weight_map.items():
            if not isinstance(shard, str) or shard in ("", ".", "..") or os.path.basename(shard) != shard:
                raise ValueError(
                    f"index {index_path} maps {key!r} to {shard!r}, not a file name in {directory}: "
                    "re-save the checkpoint"
                )
        shard_files = list(dict.fromkeys(weight_map.values()))
    elif os.path.isfile(os.path.join(directory, "model.safetensors")):
        shard_files, weight_map = ["model.safetensors"], None
    else:
        bins = sorted(f for f in os.listdir(directory) if f.endswith(".bin"))
        fix = f"re-save it with safetensors (it holds {bins})" if bins else "pass a safetensors checkpoint"
        raise ValueError(f"{directory} has no model.safetensors or {INDEX_FILE}: {fix}")
    for shard in shard_files:
        if not os.path.isfile(os.path.join(directory, shard)):
            raise ValueError(
                f"shard {shard!r} listed in {index_path} is missing from {directory}: "
                "copy the complete checkpoint"
            )
    return shard_files, weight_map


def open_torchao_checkpoint(directory: str) -> TorchaoCheckpoint:
    """Validate ``directory`` as a torchao checkpoint and read its structure from the headers."""
    if not os.path.isdir(directory):
        raise ValueError(f"torchao checkpoint {directory} does not exist: pass a checkpoint directory")
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise ValueError(
            f"{directory} has no {CONFIG_FILE}: pass a Hugging Face checkpoint directory saved with a "
            "TorchAoConfig"
        )
    config = read_json_object(config_path, "config")
    qconfig = config.get("quantization_config")
    if not isinstance(qconfig, dict) or qconfig.get("quant_method") != "torchao":
        found = None if not isinstance(qconfig, dict) else qconfig.get("quant_method")
        raise ValueError(
            f"{config_path} has quant_method {found!r}, expected 'torchao': this converter reads "
            "checkpoints saved by quantize_hf_model_with_torchao.py (TorchAoConfig)"
        )

    has_safetensors = os.path.isfile(os.path.join(directory, INDEX_FILE)) or os.path.isfile(
        os.path.join(directory, "model.safetensors")
    )
    if not has_safetensors and bin_shards(directory):
        return open_torchao_checkpoint(safetensors_copy_of_bin_checkpoint(directory))
    shard_files, weight_map = read_shard_index(directory)
    stored_to_shard: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for shard in shard_files:
        path = os.path.join(directory, shard)
        header = read_safetensors_header(path)
        for key in header.tensors:
            if key in stored_to_shard:
                raise ValueError(
                    f"tensor {key!r} is stored in both {stored_to_shard[key]} and {shard} in {directory}: "
                    "re-save the checkpoint"
                )
            stored_to_shard[key] = shard
        metadata.update(header.metadata)
    if weight_map is not None:
        for key, shard in weight_map.items():
            if stored_to_shard.get(key) != shard:
                raise ValueError(
                    f"{INDEX_FILE} in {directory} maps {key!r} to {shard!r}, which does not contain it: "
                    "re-save the checkpoint"
                )

    _check_layer_count(config, config_path, len(stored_to_shard))
    params = _parse_params(metadata, stored_to_shard, directory)
    return TorchaoCheckpoint(directory, config, shard_files, stored_to_shard, params, weight_map is not None)


def _check_layer_count(config: dict[str, Any], config_path: str, num_tensors: int) -> None:
    """Refuse a ``num_hidden_layers`` (top level or in a sub-config) above the number of stored
    tensors: every layer stores at least one, and the ignore list builds the model from config.json
    on the meta device, where a corrupted count of 10**18 layers would run until memory is gone."""
    for cfg in [config, *(v for v in config.values() if isinstance(v, dict))]:
        layers = cfg.get("num_hidden_layers")
        if type(layers) is int and layers > num_tensors:
            raise ValueError(
                f"{config_path} says num_hidden_layers={layers}, but the shards hold only {num_tensors} "
                "tensors: fix config.json or re-save the checkpoint"
            )


BIN_INDEX_FILE = "pytorch_model.bin.index.json"


def bin_shards(directory: str) -> list[str]:
    """The ``pytorch_model*.bin`` shards of ``directory``, in index order when there is an index."""
    index_path = os.path.join(directory, BIN_INDEX_FILE)
    if os.path.isfile(index_path):
        weight_map = read_json_object(index_path, "index").get("weight_map") or {}
        shards = list(dict.fromkeys(weight_map.values())) if isinstance(weight_map, dict) else [None]
        for shard in shards:
            if not isinstance(shard, str) or os.path.basename(shard) != shard or not shard.endswith(".bin"):
                raise ValueError(
                    f"index {index_path} lists {shard!r}, not a .bin file name in {directory}: "
                    "re-save the checkpoint"
                )
            if not os.path.isfile(os.path.join(directory, shard)):
                raise ValueError(
                    f"shard {shard!r} listed in {index_path} is missing from {directory}: "
                    "copy the complete checkpoint"
                )
        return shards
    return sorted(f for f in os.listdir(directory) if re.fullmatch(r"pytorch_model(-\d+-of-\d+)?\.bin", f))


def _load_bin(path: str) -> dict[str, torch.Tensor]:
    """A torchao ``.bin`` state dict, unpickled with ``weights_only=True`` (torchao registers its tensor
    subclasses as safe globals): a pickle that would run code or build other objects is refused."""
    import torchao  # noqa: F401 -- registers the tensor subclasses for weights_only loading

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # pickle / zip errors of every kind: the file is not a safe state dict
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load {path} with torch.load(weights_only=True): {first}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors: re-save the checkpoint")
    return state


def safetensors_copy_of_bin_checkpoint(directory: str) -> str:
    """A temporary directory with ``directory``'s torchao ``pytorch_model*.bin`` shards rewritten as
    safetensors with torchao's metadata (``flatten_tensor_state_dict``), and its other files.

    Every shard carries the metadata of all shards, as transformers writes it. The directory is removed
    at interpreter exit."""
    import atexit
    import shutil
    import tempfile

    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    shards = bin_shards(directory)
    metadata: dict[str, str] = {}
    tensor_names: list[str] = []
    for shard in shards:  # pass 1: the metadata of every shard
        _, shard_metadata = flatten_tensor_state_dict(_load_bin(os.path.join(directory, shard)))
        tensor_names += json.loads(shard_metadata.pop("tensor_names", "[]"))
        metadata.update(shard_metadata)
    metadata["tensor_names"] = json.dumps(tensor_names)
    copy = tempfile.mkdtemp(prefix="torchao-bin-")
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map = {}
    for shard, name in zip(shards, names, strict=True):  # pass 2: the tensors, one shard at a time
        tensors, _ = flatten_tensor_state_dict(_load_bin(os.path.join(directory, shard)))
        write_safetensors(os.path.join(copy, name), tensors, metadata)
        weight_map.update(dict.fromkeys(tensors, name))
    if len(shards) > 1:
        with open(os.path.join(copy, INDEX_FILE), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    for item in os.listdir(directory):
        source = os.path.join(directory, item)
        if os.path.isfile(source) and item not in shards and item != BIN_INDEX_FILE:
            shutil.copyfile(source, os.path.join(copy, item))
    return copy


def _parse_params(
    metadata: dict[str, str], stored_to_shard: dict[str, str], directory: str
) -> dict[str, dict[str, Any]]:
    """Logical parameters from the torchao safetensors metadata (plain tensors too)."""

    def bad(what: str) -> ValueError:
        return ValueError(
            f"torchao metadata in the safetensors files of {directory}: {what}: re-save the checkpoint"
        )

    if "tensor_names" not in metadata:
        raise ValueError(
            f"the safetensors files in {directory} carry no torchao metadata ('tensor_names'): "
            "pass a checkpoint saved by transformers with a TorchAoConfig"
        )
    tensor_names = _parse_metadata_json(metadata["tensor_names"], "'tensor_names'", bad)
    if not isinstance(tensor_names, list) or not all(isinstance(n, str) for n in tensor_names):
        raise bad("'tensor_names' is not a list of names")
    params: dict[str, dict[str, Any]] = {}
    claimed: set[str] = set()
    for name in tensor_names:
        raw = metadata.get(name)
        if raw is None:
            raise bad(f"no entry for tensor {name!r}")
        meta = _parse_metadata_json(raw, repr(name), bad)
        if not isinstance(meta, dict) or not isinstance(meta.get("_type"), str):
            raise bad(f"the entry of {name!r} has no '_type'")
        if meta["_type"] == "Tensor":
            # Plain tensors are taken from the shards below: transformers may store them under
            # other names than the model's (e.g. unquantized fused experts saved per expert).
            continue
        data_names = meta.get("_tensor_data_names")
        if (
            not isinstance(data_names, list)
            or not data_names
            or not all(isinstance(p, str) for p in data_names)
            or not isinstance(meta.get("_data"), dict)
        ):
            raise bad(f"the entry of {name!r} ({meta['_type']}) lacks '_data' / '_tensor_data_names'")
        module, _, leaf = name.rpartition(".")
        parts = [f"{module}._{leaf}_{p}" for p in data_names]
        for part in parts:
            if part not in stored_to_shard:
                raise bad(f"tensor {part!r} of {name!r} ({meta['_type']}) is missing from the shards")
        claimed.update(parts)
        params[name] = meta
    for stored in stored_to_shard:
        if stored in params:
            raise bad(f"{stored!r} is stored as a plain tensor and described as a {params[stored]['_type']}")
        if stored not in claimed:
            params[stored] = {"_type": "Tensor"}
    return params


def _parse_metadata_json(raw: str, what: str, bad: Any) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise bad(f"the entry {what} is not JSON ({type(e).__name__})") from e


# safetensors' own limit on the JSON header (``MAX_HEADER_SIZE`` in the safetensors crate).
SAFETENSORS_MAX_HEADER_BYTES = 100_000_000


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: dtype, shape and byte range within the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclasses.dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header: ``tensors`` by name, ``metadata``, where the data starts."""

    path: str
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def read_safetensors_header(path: str) -> SafetensorsHeader:
    """Parse and check the header of the safetensors file ``path`` (no tensor data is read).

    The file must be what safetensors itself accepts: an 8-byte little-endian header length, a JSON
    object of ``{name: {dtype, shape, data_offsets}}`` plus an optional ``__metadata__`` of strings,
    and tensor byte ranges that tile the rest of the file exactly, each as long as its shape and
    dtype say. Anything else is a ValueError that names the file, the problem and the fix.
    """

    def bad(problem: str) -> ValueError:
        return ValueError(
            f"{path} is not a valid safetensors file: {problem}: re-download or re-save the checkpoint"
        )

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise bad(f"it is {size} bytes long, shorter than the 8-byte header length (truncated)")
        header_len = int.from_bytes(prefix, "little")
        if header_len > size - 8:
            raise bad(f"its header length {header_len} runs past the end of the {size}-byte file (truncated)")
        if header_len > SAFETENSORS_MAX_HEADER_BYTES:
            raise bad(
                f"its header length {header_len} is above safetensors' limit {SAFETENSORS_MAX_HEADER_BYTES}"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, duplicate keys
        detail = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0][:200]
        raise bad(f"its header is not valid JSON ({detail})") from e
    if not isinstance(header, dict):
        raise bad(f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("its __metadata__ is not an object of strings")
    tensors: dict[str, TensorEntry] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise bad(f"the entry of tensor {name!r} is not an object")
        dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        dtype = _DTYPES_BY_SAFETENSORS_NAME.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise bad(
                f"tensor {name!r} has dtype {dtype_name!r}, not one of {sorted(_DTYPES_BY_SAFETENSORS_NAME)}"
            )
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise bad(f"tensor {name!r} has shape {shape!r}, not a list of sizes")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            raise bad(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
        begin, end = offsets
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise bad(
                f"tensor {name!r} ({dtype_name} {shape}) needs {nbytes} bytes but its data_offsets "
                f"[{begin}, {end}] hold {end - begin}"
            )
        tensors[name] = TensorEntry(dtype, tuple(shape), begin, end)
    data_len = size - 8 - header_len
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if entry.begin != position:
            what = "overlaps the tensor before it" if entry.begin < position else "leaves a gap before it"
            raise bad(f"the data of tensor {name!r} at byte {entry.begin} {what} (expected byte {position})")
        position = entry.end
    if position > data_len:
        raise bad(
            f"its header lists {position} bytes of tensor data but the file holds {data_len} (truncated)"
        )
    if position < data_len:
        raise bad(f"{data_len - position} bytes follow the last tensor's data")
    return SafetensorsHeader(path, tensors, metadata, 8 + header_len)


class ShardReader:
    """Tensors of one safetensors file as zero-copy views of a read-only memory map.

    ``get_tensor`` returns a view of the mapped file (copied only when its offset is not aligned
    to its dtype): reading costs page faults on the page cache, not a copy. The mapping is
    read-only, so writing into a returned tensor crashes the process instead of altering the
    file: converters must not modify their inputs in place. Mapped pages a conversion touched
    count in RSS until ``drop_pages`` unmaps them (they stay in the page cache). ``source_offset``
    tells the writer when a tensor is an unchanged byte range of this file, so that it can copy
    file to file in the kernel. The mapping lives as long as the last tensor viewing it.
    """

    def __init__(self, path: str, header: SafetensorsHeader | None = None):
        self._fd = -1
        self.path = path
        self.header = header or read_safetensors_header(path)
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._mapping: mmap.mmap | None = None
        self._bytes: torch.Tensor | None = None
        if self.header.tensors and any(e.end > e.begin for e in self.header.tensors.values()):
            self._mapping = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
            if len(self._mapping) != os.fstat(self._fd).st_size:
                raise ValueError(f"{path} changed while it was opened: run again once it is complete")
            with warnings.catch_warnings():  # "the given buffer is not writable": intended, see above
                warnings.simplefilter("ignore", UserWarning)
                self._bytes = torch.frombuffer(self._mapping, dtype=torch.uint8)

    def get_tensor(self, name: str) -> torch.Tensor:
        entry = self.header.tensors.get(name)
        if entry is None:
            raise ValueError(f"{self.path} has no tensor {name!r}: re-save the checkpoint")
        if entry.end == entry.begin or self._bytes is None:
            return torch.empty(entry.shape, dtype=entry.dtype)
        start = self.header.data_start + entry.begin
        flat = self._bytes[start : start + entry.end - entry.begin]
        if start % entry.dtype.itemsize:
            flat = flat.clone()  # torch views need dtype-aligned offsets; other writers may not align
        return flat.view(entry.dtype).reshape(entry.shape)

    def source_offset(self, tensor: torch.Tensor) -> int | None:
        """File offset of ``tensor``'s bytes when it is a contiguous view of this mapping, else None."""
        if self._bytes is None or tensor.device.type != "cpu" or not tensor.is_contiguous():
            return None
        start = tensor.data_ptr() - self._bytes.data_ptr()
        nbytes = tensor.numel() * tensor.element_size()
        if start >= 0 and start + nbytes <= self._bytes.numel():
            return start
        return None

    def fileno(self) -> int:
        return self._fd

    def drop_pages(self) -> None:
        """Unmap the pages touched so far (they stay in the page cache); views stay valid."""
        if self._mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._mapping.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Close the file descriptor; the mapping is released with the last tensor viewing it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._bytes = None
        self._mapping = None

    def __del__(self) -> None:
        self.close()


def load_param_parts(ckpt: TorchaoCheckpoint, param: str, handles: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The stored tensors of one logical parameter (``qdata``, ``scale``, ... or the plain one), as
    read-only views of the mapped shards (see ``ShardReader``).

    ``handles``: ``ShardReader`` by shard name (opened lazily, so a parameter whose scale sits in
    another shard maps only that file).
    """
    out = {}
    meta = ckpt.params[param]
    names = ckpt.stored_names(param)
    parts = ["tensor"] if meta["_type"] == "Tensor" else meta["_tensor_data_names"]
    for part, stored in zip(parts, names, strict=True):
        shard = ckpt.stored_to_shard[stored]
        if shard not in handles:
            handles[shard] = ShardReader(os.path.join(ckpt.directory, shard))
        out[part] = handles[shard].get_tensor(stored)
    return out


@contextlib.contextmanager
def input_errors_of(
    path: str, param: str, meta: dict[str, Any], parts: dict[str, torch.Tensor]
) -> Iterator[None]:
    """Report the failure of mapping / dequantizing one stored parameter as a problem of the input.

    Metadata and tensor shapes come from the checkpoint file ``path``: metadata without a field
    torchao writes, or tensors whose shapes contradict it, fail inside the mapping as KeyError /
    TypeError / IndexError / a torch RuntimeError. Those become one ValueError naming the file and
    the parameter (``PYTORCH_SCRIPTS_DEBUG=1`` shows the original traceback); the mapping's own
    ValueErrors (an unsupported type, ...) get the file name prefixed.
    """
    try:
        yield
    except ValueError as e:  # the mapping's own refusals (unsupported type, ...): name the file
        raise ValueError(f"{path}: {e}") from e
    except (KeyError, IndexError, TypeError, RuntimeError) as e:
        detail = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in parts.items())
        raise ValueError(
            f"{path}: cannot read {param!r} ({meta.get('_type')}; {shapes}) ({detail}): its torchao "
            "metadata or tensor shapes are not what torchao saves: re-save the checkpoint with torchao"
        ) from e


# --------------------------------------------------------------------------------------------
# torchao reference dequantization
# --------------------------------------------------------------------------------------------


def build_torchao_tensor(meta: dict[str, Any], parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rebuild the torchao tensor subclass from its metadata (only torchao's allow-listed classes)."""
    from torchao.prototype.safetensors.safetensors_utils import object_from_dict

    data = dict(meta["_data"])
    # How activations are quantized does not change the stored weight, and torchao's allow-list
    # cannot rebuild every activation granularity (e.g. PerBlock): drop it for dequantization.
    for key in ("act_quant_kwargs", "activation_quantization"):
        if key in data:
            data[key] = None
    data.update(parts)
    return object_from_dict({"_type": meta["_type"], "_data": data})


def torchao_dequantize(meta: dict[str, Any], parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """torchao's own dequantization of a stored parameter (plain tensors are returned as is)."""
    if meta["_type"] == "Tensor":
        return parts["tensor"]
    return build_torchao_tensor(meta, parts).dequantize()


# --------------------------------------------------------------------------------------------
# Schemes and per-parameter conversion
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CtScheme:
    """A compressed-tensors scheme without targets: ``weights`` / ``input_activations`` are
    ``QuantizationArgs`` dicts stored as sorted JSON so schemes hash and group; ``label`` is a
    short human name (e.g. ``FP8_DYNAMIC``)."""

    label: str
    format: str
    weights_json: str
    input_activations_json: str | None = None

    def to_config_group(self, targets: list[str]) -> dict[str, Any]:
        group = {
            "targets": targets,
            "weights": json.loads(self.weights_json),
            "input_activations": None
            if self.input_activations_json is None
            else json.loads(self.input_activations_json),
            "output_activations": None,
            "format": self.format,
        }
        return group


def _args(**kwargs: Any) -> str:
    return json.dumps(kwargs, sort_keys=True)


@dataclasses.dataclass
class ModuleConversion:
    """The compressed-tensors tensors of one quantized module, and its scheme."""

    module: str
    scheme: CtScheme
    tensors: dict[str, torch.Tensor]


def _unsupported(param: str, type_name: str, why: str) -> ValueError:
    return ValueError(
        f"tensor {param!r} is a torchao {type_name}, which has no compressed-tensors equivalent in this "
        f"converter: {why}. Supported: {_supported_help()}"
    )


def _granularity_type(kwargs: dict[str, Any] | None) -> tuple[str | None, Any]:
    if kwargs is None:
        return None, None
    gran = kwargs["_data"].get("granularity")
    if gran is None:
        return None, None
    return gran["_type"], gran.get("_data", {})


def _weight_strategy(param: str, shape: tuple[int, ...], block_size: list[int]) -> dict[str, Any]:
    """compressed-tensors strategy args for a torchao ``block_size`` over the last two dims."""
    rows, cols = shape[-2], shape[-1]
    block_rows, block_cols = block_size[-2], block_size[-1]
    if any(b != 1 for b in block_size[:-2]):
        raise ValueError(f"{param!r}: block_size {block_size} spans experts; only per-expert scales map")
    if block_rows == 1 and block_cols == cols:
        return {"strategy": "channel"}
    if block_rows == rows and block_cols == cols:
        return {"strategy": "tensor"}
    if block_rows == 1:
        return {"strategy": "group", "group_size": block_cols}
    if rows % block_rows or cols % block_cols:
        raise ValueError(f"{param!r}: block {block_rows}x{block_cols} does not tile shape {shape}")
    return {"strategy": "block", "block_structure": [block_rows, block_cols]}


# torchao's ``hp_value_lb`` (``activation_value_lb`` of Float8DynamicActivationFloat8WeightConfig)
# clamps each activation block's max |x| from below before ``scale = max|x| / 448``; recipes.py sets
# 1e-12 on CPU so that an all-zero row gets a finite scale instead of 0 / 0 = NaN. It only touches
# activations (torchao quantizes the weight without it), and compressed-tensors has no field for
# it. None is needed for a bound <= 2**-9: vLLM's QuantFP8 (the input quantization of its fp8
# linear kernels) floors the dynamic scale at 1 / (448 * 512), i.e. max |x| at 2**-9 (vllm 0.32,
# model_executor/layers/quantization/input_quant_fp8.py, forward_native), and max(max(a, lb), 2**-9) ==
# max(a, 2**-9) for every a when lb <= 2**-9: vLLM computes the same scales with or without it.
# compressed-tensors' own dynamic quantization (transformers) only replaces a zero scale by an eps;
# it differs from torchao-with-the-bound only on blocks with 0 < max |x| < lb (an all-zero block
# quantizes to zeros either way). A larger lower bound, or any upper bound (it clips outliers),
# changes vLLM's result and is refused.
FP8_ACTIVATION_LB_MAX = 2.0**-9


def _activation_clamp_problem(lower: Any, upper: Any) -> str | None:
    """Why torchao's fp8 activation clamp ``(hp_value_lb, hp_value_ub)`` cannot be dropped, or None."""
    if upper is not None:
        return f"an activation upper bound (hp_value_ub={upper!r}) clips activations"
    if lower is None:
        return None
    if not isinstance(lower, (int, float)) or isinstance(lower, bool) or lower != lower:
        return f"activation lower bound hp_value_lb={lower!r} is not a number"
    if lower > FP8_ACTIVATION_LB_MAX:
        return (
            f"activation lower bound hp_value_lb={lower!r} is above {FP8_ACTIVATION_LB_MAX:g} "
            "(vLLM's own floor on max |x|), so vLLM would quantize small activations differently"
        )
    return None


def _float8(param: str, meta: dict[str, Any], parts: dict[str, torch.Tensor]) -> tuple[CtScheme, dict]:
    data = meta["_data"]
    qdata, scale = parts["qdata"], parts["scale"]
    if qdata.dtype != torch.float8_e4m3fn:
        raise _unsupported(param, "Float8Tensor", f"qdata dtype {qdata.dtype} (only float8_e4m3fn maps)")
    strategy = _weight_strategy(param, tuple(qdata.shape), data["block_size"])
    weights = _args(num_bits=8, type="float", symmetric=True, dynamic=False, **strategy)
    act_kwargs = data.get("act_quant_kwargs")
    if act_kwargs is None:
        scheme = CtScheme("FP8_WEIGHT_ONLY", "naive-quantized", weights)
    else:
        act = act_kwargs["_data"]
        problem = _activation_clamp_problem(act.get("hp_value_lb"), act.get("hp_value_ub"))
        if problem is not None:
            raise _unsupported(param, "Float8Tensor", problem)
        gran, gran_data = _granularity_type(act_kwargs)
        if gran == "PerRow":
            input_args = _args(num_bits=8, type="float", symmetric=True, dynamic=True, strategy="token")
            label = "FP8_DYNAMIC"
        elif gran == "PerTensor":
            input_args = _args(num_bits=8, type="float", symmetric=True, dynamic=True, strategy="tensor")
            label = "FP8_PER_TENSOR_DYNAMIC"
        elif gran == "PerBlock" and list(gran_data.get("block_size", [])[:1]) == [1]:
            group = gran_data["block_size"][-1]
            input_args = _args(
                num_bits=8, type="float", symmetric=True, dynamic=True, strategy="group", group_size=group
            )
            label = "FP8_BLOCK"
        else:
            raise _unsupported(param, "Float8Tensor", f"activation granularity {gran} {gran_data}")
        scheme = CtScheme(label, "float-quantized", weights, input_args)
    if strategy["strategy"] == "tensor":
        scale = scale.reshape(*scale.shape[:-2], 1)  # [.., 1, 1] -> [.., 1]: per-tensor scale
    return scheme, {"weight": qdata, "weight_scale": scale}


def _is_symmetric(zero_point: torch.Tensor | None) -> bool:
    """torchao stores zero points even for symmetric mappings; all zeros means symmetric."""
    return zero_point is None or not bool(zero_point.any())


def _pack_int32(values: torch.Tensor, num_bits: int, packed_dim: int = 1) -> torch.Tensor:
    """compressed-tensors' ``pack_to_int32`` layout: value ``i`` of each group of ``32 // num_bits``
    along ``packed_dim`` sits in bits ``[i * num_bits, (i + 1) * num_bits)``, offset by
    ``2 ** (num_bits - 1)`` to unsigned. For 8 and 4 bits along rows that is, on a little-endian
    machine, the offset bytes (or nibble pairs, low nibble first) viewed as int32: one uint8 copy
    (8 bits: none while a ``RepackPlan`` is active, the writer computes it) instead of
    compressed-tensors' int32 intermediates (4-5x the tensor), which matters for the streaming memory
    bound. ``values`` is never modified. Other cases use compressed-tensors' own function.
    Validation unpacks with compressed-tensors, so both paths are checked bit for bit.
    """
    import sys

    cols = values.shape[-1]
    if packed_dim == 1 and values.ndim == 2 and sys.byteorder == "little" and cols % (32 // num_bits) == 0:
        # v + 2**(n-1) of a two's-complement n-bit value is its low n bits with the top one flipped.
        as_bytes = values.contiguous().view(torch.uint8)
        if num_bits == 8:
            plan = _REPACK_PLAN.get()
            if plan is not None:  # computed while the shard is written, see RepackPlan
                return plan.defer_xor(as_bytes, 0x80).view(torch.int32)
            # NumPy runs it on one thread: torch's two-thread kernel was 3x slower on a loaded
            # 2-core machine (its threads wait for each other at every call).
            return torch.from_numpy(np.bitwise_xor(as_bytes.numpy(), 0x80)).view(torch.int32)
        if num_bits == 4:
            low = (as_bytes[:, 0::2] ^ 0x08) & 0x0F
            high = ((as_bytes[:, 1::2] ^ 0x08) & 0x0F) << 4
            return (low | high).contiguous().view(torch.int32)
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    return pack_to_int32(values.contiguous(), num_bits, packed_dim=packed_dim)


def _int8(param: str, meta: dict[str, Any], parts: dict[str, torch.Tensor]) -> tuple[CtScheme, dict]:
    data = meta["_data"]
    qdata, scale = parts["qdata"], parts["scale"]
    if not _is_symmetric(parts.get("zero_point")):
        raise _unsupported(param, "Int8Tensor", "non-zero zero points (asymmetric int8 weights)")
    strategy = _weight_strategy(param, tuple(qdata.shape), data["block_size"])
    if strategy["strategy"] not in ("channel", "group"):
        raise _unsupported(param, "Int8Tensor", f"weight granularity {strategy}")
    if scale.ndim == qdata.ndim - 1:
        scale = scale.unsqueeze(-1)
    weights = _args(num_bits=8, type="int", symmetric=True, dynamic=False, **strategy)
    act_kwargs = data.get("act_quant_kwargs")
    if act_kwargs is None:
        scheme = CtScheme(f"W8A16_{strategy['strategy'].upper()}", "pack-quantized", weights)
        tensors = {
            "weight_packed": _pack_int32(qdata, 8),
            "weight_scale": scale,
            "weight_shape": torch.tensor(qdata.shape[-2:], dtype=torch.int64),
        }
        return scheme, tensors
    act = act_kwargs["_data"]
    gran, _ = _granularity_type(act_kwargs)
    if gran != "PerRow":
        raise _unsupported(param, "Int8Tensor", f"activation granularity {gran} (only per-row/token maps)")
    symmetric = act.get("mapping_type", {}).get("_data", "SYMMETRIC") == "SYMMETRIC"
    input_args = _args(num_bits=8, type="int", symmetric=symmetric, dynamic=True, strategy="token")
    label = "W8A8_INT8" if symmetric else "W8A8_INT8_ASYM_ACT"
    return CtScheme(label, "int-quantized", weights, input_args), {
        "weight": qdata,
        "weight_scale": scale,
    }


_INTX_BITS = {f"int{b}": b for b in range(1, 9)}


def _intx(param: str, meta: dict[str, Any], parts: dict[str, torch.Tensor]) -> tuple[CtScheme, dict]:
    data = meta["_data"]
    if data.get("activation_quantization") is not None:
        raise _unsupported(
            param, "IntxUnpackedToInt8Tensor", "activation quantization (only weight-only maps)"
        )
    target = data["target_dtype"]["_data"]
    if target not in _INTX_BITS:
        raise _unsupported(param, "IntxUnpackedToInt8Tensor", f"target dtype {target}")
    num_bits = _INTX_BITS[target]
    qdata, scale, zero_point = parts["qdata"], parts["scale"], parts.get("zero_point")
    strategy = _weight_strategy(param, tuple(qdata.shape), data["block_size"])
    if strategy["strategy"] not in ("channel", "group"):
        raise _unsupported(param, "IntxUnpackedToInt8Tensor", f"weight granularity {strategy}")
    symmetric = _is_symmetric(zero_point)
    if scale.ndim == qdata.ndim - 1:
        scale = scale.unsqueeze(-1)
    weights = _args(num_bits=num_bits, type="int", symmetric=symmetric, dynamic=False, **strategy)
    label = f"W{num_bits}A16" + ("" if symmetric else "_ASYM")
    tensors = {
        "weight_packed": _pack_int32(qdata, num_bits),
        "weight_scale": scale,
        "weight_shape": torch.tensor(qdata.shape[-2:], dtype=torch.int64),
    }
    if not symmetric:
        zp = zero_point.reshape(scale.shape).to(torch.int8)
        tensors["weight_zero_point"] = _pack_int32(zp, num_bits, packed_dim=0)
    return CtScheme(label, "pack-quantized", weights), tensors


def _nvfp4(param: str, meta: dict[str, Any], parts: dict[str, torch.Tensor]) -> tuple[CtScheme, dict]:
    from torchao.prototype.mx_formats.utils import from_blocked

    data = meta["_data"]
    if data.get("act_quant_kwargs") is not None:
        raise _unsupported(
            param,
            "NVFP4Tensor",
            "dynamic NVFP4 activations (compressed-tensors NVFP4 needs a calibrated input_global_scale)",
        )
    if data.get("block_size", 16) != 16:
        raise _unsupported(param, "NVFP4Tensor", f"block size {data.get('block_size')} (NVFP4 uses 16)")
    qdata, scale = parts["qdata"], parts["scale"]
    if qdata.ndim != 2:
        raise _unsupported(param, "NVFP4Tensor", "3D (expert) NVFP4 weights")
    rows, cols = qdata.shape[0], qdata.shape[1] * 2
    if data.get("is_swizzled_scales", False):
        scale = from_blocked(scale, rows, cols // 16)
    scale = scale.reshape(rows, cols // 16).contiguous()
    per_tensor = parts.get("per_tensor_scale")
    global_scale = (
        torch.ones(1, dtype=torch.float32)
        if per_tensor is None
        else (1.0 / per_tensor.to(torch.float32)).reshape(1)
    )
    weights = _args(
        num_bits=4,
        type="float",
        symmetric=True,
        dynamic=False,
        strategy="tensor_group",
        group_size=16,
        scale_dtype="torch.float8_e4m3fn",
        zp_dtype="torch.float8_e4m3fn",
    )
    tensors = {
        "weight_packed": qdata.contiguous(),
        "weight_scale": scale,
        "weight_global_scale": global_scale,
    }
    return CtScheme("NVFP4A16", "nvfp4-pack-quantized", weights), tensors


MX_BLOCK = 32


def _mx(param: str, meta: dict[str, Any], parts: dict[str, torch.Tensor]) -> tuple[CtScheme, dict]:
    """torchao ``MXTensor`` -> compressed-tensors MXFP8 / MXFP4: the same element bytes (fp4 packed two
    per byte, low nibble first, as NVFP4) and the e8m0 block scales as their uint8 biased exponents,
    un-swizzled with torchao's ``from_blocked``. Dynamic MX activations keep their args; torchao rounds
    their scales up (RCEIL) where compressed-tensors' fake quantization takes floor(log2), so activation
    scales can differ by one power of two (transformers KL, measured in ARCHITECTURES.md)."""
    from torchao.prototype.mx_formats.utils import from_blocked

    data = meta["_data"]
    elem = data["elem_dtype"]["_data"]
    if data.get("block_size", MX_BLOCK) != MX_BLOCK or elem not in ("float8_e4m3fn", "float4_e2m1fn_x2"):
        raise _unsupported(
            param, "MXTensor", f"element {elem} / block {data.get('block_size')} (MXFP8 / MXFP4 use 32)"
        )
    qdata, scale = parts["qdata"], parts["scale"].view(torch.uint8)
    if qdata.ndim != 2:
        raise _unsupported(param, "MXTensor", "3D (expert) MX weights")
    bits = 8 if elem == "float8_e4m3fn" else 4
    rows, cols = qdata.shape[0], qdata.shape[1] * (8 // bits)
    if data.get("is_swizzled_scales", False):
        scale = from_blocked(scale, rows, cols // MX_BLOCK)
    scale = scale.reshape(rows, cols // MX_BLOCK).contiguous()
    args = {"num_bits": bits, "type": "float", "symmetric": True, "strategy": "group", "group_size": MX_BLOCK}
    args |= {"scale_dtype": "torch.uint8", "zp_dtype": "torch.uint8"}
    weights = _args(dynamic=False, **args)
    has_act = data.get("act_quant_kwargs") is not None
    input_args = _args(dynamic=True, **args) if has_act else None
    label = f"MXFP{bits}" + ("" if has_act else "A16")
    if bits == 8:
        return CtScheme(label, "mxfp8-quantized", weights, input_args), {
            "weight": qdata,
            "weight_scale": scale,
        }
    tensors = {"weight_packed": qdata.contiguous().view(torch.uint8), "weight_scale": scale}
    return CtScheme(label, "mxfp4-pack-quantized", weights, input_args), tensors


_CONVERTERS = {
    "MXTensor": _mx,
    "Float8Tensor": _float8,
    "Int8Tensor": _int8,
    "IntxUnpackedToInt8Tensor": _intx,
    "NVFP4Tensor": _nvfp4,
}

# Fused expert parameter -> the per-expert modules it holds, split along dim 1 (rows).
_FUSED_EXPERTS = {"gate_up_proj": ("gate_proj", "up_proj")}


def expert_modules(param: str, num_experts: int) -> list[tuple[str, int, slice]]:
    """Per-expert (module name, expert index, row slice as a fraction) for a fused 3D parameter."""
    parent, _, leaf = param.rpartition(".")
    names = _FUSED_EXPERTS.get(leaf, (leaf,))
    out = []
    for e in range(num_experts):
        for i, name in enumerate(names):
            out.append((f"{parent}.{e}.{name}", e, (i, len(names))))
    return out


def _row_split(t: torch.Tensor, expert: int, part: tuple[int, int]) -> torch.Tensor:
    """Rows ``part[0]`` of ``part[1]`` equal parts of expert ``expert`` of a 3D tensor."""
    x = t[expert]
    index, count = part
    rows = x.shape[0] // count
    return x[index * rows : (index + 1) * rows].contiguous()


def convert_parameter(
    param: str, meta: dict[str, Any], parts: dict[str, torch.Tensor]
) -> list[ModuleConversion]:
    """compressed-tensors tensors for one quantized torchao parameter (unfused when it is 3D).

    ``parts`` is never modified (``ShardReader`` views are read-only memory maps).
    """
    type_name = meta["_type"]
    if type_name in UNSUPPORTED_TORCHAO_TYPES:
        raise _unsupported(param, type_name, UNSUPPORTED_TORCHAO_TYPES[type_name])
    if type_name not in _CONVERTERS:
        raise ValueError(
            f"tensor {param!r} has torchao type {type_name!r}, which this converter does not know. "
            f"Supported: {_supported_help()}"
        )
    qdata = parts["qdata"]
    if qdata.ndim == 2:
        if not param.endswith(".weight"):
            raise ValueError(f"quantized 2D tensor {param!r} is not a '.weight'; cannot name its module")
        scheme, tensors = _CONVERTERS[type_name](param, meta, parts)
        return [ModuleConversion(param.removesuffix(".weight"), scheme, tensors)]
    if qdata.ndim != 3 or ".experts." not in param + ".":
        raise ValueError(
            f"quantized tensor {param!r} has shape {tuple(qdata.shape)}; only 2D or 3D experts map"
        )
    # 3D experts: split each stored part per expert (and gate/up halves), then convert each 2D piece.
    num_experts = qdata.shape[0]
    data = dict(meta["_data"])
    if "block_size" in data and isinstance(data["block_size"], list) and len(data["block_size"]) == 3:
        data["block_size"] = data["block_size"][1:]
    meta_2d = {**meta, "_data": data}
    conversions = []
    for module, expert, part in expert_modules(param, num_experts):
        parts_2d = {}
        for key, value in parts.items():
            if value.ndim == 3 and value.shape[0] == num_experts:
                parts_2d[key] = _row_split(value, expert, part)
            else:
                raise ValueError(
                    f"{param!r}: part {key!r} of shape {tuple(value.shape)} cannot be split per expert"
                )
        rows_2d = parts_2d["qdata"].shape[0]
        block = data.get("block_size")
        if isinstance(block, list) and block[0] not in (1, rows_2d) and rows_2d % block[0]:
            raise ValueError(f"{param!r}: unfused rows {rows_2d} are not a multiple of block {block}")
        if isinstance(block, list) and block[0] == qdata.shape[1] and part[1] > 1:
            raise _unsupported(param, type_name, "a per-tensor scale shared by fused gate and up projections")
        scheme, tensors = _CONVERTERS[type_name](module + ".weight", meta_2d, parts_2d)
        conversions.append(ModuleConversion(module, scheme, tensors))
    return conversions


# --------------------------------------------------------------------------------------------
# config_groups, targets and ignore
# --------------------------------------------------------------------------------------------


def _generalize(name: str) -> str:
    """Module name -> anchored regex with every numeric path component (layer, expert) wildcarded."""
    pieces = name.split(".")
    return "re:^" + r"\.".join(r"\d+" if p.isdigit() else re.escape(p) for p in pieces) + "$"


def compress_targets(members: set[str], all_modules: set[str]) -> list[str]:
    """Targets that match exactly ``members`` among ``all_modules``.

    Each member's name with its numeric components wildcarded becomes a regex when that regex
    matches no module outside ``members``; otherwise the exact name is used.
    """
    targets: list[str] = []
    covered: set[str] = set()
    for name in sorted(members):
        if name in covered:
            continue
        pattern = _generalize(name)
        regex = re.compile(pattern.removeprefix("re:"))
        matched = {m for m in all_modules if regex.match(m)}
        if matched <= members:
            targets.append(pattern)
            covered |= matched
        else:
            targets.append(name)
            covered.add(name)
    return targets


# --------------------------------------------------------------------------------------------
# Scheme mapping checked against compressed-tensors' own presets
# --------------------------------------------------------------------------------------------

ANY = object()  # a field whose value the scheme chooses (e.g. the group size torchao used)
# Scheme label -> (compressed-tensors preset, deviations): per section (weights, input_activations)
# the fields that legitimately differ from the preset, with their value (or ANY); a section mapped
# to None is absent in our scheme although the preset has it.
SCHEME_PRESETS: dict[str, tuple[str, dict[str, dict[str, Any] | None]]] = {
    "FP8_DYNAMIC": ("FP8_DYNAMIC", {}),
    # torchao PerTensor activations are dynamic; the FP8 preset calibrates a static scale
    "FP8_PER_TENSOR_DYNAMIC": ("FP8", {"input_activations": {"dynamic": True}}),
    "FP8_BLOCK": ("FP8_BLOCK", {}),
    # torchao Float8WeightOnlyConfig: FP8_DYNAMIC's per-channel weights without activation quantization
    "FP8_WEIGHT_ONLY": ("FP8_DYNAMIC", {"input_activations": None}),
    "W8A8_INT8": ("W8A8", {}),
    # torchao activations with an asymmetric mapping (zero points per token)
    "W8A8_INT8_ASYM_ACT": ("W8A8", {"input_activations": {"symmetric": False}}),
    # torchao int8 weight-only is per row (channel); the W8A16 preset uses groups of 128
    "W8A16_CHANNEL": ("W8A16", {"weights": {"strategy": "channel", "group_size": None}}),
    "W8A16_GROUP": ("W8A16", {"weights": {"group_size": ANY}}),
    # torchao's intx group size, or one group spanning the row (compressed-tensors "channel"); _intx
    # refuses every other strategy
    "W4A16": ("W4A16", {"weights": {"group_size": ANY, "strategy": ANY}}),
    "W4A16_ASYM": ("W4A16_ASYM", {"weights": {"group_size": ANY, "strategy": ANY}}),
    "NVFP4A16": ("NVFP4A16", {}),
    "MXFP8": ("MXFP8", {}),
    "MXFP8A16": ("MXFP8A16", {}),
    "MXFP4": ("MXFP4", {}),
    "MXFP4A16": ("MXFP4A16", {}),
}
PRESET_FIELDS = (
    "num_bits", "type", "symmetric", "strategy", "group_size", "block_structure", "dynamic", "scale_dtype",
)  # fmt: skip


def _preset_of(label: str) -> tuple[str, dict[str, dict[str, Any] | None]]:
    if label in SCHEME_PRESETS:
        return SCHEME_PRESETS[label]
    bits = re.fullmatch(r"W(\d)A16(_ASYM)?", label)
    if bits:  # intN weight-only: W4A16's layout with other bit widths
        base = "W4A16_ASYM" if bits.group(2) else "W4A16"
        return base, {"weights": {"num_bits": int(bits.group(1)), "group_size": ANY, "strategy": ANY}}
    raise AssertionError(f"scheme {label!r} has no compressed-tensors preset to check against")


def preset_mismatches(scheme: CtScheme) -> list[str]:
    """Fields of ``scheme``'s weights / input_activations args that differ from its preset's beyond the
    stated deviations (compared as compressed-tensors ``QuantizationArgs``, after its validation)."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    preset_name, deviations = _preset_of(scheme.label)
    preset = PRESET_SCHEMES[preset_name]
    problems = []
    for section, ours_json in (
        ("weights", scheme.weights_json),
        ("input_activations", scheme.input_activations_json),
    ):
        expected = preset.get(section)
        if section in deviations and deviations[section] is None:
            expected = None
        if (expected is None) != (ours_json is None):
            problems.append(
                f"{section}: {'absent' if ours_json is None else 'present'} in ours, not in {preset_name}"
            )
            continue
        if expected is None:
            continue
        allowed = deviations.get(section) or {}
        with warnings.catch_warnings():  # "No observer is used for dynamic quant": not what is compared
            warnings.simplefilter("ignore", UserWarning)
            ours = QuantizationArgs(**json.loads(ours_json))
            fixed = {k: v for k, v in allowed.items() if v is not ANY}
            expected = QuantizationArgs(**{**expected.model_dump(), **fixed})
        for field in PRESET_FIELDS:
            if allowed.get(field) is ANY:
                continue
            got, want = getattr(ours, field), getattr(expected, field)
            if got != want:
                problems.append(f"{section}.{field} {got!r} != {preset_name}'s {want!r}")
    return problems


def check_against_preset(scheme: CtScheme) -> None:
    """``AssertionError`` when the converter wrote args its preset does not have (a converter bug)."""
    problems = preset_mismatches(scheme)
    if problems:
        raise AssertionError(
            f"scheme {scheme.label} does not match compressed-tensors' preset: {'; '.join(problems)}"
        )


def build_quantization_config(
    module_schemes: dict[str, CtScheme], ignore: list[str], compressed_tensors_version: str
) -> dict[str, Any]:
    """The ``quantization_config`` dict (``quant_method: compressed-tensors``) for config.json."""
    by_scheme: dict[CtScheme, set[str]] = {}
    for module, scheme in module_schemes.items():
        by_scheme.setdefault(scheme, set()).add(module)
    for scheme in by_scheme:
        check_against_preset(scheme)
    all_modules = set(module_schemes) | set(ignore)
    groups = {}
    ordered = sorted(by_scheme.items(), key=lambda kv: (kv[0].label, min(kv[1])))
    for i, (scheme, members) in enumerate(ordered):
        groups[f"group_{i}"] = scheme.to_config_group(compress_targets(members, all_modules))
    formats = {s.format for s in by_scheme}
    return {
        "quant_method": "compressed-tensors",
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": sorted(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "version": compressed_tensors_version,
    }


def linear_module_names(config: dict[str, Any]) -> set[str] | None:
    """Modules that multiply by a 2D ``weight`` (``nn.Linear``, MoE routers), from the model built
    on the meta device; embeddings excluded. None if transformers cannot build the architecture."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_dict = {k: v for k, v in config.items() if k != "quantization_config"}
    model_type = cfg_dict.pop("model_type", None)
    try:
        hf_config = AutoConfig.for_model(model_type, **cfg_dict)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
    except Exception as e:  # an architecture transformers cannot build: fall back to name rules
        print(f"note: cannot build {model_type!r} on the meta device ({e}); ignore list from tensor names")
        return None
    names = set()
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None and weight.ndim == 2 and not isinstance(module, torch.nn.Embedding):
            names.add(name)
    return names


# --------------------------------------------------------------------------------------------
# Writing safetensors without a second in-memory copy
# --------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e8m0fnu: "F8_E8M0",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint64: "U64",
    torch.uint32: "U32",
    torch.uint16: "U16",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e8m0fnu: "F8_E8M0",  # MX block scales (power-of-two exponents)
}


_DTYPES_BY_SAFETENSORS_NAME = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}

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
        if t.dtype not in _SAFETENSORS_DTYPES:
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
            "dtype": _SAFETENSORS_DTYPES[t.dtype],
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


# --------------------------------------------------------------------------------------------
# Repacking while writing
# --------------------------------------------------------------------------------------------


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

"""The one reader of Hugging Face checkpoint directories: torchao, compressed-tensors or plain,
safetensors or ``pytorch_model*.bin``, sharded or not. Nothing here writes to the checkpoint.

- index and shards: ``read_index_shards`` (``model.safetensors.index.json`` /
  ``pytorch_model.bin.index.json``: every listed shard a file name in the folder, present),
  ``read_shard_index`` (the safetensors shards of a checkpoint), ``weight_files`` (every weight
  file, from an index or the folder listing);
- safetensors files: ``read_safetensors_header`` (the format checked as the safetensors library
  checks it, naming the file; no tensor data read) with the one dtype table
  (``SAFETENSORS_DTYPES``), and ``ShardReader`` (tensors as zero-copy views of a read-only
  memory map);
- ``.bin`` files: ``load_bin`` (``torch.load(weights_only=True)``; torchao registers its tensor
  subclasses as safe globals) and ``flattened_bin`` (the stored tensors and torchao metadata
  transformers would have written as safetensors);
- torchao metadata (the JSON entries transformers writes into the safetensors header):
  ``parse_torchao_metadata``; ``open_torchao_checkpoint`` reads a whole torchao checkpoint's
  structure (``TorchaoCheckpoint``), ``load_param_parts`` / ``torchao_dequantize`` one parameter.

Problems are ``ValueError``s naming the file, the problem and the fix. Readers that summarize
rather than convert (``inspect_checkpoint``) pass ``Problems(strict=False)``: each problem is then a
warning and the reader goes on with what it can read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import mmap
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from hf_torchao_vllm.conversion.checkpoint_names import CheckpointNaming, ExpertSlice

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
BIN_INDEX_FILE = "pytorch_model.bin.index.json"

# safetensors dtype names (the safetensors format's, not torch's) of the dtypes torch can view.
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e8m0fnu: "F8_E8M0",  # MX block scales (power-of-two exponents)
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint64: "U64",
    torch.uint32: "U32",
    torch.uint16: "U16",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


DTYPES_BY_SAFETENSORS_NAME = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}
# Sub-byte dtypes safetensors stores (bits per element) that have no torch dtype to view them as.
SUB_BYTE_DTYPE_BITS = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


@dataclasses.dataclass
class TorchaoCheckpoint:
    """A torchao checkpoint directory, read from its headers only (no tensor data loaded).

    ``shard_files``: safetensors shard file names in index order. ``stored_to_shard``: stored
    tensor name -> shard file. ``params``: logical parameter name as stored (``<module>.<param>``
    of its stored components, see ``checkpoint_names``) -> its metadata dict (``_type``, ``_data``,
    ``_tensor_data_names``); plain tensors have ``_type`` ``Tensor``. ``config``: the parsed config.json.
    """

    directory: str
    config: dict[str, Any]
    shard_files: list[str]
    stored_to_shard: dict[str, str]
    params: dict[str, dict[str, Any]]
    is_sharded: bool
    naming: CheckpointNaming
    memory_names: dict[str, str]  # torchao parameter stored under another name -> its in-memory name

    def memory_name(self, param: str) -> str:
        """The name transformers gives ``param`` in memory (the torchao metadata's key)."""
        return self.memory_names.get(param, param)

    def expert_slices(self, param: str, shape: tuple[int, ...]) -> list[ExpertSlice] | None:
        """The per-expert on-disk weights of fused 3D parameter ``param`` (see ``CheckpointNaming``)."""
        return self.naming.expert_slices(self.memory_name(param), shape)

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


class Problems:
    """Where a reader's problems go: ``strict`` raises the first as a ``ValueError``; otherwise each
    is a ``UserWarning`` (kept in ``messages``) and the reader skips what it could not read."""

    def __init__(self, strict: bool = True):
        self.strict = strict
        self.messages: list[str] = []

    def report(self, message: str) -> None:
        if self.strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=3)
        self.messages.append(message)


STRICT = Problems(strict=True)


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


def read_index_shards(
    directory: str, index_name: str, problems: Problems = STRICT
) -> tuple[list[str], dict[str, str]] | None:
    """The shard files ``directory/index_name`` lists, in index order, and its ``weight_map``; None
    when the index is unreadable (lenient ``problems``). A listed shard that is not a file name of
    ``directory``, or is missing, is a problem (lenient: left out)."""
    index_path = os.path.join(directory, index_name)
    try:
        index = read_json_object(index_path, "index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"index {index_path} has no 'weight_map' object: re-save the checkpoint")
    except ValueError as e:
        problems.report(str(e))
        return None
    named: dict[str, None] = {}  # the valid shard names, in index order
    reported: set[str] = set()
    for key, shard in weight_map.items():
        if isinstance(shard, str) and shard not in ("", ".", "..") and os.path.basename(shard) == shard:
            named[shard] = None
        elif repr(shard) not in reported:
            reported.add(repr(shard))
            problems.report(
                f"index {index_path} maps {key!r} to {shard!r}, not a file name in {directory}: "
                "re-save the checkpoint"
            )
    shards = []
    for shard in named:
        if os.path.isfile(os.path.join(directory, shard)):
            shards.append(shard)
        else:
            problems.report(
                f"shard {shard!r} listed in {index_path} is missing from {directory}: "
                "copy the complete checkpoint"
            )
    return shards, weight_map


def read_shard_index(directory: str) -> tuple[list[str], dict[str, str] | None]:
    """The safetensors shard files of a Hugging Face checkpoint directory, in index order, and the
    index's ``weight_map`` (None for a single ``model.safetensors``). Every listed shard exists."""
    if os.path.isfile(os.path.join(directory, INDEX_FILE)):
        shards_and_map = read_index_shards(directory, INDEX_FILE)
        assert shards_and_map is not None  # strict: a bad index raised
        return shards_and_map
    if os.path.isfile(os.path.join(directory, "model.safetensors")):
        return ["model.safetensors"], None
    bins = sorted(f for f in os.listdir(directory) if f.endswith(".bin"))
    fix = f"re-save it with safetensors (it holds {bins})" if bins else "pass a safetensors checkpoint"
    raise ValueError(f"{directory} has no model.safetensors or {INDEX_FILE}: {fix}")


def bin_shards(directory: str) -> list[str]:
    """The ``pytorch_model*.bin`` shards of ``directory``, in index order when there is an index."""
    if os.path.isfile(os.path.join(directory, BIN_INDEX_FILE)):
        shards_and_map = read_index_shards(directory, BIN_INDEX_FILE)
        assert shards_and_map is not None  # strict: a bad index raised
        return shards_and_map[0]
    return sorted(f for f in os.listdir(directory) if re.fullmatch(r"pytorch_model(-\d+-of-\d+)?\.bin", f))


def weight_files(directory: str, problems: Problems = STRICT) -> list[str]:
    """Every weight file of a checkpoint directory (safetensors or .bin): the shards its index lists,
    else (no index, or an unreadable one with lenient ``problems``) the files in the folder."""
    for index_name in (INDEX_FILE, BIN_INDEX_FILE):
        if os.path.isfile(os.path.join(directory, index_name)):
            shards_and_map = read_index_shards(directory, index_name, problems)
            if shards_and_map is None:
                break  # unreadable index: list the folder instead
            return shards_and_map[0]
    return sorted(
        f
        for f in os.listdir(directory)
        if f.endswith((".safetensors", ".bin"))
        and "index" not in f
        and os.path.isfile(os.path.join(directory, f))
    )


def check_weight_files(directory: str) -> None:
    """A ``ValueError`` naming the file unless ``directory`` has weight files, a readable index and
    valid safetensors headers (no tensor data is read): transformers and vLLM raise a bare
    ``SafetensorError`` mid-load for a truncated shard."""
    files = weight_files(directory)
    if not files:
        raise ValueError(
            f"{directory} has no weight files (*.safetensors / *.bin): pass a directory that "
            "save_pretrained wrote"
        )
    for name in files:
        if name.endswith(".safetensors"):
            read_safetensors_header(os.path.join(directory, name))


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
    shard_metadata: list[dict[str, str]] = []
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
        shard_metadata.append(header.metadata)
    metadata = merge_torchao_metadata(shard_metadata)
    if weight_map is not None:
        for key, shard in weight_map.items():
            if stored_to_shard.get(key) != shard:
                raise ValueError(
                    f"{INDEX_FILE} in {directory} maps {key!r} to {shard!r}, which does not contain it: "
                    "re-save the checkpoint"
                )

    _check_layer_count(config, config_path, len(stored_to_shard))
    if "tensor_names" not in metadata:
        raise ValueError(
            f"the safetensors files in {directory} carry no torchao metadata ('tensor_names'): "
            "pass a checkpoint saved by transformers with a TorchAoConfig"
        )
    naming = CheckpointNaming(directory)
    memory_names: dict[str, str] = {}
    params = parse_torchao_metadata(
        metadata, list(stored_to_shard), directory, naming=naming, memory_names=memory_names
    )
    return TorchaoCheckpoint(
        directory, config, shard_files, stored_to_shard, params, weight_map is not None, naming, memory_names
    )


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


def load_bin(path: str) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict, unpickled with ``weights_only=True`` (torchao registers its tensor
    subclasses as safe globals): a pickle that would run code or build other objects is refused."""
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    import torchao  # noqa: F401 -- registers the tensor subclasses for weights_only loading

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # pickle / zip errors of every kind: the file is not a safe state dict
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load {path} with torch.load(weights_only=True): {first}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors: re-save the checkpoint")
    return state


def flattened_bin(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata transformers would store in safetensors for the ``.bin`` at ``path``:
    torchao tensors flattened to ``<module>._<param>_<part>`` plain tensors, their torchao metadata
    (``tensor_names`` and one JSON entry per parameter)."""
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    return flatten_tensor_state_dict(load_bin(path))


def safetensors_copy_of_bin_checkpoint(directory: str) -> str:
    """A temporary directory with ``directory``'s torchao ``pytorch_model*.bin`` shards rewritten as
    safetensors with torchao's metadata (``flattened_bin``), and its other files.

    Every shard carries the metadata of all shards, as transformers writes it. The directory is removed
    at interpreter exit."""
    import atexit
    import shutil
    import tempfile

    from hf_torchao_vllm.conversion.safetensors_writer import write_safetensors

    shards = bin_shards(directory)
    # pass 1: the metadata of every shard
    metadata = merge_torchao_metadata(flattened_bin(os.path.join(directory, shard))[1] for shard in shards)
    copy = tempfile.mkdtemp(prefix="torchao-bin-")
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map = {}
    for shard, name in zip(shards, names, strict=True):  # pass 2: the tensors, one shard at a time
        tensors, _ = flattened_bin(os.path.join(directory, shard))
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


def merge_torchao_metadata(per_shard: Iterable[dict[str, str]]) -> dict[str, str]:
    """The torchao metadata of a checkpoint from that of its shards: every entry, and ``tensor_names``
    the ordered union of theirs (transformers writes every name into every safetensors shard; a
    flattened ``.bin`` shard names its own). A ``tensor_names`` that is not a JSON list of names is
    kept as it is, for ``parse_torchao_metadata`` to report."""
    merged: dict[str, str] = {}
    names: dict[str, None] = {}
    malformed: str | None = None
    for metadata in per_shard:
        for key, value in metadata.items():
            if key != "tensor_names":
                merged[key] = value
                continue
            try:
                listed = json.loads(value)
            except (ValueError, RecursionError):
                listed = None
            if isinstance(listed, list) and all(isinstance(n, str) for n in listed):
                names.update(dict.fromkeys(listed))
            elif malformed is None:
                malformed = value
            merged.setdefault("tensor_names", "")
    if "tensor_names" in merged:
        merged["tensor_names"] = malformed if malformed is not None else json.dumps(list(names))
    return merged


def parse_torchao_metadata(
    metadata: dict[str, str],
    stored: list[str],
    where: str,
    problems: Problems = STRICT,
    naming: CheckpointNaming | None = None,
    memory_names: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Logical parameters (``<module>.<param>`` -> torchao metadata dict) from the torchao metadata
    of a checkpoint (``tensor_names`` and one JSON entry per parameter) and its ``stored`` tensor
    names; stored tensors no torchao parameter claims are plain (``{"_type": "Tensor"}``).
    No ``tensor_names`` (not a torchao checkpoint): every stored tensor is plain. A malformed entry
    is a problem (lenient: the parameter is left out).

    The metadata names parameters as transformers does in memory; their components are stored
    under that name or, when transformers renames the architecture's weights on save, under
    ``naming``'s stored name (see ``checkpoint_names``). A parameter is keyed by the module its
    components are stored under; ``memory_names`` (when given) receives stored key -> metadata key
    for those that differ."""

    def bad(what: str) -> ValueError:
        return ValueError(
            f"torchao metadata in the safetensors files of {where}: {what}: re-save the checkpoint"
        )

    params: dict[str, dict[str, Any]] = {}
    claimed: set[str] = set()
    stored_set = set(stored)
    tensor_names: Any = []
    if "tensor_names" in metadata:
        try:
            tensor_names = _parse_metadata_json(metadata["tensor_names"], "'tensor_names'", bad)
            if not isinstance(tensor_names, list) or not all(isinstance(n, str) for n in tensor_names):
                raise bad("'tensor_names' is not a list of names")
        except ValueError as e:
            problems.report(str(e))
            tensor_names = []
    for name in tensor_names:
        try:
            entry = _torchao_entry(name, metadata, stored_set, bad, naming)
        except ValueError as e:
            problems.report(str(e))
            continue
        if entry is None:
            continue
        key, meta = entry
        if key in params:
            other = memory_names.get(key, key) if memory_names is not None else key
            problems.report(str(bad(f"{name!r} and {other!r} are stored under one name, {key!r}")))
            continue
        module, _, leaf = key.rpartition(".")
        claimed.update(f"{module}._{leaf}_{p}" for p in meta["_tensor_data_names"])
        params[key] = meta
        if key != name and memory_names is not None:
            memory_names[key] = name
    for name in stored:
        if name in params:
            described = params.pop(name)["_type"]
            problems.report(str(bad(f"{name!r} is stored as a plain tensor and described as a {described}")))
        elif name not in claimed:
            params[name] = {"_type": "Tensor"}
    return params


def _torchao_entry(
    name: str, metadata: dict[str, str], stored: set[str], bad: Any, naming: CheckpointNaming | None
) -> tuple[str, dict[str, Any]] | None:
    """(stored parameter name, checked metadata entry) of torchao parameter ``name``; None for a
    plain tensor."""
    raw = metadata.get(name)
    if raw is None:
        raise bad(f"no entry for tensor {name!r}")
    meta = _parse_metadata_json(raw, repr(name), bad)
    if not isinstance(meta, dict) or not isinstance(meta.get("_type"), str):
        raise bad(f"the entry of {name!r} has no '_type'")
    if meta["_type"] == "Tensor":
        # Plain tensors are taken from the shards: transformers may store them under other names
        # than the model's (e.g. unquantized fused experts saved per expert).
        return None
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
    if all(part in stored for part in parts):
        return name, meta
    if naming is not None:
        renamed = [naming.stored_name(part) for part in parts]
        stored_module = renamed[0].removesuffix(f"._{leaf}_{data_names[0]}")
        one_module = renamed == [f"{stored_module}._{leaf}_{p}" for p in data_names]
        if one_module and all(part in stored for part in renamed):
            return f"{stored_module}.{leaf}", meta
    missing = next(part for part in parts if part not in stored)
    raise bad(f"tensor {missing!r} of {name!r} ({meta['_type']}) is missing from the shards")


def _parse_metadata_json(raw: str, what: str, bad: Any) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise bad(f"the entry {what} is not JSON ({type(e).__name__})") from e


# safetensors' own limit on the JSON header (``MAX_HEADER_SIZE`` in the safetensors crate).
SAFETENSORS_MAX_HEADER_BYTES = 100_000_000


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: dtype, shape and byte range within the data section.
    ``dtype`` is None for the sub-byte dtypes torch has no view for (``dtype_name`` says which)."""

    dtype: torch.dtype | None
    shape: tuple[int, ...]
    begin: int
    end: int
    dtype_name: str


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
        dtype = DTYPES_BY_SAFETENSORS_NAME.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is not None:
            bits = dtype.itemsize * 8
        elif isinstance(dtype_name, str) and dtype_name in SUB_BYTE_DTYPE_BITS:
            bits = SUB_BYTE_DTYPE_BITS[dtype_name]
        else:
            known = sorted([*DTYPES_BY_SAFETENSORS_NAME, *SUB_BYTE_DTYPE_BITS])
            raise bad(f"tensor {name!r} has dtype {dtype_name!r}, not one of {known}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise bad(f"tensor {name!r} has shape {shape!r}, not a list of sizes")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            raise bad(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
        begin, end = offsets
        nbytes, leftover_bits = divmod(math.prod(shape) * bits, 8)
        if leftover_bits:
            raise bad(f"tensor {name!r} ({dtype_name} {shape}) does not fill whole bytes")
        if end - begin != nbytes:
            raise bad(
                f"tensor {name!r} ({dtype_name} {shape}) needs {nbytes} bytes but its data_offsets "
                f"[{begin}, {end}] hold {end - begin}"
            )
        tensors[name] = TensorEntry(dtype, tuple(shape), begin, end, dtype_name)
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
        if entry.dtype is None:
            raise ValueError(
                f"{self.path}: tensor {name!r} is stored as {entry.dtype_name}, which torch cannot view: "
                "re-save the checkpoint with torch dtypes"
            )
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

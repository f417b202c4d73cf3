"""Seeded, bounded fuzz of inspect_checkpoint's readers (config.json, the shard index, safetensors
headers and their torchao metadata): every variant gives a summary with warnings, or a user error
(ValueError / OSError) that names the problem; strict mode turns warnings into ValueErrors; the
files are never modified. Any other exception is a bug."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import struct
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hf_torchao_vllm.inspect_checkpoint import inspect_checkpoint, print_summary
from pytorch_scripts_common.cli import USER_ERRORS

NUM_VARIANTS = 240
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
HOSTILE_JSON = [
    "[1, 2]", '"text"', "null", "3", "{", "", "\x00\xff", '{"quantization_config": [1]}',
    '{"quantization_config": {"quant_method": ["x"]}}', '{"quantization_config": "torchao"}',
    "[" * 5000 + "]" * 5000, '{"a": ' * 5000 + "1" + "}" * 5000,
]  # fmt: skip
HOSTILE_WEIGHT_MAPS = [
    [1, 2], "x", None, {"w": 5}, {"w": ["a"]}, {"w": {"b": 1}}, {"w": None}, {"w": ""},
    {"w": "../outside.safetensors"}, {"w": "/etc/passwd"}, {"w": "."}, {"w": SHARDS[0], "v": 1.5},
    {"w": "a\x00b.safetensors"}, {"w": "x" * 5000},
]  # fmt: skip
HOSTILE_METADATA = [
    {"format": "pt", "layer.weight": "{"}, {"layer.weight": "[1]"}, {"layer.weight": '{"_type": [1, 2]}'},
    {"layer.weight": '{"_type": {"a": 1}}'}, {"layer.weight": '"x"'}, {"layer.weight": "null"},
    {"layer.weight": '{"_type": "Int8Tensor"}', "layer._weight_qdata": '{"_type": 3}'},
]  # fmt: skip


def write_checkpoint(directory: Path, metadata: dict[str, str] | None = None) -> None:
    """Two shards (one with torchao-like flattened names), an index and a config."""
    directory.mkdir(parents=True)
    first = {"layer._weight_qdata": torch.ones(4, 8, dtype=torch.int8), "layer._weight_scale": torch.ones(4)}
    save_file(first, str(directory / SHARDS[0]), metadata={"format": "pt", **(metadata or {})})
    save_file({"lm_head.weight": torch.zeros(2, 8)}, str(directory / SHARDS[1]), metadata={"format": "pt"})
    weight_map = dict.fromkeys(first, SHARDS[0]) | {"lm_head.weight": SHARDS[1]}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config = {"quantization_config": {"quant_method": "torchao", "quant_type": {"default": {}}}}
    (directory / "config.json").write_text(json.dumps(config))


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    choice = rng.randrange(5)
    if choice == 0:  # truncate anywhere, most often inside the header
        return data[: rng.randrange(min(len(data), header_end + 16))]
    if choice == 1:  # a header length that points anywhere
        return (
            struct.pack("<Q", rng.choice([0, 1, 2**63, 2**64 - 1, len(data), rng.randrange(2**40)]))
            + data[8:]
        )
    if choice == 2:  # flip bytes inside the JSON header
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(8, header_end)] = rng.randrange(256)
        return bytes(out)
    if choice == 3:  # replace a header character with JSON syntax
        position = rng.randrange(8, header_end)
        return (
            data[:position]
            + rng.choice([b"{", b"}", b'"', b",", b"[", b"-1", b"1e999"])
            + data[position + 1 :]
        )
    return data[:header_end] + data[header_end : header_end + rng.randrange(64)]  # data cut


def mutate(directory: Path, rng: random.Random) -> str:
    """Damage one part of the checkpoint; return what was done."""
    target = rng.randrange(5)
    if target == 0:
        text = rng.choice(HOSTILE_JSON)
        (directory / "config.json").write_text(text, errors="surrogateescape")
        return f"config.json = {text[:40]!r}"
    if target == 1:
        weight_map = rng.choice(HOSTILE_WEIGHT_MAPS)
        index = rng.choice([{"weight_map": weight_map}, weight_map])
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
        return f"index = {str(index)[:60]}"
    if target == 2:
        text = rng.choice(HOSTILE_JSON)
        (directory / "model.safetensors.index.json").write_text(text, errors="surrogateescape")
        return f"index text = {text[:40]!r}"
    shard = directory / rng.choice(SHARDS)
    shard.write_bytes(mutate_bytes(shard.read_bytes(), rng))
    return f"{shard.name} bytes"


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def summarize(directory: Path, strict: bool) -> str:
    """inspect + print (the CLI's steps); 'ok', or the user error's type."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = inspect_checkpoint(directory, strict=strict)
        with contextlib.redirect_stdout(io.StringIO()):
            print_summary(summary, show_tensors=True)
        json.dumps(summary.as_dict())
    except USER_ERRORS as error:
        assert str(error), f"{type(error).__name__} without a message"
        return type(error).__name__
    return "ok"


def test_fuzzed_checkpoints_give_a_summary_or_a_user_error(tmp_path):
    rng = random.Random(14)
    outcomes: dict[str, int] = {}
    for variant in range(NUM_VARIANTS):
        directory = tmp_path / f"v{variant}"
        write_checkpoint(directory, rng.choice([None, *HOSTILE_METADATA]))
        done = [mutate(directory, rng) for _ in range(rng.randint(1, 3))]
        before = digest(directory)
        try:
            lenient, strict = summarize(directory, strict=False), summarize(directory, strict=True)
        except Exception as error:
            pytest.fail(f"variant {variant} ({'; '.join(done)}): {type(error).__name__}: {error}")
        assert digest(directory) == before, f"variant {variant} modified its input"
        outcomes[f"{lenient}/{strict}"] = outcomes.get(f"{lenient}/{strict}", 0) + 1
    # The damage is real: lenient runs mostly summarize, strict runs mostly refuse.
    assert outcomes.get("ok/ValueError", 0) > NUM_VARIANTS // 4, outcomes
    assert outcomes.get("ok/ok", 0) > 0, outcomes

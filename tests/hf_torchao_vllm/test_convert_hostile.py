"""The converter and the validator on hostile input: corrupted checkpoints give one-line errors that
name the file, output paths that would destroy an input are refused, nothing half-written is ever
published (validation first; SIGTERM cleans up; SIGKILL leftovers are removed by the next run), and
a seeded fuzz of the checkpoint reader."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors import safe_open

from hf_torchao_vllm import tiny_models
from hf_torchao_vllm.conversion import checkpoint_reader, safetensors_writer
from hf_torchao_vllm.conversion.convert import TOOL, convert_checkpoint
from hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors import main
from hf_torchao_vllm.quantization import recipes
from hf_torchao_vllm.quantization.quantize import quantize_checkpoint
from pytorch_scripts_common.cli import USER_ERRORS
from pytorch_scripts_common.outputs import MARKER

CONVERT = "hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors"
VALIDATE = "hf_torchao_vllm.validate_compressed_tensors_checkpoint"


def quantize_and_save(model, recipe, output_dir, max_shard_size="5GB"):
    """The one quantize path; fp8 dynamic activations through CPU emulation."""
    options = recipes.RecipeOptions(fp8_emulation_on_cpu=True)
    quantize_checkpoint(model, recipe, output_dir, options=options, max_shard_size=max_shard_size)
    return output_dir


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    # ~0.5 MB: small enough for dozens of conversions, large enough to shard.
    return tiny_models.save_random_llama(
        str(tmp_path_factory.mktemp("bf16") / "llama"), hidden_size=128, intermediate_size=256, num_layers=2
    )


@pytest.fixture(scope="module")
def sharded_int8(bf16_dir, tmp_path_factory):
    """int8 weight-only (the repacking path), in several shards."""
    path = quantize_and_save(
        bf16_dir, "int8_weight_only", str(tmp_path_factory.mktemp("int8") / "ck"), max_shard_size="100KB"
    )
    assert len(set(load_json(os.path.join(path, checkpoint_reader.INDEX_FILE))["weight_map"].values())) >= 3
    return path


@pytest.fixture(scope="module")
def single_fp8(bf16_dir, tmp_path_factory):
    """fp8 per-row (the pass-through path), one model.safetensors."""
    return quantize_and_save(bf16_dir, "fp8_per_row", str(tmp_path_factory.mktemp("fp8") / "ck"))


def load_json(path):
    with open(path) as f:
        return json.load(f)


def tree_digest(directory):
    """Name and SHA-256 of every file under ``directory``."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


def shards_of(directory):
    return sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))


def read_header(path):
    with open(path, "rb") as f:
        raw = f.read()
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def write_with_header(path, header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data)


def edit_header(path, edit):
    header, data = read_header(path)
    edit(header)
    write_with_header(path, header, data)


def largest_tensor(header):
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])


def first_quantized_param(header):
    metadata = header["__metadata__"]
    return next(n for n in json.loads(metadata["tensor_names"]) if n in metadata and "_data" in metadata[n])


def run_module(module, *args, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_SCRIPTS_DEBUG"}
    env["TORCHAO_FORCE_SKIP_LOADING_SO_FILES"] = "1"
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=600, **kwargs
    )


def assert_one_line_error(proc, *fragments):
    """Exit 2 and exactly one ``error: <what>: <fix>`` line on stderr (its last line), no traceback."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]
    assert errors[0].count(": ") >= 2, errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_nothing_written(parent, name="ct"):
    """No output and no temp leftovers of it under ``parent``."""
    if not os.path.isdir(parent):
        return
    left = [f for f in os.listdir(parent) if f == name or f.startswith(f".{name}.")]
    assert left == [], left


# ---------------------------------------------------------------------------------------------
# Corrupted checkpoints: one ValueError that names the file, the problem and the fix
# ---------------------------------------------------------------------------------------------


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def _set_header_length(path, delta):
    with open(path, "r+b") as f:
        length = int.from_bytes(f.read(8), "little")
        f.seek(0)
        f.write((length + delta).to_bytes(8, "little"))


def _shard(src, i=0):
    return os.path.join(src, shards_of(src)[i])


def _dtype(header, value):
    header[largest_tensor(header)]["dtype"] = value


def _shape_off_by_one(header):
    entry = header[largest_tensor(header)]
    entry["shape"][0] += 1


def _overlap(header):
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    begin, end = header[names[1]]["data_offsets"]
    header[names[1]]["data_offsets"] = [begin - 1, end - 1]


def _duplicate_across_shards(src):
    first, second = _shard(src, 0), _shard(src, 1)
    name = largest_tensor(read_header(first)[0])
    header, data = read_header(second)
    victim = largest_tensor(header)
    header[name] = header.pop(victim)
    write_with_header(second, header, data)


def _rename_lm_head(header, suffix):
    """Rename the plain ``lm_head.weight`` to a quantized weight's name + ``suffix``."""
    header[first_quantized_param(header) + suffix] = header.pop("lm_head.weight")


def _duplicate_key_in_header(path):
    header, data = read_header(path)
    text = json.dumps(header, separators=(",", ":"))
    name = largest_tensor(header)
    entry = json.dumps({name: header[name]}, separators=(",", ":"))[1:-1]
    text = "{" + entry + "," + text[1:]
    raw = text.encode() + b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + data)


def _deep_json(path):
    header, data = read_header(path)
    header["__metadata__"]["deep"] = "x"
    text = json.dumps(header, separators=(",", ":")).replace(
        '"deep":"x"', '"deep":' + "[" * 200_000 + "]" * 200_000
    )
    raw = text.encode() + b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + data)


def _edit_torchao_meta(path, edit):
    def apply(header):
        name = first_quantized_param(header)
        meta = json.loads(header["__metadata__"][name])
        edit(meta)
        header["__metadata__"][name] = json.dumps(meta)

    for shard in shards_of(path):
        edit_header(os.path.join(path, shard), apply)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _append(path, data):
    with open(path, "ab") as f:
        f.write(data)


def _edit_json(path, edit):
    value = load_json(path)
    value = edit(value) or value
    _write(path, json.dumps(value))


# name -> (fixture, mutation of a copy of the checkpoint, regex the error must match)
CORRUPTIONS = {
    "config_is_a_list": (
        "sharded_int8",
        lambda s: _write(f"{s}/config.json", "[1, 2]"),
        r"config .*/config\.json holds a JSON list, not an object: re-save",
    ),
    "config_not_json": (
        "sharded_int8",
        lambda s: _write(f"{s}/config.json", '{"a": '),
        r"config .*/config\.json is not valid JSON",
    ),
    "config_not_utf8": (
        "sharded_int8",
        lambda s: _write_bytes(f"{s}/config.json", b"\xff\xfe{"),
        r"config .*/config\.json is not valid JSON",
    ),
    "config_missing": ("sharded_int8", lambda s: os.remove(f"{s}/config.json"), r"has no config\.json: pass"),
    "not_torchao": (
        "sharded_int8",
        lambda s: _edit_json(f"{s}/config.json", lambda c: c.pop("quantization_config")),
        r"quant_method None, expected 'torchao'",
    ),
    "no_torchao_metadata": (
        "single_fp8",
        lambda s: edit_header(_shard(s), lambda h: h.pop("__metadata__")),
        r"carry no torchao metadata \('tensor_names'\): pass",
    ),
    "no_weights": (
        "single_fp8",
        lambda s: os.remove(_shard(s)),
        r"has no model\.safetensors or model\.safetensors\.index\.json: pass",
    ),
    "index_not_json": (
        "sharded_int8",
        lambda s: _write(f"{s}/{checkpoint_reader.INDEX_FILE}", "{"),
        r"index .*index\.json is not valid JSON",
    ),
    "index_is_a_list": (
        "sharded_int8",
        lambda s: _write(f"{s}/{checkpoint_reader.INDEX_FILE}", "[]"),
        r"index .*index\.json holds a JSON list",
    ),
    "index_without_weight_map": (
        "sharded_int8",
        lambda s: _write(f"{s}/{checkpoint_reader.INDEX_FILE}", "{}"),
        r"has no 'weight_map' object",
    ),
    "index_names_missing_shard": (
        "sharded_int8",
        lambda s: os.remove(_shard(s, 1)),
        r"shard 'model-00002-of-\d+\.safetensors' listed in .* is missing from .*: copy the complete",
    ),
    "index_points_outside": (
        "sharded_int8",
        lambda s: _edit_json(
            f"{s}/{checkpoint_reader.INDEX_FILE}",
            lambda i: i["weight_map"].update({"lm_head.weight": "../x.safetensors"}),
        ),
        r"maps 'lm_head\.weight' to '\.\./x\.safetensors', not a file name",
    ),
    "index_maps_to_wrong_shard": (
        "sharded_int8",
        lambda s: _edit_json(
            f"{s}/{checkpoint_reader.INDEX_FILE}",
            lambda i: i["weight_map"].update({"lm_head.weight": shards_of(s)[-1]}),
        ),
        r"maps 'lm_head\.weight' to .*, which does not contain it",
    ),
    "truncated_data": (
        "sharded_int8",
        lambda s: _truncate(_shard(s, 1), os.path.getsize(_shard(s, 1)) - 1000),
        r"model-00002-of-\d+\.safetensors is not a valid safetensors file: its header lists \d+ bytes of "
        r"tensor data but the file holds \d+ \(truncated\): re-download",
    ),
    "truncated_in_header": (
        "sharded_int8",
        lambda s: _truncate(_shard(s), 100),
        r"model-00001-of-\d+\.safetensors .*runs past the end of the 100-byte file \(truncated\)",
    ),
    "truncated_to_4_bytes": (
        "single_fp8",
        lambda s: _truncate(_shard(s), 4),
        r"model\.safetensors .*4 bytes long, shorter than the 8-byte header length",
    ),
    "empty_shard": ("single_fp8", lambda s: _truncate(_shard(s), 0), r"model\.safetensors .*0 bytes long"),
    "header_length_too_large": (
        "single_fp8",
        lambda s: _set_header_length(_shard(s), 10**12),
        r"header length \d+ runs past the end",
    ),
    "header_length_too_small": (
        "single_fp8",
        lambda s: _set_header_length(_shard(s), -8),
        r"header is not valid JSON",
    ),
    "header_not_an_object": (
        "single_fp8",
        lambda s: write_with_header(_shard(s), [1, 2], b""),
        r"header is a JSON list, not an object",
    ),
    "header_deeply_nested": (
        "single_fp8",
        lambda s: _deep_json(_shard(s)),
        r"header is not valid JSON \(nested too deeply\)",
    ),
    "dtype_unknown": (
        "single_fp8",
        lambda s: edit_header(_shard(s), lambda h: _dtype(h, "F7")),
        r"has dtype 'F7', not one of",
    ),
    "dtype_not_a_string": (
        "single_fp8",
        lambda s: edit_header(_shard(s), lambda h: _dtype(h, 3)),
        r"has dtype 3, not one of",
    ),
    "dtype_of_other_size": (
        "single_fp8",
        lambda s: edit_header(_shard(s), lambda h: _dtype(h, "F32")),
        r"needs \d+ bytes but its data_offsets \[\d+, \d+\] hold \d+",
    ),
    "shape_bytes_mismatch": (
        "single_fp8",
        lambda s: edit_header(_shard(s), _shape_off_by_one),
        r"needs \d+ bytes but its data_offsets",
    ),
    "shape_not_a_list": (
        "single_fp8",
        lambda s: edit_header(_shard(s), lambda h: h[largest_tensor(h)].update(shape="12")),
        r"has shape '12', not a list of sizes",
    ),
    "negative_shape": (
        "single_fp8",
        lambda s: edit_header(_shard(s), lambda h: h[largest_tensor(h)].update(shape=[-1, 4])),
        r"has shape \[-1, 4\], not a list of sizes",
    ),
    "offsets_not_a_pair": (
        "single_fp8",
        lambda s: edit_header(_shard(s), lambda h: h[largest_tensor(h)].update(data_offsets=[0])),
        r"has data_offsets \[0\], not \[begin, end\]",
    ),
    "offsets_overlap": (
        "single_fp8",
        lambda s: edit_header(_shard(s), _overlap),
        r"overlaps the tensor before it",
    ),
    "trailing_bytes": (
        "single_fp8",
        lambda s: _append(_shard(s), b"\0" * 16),
        r"16 bytes follow the last tensor's data",
    ),
    "duplicate_key_in_header": (
        "single_fp8",
        lambda s: _duplicate_key_in_header(_shard(s)),
        r"not valid JSON \(key '.*' appears twice\)",
    ),
    "duplicate_names_across_shards": (
        "sharded_int8",
        _duplicate_across_shards,
        r"tensor '.*' is stored in both model-00001-of-\d+\.safetensors and model-00002",
    ),
    "plain_and_quantized_same_name": (
        "single_fp8",
        lambda s: edit_header(_shard(s), lambda h: _rename_lm_head(h, "")),
        r"'.*\.weight' is stored as a plain tensor and described as a Float8Tensor",
    ),
    "plain_tensor_named_like_an_output": (
        "single_fp8",
        lambda s: edit_header(_shard(s), lambda h: _rename_lm_head(h, "_scale")),
        r"model\.safetensors: two tensors of the checkpoint become '.*\.weight_scale' in compressed-tensors",
    ),
    "metadata_not_strings": (
        "single_fp8",
        lambda s: edit_header(_shard(s), lambda h: h["__metadata__"].update(x=1)),
        r"__metadata__ is not an object of strings",
    ),
    "tensor_names_not_a_list": (
        "single_fp8",
        lambda s: edit_header(_shard(s), lambda h: h["__metadata__"].update(tensor_names='"abc"')),
        r"'tensor_names' is not a list of names",
    ),
    "torchao_entry_not_json": (
        "single_fp8",
        lambda s: edit_header(_shard(s), lambda h: h["__metadata__"].update({first_quantized_param(h): "{"})),
        r"the entry '.*' is not JSON",
    ),
    "torchao_entry_without_type": (
        "single_fp8",
        lambda s: _edit_torchao_meta(s, lambda m: m.pop("_type")),
        r"has no '_type'",
    ),
    "torchao_part_missing": (
        "single_fp8",
        lambda s: _edit_torchao_meta(s, lambda m: m["_tensor_data_names"].append("extra")),
        r"tensor '.*_extra' of .* is missing from the shards",
    ),
    "config_layer_count_absurd": (
        "single_fp8",
        lambda s: _edit_json(f"{s}/config.json", lambda c: c.update(num_hidden_layers=2**60)),
        r"says num_hidden_layers=\d+, but the shards hold only \d+ tensors: fix config\.json",
    ),
    "torchao_field_missing": (
        "single_fp8",
        lambda s: _edit_torchao_meta(s, lambda m: m["_data"].pop("block_size")),
        r"model\.safetensors: cannot read '.*' \(Float8Tensor; .*KeyError: 'block_size'.*"
        r"re-save the checkpoint with torchao",
    ),
    "torchao_field_wrong_type": (
        "sharded_int8",
        lambda s: _edit_torchao_meta(s, lambda m: m["_data"].update(block_size=7)),
        r"cannot read '.*' \(Int8Tensor; .*TypeError",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_checkpoint_is_one_error_naming_the_file(case, request, tmp_path):
    fixture, mutate, pattern = CORRUPTIONS[case]
    src = shutil.copytree(request.getfixturevalue(fixture), tmp_path / "src")
    mutate(str(src))
    with pytest.raises(ValueError, match=pattern) as raised:
        convert_checkpoint(str(src), str(tmp_path / "out" / "ct"))
    assert str(src) in str(raised.value)
    assert_nothing_written(tmp_path / "out")


def test_corrupted_target_is_named_by_the_validator(sharded_int8, tmp_path):
    from hf_torchao_vllm.conversion.validate import validate_weights

    target = tmp_path / "ct"
    convert_checkpoint(sharded_int8, str(target))
    shard = target / shards_of(target)[1]
    _truncate(shard, os.path.getsize(shard) - 8)
    with pytest.raises(ValueError, match=rf"{shard} is not a valid safetensors file: .*\(truncated\)"):
        validate_weights(sharded_int8, str(target))
    _write(target / "config.json", "[]")
    with pytest.raises(ValueError, match=rf"config {target}/config\.json holds a JSON list"):
        validate_weights(sharded_int8, str(target))
    with pytest.raises(ValueError, match=r"expected 'compressed-tensors': pass the converter's output"):
        validate_weights(sharded_int8, sharded_int8)


# ---------------------------------------------------------------------------------------------
# Seeded fuzz of the reader: every mutation converts or fails with one ValueError naming the file
# ---------------------------------------------------------------------------------------------

FUZZ_SEED = 20240611
FUZZ_CASES = 300  # ~6 s; 2,400 more cases (other seeds) passed when this was written
FUZZ_JSON_VALUES = [None, 0, -1, 1.5, 2**70, "", "x", [], [0], [0, 1, 2], {}, {"_type": "Tensor"}, True]


def _fuzz_header_bytes(rng, path):
    with open(path, "r+b") as f:
        length = int.from_bytes(f.read(8), "little")
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(0, 8 + length)
            f.seek(position)
            byte = f.read(1)[0]
            f.seek(position)
            f.write(bytes([byte ^ (1 << rng.randrange(8))]))


def _fuzz_header_json(rng, path):
    header, data = read_header(path)
    names = sorted(k for k in header if k != "__metadata__")
    name = rng.choice(names)
    choice = rng.randrange(10)  # 6-9: the torchao metadata
    if choice == 0:
        header[name][rng.choice(["dtype", "shape", "data_offsets"])] = rng.choice(FUZZ_JSON_VALUES)
    elif choice == 1:
        del header[name][rng.choice(["dtype", "shape", "data_offsets"])]
    elif choice == 2:
        header[name]["dtype"] = rng.choice(["F32", "BF16", "I8", "U8", "F8_E4M3", "I64", "BOOL", "F4"])
    elif choice == 3:
        shape = header[name]["shape"]
        if shape:
            shape[rng.randrange(len(shape))] = rng.choice([0, 1, 3, 10**9])
    elif choice == 4:
        begin, end = header[name]["data_offsets"]
        delta = rng.choice([-8, -1, 1, 8])
        header[name]["data_offsets"] = [max(0, begin + delta), max(0, end + delta)]
    elif choice == 5:
        header[rng.choice(names) + rng.choice(["", "x"])] = header.pop(name)  # rename / collide
    else:
        metadata = header.setdefault("__metadata__", {})
        key = rng.choice(sorted(metadata) or ["tensor_names"])
        value = rng.choice(FUZZ_JSON_VALUES)
        try:
            entry = json.loads(metadata.get(key, "null"))
        except ValueError:
            entry = None
        if isinstance(entry, dict) and rng.random() < 0.7:
            target = (
                entry.get("_data") if isinstance(entry.get("_data"), dict) and rng.random() < 0.7 else entry
            )
            if target:
                field = rng.choice(sorted(target))
                if rng.random() < 0.5:
                    del target[field]
                else:
                    target[field] = value
            metadata[key] = json.dumps(entry)
        else:
            metadata[key] = json.dumps(value) if rng.random() < 0.5 else str(value)
    write_with_header(path, header, data)


def _fuzz_file_json(rng, path):
    value = load_json(path)
    if isinstance(value, dict) and value and rng.random() < 0.6:
        key = rng.choice(sorted(value))
        inner = value[key]
        if isinstance(inner, dict) and inner and rng.random() < 0.6:
            inner[rng.choice(sorted(inner))] = rng.choice(FUZZ_JSON_VALUES)
        else:
            value[key] = rng.choice(FUZZ_JSON_VALUES)
        text = json.dumps(value)
    else:
        text = json.dumps(value)
        text = text[: rng.randrange(len(text) + 1)]  # truncated JSON
    _write(path, text)


def _fuzz_one(rng, src):
    shards = [os.path.join(src, s) for s in shards_of(src)]
    kinds = ["truncate", "header_bytes", "header_json", "header_json", "header_json", "config", "remove"]
    if os.path.exists(os.path.join(src, checkpoint_reader.INDEX_FILE)):
        kinds.append("index")
    kind = rng.choice(kinds)
    if kind == "truncate":
        path = rng.choice(shards)
        _truncate(path, rng.randrange(os.path.getsize(path)))
    elif kind == "header_bytes":
        _fuzz_header_bytes(rng, rng.choice(shards))
    elif kind == "header_json":
        _fuzz_header_json(rng, rng.choice(shards))
    elif kind == "config":
        _fuzz_file_json(rng, os.path.join(src, "config.json"))
    elif kind == "index":
        _fuzz_file_json(rng, os.path.join(src, checkpoint_reader.INDEX_FILE))
    else:
        os.remove(rng.choice([*shards, os.path.join(src, "config.json")]))
    return kind


def test_fuzzed_checkpoints_fail_with_one_line_naming_the_file(sharded_int8, single_fp8, tmp_path, capsys):
    rng = random.Random(FUZZ_SEED)
    outcomes = {"converted": 0, "refused": 0}
    for i in range(FUZZ_CASES):
        base = sharded_int8 if i % 2 == 0 else single_fp8
        src = tmp_path / f"src{i}"
        shutil.copytree(base, src)
        kind = _fuzz_one(rng, str(src))
        out = tmp_path / f"out{i}"
        try:
            convert_checkpoint(str(src), str(out / "ct"))
        except USER_ERRORS as e:  # what cli.run prints as one `error:` line, exit 2
            message = str(e)
            assert "\n" not in message and str(src) in message, (i, kind, message)
            assert not isinstance(e, KeyError), (i, kind, message)
            assert_nothing_written(out)
            outcomes["refused"] += 1
        else:
            # What was written is a complete checkpoint that safetensors itself reads.
            for shard in shards_of(out / "ct"):
                with safe_open(str(out / "ct" / shard), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                        f.get_tensor(key)
            outcomes["converted"] += 1
        shutil.rmtree(src)
        shutil.rmtree(out, ignore_errors=True)
    capsys.readouterr()
    # The mutations reach the checks: most are refused, and some (data bytes, harmless JSON) convert.
    assert outcomes["refused"] >= FUZZ_CASES // 2, outcomes


# ---------------------------------------------------------------------------------------------
# Output paths, publishing and signals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["source", "parent_of_source", "inside_source"])
def test_target_overlapping_the_source_is_refused_even_with_overwrite(where, sharded_int8, tmp_path):
    src = shutil.copytree(sharded_int8, tmp_path / "models" / "src")
    before = tree_digest(tmp_path)
    target = {"source": src, "parent_of_source": src.parent, "inside_source": src / "ct"}[where]
    with pytest.raises(ValueError, match=r"--output_dir .* the input .*: choose an output path outside"):
        convert_checkpoint(str(src), str(target), overwrite=True)
    assert tree_digest(tmp_path) == before


def test_cli_refuses_target_equal_to_source(sharded_int8, tmp_path):
    src = shutil.copytree(sharded_int8, tmp_path / "src")
    before = tree_digest(src)
    proc = run_module(CONVERT, f"--model={src}", f"--output_dir={src}", "--overwrite", "--novalidate")
    assert_one_line_error(proc, "is the same path as the input")
    assert tree_digest(src) == before


def test_overwrite_replaces_only_an_earlier_output_of_the_converter(sharded_int8, tmp_path):
    target = tmp_path / "ct"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists: pass --overwrite"):
        convert_checkpoint(sharded_int8, str(target))
    with pytest.raises(ValueError, match=f"has no {MARKER} marker"):
        convert_checkpoint(sharded_int8, str(target), overwrite=True)
    assert (target / "keep.txt").read_text() == "mine"
    shutil.rmtree(target)
    convert_checkpoint(sharded_int8, str(target))
    assert (target / MARKER).read_text().strip() == TOOL
    (target / "stale.txt").write_text("from the earlier run")
    convert_checkpoint(sharded_int8, str(target), overwrite=True)
    assert not (target / "stale.txt").exists() and (target / "config.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["ct"]


def test_failed_validation_publishes_nothing(sharded_int8, tmp_path, monkeypatch, capsys):
    original = safetensors_writer.RepackPlan.defer_xor

    def wrong_offset(self, source, value):  # a packing bug (128 ^ 1 instead of 128) to be caught
        return original(self, source, value ^ 1)

    monkeypatch.setattr(safetensors_writer.RepackPlan, "defer_xor", wrong_offset)
    target = tmp_path / "out" / "ct"
    with pytest.raises(SystemExit) as exited:
        main(sharded_int8, str(target))
    assert exited.value.code == 1
    captured = capsys.readouterr()
    assert "VALIDATION FAILED" in captured.out and "not bit-exact" in captured.out
    assert f"{target} was not written" in captured.err
    assert_nothing_written(tmp_path / "out")


def unwritable_location(tmp_path):
    """A folder this process cannot create files in (root ignores permission bits: use sysfs)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "ct"
    if not os.path.isdir("/sys/kernel") or os.access("/sys", os.W_OK) and _can_create_in("/sys"):
        pytest.skip("no location here that root cannot write")
    return "/sys/pytorch_scripts_test_ct"


def _can_create_in(folder):
    try:
        os.close(os.open(os.path.join(folder, ".probe"), os.O_CREAT | os.O_WRONLY))
    except OSError:
        return False
    os.remove(os.path.join(folder, ".probe"))
    return True


def test_unwritable_target_is_reported_before_converting(sharded_int8, tmp_path):
    target = unwritable_location(tmp_path)
    proc = run_module(CONVERT, f"--model={sharded_int8}", f"--output_dir={target}")
    assert_one_line_error(proc, "cannot write to", "choose a writable output location")
    assert "shard(s)" not in proc.stdout  # no conversion summary: refused before the work


def _wait_for_staging(proc, parent, name="ct", timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before staging: {proc.stderr.read()[-2000:]}")
        if os.path.isdir(parent) and any(
            f.startswith(f".{name}.tmp-{proc.pid}-") for f in os.listdir(parent)
        ):
            return
        time.sleep(0.01)
    raise AssertionError("no staging folder appeared")


def _start_convert(src, target):
    env = {**os.environ, "TORCHAO_FORCE_SKIP_LOADING_SO_FILES": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", CONVERT, f"--model={src}", f"--output_dir={target}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_sigterm_removes_the_partial_output(sharded_int8, tmp_path):
    proc = _start_convert(sharded_int8, tmp_path / "ct")
    try:
        _wait_for_staging(proc, tmp_path)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.rstrip().endswith("error: terminated (SIGTERM); partial outputs were removed"), stderr[
        -2000:
    ]
    assert_nothing_written(tmp_path)


def test_sigkill_leftovers_are_removed_by_the_next_run(sharded_int8, tmp_path):
    proc = _start_convert(sharded_int8, tmp_path / "ct")
    try:
        _wait_for_staging(proc, tmp_path)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    leftovers = [f for f in os.listdir(tmp_path) if f.startswith(".ct.tmp-")]
    assert leftovers, "the killed run left no staging folder: the test did not kill it mid-run"
    convert_checkpoint(sharded_int8, str(tmp_path / "ct"))
    assert sorted(os.listdir(tmp_path)) == ["ct"]


# ---------------------------------------------------------------------------------------------
# One-line errors of the CLIs (subprocess)
# ---------------------------------------------------------------------------------------------


def test_cli_config_that_is_a_list(sharded_int8, tmp_path):
    src = shutil.copytree(sharded_int8, tmp_path / "src")
    _write(src / "config.json", "[]")
    proc = run_module(CONVERT, f"--model={src}", f"--output_dir={tmp_path / 'ct'}")
    assert_one_line_error(proc, f"{src}/config.json holds a JSON list")
    assert_nothing_written(tmp_path)


def test_cli_truncated_shard(sharded_int8, tmp_path):
    src = shutil.copytree(sharded_int8, tmp_path / "src")
    shard = src / shards_of(src)[2]
    _truncate(shard, os.path.getsize(shard) // 2)
    proc = run_module(CONVERT, f"--model={src}", f"--output_dir={tmp_path / 'ct'}")
    assert_one_line_error(proc, f"{shard} is not a valid safetensors file", "(truncated)", "re-download")
    assert_nothing_written(tmp_path)


def test_validate_cli_broken_target_config(sharded_int8, tmp_path):
    target = tmp_path / "ct"
    convert_checkpoint(sharded_int8, str(target))
    _write(target / "config.json", '{"quantization_config": ')
    proc = run_module(VALIDATE, f"--model={target}", f"--reference={sharded_int8}")
    assert_one_line_error(proc, f"{target}/config.json is not valid JSON")


def test_validate_cli_missing_directory(sharded_int8, tmp_path):
    proc = run_module(VALIDATE, f"--model={tmp_path / 'nope'}", f"--reference={sharded_int8}")
    assert_one_line_error(proc, "is not a directory")

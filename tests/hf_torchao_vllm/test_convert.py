"""torchao -> compressed-tensors conversion: every scheme on the dense model, experts-only and mixed
precision on the MoE model, bit-exact validation by compressed-tensors' own decompression, the
transformers load, hostile inputs, atomicity and the CLIs (subprocess smoke tests)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hf_torchao_vllm import tiny_models
from hf_torchao_vllm.conversion import checkpoint_reader, safetensors_writer, schemes
from hf_torchao_vllm.conversion.convert import TOOL, convert_checkpoint
from hf_torchao_vllm.conversion.validate import compare_in_transformers, validate_weights
from hf_torchao_vllm.quantization import recipes
from hf_torchao_vllm.quantization.quantize import quantize_checkpoint
from pytorch_scripts_common.outputs import MARKER
from tests.forked_cli import run_forked

# KL(torchao in transformers || compressed-tensors in transformers), nats/token, on the embedded models
# (compare_in_transformers, 2 x 32 random token ids): 3x the measured value. Zero where both run the
# same bf16 weights through the same matmul (weight-only schemes whose dequantization happens before
# it); torchao int8 weight-only scales after the int8 product; dynamic-activation schemes quantize
# activations for real in torchao and fake-quantize them in compressed-tensors.
KL_BOUND = {
    "int8_dynamic_act_int8_weight": 6e-4,  # measured 2.0e-4
    "int8_weight_only": 1.6e-4,  # measured 5.5e-5
    "int4_weight_only": 0.0,  # measured 0
    "fp8_weight_only": 0.0,  # measured 0
    "fp8_per_row": 2.7e-3,  # measured 8.9e-4
    "fp8_per_tensor": 4.6e-3,  # measured 1.5e-3
    "fp8_a1x128_w128x128": 2.9e-3,  # measured 9.5e-4 (reference: torchao's dequantized weights in bf16)
    "nvfp4_weight_only": 0.0,  # measured 0
    "moe:fp8_weight_only": 0.0,  # measured 0
}

# recipe -> (compressed-tensors format, weight strategy, expected stored tensors of one Linear
# as (name suffix, dtype, shape as a function of the bf16 weight shape (N, K)))
SCHEMES = {
    "int8_dynamic_act_int8_weight": (
        "int-quantized",
        "channel",
        [("weight", torch.int8, lambda n, k: (n, k)), ("weight_scale", torch.float32, lambda n, k: (n, 1))],
    ),
    "int8_weight_only": (
        "pack-quantized",
        "channel",
        [
            ("weight_packed", torch.int32, lambda n, k: (n, k // 4)),
            ("weight_scale", torch.float32, lambda n, k: (n, 1)),
            ("weight_shape", torch.int64, lambda n, k: (2,)),
        ],
    ),
    "int4_weight_only": (
        "pack-quantized",
        "group",
        [
            ("weight_packed", torch.int32, lambda n, k: (n, k // 8)),
            ("weight_scale", torch.bfloat16, lambda n, k: (n, k // 32)),
            ("weight_shape", torch.int64, lambda n, k: (2,)),
        ],
    ),
    "fp8_weight_only": (
        "naive-quantized",
        "channel",
        [
            ("weight", torch.float8_e4m3fn, lambda n, k: (n, k)),
            ("weight_scale", torch.float32, lambda n, k: (n, 1)),
        ],
    ),
    "fp8_per_row": (
        "float-quantized",
        "channel",
        [
            ("weight", torch.float8_e4m3fn, lambda n, k: (n, k)),
            ("weight_scale", torch.float32, lambda n, k: (n, 1)),
        ],
    ),
    "fp8_per_tensor": (
        "float-quantized",
        "tensor",
        [
            ("weight", torch.float8_e4m3fn, lambda n, k: (n, k)),
            ("weight_scale", torch.float32, lambda n, k: (1,)),
        ],
    ),
    "fp8_a1x128_w128x128": (
        "float-quantized",
        "block",
        [
            ("weight", torch.float8_e4m3fn, lambda n, k: (n, k)),
            ("weight_scale", torch.float32, lambda n, k: (n // 128, k // 128)),
        ],
    ),
    "nvfp4_weight_only": (
        "nvfp4-pack-quantized",
        "tensor_group",
        [
            ("weight_packed", torch.uint8, lambda n, k: (n, k // 2)),
            ("weight_scale", torch.float8_e4m3fn, lambda n, k: (n, k // 16)),
            ("weight_global_scale", torch.float32, lambda n, k: (1,)),
        ],
    ),
}

# Quantization runs on CPU: int4 with group 32 (divides every dimension of the test models; vLLM's
# CPU W4A16 kernel takes it), fp8 dynamic activations through CPU emulation.
CPU_OPTIONS = recipes.RecipeOptions(group_size=32, fp8_emulation_on_cpu=True)
# Runs on CUDA only (triton activation kernels): quantized and saved here, never run.
SAVE_ONLY = {"fp8_a1x128_w128x128"}


def quantize_and_save(model, recipe, output_dir, max_shard_size="5GB", **selection):
    """The one quantize path (quantize_hf_model_with_torchao's) with the converter tests' CPU options."""
    quantize_checkpoint(
        model, recipe, output_dir, options=CPU_OPTIONS, forward_checks=recipe not in SAVE_ONLY,
        max_shard_size=max_shard_size, **selection,
    )  # fmt: skip
    return output_dir


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    return tiny_models.embedded_model("dense")


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    return tiny_models.embedded_model("moe")


def load_json(path):
    with open(path) as f:
        return json.load(f)


def read_all(directory):
    index = os.path.join(directory, checkpoint_reader.INDEX_FILE)
    shards = (
        sorted(set(load_json(index)["weight_map"].values()))
        if os.path.exists(index)
        else ["model.safetensors"]
    )
    out = {}
    for shard in shards:
        with safe_open(os.path.join(directory, shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                out[key] = f.get_tensor(key)
    return out


def quant_config(directory):
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)["quantization_config"]


# NVFP4 and 128x128-block FP8 take the longest (compiled fp4 casts, an emulated reference model).
SLOW_RECIPES = {"nvfp4_weight_only", "fp8_a1x128_w128x128"}


@pytest.mark.parametrize(
    "recipe", [pytest.param(r, marks=pytest.mark.slow) if r in SLOW_RECIPES else r for r in sorted(SCHEMES)]
)
def test_every_scheme_on_dense_model(recipe, dense_dir, tmp_path):
    fmt, strategy, layout = SCHEMES[recipe]
    kl_bound = KL_BOUND[recipe]
    source = quantize_and_save(dense_dir, recipe, str(tmp_path / "torchao"))
    if fmt == "float-quantized":  # recipes.py's CPU fp8 config: the converter drops this bound
        assert quant_config(source)["quant_type"]["default"]["_data"]["activation_value_lb"] == 1e-12
    target = str(tmp_path / "ct")
    summary = convert_checkpoint(source, target)

    qconfig = quant_config(target)
    assert qconfig["quant_method"] == "compressed-tensors"
    assert qconfig["format"] == fmt
    (group,) = qconfig["config_groups"].values()
    assert group["format"] == fmt and group["weights"]["strategy"] == strategy
    assert "lm_head" in qconfig["ignore"]
    # Exact stored names, dtypes and layouts, on one projection of known bf16 shape.
    bf16 = read_all(dense_dir)
    stored = read_all(target)
    module = "model.layers.0.mlp.down_proj"
    n, k = bf16[f"{module}.weight"].shape
    expected = {f"{module}.{name}": (dtype, shape(n, k)) for name, dtype, shape in layout}
    got = {key: (t.dtype, tuple(t.shape)) for key, t in stored.items() if key.startswith(module + ".")}
    assert got == expected
    # Non-quantized tensors are copied bit for bit.
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        if name in bf16:
            assert torch.equal(stored[name], bf16[name]), name

    report = validate_weights(source, target)
    assert report.ok, report.mismatches
    assert report.num_compared == len(bf16)
    if recipe != "nvfp4_weight_only":  # NVFP4 has a stated tolerance (global scale is a reciprocal)
        assert report.num_exact == report.num_compared
    kl, _ = compare_in_transformers(source, target)
    assert kl <= kl_bound, f"{recipe}: KL {kl:.3g} > {kl_bound:g}"
    assert summary.modules_per_scheme and sum(summary.modules_per_scheme.values()) == 7 * len(
        [k for k in bf16 if k.endswith("mlp.down_proj.weight")]
    )


def test_moe_experts_only(moe_dir, tmp_path):
    source = quantize_and_save(moe_dir, "fp8_weight_only", str(tmp_path / "torchao"), modules="experts_only")
    target = str(tmp_path / "ct")
    convert_checkpoint(source, target)
    stored = read_all(target)
    with open(os.path.join(moe_dir, "config.json")) as f:
        config = json.load(f)
    num_experts = config.get("num_experts") or config["num_local_experts"]
    # Fused 3D experts are unfused into the per-expert Linear names the loaders read.
    assert not any(k.endswith(("experts.gate_up_proj", "experts.down_proj")) for k in stored)
    for e in range(num_experts):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert stored[f"model.layers.0.mlp.experts.{e}.{proj}.weight"].dtype == torch.float8_e4m3fn
    qconfig = quant_config(target)
    (group,) = qconfig["config_groups"].values()
    assert all("experts" in t for t in group["targets"])
    # Everything that multiplies in high precision is ignored: attention, routers, lm_head.
    assert "model.layers.0.self_attn.q_proj" in qconfig["ignore"]
    assert "model.layers.0.mlp.gate" in qconfig["ignore"] and "lm_head" in qconfig["ignore"]
    assert not any("experts" in name for name in qconfig["ignore"])
    report = validate_weights(source, target)
    assert report.ok, report.mismatches
    assert report.num_exact == report.num_compared
    kl, _ = compare_in_transformers(source, target)
    assert kl <= KL_BOUND["moe:fp8_weight_only"]


def test_moe_mixed_precision(moe_dir, tmp_path):
    overrides = [  # first matching regex (re.search on the weight name) wins
        (r"model\.layers\.1\.self_attn\.o_proj", None),  # None = keep in high precision
        (r"mlp\.experts\.", "fp8_weight_only"),
        (r"self_attn\.(q|k|v|o)_proj", "int4_weight_only"),
    ]
    source = quantize_and_save(moe_dir, "fp8_weight_only", str(tmp_path / "torchao"), overrides=overrides)
    target = str(tmp_path / "ct")
    summary = convert_checkpoint(source, target)
    qconfig = quant_config(target)
    assert qconfig["format"] == "mixed-precision"
    groups = {g["format"]: g for g in qconfig["config_groups"].values()}
    assert set(groups) == {"naive-quantized", "pack-quantized"}
    assert groups["pack-quantized"]["weights"]["group_size"] == 32
    # layers.0.o_proj is quantized, layers.1.o_proj is not: its target cannot be a layer wildcard.
    assert "model.layers.0.self_attn.o_proj" in groups["pack-quantized"]["targets"]
    assert "model.layers.1.self_attn.o_proj" in qconfig["ignore"]
    with open(os.path.join(moe_dir, "config.json")) as f:
        num_layers = json.load(f)["num_hidden_layers"]
    assert summary.modules_per_scheme["W4A16"] == 4 * num_layers - 1  # q, k, v, o per layer but one
    report = validate_weights(source, target)
    assert report.ok, report.mismatches
    kl, _ = compare_in_transformers(source, target)
    assert kl <= KL_BOUND["moe:fp8_weight_only"]  # int4, fp8 weight-only: both dequantize before the matmul


def test_every_scheme_name_is_a_registry_recipe():
    """The converter's scheme names are aliases of the one recipe registry, not configs of their own."""
    cpu = torch.device("cpu")
    for name in SCHEMES:
        recipe, options = recipes.resolve(name, CPU_OPTIONS)
        assert name in recipes.RECIPES or recipes.ALIASES[name][0] == recipe.name
        if name not in SAVE_ONLY:
            recipes.validate_recipe_options(name, CPU_OPTIONS, cpu)
    assert recipes.resolve("fp8_per_tensor")[1].granularity == "per_tensor"
    variant = recipes.choose_variant(*recipes.resolve("int4_weight_only", CPU_OPTIONS), cpu)
    assert (
        type(variant.config).__name__ == "IntxWeightOnlyConfig"
        and variant.config.granularity.group_size == 32
    )


def test_unknown_recipe_names_the_choices(dense_dir, tmp_path):
    for kwargs in ({"recipe": "fp9"}, {"recipe": "int8_weight_only", "overrides": [(".*", "mxfp9")]}):
        with pytest.raises(
            ValueError, match=r"unknown recipe .*choose one of none, int8_weight_only.*fp8_per_row"
        ):
            quantize_and_save(dense_dir, output_dir=str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def float8_weight_meta(act_quant_kwargs):
    """safetensors metadata and stored parts of one torchao Float8Tensor weight, as saved."""
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict
    from torchao.quantization import PerRow
    from torchao.quantization.quantize_.workflows import Float8Tensor

    torch.manual_seed(0)
    weight = torch.randn(32, 64, dtype=torch.bfloat16)
    tensor = Float8Tensor.from_hp(weight, granularity=PerRow(), act_quant_kwargs=act_quant_kwargs)
    stored, metadata = flatten_tensor_state_dict({"m.weight": tensor})
    meta = json.loads(metadata["m.weight"])
    return meta, {part: stored[f"m._weight_{part}"] for part in meta["_tensor_data_names"]}


@pytest.mark.parametrize(
    ("lower", "upper", "error"),
    [
        (None, None, None),
        (1e-12, None, None),  # recipes.py's CPU fp8 config
        (schemes.FP8_ACTIVATION_LB_MAX, None, None),  # vLLM's own floor on max |x|
        (1e-2, None, r"hp_value_lb=0\.01 is above 0\.001953"),
        (None, 100.0, r"upper bound \(hp_value_ub=100\.0\) clips"),
    ],
)
def test_fp8_activation_bounds(lower, upper, error):
    from torchao.quantization import PerRow
    from torchao.quantization.quantize_.workflows import QuantizeTensorToFloat8Kwargs

    kwargs = QuantizeTensorToFloat8Kwargs(granularity=PerRow(), hp_value_lb=lower, hp_value_ub=upper)
    meta, parts = float8_weight_meta(kwargs)
    assert meta["_data"]["act_quant_kwargs"]["_data"]["hp_value_lb"] == lower
    if error is not None:
        with pytest.raises(ValueError, match=error):
            schemes.convert_parameter("m.weight", meta, parts)
        return
    (conv,) = schemes.convert_parameter("m.weight", meta, dict(parts))
    (plain,) = schemes.convert_parameter(
        "m.weight", *float8_weight_meta(QuantizeTensorToFloat8Kwargs(PerRow()))
    )
    # The bound only changes activations: same scheme, same stored weight as without it.
    assert conv.scheme == plain.scheme and conv.scheme.label == "FP8_DYNAMIC"
    assert torch.equal(conv.tensors["weight_scale"], plain.tensors["weight_scale"])
    assert torch.equal(conv.tensors["weight"].view(torch.uint8), plain.tensors["weight"].view(torch.uint8))


def test_target_regexes_match_exactly_the_group():
    members = {"m.layers.0.a", "m.layers.1.a", "m.layers.0.b"}
    all_modules = members | {"m.layers.1.b"}
    targets = schemes.compress_targets(members, all_modules)
    assert sorted(targets) == ["m.layers.0.b", r"re:^m\.layers\.\d+\.a$"]


# ---------------------------------------------------------------------------------------------
# The shard reader and writer against the safetensors library
# ---------------------------------------------------------------------------------------------


def write_unaligned_safetensors(path, tensors):
    """A valid safetensors file whose header length and tensor offsets are not multiples of the
    dtype size (the format allows it; safetensors' own writer pads, other writers need not)."""
    header, data = {}, b""
    for name, t in tensors.items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        dtype = checkpoint_reader.SAFETENSORS_DTYPES[t.dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(t.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8 + 1)  # header length = 1 mod 8
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data)


def test_shard_reader_matches_safetensors_on_unaligned_and_empty_tensors(tmp_path):
    torch.manual_seed(0)
    tensors = {
        "a_byte": torch.randint(0, 255, (3,), dtype=torch.uint8),  # shifts everything after it
        "b_f32": torch.randn(5, 7),
        "c_bf16": torch.randn(4, 4).to(torch.bfloat16),
        "d_empty": torch.empty(0, 3),
        "e_scalar": torch.tensor(2.5, dtype=torch.float64),
        "f_fp8": torch.randn(8, 8).to(torch.float8_e4m3fn),
        "g_i64": torch.tensor([1, -2], dtype=torch.int64),
    }
    path = str(tmp_path / "unaligned.safetensors")
    write_unaligned_safetensors(path, tensors)
    reader = checkpoint_reader.ShardReader(path)
    with safe_open(path, framework="pt") as f:
        for name, expected in tensors.items():
            got = reader.get_tensor(name)
            assert got.dtype == expected.dtype and got.shape == expected.shape, name
            as_bytes = got.reshape(-1).view(torch.uint8)
            assert torch.equal(as_bytes, f.get_tensor(name).reshape(-1).view(torch.uint8)), name
            assert torch.equal(as_bytes, expected.reshape(-1).view(torch.uint8)), name


def test_writer_copies_source_views_file_to_file_aligned_as_in_the_source(tmp_path):
    torch.manual_seed(0)
    source = str(tmp_path / "source.safetensors")
    safetensors_writer.write_safetensors(
        source, {"w": torch.randn(64, 32), "s": torch.randn(64, 1)}, {"k": "v"}
    )
    reader = checkpoint_reader.ShardReader(source)
    views = {
        "a_new": torch.ones(3),
        "s_copy": reader.get_tensor("s").reshape(64),
        "w_copy": reader.get_tensor("w"),
    }
    source_offsets = {name: reader.source_offset(views[name]) for name in ("s_copy", "w_copy")}
    assert source_offsets["w_copy"] == reader.header.data_start + reader.header.tensors["w"].begin
    assert reader.source_offset(views["a_new"]) is None
    assert reader.source_offset(views["w_copy"][:, :3]) is None  # not contiguous: written from memory
    sent, written = str(tmp_path / "sent.safetensors"), str(tmp_path / "written.safetensors")
    safetensors_writer.write_safetensors(sent, views, {"format": "pt"}, sources=[reader])
    safetensors_writer.write_safetensors(written, {k: v.clone() for k, v in views.items()}, {"format": "pt"})
    for path in (sent, written):
        with safe_open(path, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for name, value in views.items():
                assert torch.equal(f.get_tensor(name), value), (path, name)
    # The copied tensors keep their source order and sit at their source's in-page offset, in the
    # first page of a 64 KiB block; the tensor computed in memory comes after them.
    header = checkpoint_reader.read_safetensors_header(sent)
    first = min(source_offsets, key=source_offsets.get)
    target_offset = header.data_start + header.tensors[first].begin
    assert target_offset % (16 * 4096) == source_offsets[first] % 4096
    assert header.tensors["a_new"].begin == max(e.end for n, e in header.tensors.items() if n != "a_new")
    assert header.data_start % 8 == 0


def test_deferred_8bit_repacking_writes_what_eager_packing_computes(tmp_path):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    torch.manual_seed(0)
    source = str(tmp_path / "source.safetensors")
    # More than one chunk, so that chunk boundaries are crossed.
    qdata = torch.randint(
        -128, 128, (safetensors_writer.RepackPlan.CHUNK_BYTES // 256 + 3, 256), dtype=torch.int8
    )
    safetensors_writer.write_safetensors(source, {"q": qdata, "s": torch.randn(qdata.shape[0], 1)})
    reader = checkpoint_reader.ShardReader(source)
    plan = safetensors_writer.RepackPlan()
    with safetensors_writer.repack_into(plan):
        packed = schemes._pack_int32(reader.get_tensor("q"), 8)
    assert packed.dtype == torch.int32 and packed.shape == (qdata.shape[0], 64)
    tensors = {"packed": packed, "packed_rows": packed[2:5], "scale": reader.get_tensor("s")}
    target = str(tmp_path / "target.safetensors")
    safetensors_writer.write_safetensors(target, tensors, sources=[plan, reader])
    expected = pack_to_int32(qdata, 8, packed_dim=1)
    with safe_open(target, framework="pt") as f:
        assert torch.equal(f.get_tensor("packed"), expected)
        assert torch.equal(f.get_tensor("packed_rows"), expected[2:5])
        assert torch.equal(f.get_tensor("scale"), reader.get_tensor("s"))


def test_reading_a_deferred_placeholder_crashes_instead_of_returning_garbage(tmp_path):
    code = (
        "import torch\n"
        "from hf_torchao_vllm.conversion import safetensors_writer, schemes\n"
        "with safetensors_writer.repack_into(safetensors_writer.RepackPlan()):\n"
        "    packed = schemes._pack_int32(torch.zeros(4, 8, dtype=torch.int8), 8)\n"
        "print(int(packed.sum()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert proc.stdout == ""


def test_int8_packing_leaves_the_source_untouched_and_matches_compressed_tensors():
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    torch.manual_seed(0)
    values = torch.randint(-128, 128, (16, 64), dtype=torch.int8)
    before = values.clone()
    packed = schemes._pack_int32(values, 8)
    assert torch.equal(values, before)
    assert torch.equal(packed, pack_to_int32(values, 8, packed_dim=1))


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors and no partial output
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_source(dense_dir, tmp_path_factory):
    return quantize_and_save(
        dense_dir, "int8_dynamic_act_int8_weight", str(tmp_path_factory.mktemp("src") / "ck")
    )


def copy_dir(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def assert_fails_cleanly(source, tmp_path, match):
    target = tmp_path / "out" / "ct"
    with pytest.raises(ValueError, match=match):
        convert_checkpoint(str(source), str(target))
    assert not target.exists()
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_missing_config(int8_source, tmp_path):
    src = copy_dir(int8_source, tmp_path / "src")
    os.remove(os.path.join(src, "config.json"))
    assert_fails_cleanly(src, tmp_path, "no config.json")


def test_missing_weights(int8_source, tmp_path):
    src = copy_dir(int8_source, tmp_path / "src")
    os.remove(os.path.join(src, "model.safetensors"))
    assert_fails_cleanly(src, tmp_path, "no model.safetensors")


def test_not_a_torchao_config(dense_dir, tmp_path):
    assert_fails_cleanly(dense_dir, tmp_path, "expected 'torchao'")


def rewrite_metadata(path, edit):
    tensors = {}
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            tensors[key] = f.get_tensor(key)
    edit(metadata)
    safetensors_writer.write_safetensors(path, tensors, metadata)


def test_unknown_tensor_subclass_is_named(int8_source, tmp_path):
    src = copy_dir(int8_source, tmp_path / "src")
    name = "model.layers.1.mlp.up_proj.weight"

    def edit(md):
        meta = json.loads(md[name])
        meta["_type"] = "FancyNewTensor"
        md[name] = json.dumps(meta)

    rewrite_metadata(os.path.join(src, "model.safetensors"), edit)
    assert_fails_cleanly(src, tmp_path, f"{name}.*FancyNewTensor.*Supported")


def test_subclass_without_equivalent_is_named(int8_source, tmp_path):
    src = copy_dir(int8_source, tmp_path / "src")
    name = "model.layers.0.self_attn.q_proj.weight"

    def edit(md):
        meta = json.loads(md[name])
        meta["_type"] = "Int4TilePackedTo4dTensor"
        md[name] = json.dumps(meta)

    rewrite_metadata(os.path.join(src, "model.safetensors"), edit)
    assert_fails_cleanly(src, tmp_path, "Int4TilePackedTo4dTensor.*no compressed-tensors equivalent")


def test_corrupt_safetensors_header(int8_source, tmp_path):
    src = copy_dir(int8_source, tmp_path / "src")
    with open(os.path.join(src, "model.safetensors"), "r+b") as f:
        f.write(b"\xff" * 16)
    assert_fails_cleanly(
        src, tmp_path, r"model\.safetensors is not a valid safetensors file: .*: re-download"
    )


def test_index_pointing_to_missing_shard(dense_dir, tmp_path):
    src = quantize_and_save(dense_dir, "int8_weight_only", str(tmp_path / "sharded"), max_shard_size="300KB")
    index = load_json(os.path.join(src, checkpoint_reader.INDEX_FILE))
    shard = sorted(set(index["weight_map"].values()))[1]
    os.remove(os.path.join(src, shard))
    assert_fails_cleanly(src, tmp_path, f"shard '{shard}'.*missing")


def test_wrong_activation_strategy_fails_the_preset_check(int8_source, tmp_path, monkeypatch):
    """A converter that wrote per-tensor activations for W8A8 (the preset says per token) must fail."""
    original = schemes._int8

    def per_tensor_activations(param, meta, parts):
        scheme, tensors = original(param, meta, parts)
        wrong = json.loads(scheme.input_activations_json) | {"strategy": "tensor"}
        return schemes.CtScheme(
            scheme.label, scheme.format, scheme.weights_json, json.dumps(wrong, sort_keys=True)
        ), tensors

    monkeypatch.setitem(schemes._CONVERTERS, "Int8Tensor", per_tensor_activations)
    with pytest.raises(AssertionError, match=r"input_activations\.strategy 'tensor' != W8A8's 'token'"):
        convert_checkpoint(int8_source, str(tmp_path / "ct"))
    assert not (tmp_path / "ct").exists()


def test_every_scheme_label_has_a_preset():
    for label in schemes.SCHEME_PRESETS:
        preset, _ = schemes._preset_of(label)
        from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

        assert preset in PRESET_SCHEMES, label


def test_validation_catches_swapped_gate_and_up(moe_dir, tmp_path, monkeypatch):
    """The validator's per-expert reference is transformers' own split of the dequantized weight: a
    converter that swaps gate and up cannot pass."""
    source = quantize_and_save(moe_dir, "fp8_weight_only", str(tmp_path / "torchao"), modules="experts_only")
    original = checkpoint_reader.TorchaoCheckpoint.expert_slices

    def gate_and_up_swapped(self, param, shape):
        def swapped(name):
            for a, b in ((".gate_proj.", ".up_proj."), (".up_proj.", ".gate_proj.")):
                if a in name:
                    return name.replace(a, b)
            return name

        return [dataclasses.replace(s, name=swapped(s.name)) for s in original(self, param, shape)]

    monkeypatch.setattr(checkpoint_reader.TorchaoCheckpoint, "expert_slices", gate_and_up_swapped)
    convert_checkpoint(source, str(tmp_path / "ct"))
    report = validate_weights(source, str(tmp_path / "ct"))
    assert not report.ok
    assert any(
        m.name.endswith("experts.0.gate_proj.weight") and "not bit-exact" in m.problem
        for m in report.mismatches
    )


def test_bin_checkpoint_converts_bit_exactly(int8_source, tmp_path):
    """A torchao pytorch_model.bin (torch.save of the state dict) is read with weights_only=True."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(int8_source, dtype=torch.bfloat16)
    source = tmp_path / "bin"
    source.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (source / name).write_bytes((Path(int8_source) / name).read_bytes())
    torch.save(model.state_dict(), source / "pytorch_model.bin")
    target = tmp_path / "ct"
    convert_checkpoint(str(source), str(target))
    reference = tmp_path / "ct_from_safetensors"
    convert_checkpoint(int8_source, str(reference))
    got, want = read_all(str(target)), read_all(str(reference))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert (target / "tokenizer.json").exists()


def test_bin_with_a_code_payload_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    source = tmp_path / "evil"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "torchao"}}))
    torch.save({"w": Payload()}, source / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        convert_checkpoint(str(source), str(tmp_path / "ct"))
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "ct").exists()


def test_failure_midway_leaves_no_target(int8_source, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(schemes, "build_quantization_config", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_checkpoint(int8_source, str(tmp_path / "ct"))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# CLIs in a subprocess
# ---------------------------------------------------------------------------------------------


def run_forked_module(module, *args, cwd=None):
    """``python -m module *args``, forked from a warm interpreter (tests/forked_cli.py): the CLIs' fresh
    start is run in test_flags' chain of the original commands."""
    env = {**os.environ, "TORCHAO_FORCE_SKIP_LOADING_SO_FILES": "1"}
    return run_forked(module, args, cwd=cwd or os.getcwd(), env=env, timeout=600)


def test_convert_cli_sharded_with_validation(dense_dir, tmp_path):
    src = quantize_and_save(dense_dir, "int4_weight_only", str(tmp_path / "src"), max_shard_size="300KB")
    (tmp_path / "src" / "notes.txt").write_text("copied as is")
    target = tmp_path / "ct"
    # The original script's command: --dir_source / --dir_target are aliases of --model / --output_dir.
    proc = run_forked_module(
        "hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors",
        f"--dir_source={src}",
        f"--dir_target={target}",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Validated before it was published: the validation report comes before "wrote".
    assert proc.stdout.index("validation passed") < proc.stdout.index(f"wrote {target}")
    source_shards = sorted(
        set(load_json(os.path.join(src, checkpoint_reader.INDEX_FILE))["weight_map"].values())
    )
    assert len(source_shards) > 1
    index = load_json(target / checkpoint_reader.INDEX_FILE)
    assert sorted(set(index["weight_map"].values())) == source_shards
    stored = read_all(str(target))
    assert set(index["weight_map"]) == set(stored)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in stored.values())
    source = read_all(src)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(stored[name], source[name]), name  # copied file to file, bit for bit
    assert (target / "notes.txt").read_text() == "copied as is"
    assert (target / "generation_config.json").exists()
    assert (target / MARKER).read_text().strip() == TOOL
    assert sorted(os.listdir(tmp_path)) == ["ct", "src"]  # no temp folders left next to it


def test_validate_cli_fails_on_a_corrupted_tensor(int8_source, tmp_path):
    target = tmp_path / "ct"
    convert_checkpoint(int8_source, str(target))
    path = str(target / "model.safetensors")
    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        metadata = f.metadata()
    bad = "model.layers.1.self_attn.v_proj.weight_scale"
    tensors[bad] = tensors[bad].clone()
    tensors[bad][3] *= 1.5
    safetensors_writer.write_safetensors(path, tensors, metadata)
    proc = run_forked_module(
        "hf_torchao_vllm.validate_compressed_tensors_checkpoint",
        f"--model={target}",
        f"--reference={int8_source}",
        "--nocheck_transformers",
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "VALIDATION FAILED" in proc.stdout
    assert "model.layers.1.self_attn.v_proj.weight: not bit-exact" in proc.stdout


CONVERT = "convert_torchao_checkpoint_to_compressed_tensors"


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        (CONVERT, ["--model={list_config}", "--output_dir={out}"], "holds a JSON list, not an object"),
        (CONVERT, ["--model={truncated}", "--output_dir={out}"],
         "{truncated}/model.safetensors is not a valid safetensors file"),
        (CONVERT, ["--model={source}", "--output_dir={source}"], "is the same path as the input"),
        (CONVERT, ["--dir_source={source}", "--model={source}"], "--dir_source and --model both set --model"),
        ("validate_compressed_tensors_checkpoint",
         ["--model={source}", "--reference={source}", "--kl_threshold=nan"], "--kl_threshold is"),
    ],
)  # fmt: skip
def test_cli_user_mistakes_are_one_line(int8_source, tmp_path, module, args, message):
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.json").write_text("[1, 2]")
    truncated = copy_dir(int8_source, tmp_path / "truncated")
    with open(os.path.join(truncated, "model.safetensors"), "r+b") as f:
        f.truncate(1000)
    paths = {
        "list_config": tmp_path / "list",
        "truncated": truncated,
        "source": int8_source,
        "out": tmp_path / "o",
    }
    proc = run_forked_module(f"hf_torchao_vllm.{module}", *[a.format(**paths) for a in args])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message.format(**paths) in last, last
    assert not (tmp_path / "o").exists()


def test_validate_reports_missing_tensor(int8_source, tmp_path):
    target = tmp_path / "ct"
    convert_checkpoint(int8_source, str(target))
    path = str(target / "model.safetensors")
    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    del tensors["model.norm.weight"]
    safetensors_writer.write_safetensors(path, tensors, {"format": "pt"})
    report = validate_weights(int8_source, str(target))
    assert [m.name for m in report.mismatches] == ["model.norm.weight"]
    assert "missing" in report.mismatches[0].problem


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "fmt", "weights"),
    [
        (["--recipe=int4_weight_only", "--group_size=32"], "pack-quantized", {"group_size": 32}),
        # recipes.py's CPU fp8 config carries activation_value_lb=1e-12, which the converter drops
        (
            ["--recipe=fp8", "--granularity=per_row", "--fp8_emulation_on_cpu=True"],
            "float-quantized",
            {"strategy": "channel"},
        ),
    ],
    ids=["int4", "fp8_per_row"],
)
def test_converts_a_checkpoint_written_by_the_quantize_tool(tmp_path, flags, fmt, weights):
    """The part-1 tool's own output (quantize_hf_model_with_torchao.py) converts and validates."""
    source = tmp_path / "source"
    proc = run_forked_module(
        "hf_torchao_vllm.quantize_hf_model_with_torchao",
        *flags,
        "--eval_tokens=64",  # its quality report and generations are not under test here
        "--max_new_tokens=2",
        f"--output_dir={source}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    target = tmp_path / "ct"
    convert_checkpoint(str(source), str(target))
    report = validate_weights(str(source), str(target))
    assert report.ok and report.num_exact == report.num_compared
    assert (target / "tokenizer.json").exists()
    (group,) = quant_config(str(target))["config_groups"].values()
    assert group["format"] == fmt
    assert {key: group["weights"][key] for key in weights} == weights


def test_validator_tolerance_comes_from_the_registry_and_only_nvfp4_has_one():
    from hf_torchao_vllm.conversion.validate import _tolerance_problem
    from hf_torchao_vllm.quantization.recipes import CONVERSION_TOLERANCES

    assert set(CONVERSION_TOLERANCES) == {"NVFP4Tensor"}
    ref = torch.linspace(1, 2, 64, dtype=torch.bfloat16)
    one_ulp = ref.clone()
    one_ulp[5] += 2**-7  # the next bf16 value in [1, 2)
    assert _tolerance_problem("NVFP4Tensor", ref, one_ulp) is None
    assert "not bit-exact" in _tolerance_problem("Int8Tensor", ref, one_ulp)
    assert "NVFP4Tensor max relative diff" in _tolerance_problem("NVFP4Tensor", ref, ref * 1.1)


def test_mx_activation_rounding_is_noted_before_converting():
    """torchao's RCEIL activation scales have no compressed-tensors field: the converter says so;
    EVEN, weight-only MX and other types need no note, and malformed entries do not crash it."""

    def mx(act):
        return {"_type": "MXTensor", "_data": {"act_quant_kwargs": act}}

    def act(mode):
        return {"_type": "QuantizeTensorToMXKwargs", "_data": {"scaling_mode": {"_data": mode}}}

    notes = schemes.conversion_notes({"a.weight": mx(act("RCEIL")), "b.weight": mx(act("RCEIL"))})
    assert len(notes) == 1 and "RCEIL" in notes[0] and "EVEN" in notes[0]
    assert schemes.conversion_notes({"a.weight": mx(act("EVEN")), "b.weight": mx(None)}) == []
    assert schemes.conversion_notes({"a.weight": {"_type": "Int8Tensor", "_data": {}}}) == []
    assert schemes.conversion_notes({"a.weight": mx([1]), "b.weight": mx({"_data": "x"})}) == []


def test_moe_with_experts_kept_bf16_is_validated_without_a_transformers_kl(moe_dir, tmp_path, capsys):
    """transformers' compressed-tensors loader reads MoE experts only as quantized tensors: with the
    experts kept bf16 it would leave the fused experts randomly initialized. The weights are still
    compared bit-exactly, the KL is reported as not measured and the checkpoint passes; any other
    incomplete load is an error."""
    from hf_torchao_vllm.conversion.validate import ExpertsNotLoadableError, load_every_weight, run_validation

    source = quantize_and_save(moe_dir, "int4_weight_only", str(tmp_path / "torchao"), skip=["experts"])
    target = str(tmp_path / "ct")
    convert_checkpoint(source, target)
    expected = r"only as quantized tensors.*96 expert weight\(s\) in high precision.*8 fused"
    with pytest.raises(ExpertsNotLoadableError, match=expected):
        load_every_weight(target)
    report = run_validation(source, target)
    assert report.ok and report.kl is None and report.num_exact == report.num_compared
    assert "transformers: KL not measured" in capsys.readouterr().out


def test_incomplete_loads_other_than_bf16_experts_are_errors():
    from hf_torchao_vllm.conversion import validate

    experts = ["model.layers.0.mlp.experts.gate_up_proj"], ["model.layers.0.mlp.experts.0.gate_proj.weight"]
    assert validate._only_unquantized_experts(*experts)
    assert not validate._only_unquantized_experts(["model.layers.0.self_attn.o_proj.weight"], experts[1])
    assert not validate._only_unquantized_experts(experts[0], ["model.layers.0.attn.o_proj.weight_scale"])
    assert not validate._only_unquantized_experts(
        experts[0], ["model.layers.0.mlp.experts.0.w1.weight_scale"]
    )
    assert not validate._only_unquantized_experts([], experts[1])
    # Llama-4: transformers' compressed-tensors path builds per-expert Linears; bf16 experts stay fused
    llama4 = (
        ["model.layers.0.feed_forward.experts.0.down_proj.weight"],
        ["model.layers.0.feed_forward.experts.down_proj"],
    )
    assert validate._only_unquantized_experts(*llama4)


def test_a_weight_torchao_holds_in_float32_is_validated_in_float32(int8_source, tmp_path):
    """compressed-tensors decompresses a shard to one dtype; a quantized weight torchao holds in
    float32 (HYV4 keeps its indexer's weights_proj in float32) is compared in float32, bit-exactly."""
    from safetensors.torch import save_file

    source = tmp_path / "fp32_weight"
    copy_dir(int8_source, str(source))
    path = source / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    name = "model.layers.0.self_attn.q_proj.weight"
    entry = json.loads(metadata[name])
    entry["_data"]["dtype"]["_data"] = "float32"
    metadata[name] = json.dumps(entry)
    save_file(tensors, str(path), metadata=metadata)
    convert_checkpoint(str(source), str(tmp_path / "ct"))
    report = validate_weights(str(source), str(tmp_path / "ct"))
    assert report.ok, report.mismatches
    assert report.num_exact == report.num_compared


def test_validate_reports_a_scheme_the_source_does_not_have(int8_source, tmp_path):
    # W8A8 and int8 weight-only store the same int8 weights and scales: bit-exact weights and a
    # KL near 1e-4 cannot tell them apart, so the scheme itself is compared
    target = tmp_path / "ct"
    convert_checkpoint(int8_source, str(target))
    config = load_json(target / "config.json")
    group = config["quantization_config"]["config_groups"]["group_0"]
    group["input_activations"]["strategy"] = "tensor"  # per-tensor instead of per-token activations
    (target / "config.json").write_text(json.dumps(config))
    report = validate_weights(int8_source, str(target))
    assert report.num_exact == report.num_compared
    assert len(report.mismatches) == 28
    assert (
        "config group group_0 differs in input_activations from the W8A8_INT8" in report.mismatches[0].problem
    )

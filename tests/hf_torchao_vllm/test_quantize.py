"""quantize_hf_model_with_torchao on the embedded models: every CPU recipe quantizes, generates, saves,
reloads with bit-identical logits and keeps logits SQNR above a measured per-recipe floor; module
selection on the MoE model; every bad input is a clear error with no partial output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_torchao_vllm import quantize_hf_model_with_torchao as quantize_script
from hf_torchao_vllm.quantization import quantize
from hf_torchao_vllm.quantization.recipes import RECIPES, RecipeOptions, cpu_capable_recipes

REPO_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = REPO_ROOT / "hf_torchao_vllm" / "embedded_models"
DENSE = str(EMBEDDED / "dense")
MOE = str(EMBEDDED / "moe")
FAST = {"max_new_tokens": 4, "eval_tokens": 1024, "prompts": ["The try statement"]}

DENSE_CPU_RUNS = [
    ("none", {}),
    ("int8_weight_only", {}),
    ("int8_dynamic_act_int8_weight", {}),
    ("int4_weight_only", {}),
    ("intx4_weight_only", {}),
    ("fp8", {"fp8_emulation_on_cpu": True, "granularity": "per_row"}),
    ("fp8", {"fp8_emulation_on_cpu": True, "granularity": "per_tensor"}),
    ("fp8_weight_only", {}),
    ("mxfp8", {}),
    ("mxfp4", {}),
    ("nvfp4_weight_only", {}),
]


def _report(output_dir: str) -> dict:
    return json.loads((Path(output_dir) / quantize_script.REPORT_FILE).read_text())


def test_every_cpu_recipe_is_tested():
    tested = {name for name, _ in DENSE_CPU_RUNS}
    # int8 activations x int4 weights has no logits floor: it is test_ao.py's, not a checkpoint recipe here
    untested = {"int8_dynamic_act_intx4_weight"}
    assert tested == {name for name, r in RECIPES.items() if r.cuda_only_reason is None} - untested


@pytest.mark.parametrize(
    ("recipe", "kwargs"), DENSE_CPU_RUNS, ids=[f"{r}-{k.get('granularity', '')}" for r, k in DENSE_CPU_RUNS]
)
def test_dense_recipe_quantizes_saves_reloads(tmp_path, recipe, kwargs):
    out = quantize_script.main(model=DENSE, recipe=recipe, output_dir=str(tmp_path / "out"), **FAST, **kwargs)
    report = _report(out)
    assert report["reload_logits_identical"] is True
    assert report["weight_files"] == ["model.safetensors"]
    config = json.loads((Path(out) / "config.json").read_text())
    quality = report["quality"]
    if recipe == "none":
        assert "quantization_config" not in config
        assert quality["logits_sqnr_db"] == float("inf")  # same weights, same kernels: identical logits
        return
    assert config["quantization_config"]["quant_method"] == "torchao"
    quantized = [w for w in report["weights"] if w["status"] == "quantized"]
    skipped = [w for w in report["weights"] if w["status"] != "quantized"]
    assert len(quantized) == 4 * 7  # 4 layers x (q, k, v, o, gate, up, down)
    assert [w["name"] for w in skipped] == ["lm_head"]
    assert all(w["tensor_type"] != "plain" for w in quantized)
    assert quality["logits_sqnr_db"] >= RECIPES[recipe].min_logits_sqnr_db, (
        recipe,
        quality["logits_sqnr_db"],
    )
    assert quality["bytes_quantized"] < quality["bytes_reference"]
    assert len(report["generations"]) == 1


def _quantized_names(report: dict) -> set[str]:
    return {w["name"] for w in report["weights"] if w["status"] == "quantized"}


@pytest.mark.parametrize("recipe", ["fp8_weight_only", "int8_weight_only"])
def test_moe_experts_only_quantizes_exactly_the_expert_weights(tmp_path, recipe):
    out = quantize_script.main(
        model=MOE, recipe=recipe, modules="experts_only", output_dir=str(tmp_path / "o"), **FAST
    )
    report = _report(out)
    expected = {f"model.layers.{i}.mlp.experts.{p}" for i in range(4) for p in ("gate_up_proj", "down_proj")}
    assert _quantized_names(report) == expected
    assert report["reload_logits_identical"] is True
    # the router and every attention projection stay bf16
    skipped = {w["name"]: w["status"] for w in report["weights"] if w["status"] != "quantized"}
    assert "router" in skipped["model.layers.0.mlp.gate.weight"]
    assert "experts_only" in skipped["model.layers.0.self_attn.q_proj"]
    config = json.loads((Path(out) / "config.json").read_text())
    keys = list(config["quantization_config"]["quant_type"]["default"]["_data"]["fqn_to_config"])
    assert keys == [
        r"re:model\.layers\.\d+\.mlp\.experts\.down_proj",
        r"re:model\.layers\.\d+\.mlp\.experts\.gate_up_proj",
    ]


@pytest.mark.slow
def test_moe_skip_attention_with_skip_regex(tmp_path):
    out = quantize_script.main(
        model=MOE, recipe="fp8_weight_only", modules="skip_attention", skip=[r"layers\.0\."],
        output_dir=str(tmp_path / "o"), **FAST,
    )  # fmt: skip
    names = _quantized_names(_report(out))
    assert names == {
        f"model.layers.{i}.mlp.experts.{p}" for i in range(1, 4) for p in ("gate_up_proj", "down_proj")
    }


def test_moe_recipe_without_3d_support_is_a_clear_error(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"cannot quantize 8 selected weight.*fused 3D expert.*quantize 3D experts: .*fp8_weight_only",
    ):
        quantize_script.main(
            model=MOE, recipe="mxfp8", modules="experts_only", output_dir=str(tmp_path / "o")
        )
    assert not (tmp_path / "o").exists()


def test_mlp_only_on_dense_leaves_attention_in_bf16(tmp_path):
    out = quantize_script.main(
        model=DENSE, recipe="int8_weight_only", modules="mlp_only", output_dir=str(tmp_path / "o"), **FAST
    )
    names = _quantized_names(_report(out))
    assert names == {f"model.layers.{i}.mlp.{p}_proj" for i in range(4) for p in ("gate", "up", "down")}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"recipe": "int3"}, r"unknown recipe 'int3': choose one of none, int8_weight_only"),
        (
            {"recipe": "fp8", "granularity": "per_channel"},
            r"unknown granularity 'per_channel'; valid: per_row",
        ),
        (
            {"modules": "attention_only"},
            r"unknown module selector 'attention_only'; valid: all, experts_only",
        ),
        ({"recipe": "fp8"}, r"--fp8_emulation_on_cpu=True"),
        (
            {"recipe": "fp8", "fp8_emulation_on_cpu": True, "granularity": "a1x128_w128x128"},
            r"does not run on cpu.*unsupported without triton",
        ),
        ({"recipe": "nvfp4"}, r"not supported on cpu.*nvfp4_weight_only"),
        ({"model": "/nonexistent/model"}, r"does not exist"),
        (
            {"recipe": "int4_weight_only", "group_size": 96},
            r"cannot quantize 24 selected weight\(s\).*% group_size 96 != 0.*--group_size",
        ),
        ({"skip": ["("]}, r"--skip pattern '\(' is not a valid regex \(.*\): fix the regex"),
        (
            {"recipe": "int4_weight_only", "group_size": 0},
            r"--group_size must be a positive int, got 0: pass e.g. --group_size=128",
        ),
        (
            {"group_size": 64},
            r"--group_size applies to recipe int4_weight_only / intx4_weight_only / "
            r"int8_dynamic_act_intx4_weight only, not int8_weight_only: drop --group_size",
        ),
        ({"granularity": "per_tensor"}, r"--granularity applies to recipe fp8 only, not int8_weight_only"),
        ({"fp8_emulation_on_cpu": True}, r"--fp8_emulation_on_cpu applies to recipe fp8 only"),
        (
            {"recipe": "fp8_per_tensor", "granularity": "per_row"},
            r"--granularity=per_row contradicts recipe fp8_per_tensor \(granularity per_tensor\): "
            r"drop --granularity or pass --recipe=fp8",
        ),
        ({"skip": [r"layers"]}, r"selects no weight"),
    ],
)
def test_bad_input_is_a_value_error_without_output(tmp_path, kwargs, message):
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=message):
        quantize_script.main(**{"model": DENSE, "output_dir": str(out), **kwargs})
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_non_causal_lm_is_refused(tmp_path):
    from transformers import ResNetConfig

    ResNetConfig().save_pretrained(tmp_path / "resnet")
    with pytest.raises(ValueError, match=r"not a causal LM \(model_type='resnet'"):
        quantize_script.main(model=str(tmp_path / "resnet"), output_dir=str(tmp_path / "o"))


def test_existing_output_dir_needs_overwrite(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="exists: pass --overwrite"):
        quantize_script.main(model=DENSE, output_dir=str(tmp_path / "o"))
    assert (tmp_path / "o" / "keep.txt").read_text() == "x"


def test_failure_after_quantizing_leaves_no_partial_output(tmp_path, monkeypatch):
    import torch

    calls = []

    def fake_check_logits(model, token_ids):
        calls.append(1)
        return torch.zeros(1) if len(calls) == 1 else torch.ones(1)  # reload "differs"

    monkeypatch.setattr(quantize, "logits", fake_check_logits)
    with pytest.raises(RuntimeError, match="reloaded model's logits differ"):
        quantize_script.main(model=DENSE, recipe="int8_weight_only", output_dir=str(tmp_path / "o"), **FAST)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temp dir


def test_cpu_capable_recipes_names_the_fp8_opt_in():
    names = cpu_capable_recipes()
    assert "nvfp4" not in names and "fp8" not in names
    assert "fp8 (with --fp8_emulation_on_cpu=True)" in names


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Tiny random-weight checkpoints of real architectures (tiny_models), built once per module."""
    from hf_torchao_vllm import tiny_models

    architectures = {a.hf_name: a for a in tiny_models.architectures_in_both()}
    built = {}

    def build(hf_name: str) -> str:
        if hf_name not in built:
            built[hf_name] = str(
                tiny_models.save_tiny_model(architectures[hf_name], tmp_path_factory.mktemp(hf_name))
            )
        return built[hf_name]

    return build


@pytest.mark.parametrize("architecture", ["OPTForCausalLM", "Qwen2ForCausalLM"])
@pytest.mark.parametrize("recipe", ["int8_weight_only", "int4_weight_only"])
def test_linear_biases_are_never_quantized(tiny_dir, tmp_path, architecture, recipe):
    """OPT and Qwen2 Linears have biases: only the weights become torchao tensors (transformers' module-name
    keys match both a Linear's weight and its bias, so the filter must name weights)."""
    from safetensors import safe_open

    out = tmp_path / "q"
    plan = quantize.quantize_checkpoint(
        tiny_dir(architecture), recipe, str(out), options=RecipeOptions(group_size=32)
    )
    assert plan.recipe_by_target and all(not t.endswith("bias") for t in plan.recipe_by_target)
    with safe_open(out / "model.safetensors", framework="pt") as f:
        metadata = f.metadata()
        biases = [k for k in f.keys() if k.endswith("_proj.bias") or k.endswith("fc1.bias")]  # noqa: SIM118
    assert biases, "the architecture has Linear biases"
    for bias in biases:
        assert json.loads(metadata[bias])["_type"] == "Tensor", bias
    assert plan.vllm_problem is None


@pytest.mark.parametrize(
    ("architecture", "router"),
    [
        ("Qwen2MoeForCausalLM", "model.layers.0.mlp.gate"),
        ("Qwen2MoeForCausalLM", "model.layers.0.mlp.shared_expert_gate"),
        ("Llama4ForCausalLM", "model.layers.0.feed_forward.router"),
        ("PhimoeForCausalLM", "model.layers.0.mlp.router"),
        ("DeepseekV3ForCausalLM", "model.layers.1.mlp.gate"),
    ],
)
def test_routers_are_not_quantized_unless_asked(tiny_dir, architecture, router):
    plan = quantize.plan_quantization(tiny_dir(architecture), "int8_weight_only")
    if router not in plan.selection.targets:  # a router that is not an nn.Linear is named by its parameter
        router += ".weight"
    assert router not in plan.recipe_by_target and "router / gate" in plan.selection.skipped[router]
    opted_in = quantize.plan_quantization(tiny_dir(architecture), "int8_weight_only", quantize_routers=True)
    assert router in opted_in.recipe_by_target


@pytest.mark.parametrize("where", ["model", "parent", "inside"])
def test_output_may_not_be_the_model_or_around_it(tmp_path, where):
    import shutil

    model = tmp_path / "models" / "dense"
    shutil.copytree(DENSE, model)
    before = sorted(p.name for p in model.iterdir())
    output = {"model": model, "parent": tmp_path / "models", "inside": model / "q"}[where]
    with pytest.raises(ValueError, match="the input"):
        quantize_script.main(model=str(model), output_dir=str(output), overwrite=True, **FAST)
    assert sorted(p.name for p in model.iterdir()) == before


def test_quantize_on_load_that_drops_weights_is_refused(tiny_dir, tmp_path):
    """HRM's checkpoint stores q/k/v as one attn.gqkv_proj that transformers chunks while loading; its
    quantize-on-load leaves those weights randomly initialized (a plain load reads them). Quantizing
    only the other weights must refuse rather than write a checkpoint with random q/k/v."""
    import torch

    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"randomly initialized \(e\.g\. .*_proj\.weight\).*cannot be quantized"
    ):
        quantize.quantize_checkpoint(
            tiny_dir("HrmTextForCausalLM"), "int8_weight_only", str(out), modules="all",
            skip=[r"self_attn\.(gate|q|k|v)_proj$", r"mlp\.(gate|up)_proj$"], device=torch.device("cpu"),
        )  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("quant_method", ["torchao", "compressed-tensors"])
def test_already_quantized_model_is_refused_before_loading(tmp_path, quant_method):
    source = tmp_path / "quantized"
    source.mkdir()
    config = json.loads((Path(DENSE) / "config.json").read_text())
    config["quantization_config"] = {"quant_method": quant_method}
    (source / "config.json").write_text(json.dumps(config))
    out = tmp_path / "o"
    message = rf"already quantized \(quant_method '{quant_method}'.*: pass the bf16"
    with pytest.raises(ValueError, match=message):
        quantize_script.main(model=str(source), output_dir=str(out))
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncated", "no_weights"])
def test_damaged_weights_are_one_line_before_loading(tmp_path, damage):
    source = tmp_path / "model"
    source.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (source / name).write_bytes((Path(DENSE) / name).read_bytes())
    if damage == "truncated":
        (source / "model.safetensors").write_bytes((Path(DENSE) / "model.safetensors").read_bytes()[:100_000])
    message = {
        "truncated": r"model.safetensors is not a valid safetensors file.*truncated",
        "no_weights": r"model has no weight files",
    }
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=message[damage]):
        quantize_script.main(model=str(source), output_dir=str(out))
    assert not out.exists()
    from hf_torchao_vllm import evaluate_quality

    with pytest.raises(ValueError, match=message[damage]):
        evaluate_quality.main(model=str(source))

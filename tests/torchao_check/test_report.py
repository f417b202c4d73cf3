"""In-process checks of test_ao.py's report: weight classes, skip reasons, SQNR thresholds, exit rules.

Each test quantizes a fresh copy of a toy model with real torchao 0.18 configs on the CPU and checks
what the report says against what is known about those configs (read from torchao's source).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch
from torch import nn

import test_ao
from pytorch_scripts_common import set_seed

CPU = torch.device("cpu")
CUDA_AVAILABLE = torch.cuda.is_available()

# config name -> (weight class, element dtype, granularity, activation prefix) torchao 0.18 produces
# on a bf16 Linear whose shapes divide every block / group size (group_size 32).
EXPECTED_ON_CPU = {
    "int8wo": ("Int8Tensor", "int8", "per-row", "weight-only"),
    "int8dq": ("Int8Tensor", "int8", "per-row", "dynamic"),
    "float8wo": ("Float8Tensor", "float8_e4m3fn", "per-row", "weight-only"),
    "intx4wo": ("IntxUnpackedToInt8Tensor", "int4", "per-group 32", "weight-only"),
    "int8dq_intx4w": ("IntxUnpackedToInt8Tensor", "int4", "per-group 32", "dynamic"),
    "mxfp8": ("MXTensor", "float8_e4m3fn", "blocks 1x32", "dynamic"),
    "mxfp4": ("MXTensor", "float4_e2m1fn_x2", "blocks 1x32", "dynamic"),
    "nvfp4wo": ("NVFP4Tensor", "float4_e2m1fn_x2", "blocks 1x16 + per-tensor scale", "weight-only"),
}


def run(
    model_name: str,
    config_name: str,
    *,
    exclude: str = "",
    dtype: torch.dtype = torch.bfloat16,
    batch_size: int = 4,
    device: torch.device = CPU,
) -> test_ao.ConfigResult:
    set_seed(0)
    mut = test_ao.load_model(model_name, device, batch_size, 8, dtype)
    reference_output, layer_inputs = test_ao.reference_run(mut)
    return test_ao.run_config(
        test_ao.CONFIG_REGISTRY[config_name],
        mut,
        reference_output,
        layer_inputs,
        device=device,
        group_size=32,
        exclude_re=re.compile(exclude) if exclude else None,
        compile=False,
        num_runs=1,
    )


def rows_by_fqn(result: test_ao.ConfigResult) -> dict[str, test_ao.ModuleRow]:
    return {row.fqn: row for row in result.modules}


def assert_every_skip_explained(result: test_ao.ConfigResult) -> None:
    for row in result.modules:
        if row.status != "quantized":
            assert row.reason, f"{result.name}: {row.fqn} is {row.status} without a reason"
            assert not row.reason.startswith("unknown"), f"{result.name}: {row.fqn}: {row.reason}"


@pytest.mark.parametrize("config_name", sorted(EXPECTED_ON_CPU))
def test_small_toy_every_linear_quantized_with_the_right_class(config_name: str) -> None:
    result = run("small", config_name)
    weight_class, elem, granularity, activation = EXPECTED_ON_CPU[config_name]
    rows = rows_by_fqn(result)
    assert set(rows) == {"0", "2", "3", "5"}  # three Linear, one LayerNorm
    for fqn in ("0", "2", "5"):
        row = rows[fqn]
        assert row.status == "quantized", (fqn, row.reason)
        assert row.weight_class == weight_class
        assert row.element_dtype == elem
        assert row.granularity == granularity
        assert row.activation.startswith(activation), row.activation
        assert row.bytes_after < row.bytes_before
        assert row.stored.startswith("qdata ")
    norm = rows["3"]
    assert norm.status == "skipped" and norm.weight_class == "Parameter"
    assert norm.reason.startswith("filtered out: LayerNorm is not nn.Linear")
    assert norm.bytes_after == norm.bytes_before == 512 * 2
    assert result.status == "ok", (result.status, result.error)
    # the threshold is the acceptance check: every quantized layer meets its config's measured minimum
    assert result.worst_layer_sqnr_db >= test_ao.CONFIG_REGISTRY[config_name].min_layer_sqnr_db, (
        f"{config_name}: worst layer {result.worst_layer_sqnr_db:.1f} dB"
    )
    assert result.model_sqnr_db is not None and result.model_sqnr_db > 0


@pytest.mark.parametrize("config_name", ["int8wo", "intx4wo"])
def test_large_toy_every_linear_quantized(config_name: str) -> None:
    result = run("large", config_name, batch_size=2)
    weight_class = EXPECTED_ON_CPU[config_name][0]
    linear_rows = [row for row in result.modules if row.module_type == "Linear"]
    norm_rows = [row for row in result.modules if row.module_type == "LayerNorm"]
    assert len(linear_rows) == 8 and len(norm_rows) == 4
    assert all(row.status == "quantized" and row.weight_class == weight_class for row in linear_rows)
    assert all(row.status == "skipped" for row in norm_rows)
    assert_every_skip_explained(result)
    assert result.status == "ok"
    assert result.worst_layer_sqnr_db >= test_ao.CONFIG_REGISTRY[config_name].min_layer_sqnr_db


@pytest.mark.skipif(
    CUDA_AVAILABLE, reason="checks the CPU fallback; CUDA runs an Int4WeightOnlyConfig layout"
)
def test_int4_falls_back_to_intx_on_cpu_and_names_the_refused_layouts() -> None:
    result = run("odd_shapes", "int4wo")
    rows = rows_by_fqn(result)
    # No Int4WeightOnlyConfig layout runs on CPU in torchao 0.18 (plain needs mslk): the recipe
    # uses the intx int4 tensor, which refuses the layers whose in_features 32 does not divide.
    assert result.variant == "intx"
    assert len(result.probe_errors) == 3 and "mslk" in result.probe_errors[0]
    assert rows["proj_in"].status == "quantized"
    for fqn, in_features in (("odd", 40), ("proj_out", 24)):
        assert rows[fqn].status == "error"
        assert f"shape: in_features {in_features} % group_size 32 != 0" in rows[fqn].reason
    assert result.status == "partial"
    assert_every_skip_explained(result)


def test_intx_reports_the_layers_it_refuses_and_quantizes_the_rest() -> None:
    result = run("odd_shapes", "intx4wo")
    rows = rows_by_fqn(result)
    assert rows["proj_in"].status == "quantized"
    assert rows["proj_in"].weight_class == "IntxUnpackedToInt8Tensor"
    for fqn, in_features in (("odd", 40), ("proj_out", 24)):
        assert rows[fqn].status == "error"
        assert "AssertionError" in rows[fqn].reason
        assert f"in_features {in_features} % group_size 32 != 0" in rows[fqn].reason
    assert result.status == "partial"
    assert result.error.startswith("AssertionError")
    assert result.worst_layer_sqnr_db >= test_ao.CONFIG_REGISTRY["intx4wo"].min_layer_sqnr_db


def test_exclude_filter_is_reported_and_all_excluded_is_a_no_op() -> None:
    result = run("small", "int8wo", exclude="^2$")
    rows = rows_by_fqn(result)
    assert rows["2"].status == "skipped"
    assert rows["2"].reason == "filtered out: name matches --exclude='^2$'"
    assert rows["0"].status == rows["5"].status == "quantized"

    nothing = run("small", "int8wo", exclude=".")
    assert nothing.status == "no-op"
    assert nothing.num_quantized == 0
    assert nothing.model_sqnr_db is None
    assert_every_skip_explained(nothing)


def test_float32_weights_are_reported_as_wrong_dtype_for_mx() -> None:
    result = run("small", "mxfp8", dtype=torch.float32)
    for fqn in ("0", "2", "5"):
        row = rows_by_fqn(result)[fqn]
        assert row.status == "error"
        assert "dtype: weight is float32, this config needs bfloat16" in row.reason
    assert result.status == "rejected"


@pytest.mark.skipif(
    CUDA_AVAILABLE, reason="checks the CPU refusal; a CUDA sm89+ device can run float8 dynamic"
)
@pytest.mark.parametrize("config_name", ["float8dq_row", "float8dq_tensor", "nvfp4dq"])
def test_configs_cpu_cannot_run_are_unsupported_with_torchao_error(config_name: str) -> None:
    result = run("small", config_name)
    assert result.status == "unsupported"
    assert result.probe_errors and "AssertionError" in result.probe_errors[0]
    assert re.search(r"CUDA|sm100", result.probe_errors[0])
    assert result.num_quantized == 0
    assert result.eager is None


@pytest.mark.skipif(CUDA_AVAILABLE, reason="checks the CPU fallback; CUDA sm100+ runs the real MX gemm")
def test_mx_picks_emulated_kernel_when_the_real_one_fails_on_cpu() -> None:
    result = run("small", "mxfp8")
    assert result.variant == "emulated"
    assert len(result.probe_errors) == 1 and result.probe_errors[0].startswith("[auto]")
    assert result.status == "ok"


def test_weight_bytes_and_granularity_of_known_tensors() -> None:
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup, PerTensor

    linear = nn.Linear(64, 128, dtype=torch.bfloat16)
    assert test_ao.weight_bytes(linear.weight) == 128 * 64 * 2
    quantize_(linear, Int8WeightOnlyConfig(granularity=PerTensor()))
    # qdata int8 128x64 + scale float32 + zero_point int8, one each for the whole tensor
    assert test_ao.describe_granularity(linear.weight) == "per-tensor"
    assert test_ao.weight_bytes(linear.weight) == 128 * 64 + sum(
        t.numel() * t.element_size() for t in (linear.weight.scale, linear.weight.zero_point)
    )

    linear = nn.Linear(64, 128, dtype=torch.bfloat16)
    quantize_(linear, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(16)))
    assert test_ao.describe_granularity(linear.weight) == "per-group 16"
    # qdata int8 128x64, scale bf16 128x4, zero_point int8 128x4
    assert test_ao.weight_bytes(linear.weight) == 128 * 64 + 128 * 4 * 2 + 128 * 4
    assert test_ao.describe_stored(linear.weight) == (
        "qdata int8 128x64, scale bfloat16 128x4, zero_point int8 128x4"
    )


def test_non_linear_and_nondynamically_quantizable_linear_reasons() -> None:
    spec = test_ao.CONFIG_REGISTRY["int8wo"]
    model = nn.ModuleDict({"emb": nn.Embedding(10, 32), "attn": nn.MultiheadAttention(32, 4)})
    snapshots = test_ao.snapshot_weights(model)
    emb = test_ao.infer_reason(snapshots["emb"], model["emb"], "emb", spec, 32, None, model["emb"].weight)
    assert emb == "filtered out: Embedding is not nn.Linear (quantize_'s default filter_fn)"
    out_proj = model["attn"].out_proj
    reason = test_ao.infer_reason(
        snapshots["attn.out_proj"], out_proj, "attn.out_proj", spec, 32, None, out_proj.weight
    )
    assert reason.startswith("filtered out: NonDynamicallyQuantizableLinear")


def test_low_sqnr_exits_non_zero_and_check_can_be_disabled(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    strict = dataclasses.replace(test_ao.CONFIG_REGISTRY["int8wo"], min_layer_sqnr_db=200.0)
    monkeypatch.setitem(test_ao.CONFIG_REGISTRY, "int8wo", strict)
    with pytest.raises(SystemExit) as excinfo:
        test_ao.main(configs="int8wo", num_runs=1, batch_size=2, output_dir=str(tmp_path / "strict"))
    assert excinfo.value.code == 1
    # the report is still written before failing, so the failure can be inspected
    assert (tmp_path / "strict" / "report.json").is_file()
    test_ao.main(configs="int8wo", num_runs=1, batch_size=2, check_sqnr=False)


def zero_row_toy(build_toy_model=test_ao.build_toy_model) -> nn.Module:
    """The small toy with one all-zero weight row (a pruned output feature) in its first Linear."""
    model = build_toy_model("small")
    with torch.no_grad():
        model[0].weight[0] = 0
    return model


def test_inf_or_nan_from_a_quantized_layer_is_low_sqnr_in_the_report(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    # torchao 0.18's Float8WeightOnlyConfig gives an all-zero row the scale 0, so its qdata is 0 / 0 =
    # NaN: a finding about the config (worst possible SQNR), not a mistake in the arguments.
    monkeypatch.setattr(test_ao, "build_toy_model", lambda name: zero_row_toy())
    with pytest.raises(SystemExit) as excinfo:
        test_ao.main(configs="float8wo,int8wo", num_runs=1, batch_size=2, output_dir=str(tmp_path))
    assert excinfo.value.code == 1
    configs = {c["name"]: c for c in json.loads((tmp_path / "report.json").read_text())["configs"]}
    float8 = configs["float8wo"]
    assert float8["status"] == "low-sqnr"
    assert float8["worst_layer_sqnr_db"] == float8["model_sqnr_db"] == "-inf"
    first = next(row for row in float8["modules"] if row["fqn"] == "0")
    assert first["layer_sqnr_db"] == "-inf"
    assert first["reason"] == "output has inf/nan in 2 of 1024 values"  # one feature of 2 rows x 512
    assert configs["int8wo"]["status"] == "ok"  # int8 clamps the scale: the zero row stays zero
    assert configs["int8wo"]["worst_layer_sqnr_db"] >= test_ao.CONFIG_REGISTRY["int8wo"].min_layer_sqnr_db


def test_a_bf16_model_with_inf_output_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def inf_toy(name: str, build_toy_model=test_ao.build_toy_model) -> nn.Module:
        model = build_toy_model(name)
        with torch.no_grad():
            model[5].bias[0] = math.inf
        return model

    monkeypatch.setattr(test_ao, "build_toy_model", inf_toy)
    with pytest.raises(ValueError, match="the bf16 model's output has inf/nan on the seeded random inputs"):
        test_ao.main(configs="int8wo", num_runs=1, batch_size=2)


def test_sqnr_cells_show_minus_inf_as_such() -> None:
    assert [test_ao._fmt_db(v) for v in (None, math.inf, -math.inf, 12.34)] == ["-", "inf", "-inf", "12.3"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"configs": "int8wo,nope"}, "unknown \\['nope'\\]"),
        ({"configs": ""}, "use 'all'"),
        ({"group_size": 48}, "--group_size 48"),
        ({"exclude": "("}, "not a valid regex"),
        ({"model": "/nonexistent/model"}, "has no config.json"),
        ({"num_runs": 0}, "must be >= 1"),
        ({"device": "mps"}, "only cpu, cuda and cuda:<index>"),
        ({"device": "cuda:abc"}, "only cpu, cuda and cuda:<index>"),
        pytest.param(
            {"device": "cuda"},
            "CUDA is not available",
            marks=pytest.mark.skipif(CUDA_AVAILABLE, reason="CUDA is available here"),
        ),
    ],
)
def test_user_mistakes_raise_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        test_ao.main(**kwargs)


@pytest.mark.gpu_only
def test_cuda_int8_weight_only_on_small() -> None:
    result = run("small", "int8wo", device=torch.device("cuda"))
    assert result.status == "ok"
    assert all(rows_by_fqn(result)[fqn].weight_class == "Int8Tensor" for fqn in ("0", "2", "5"))


def test_detection_compares_weights_not_quantize_return(monkeypatch: pytest.MonkeyPatch) -> None:
    """A config whose handler silently does nothing to one Linear and swaps out another one."""
    from torchao.core.config import AOBaseConfig
    from torchao.quantization.transform_module import register_quantize_module_handler

    @dataclasses.dataclass
    class SilentOrSwapConfig(AOBaseConfig):
        pass

    class Swapped(nn.Module):
        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            self.inner = linear

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    @register_quantize_module_handler(SilentOrSwapConfig)
    def _handler(module: nn.Module, config: SilentOrSwapConfig) -> nn.Module:
        # Linear(512 -> 512) is swapped for a wrapper; the others are returned untouched
        return Swapped(module) if module.in_features == 512 and module.out_features == 512 else module

    spec = test_ao.ConfigSpec(
        name="silent_or_swap",
        description="test-only",
        min_layer_sqnr_db=0.0,
        build_variants=lambda group_size, device: [("only", SilentOrSwapConfig())],
        shape_rule=test_ao._no_rule,
    )
    monkeypatch.setitem(test_ao.CONFIG_REGISTRY, "silent_or_swap", spec)
    result = run("small", "silent_or_swap")
    rows = rows_by_fqn(result)
    assert rows["0"].status == rows["5"].status == "skipped"
    assert rows["0"].reason.startswith("unknown: quantize_ returned without changing the weight")
    assert rows["2"].status == "replaced" and rows["2"].weight_class == "Swapped"
    assert rows["2"].bytes_after == rows["2"].bytes_before + 512 * 2  # weight + bias of the wrapped Linear
    assert result.status == "no-op"


def test_timing_ratio_is_marked_unreliable_when_the_spread_exceeds_the_difference() -> None:
    baseline = test_ao.Timing(median_ms=10.0, min_ms=9.0, max_ms=11.0)
    clear = test_ao.Timing(median_ms=20.0, min_ms=19.0, max_ms=22.0)  # difference 10 > spreads 2, 3
    noisy = test_ao.Timing(median_ms=12.0, min_ms=5.0, max_ms=40.0)  # spread 35 > difference 2
    assert test_ao.compare_timing(clear, baseline) == "20.00 [19.00-22.00] (2.00x)"
    assert (
        test_ao.compare_timing(noisy, baseline)
        == "12.00 [5.00-40.00] (1.20x, unreliable: spread > difference)"
    )
    # a noisy baseline makes every ratio against it unreliable
    assert "unreliable" in test_ao.compare_timing(baseline, noisy)
    assert test_ao.compare_timing(None, baseline) == "-"
    assert test_ao.compare_timing(baseline, None) == "10.00 [9.00-11.00]"


def test_sqnr_floors_live_in_the_recipe_registry() -> None:
    from hf_torchao_vllm.quantization import recipes

    for name, spec in test_ao.CONFIG_REGISTRY.items():
        recipe, _ = recipes.resolve(name)
        assert spec.min_layer_sqnr_db == recipe.min_layer_sqnr_db, name
    assert not [n for n in dir(test_ao) if n.endswith("_MIN_SQNR_DB")]

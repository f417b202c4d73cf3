"""Single-process tests of dtensor_parallelisms: argument validation, the report, shard math, docs."""

import inspect
import pathlib
import re
import shlex

import pytest
import torch

from dtensor_parallelisms import main as main_module
from dtensor_parallelisms.checks import Report
from dtensor_parallelisms.hand_tp import hand_tp_shard_dim
from dtensor_parallelisms.main import main, parse_modes, validate_world_size
from dtensor_parallelisms.model import ModelConfig, Transformer, make_inputs
from dtensor_parallelisms.modes import expected_fsdp_shard
from pytorch_scripts_common.distributed import TORCHRUN_ENV_VARS, Tolerance
from tests.readme_commands import bash_block_commands, command_flags

README = pathlib.Path(main_module.__file__).with_name("README.md")


# --- argument validation ---------------------------------------------------------------------------


def test_parse_modes_accepts_all_single_lists_and_fire_tuples():
    assert parse_modes("all") == ["fsdp", "tp", "sp", "fsdp_tp"]
    assert parse_modes("tp") == ["tp"]
    assert parse_modes("fsdp,sp") == ["fsdp", "sp"]
    assert parse_modes(("fsdp", "tp", "fsdp")) == ["fsdp", "tp"]  # fire turns "fsdp,tp" into a tuple


@pytest.mark.parametrize("bad", ["ddp", "fsdp,pp", "", ("all", "tp")])
def test_parse_modes_rejects_unknown_modes_naming_the_choices(bad):
    with pytest.raises(ValueError, match=r"unknown mode .*fsdp, tp, sp, fsdp_tp"):
        parse_modes(bad)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 8])
def test_fsdp_runs_on_any_world_size(world_size):
    validate_world_size(["fsdp"], world_size, ModelConfig(), tp_size=2)


@pytest.mark.parametrize(
    ("modes", "world_size", "config", "tp_size", "message"),
    [
        (["tp"], 3, ModelConfig(), 2, r"num_heads=4 must be divisible by .* world_size=3"),
        (["tp"], 2, ModelConfig(hidden_dim=129), 2, r"hidden_dim=129 must be divisible by .* world_size=2"),
        (["sp"], 2, ModelConfig(seq_len=7), 2, r"seq_len=7 must be divisible by .* world_size=2"),
        (["sp"], 4, ModelConfig(vocab_size=66), 2, r"vocab_size=66 must be divisible by .* world_size=4"),
        (["fsdp_tp"], 2, ModelConfig(), 2, r"dp_size >= 2 and tp_size >= 2; got world_size=2, tp_size=2"),
        (["fsdp_tp"], 6, ModelConfig(), 4, r"got world_size=6, tp_size=4"),
        (["fsdp_tp"], 4, ModelConfig(), 1, r"got world_size=4, tp_size=1"),
        (["fsdp_tp"], 8, ModelConfig(seq_len=6), 4, r"seq_len=6 must be divisible by .* tp_size=4"),
        (["fsdp", "tp"], 3, ModelConfig(), 2, r"mode 'tp'"),
    ],
)
def test_invalid_world_sizes_and_dims_name_the_rule(modes, world_size, config, tp_size, message):
    with pytest.raises(ValueError, match=message):
        validate_world_size(modes, world_size, config, tp_size)


@pytest.mark.parametrize(
    ("modes", "world_size", "tp_size"), [(["tp", "sp"], 4, 2), (["fsdp_tp"], 4, 2), (["fsdp_tp"], 8, 4)]
)
def test_valid_world_sizes_pass(modes, world_size, tp_size):
    validate_world_size(modes, world_size, ModelConfig(), tp_size)


def test_model_config_rejects_heads_that_do_not_divide_dim():
    with pytest.raises(ValueError, match=r"dim=64 must be divisible by num_heads=3"):
        ModelConfig(num_heads=3).validate()
    with pytest.raises(ValueError, match=r"seq_len must be a positive int, got 0"):
        ModelConfig(seq_len=0).validate()


def test_main_without_torchrun_is_a_clear_error(monkeypatch):
    for name in TORCHRUN_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=r"not launched by torchrun .*torchrun --nproc_per_node 2"):
        main(mode="fsdp")


def test_main_rejects_unknown_mode_before_looking_for_torchrun(monkeypatch):
    for name in TORCHRUN_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=r"unknown mode \['ddp'\]"):
        main(mode="ddp")


def test_mixed_precision_without_fsdp_is_rejected():
    with pytest.raises(ValueError, match=r"--mixed_precision applies to mode fsdp only; modes requested: tp"):
        main(mode="tp", mixed_precision=True)


def test_tp_size_without_fsdp_tp_is_rejected():
    with pytest.raises(
        ValueError, match=r"--tp_size applies to mode fsdp_tp only; modes requested: fsdp, tp"
    ):
        main(mode="fsdp,tp", tp_size=2)


def test_input_seed_per_rank_on_one_rank_is_rejected(monkeypatch):
    """One rank has one seed: the deliberate mistake cannot make the checks fail there."""
    for name, value in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(ValueError, match=r"--input_seed_per_rank needs 2 or more ranks .*--nproc_per_node 2"):
        main(mode="fsdp", input_seed_per_rank=True, timeout_s=5)
    assert not torch.distributed.is_initialized()


def test_main_validates_the_world_size_before_creating_a_process_group(monkeypatch):
    # torchrun-like environment but no other process: a hang would mean a collective was attempted.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(ValueError, match=r"mode 'fsdp_tp' needs world_size"):
        main(mode="fsdp_tp", timeout_s=5)
    assert not torch.distributed.is_initialized()


def test_help_documents_every_argument():
    doc = inspect.getdoc(main)
    for name in inspect.signature(main).parameters:
        assert re.search(rf"^\s*{name}: \S", doc, flags=re.M), f"--help has no line for {name}"


# --- the report (the comparison rule: tests/test_common_distributed.py) -----------------------------


def test_report_groups_tensors_and_names_every_failure():
    report = Report()
    refs = {"a": torch.ones(2), "b": torch.ones(2), "c": torch.ones(2)}
    tests = {"a": torch.ones(2), "b": torch.full((2,), 2.0), "c": torch.full((2,), 3.0)}
    result = report.check_all("grads", refs, tests, Tolerance.exact("r"))
    assert not result.passed
    assert result.detail.startswith("failed: b (not exact: max |diff| 1,")
    assert ", c (not exact: max |diff| 2," in result.detail
    assert result.max_abs_err == 2.0
    missing = report.check_all("names", refs, {"a": torch.ones(2)}, Tolerance.exact("r"))
    assert not missing.passed
    assert "['b', 'c']" in missing.detail
    assert report.num_failed == 2
    assert "FAIL" in report.render()


# --- shard layout the distributed checks rely on ------------------------------------------------------


def test_expected_fsdp_shard_follows_torch_chunk_with_empty_tail_shards():
    full = torch.arange(10.0).view(5, 2)
    # chunk(5 rows, 4) gives 3 chunks of 2, 2, 1 rows: rank 3 holds nothing (FSDP2 pads it)
    assert torch.equal(expected_fsdp_shard(full, 4, 0), full[0:2])
    assert torch.equal(expected_fsdp_shard(full, 4, 2), full[4:5])
    assert expected_fsdp_shard(full, 4, 3).shape == (0, 2)
    assert torch.equal(torch.cat([expected_fsdp_shard(full, 3, r) for r in range(3)]), full)


def test_every_hand_tp_parameter_is_classified():
    model = Transformer(ModelConfig())
    dims = {name: hand_tp_shard_dim(name) for name, _ in model.named_parameters()}
    assert dims["layers.0.attention.wq.weight"] == 0
    assert dims["layers.1.attention.wo.weight"] == 1
    assert dims["layers.0.feed_forward.w1.bias"] == 0
    assert dims["layers.0.feed_forward.w2.weight"] == 1
    assert dims["layers.0.feed_forward.w2.bias"] is None  # added once, after the all-reduce
    assert dims["layers.0.attention_norm.weight"] is None
    assert dims["output.weight"] is None


def test_model_shapes_and_same_seed_same_model():
    config = ModelConfig()
    torch.manual_seed(0)
    model_a = Transformer(config)
    x, targets = make_inputs(config, torch.device("cpu"))
    torch.manual_seed(0)
    model_b = Transformer(config)
    assert model_a(x).shape == (config.batch_size, config.seq_len, config.vocab_size)
    assert targets.shape == (config.batch_size, config.seq_len)
    for (name, a), (_, b) in zip(model_a.named_parameters(), model_b.named_parameters(), strict=True):
        assert torch.equal(a, b), name


# --- README stays honest ----------------------------------------------------------------------------


def readme_torchrun_commands() -> list[list[str]]:
    return bash_block_commands(README.read_text(encoding="utf-8"), ("torchrun", ".venv/bin/torchrun"))


def test_readme_torchrun_commands_use_real_arguments_and_valid_world_sizes():
    commands = readme_torchrun_commands()
    assert len(commands) >= 4, "README must show CPU, GPU and multi-node torchrun lines"
    assert any("--nnodes" in c and any(a.startswith("--rdzv") for a in c) for c in commands)
    parameters = set(inspect.signature(main).parameters)
    for command in commands:
        # One style: `.venv/bin/torchrun <launcher flags> -m dtensor_parallelisms.main <script flags>`
        assert command[0] == ".venv/bin/torchrun", shlex.join(command)
        script_index = command.index("-m") + 1
        assert command[script_index] == "dtensor_parallelisms.main", shlex.join(command)
        launcher, script_args = command[: script_index - 1], command[script_index + 1 :]
        flags = [a[2:].split("=")[0] for a in script_args if a.startswith("--")]
        assert set(flags) <= parameters, f"unknown flags {set(flags) - parameters} in {shlex.join(command)}"
        options = command_flags(script_args)
        nproc = int(launcher[launcher.index("--nproc_per_node") + 1])
        nnodes = int(launcher[launcher.index("--nnodes") + 1]) if "--nnodes" in launcher else 1
        validate_world_size(
            parse_modes(options.get("mode", "all")),
            nproc * nnodes,
            ModelConfig(),
            int(options.get("tp_size", 2)),
        )

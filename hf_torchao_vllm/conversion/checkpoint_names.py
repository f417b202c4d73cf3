"""transformers' names for a checkpoint's weights: on disk versus in memory.

transformers loads many architectures under other names than their checkpoints store: its
conversion mapping (``transformers.conversion_mapping``) renames modules (Mixtral
``block_sparse_moe.`` -> ``mlp.``, NemotronH ``backbone.`` -> ``model.``, HRM ``attn.o_proj`` ->
``self_attn.o_proj``) and merges per-expert Linear weights into fused 3D parameters
(``experts.<e>.w1.weight`` + ``experts.<e>.w3.weight`` -> ``experts.gate_up_proj`` [E, 2I, H]).
``save_pretrained`` reverts the mapping for every stored tensor (``revert_weight_conversion``).
For a torchao checkpoint that means: the flattened components are renamed
(``mlp.experts._gate_up_proj_qdata`` -> ``block_sparse_moe.experts._gate_up_proj_qdata``; no merge
applies to them), while the torchao metadata keeps the in-memory parameter names
(``model.layers.0.mlp.experts.gate_up_proj``). transformers renames back on load.

``CheckpointNaming`` answers these questions with transformers' own mapping for the checkpoint's
architecture (built on the meta device, only when a name needs it): the stored name of an in-memory
name and back, and the per-expert on-disk weights of a fused 3D parameter with the rows each holds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class ExpertSlice:
    """One per-expert weight of a fused 3D parameter: rows ``[start, stop)`` of expert ``expert``."""

    name: str  # on-disk weight name, e.g. model.layers.0.block_sparse_moe.experts.3.w1.weight
    expert: int
    start: int
    stop: int


class CheckpointNaming:
    """transformers' conversion mapping for the checkpoint in ``directory`` (from its config.json).

    Architectures transformers does not know, and configs it cannot build, have no mapping: every
    name is then stored as it is named in memory.
    """

    def __init__(self, directory: str):
        self.directory = directory

    @functools.cached_property
    def model(self) -> torch.nn.Module | None:
        """The architecture on the meta device (no weights allocated), or None when transformers
        cannot build it."""
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            hf_config = AutoConfig.from_pretrained(self.directory)
            architectures = getattr(hf_config, "architectures", None) or []
            model_class = getattr(transformers, architectures[0], None) if architectures else None
            with torch.device("meta"):
                if model_class is not None:
                    return model_class(hf_config)
                return AutoModelForCausalLM.from_config(hf_config)
        except Exception:  # noqa: BLE001
            # transformers cannot build this model from its config (unknown type, a field it rejects:
            # it raises many kinds): then it had no mapping to save with either. Only transformers
            # runs inside this block.
            return None

    @functools.cached_property
    def _transforms(self) -> list[Any]:
        """The mapping ``save_pretrained`` reverts for a model not loaded by ``from_pretrained``
        (``revert_weight_conversion``): the model's, without legacy renames and prefix changes."""
        from transformers.conversion_mapping import PrefixChange, get_model_conversion_mapping

        if self.model is None:
            return []
        mapping = get_model_conversion_mapping(self.model, add_legacy=False)
        return [c for c in mapping if not isinstance(c, PrefixChange)]

    def _split(self, transforms: list[Any]) -> tuple[list[Any], list[Any]]:
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        return renamings, [t for t in transforms if isinstance(t, WeightConverter)]

    @functools.cached_property
    def _forward_transforms(self) -> tuple[list[Any], list[Any]]:
        """(renamings, converters) ``from_pretrained`` applies."""
        return self._split(self._transforms)

    @functools.cached_property
    def _reverse_transforms(self) -> tuple[list[Any], list[Any]]:
        """(renamings, converters) ``save_pretrained`` applies, in its order (see the module doc)."""
        return self._split([c.reverse_transform() for c in self._transforms[::-1]])

    def memory_module(self, stored_module: str) -> str:
        """The in-memory name of the module whose weight is stored as ``<stored_module>.weight``;
        the stored name itself for a weight transformers merges into another (per-expert weights)."""
        from transformers.core_model_loading import rename_source_key

        renamings, converters = self._forward_transforms
        if not renamings and not converters:
            return stored_module
        renamed, converter_pattern = rename_source_key(f"{stored_module}.weight", renamings, converters)
        if converter_pattern is not None or not renamed.endswith(".weight"):
            return stored_module
        return renamed.removesuffix(".weight")

    def linear_modules(self) -> set[str] | None:
        """In-memory names of the modules that multiply by a 2D ``weight`` (``nn.Linear``, MoE
        routers), embeddings excluded; None when transformers cannot build the architecture."""
        if self.model is None:
            return None
        return {
            name
            for name, module in self.model.named_modules()
            if (weight := module._parameters.get("weight")) is not None
            and weight.ndim == 2
            and not isinstance(module, torch.nn.Embedding)
        }

    def stored_name(self, name: str) -> str:
        """The name ``save_pretrained`` stores the in-memory tensor ``name`` under when no merge or
        split applies to it (the flattened components of torchao tensors)."""
        from transformers.core_model_loading import rename_source_key

        renamings, converters = self._reverse_transforms
        if not renamings and not converters:
            return name
        renamed, converter_pattern = rename_source_key(name, renamings, converters, reverse=True)
        # A converter takes the tensor only with the others of its group (a component never is one).
        return name if converter_pattern is not None else renamed

    def expert_slices(self, name: str, shape: tuple[int, ...]) -> list[ExpertSlice] | None:
        """The per-expert on-disk weights transformers saves fused 3D parameter ``name`` (in-memory
        name, ``shape`` [E, R, C]) as, each with its expert and rows; None when transformers stores it
        fused (under its own or another name). Learned by reverting a probe tensor whose rows hold
        their own (expert, row) index, so the names and the gate / up order are transformers' own."""
        from transformers.core_model_loading import revert_weight_conversion

        num_experts, num_rows = shape[0], shape[1]
        if self.model is None:
            return None
        index = torch.arange(num_experts * num_rows, dtype=torch.float64).reshape(num_experts, num_rows, 1)
        probe = index.expand(num_experts, num_rows, 2).contiguous()  # 2 columns: no size-1 dim to squeeze
        reverted = revert_weight_conversion(self.model, {name: probe})
        if any(value.ndim == 3 for value in reverted.values()):
            return None  # stored fused, possibly renamed (GraniteMoe: experts.input_linear.weight)
        slices = []
        for stored, value in reverted.items():
            rows = value.reshape(-1, 2)[:, 0].long()
            expert, start = divmod(int(rows[0]), num_rows)
            stop = start + len(rows)
            first = expert * num_rows + start
            if stop > num_rows or not torch.equal(rows, torch.arange(first, first + len(rows))):
                raise ValueError(
                    f"transformers saves {name!r} {tuple(shape)} as {stored!r} from rows that are not one "
                    "contiguous block of one expert: this converter cannot split it"
                )
            slices.append(ExpertSlice(stored, expert, start, stop))
        covered = sorted((s.expert, s.start, s.stop) for s in slices)
        expected_rows = num_experts * num_rows
        if sum(s.stop - s.start for s in slices) != expected_rows or len(set(covered)) != len(covered):
            raise ValueError(
                f"transformers' per-expert names for {name!r} do not cover it exactly once: {covered}"
            )
        return sorted(slices, key=lambda s: (s.expert, s.start))

    def revert(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` (in-memory names) as ``save_pretrained`` stores them: transformers' own
        ``revert_weight_conversion``; unchanged without a mapping."""
        from transformers.core_model_loading import revert_weight_conversion

        if self.model is None:
            return dict(tensors)
        return revert_weight_conversion(self.model, dict(tensors))


def split_on_load(model_type: str, names: list[str]) -> list[str]:
    """The in-memory weights among ``names`` that transformers cuts out of one stored tensor while
    loading (a ``Chunk`` in its conversion mapping, e.g. HRM's ``attn.gqkv_proj`` -> gate/q/k/v)."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import Chunk

    split = []
    for converter in get_checkpoint_conversion_mapping(model_type) or []:
        if not any(isinstance(op, Chunk) for op in getattr(converter, "operations", None) or []):
            continue
        patterns = converter.target_patterns
        patterns = [patterns] if isinstance(patterns, str) else patterns
        split += [name for name in names if any(name.endswith(p) for p in patterns)]
    return split

"""TrainLoRA presets: every value is one the trainer accepts, and they differ where the guides say."""

from __future__ import annotations

import dataclasses

import pytest

from trainer_core.adapters.config import BLOCK_WEIGHT_FIELDS, LoRAConfig
from trainer_core.training.config import TrainingConfig
from trainer_core.training.optimizers import OptimizerConfig
from trainer_core.training.presets import CUSTOM, NOT_TRAINLORA_FIELDS, PRESET_CHOICES, PRESETS, preset_values
from trainer_core.training.schedulers import SchedulerConfig

# TrainLoRA field -> (config class, its field)
FIELD_HOMES = {
    "rank": (LoRAConfig, "rank"), "alpha": (LoRAConfig, "alpha"), "lora_dropout": (LoRAConfig, "dropout"),
    "rslora": (LoRAConfig, "rslora"), "target_layers": (LoRAConfig, "target"),
    "optimizer": (OptimizerConfig, "name"), "lr_scheduler": (SchedulerConfig, "name"),
    "lr_warmup": (SchedulerConfig, "warmup"),
    **{name: (LoRAConfig, name) for name in BLOCK_WEIGHT_FIELDS},
}
TRAINING_FIELDS = {f.name for f in dataclasses.fields(TrainingConfig)}


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_value_builds_a_valid_config(name):
    values = {k: v for k, v in preset_values(name).items() if k not in NOT_TRAINLORA_FIELDS}
    per_class: dict[type, dict] = {LoRAConfig: {}, TrainingConfig: {}, OptimizerConfig: {}, SchedulerConfig: {}}
    for field, value in values.items():
        if field in FIELD_HOMES:
            config_class, config_field = FIELD_HOMES[field]
            per_class[config_class][config_field] = value
        else:
            assert field in TRAINING_FIELDS, f"{name}: {field} is not a training setting"
            per_class[TrainingConfig][field] = value
    for config_class, kwargs in per_class.items():
        config_class(**kwargs)  # raises on a value the trainer refuses
    assert values["steps"] > 0 and values["learning_rate"] > 0


def test_the_families_differ_where_the_guides_say():
    sd15, sdxl, flux = (preset_values(f"{family} · character") for family in ("SD1.5", "SDXL", "Flux"))
    assert (sd15["dataset_resolution"], sdxl["dataset_resolution"], flux["dataset_resolution"]) == (512, 1024, 1024)
    assert not sd15["gradient_checkpointing"] and sdxl["gradient_checkpointing"] and flux["gradient_checkpointing"]
    assert flux["timestep_sampling"] == "logit_normal" and flux["min_snr_gamma"] == 0
    assert sd15["min_snr_gamma"] == 5.0
    style, likeness = preset_values("SD1.5 · style"), preset_values("SD1.5 · likeness")
    assert style["rank"] > sd15["rank"] and style["noise_offset"] > 0 and likeness["lora_dropout"] > 0
    assert preset_values("quick test (any model)")["steps"] < min(p["values"]["steps"] for n, p in PRESETS.items()
                                                                   if not n.startswith("quick"))


def test_custom_changes_nothing_and_unknown_names_are_refused():
    assert PRESET_CHOICES[0] == CUSTOM and preset_values(CUSTOM) == {}
    with pytest.raises(ValueError, match="preset must be one of"):
        preset_values("SD2 · anime")


FLOW_FAMILIES = ("Flux", "SD3.5", "Flux.2", "Chroma", "Qwen-Image", "Z-Image", "Lumina 2", "HiDream", "Wan (image)")


def test_every_preset_says_which_family_it_is_for_and_describes_its_own_values():
    from trainer_core.training.presets import presets_for_web

    table = presets_for_web()
    assert table["custom"]["family"] == "any" and table["quick test (any model)"]["model_classes"] == []
    families = {p["family"] for n, p in PRESETS.items() if p["model_classes"]}
    assert set(FLOW_FAMILIES) | {"SD1.5", "SDXL"} == families
    for name, preset in PRESETS.items():
        if name.startswith("quick"):
            continue
        values = preset["values"]
        assert name.startswith(preset["family"] + " · ") and preset["model_classes"], name
        for stated in (f"rank {values['rank']},", f"{values['steps']:,} steps", f"{values['dataset_resolution']} px",
                       values["optimizer"]):
            assert stated in preset["description"], (name, stated)


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_flow_families_train_as_flow_models_at_their_guides_resolution(family):
    for name in (n for n, p in PRESETS.items() if p["family"] == family):
        values = preset_values(name)
        assert values["timestep_sampling"] == "logit_normal" and values["min_snr_gamma"] == 0, name
        assert values["noise_offset"] == 0 and values["gradient_checkpointing"] and values["mixed_precision"] == "bf16"
        assert values["dataset_resolution"] == (640 if family == "Wan (image)" else 1024)


def test_a_preset_for_another_family_than_the_models_is_warned_about_with_the_ones_that_fit():
    from trainer_core.training.presets import preset_family_warning

    warning = preset_family_warning("SDXL · character", "Flux")
    assert warning is not None and "is for SDXL" in warning and "ComfyUI's Flux" in warning
    assert "Flux · character, Flux · style, Flux · likeness" in warning
    assert "'quick test (any model)' fits" in preset_family_warning("Flux · style", "AuraFlow")
    assert preset_family_warning("Z-Image · character", "Lumina2") is None  # Z-Image loads as ComfyUI's Lumina2
    assert preset_family_warning("quick test (any model)", "AuraFlow") is None
    assert preset_family_warning(CUSTOM, "Flux") is None


def test_a_preset_carries_the_block_weights_to_the_adapter_config():
    """Every preset states the five block weights (the full rate), so choosing one resets them; a preset that
    set one lower would reach LoRAConfig, which takes it as that group's learning-rate weight."""
    for name in PRESETS:
        values = preset_values(name)
        assert {field: values[field] for field in BLOCK_WEIGHT_FIELDS} == dict.fromkeys(BLOCK_WEIGHT_FIELDS, 1.0)
    changed = {**preset_values("SD1.5 · style"), "output_blocks_lr_weight": 0.5}
    config = LoRAConfig(**{field: changed[field] for field in BLOCK_WEIGHT_FIELDS})
    assert config.block_lr_weights()["output_blocks_lr_weight"] == 0.5

"""TrainLoRA presets: every value is one the trainer accepts, and they differ where the guides say."""

from __future__ import annotations

import dataclasses

import pytest

from trainer_core.adapters.config import LoRAConfig
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

"""Training presets from the guides: a starting point per goal and model family, never a lock.

A preset is a set of TrainLoRA field values. In the canvas, choosing one fills the fields (the
pack's web extension asks ``/lora_lab/presets`` for this table); every field stays editable and
what trains is what the fields say. Values follow ``ANCHORS.md`` ("Parameters the guides teach"):
about 100 steps per image for 10-30 images, learning rate 1e-4 for AdamW, rank 16-32 with alpha
equal to rank or half of it, min-SNR γ 5 for eps/v models, cosine or constant-with-warmup
schedules with 5-10% warmup, gradient checkpointing and bf16 for the large models.

``dataset_resolution`` is the Load Dataset resolution the family trains at; the web extension
sets it on a Load Dataset node wired straight into TrainLoRA.
"""

from __future__ import annotations

from typing import Any

CUSTOM = "custom"

_COMMON: dict[str, Any] = {
    "optimizer": "AdamW",
    "batch_size": 1,
    "gradient_accumulation": 1,
    "loss_type": "mse",
    "multires_noise_iterations": 0,
    "lora_dropout": 0.0,
    "rslora": False,
}
_SD15 = {**_COMMON, "mixed_precision": "auto", "gradient_checkpointing": False, "min_snr_gamma": 5.0,
         "timestep_sampling": "uniform", "dataset_resolution": 512}
_SDXL = {**_COMMON, "mixed_precision": "bf16", "gradient_checkpointing": True, "min_snr_gamma": 5.0,
         "timestep_sampling": "uniform", "dataset_resolution": 1024}
# Flow models: no noise offset (it is an eps-model fix); logit-normal timesteps as SD3 / the Flux
# trainers use; min-SNR off (the flow trainers train without it).
_FLUX = {**_COMMON, "mixed_precision": "bf16", "gradient_checkpointing": True, "min_snr_gamma": 0.0,
         "timestep_sampling": "logit_normal", "noise_offset": 0.0, "dataset_resolution": 1024}

# goal -> (what it is for, values common to every family)
_GOALS: dict[str, tuple[str, dict[str, Any]]] = {
    "character": (
        "a person or character from 15-30 images: rank 16, alpha 16, 1,500 steps, constant with 10% warmup",
        {"rank": 16, "alpha": 16.0, "learning_rate": 1e-4, "steps": 1500, "lr_scheduler": "constant_with_warmup",
         "lr_warmup": 0.1, "target_layers": "attention", "noise_offset": 0.0},
    ),
    "style": (
        "an art style from 30-100 images: rank 32, alpha 16, 2,000 steps, cosine with 5% warmup, noise offset",
        {"rank": 32, "alpha": 16.0, "learning_rate": 1e-4, "steps": 2000, "lr_scheduler": "cosine",
         "lr_warmup": 0.05, "target_layers": "all_linear", "noise_offset": 0.05},
    ),
    "likeness": (
        "close likeness of one face or object: rank 32, alpha 32, 2,500 steps, LoRA dropout 0.1 against overfitting",
        {"rank": 32, "alpha": 32.0, "learning_rate": 1e-4, "steps": 2500, "lr_scheduler": "cosine",
         "lr_warmup": 0.05, "target_layers": "all_linear", "noise_offset": 0.0, "lora_dropout": 0.1},
    ),
}
_FAMILIES: dict[str, dict[str, Any]] = {"SD1.5": _SD15, "SDXL": _SDXL, "Flux": _FLUX}
# Flux learns faster per step and its guides train fewer steps at a similar rate.
_FAMILY_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("Flux", "character"): {"steps": 1000},
    ("Flux", "style"): {"steps": 1500, "noise_offset": 0.0},
    ("Flux", "likeness"): {"steps": 1500},
}


def _build() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {
        "quick test (any model)": {
            "description": "does it learn at all? 300 steps at a higher rate, rank 8: minutes, not hours",
            "values": {**_COMMON, "rank": 8, "alpha": 8.0, "learning_rate": 2e-4, "steps": 300,
                       "lr_scheduler": "constant_with_warmup", "lr_warmup": 0.05, "target_layers": "attention",
                       "noise_offset": 0.0},
        }
    }
    for family, family_values in _FAMILIES.items():
        for goal, (description, goal_values) in _GOALS.items():
            values = {**family_values, **goal_values, **_FAMILY_OVERRIDES.get((family, goal), {})}
            presets[f"{family} · {goal}"] = {"description": f"{family}, {description}", "values": values}
    return presets


PRESETS: dict[str, dict[str, Any]] = _build()
PRESET_CHOICES: tuple[str, ...] = (CUSTOM, *PRESETS)
# Values that belong to other nodes (the web extension sets them on the wired Load Dataset).
NOT_TRAINLORA_FIELDS = frozenset({"dataset_resolution"})


def preset_values(name: str) -> dict[str, Any]:
    """The field values of one preset (an empty dict for ``custom``)."""
    if name == CUSTOM:
        return {}
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESET_CHOICES)}; got {name!r}")
    return dict(PRESETS[name]["values"])


def presets_for_web() -> dict[str, Any]:
    """The table the canvas extension reads: preset name -> {description, values}."""
    return {"custom": {"description": "keep the fields as they are", "values": {}}, **PRESETS}

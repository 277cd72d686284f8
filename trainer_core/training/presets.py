"""Training presets from the guides: a starting point per goal and model family, never a lock.

A preset is a set of TrainLoRA field values. In the canvas, choosing one fills the fields (the
pack's web extension asks ``/lora_lab/presets`` for this table); every field stays editable and
what trains is what the fields say. Values follow ``ANCHORS.md`` ("Parameters the guides teach"):
about 100 steps per image for 10-30 images, learning rate 1e-4 for AdamW, rank 16-32 with alpha
equal to rank or half of it, min-SNR γ 5 for eps/v models, cosine or constant-with-warmup
schedules with 5-10% warmup, gradient checkpointing and bf16 for the large models.

Each preset says which family it is for (``family``) and which ComfyUI model classes that family loads as
(``model_classes``): SD1.5, SDXL, Flux (character, style, likeness); SD3.5, Flux.2, Chroma, Qwen-Image,
Z-Image, Lumina 2, HiDream and Wan in image mode (character, style). Train LoRA warns when a preset's family is
not the MODEL's. ``dataset_resolution`` is the Load Dataset resolution the family trains at; the web extension
sets it on a Load Dataset node wired straight into TrainLoRA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # Every block group at the full rate (the guides train all blocks alike); stated so that choosing a
    # preset resets block weights left from an experiment.
    "input_blocks_lr_weight": 1.0,
    "middle_block_lr_weight": 1.0,
    "output_blocks_lr_weight": 1.0,
    "double_blocks_lr_weight": 1.0,
    "single_blocks_lr_weight": 1.0,
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
        "a person or character from 15-30 images",
        {"rank": 16, "alpha": 16.0, "learning_rate": 1e-4, "steps": 1500, "lr_scheduler": "constant_with_warmup",
         "lr_warmup": 0.1, "target_layers": "attention", "noise_offset": 0.0},
    ),
    "style": (
        "an art style from 30-100 images",
        {"rank": 32, "alpha": 16.0, "learning_rate": 1e-4, "steps": 2000, "lr_scheduler": "cosine",
         "lr_warmup": 0.05, "target_layers": "all_linear", "noise_offset": 0.05},
    ),
    "likeness": (
        "close likeness of one face or object (LoRA dropout against overfitting)",
        {"rank": 32, "alpha": 32.0, "learning_rate": 1e-4, "steps": 2500, "lr_scheduler": "cosine",
         "lr_warmup": 0.05, "target_layers": "all_linear", "noise_offset": 0.0, "lora_dropout": 0.1},
    ),
}


@dataclass(frozen=True)
class _Family:
    """A model family the presets are for: ComfyUI's model classes (``comfy.model_base``) it loads as, its
    base values, the goals it has presets for, and each goal's own values from its guide."""

    model_classes: tuple[str, ...]
    values: dict[str, Any]
    goals: tuple[str, ...] = ("character", "style")
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str = ""


# The newer families train like Flux (flow matching, bf16, gradient checkpointing, 1024 px); their step counts,
# ranks and rates are their guides': ostris/ai-toolkit's config/examples/train_lora_<family>*.yaml (ai-toolkit's
# 8-bit AdamW and quantised base are its memory choices, left to the memory settings here) and SimpleTuner's
# documentation/quickstart/FLUX2.md.
_FAMILIES: dict[str, _Family] = {
    "SD1.5": _Family(("BaseModel",), _SD15, ("character", "style", "likeness")),
    "SDXL": _Family(("SDXL",), _SDXL, ("character", "style", "likeness")),
    # Flux learns faster per step and its guides train fewer steps at a similar rate.
    "Flux": _Family(("Flux",), _FLUX, ("character", "style", "likeness"), {
        "character": {"steps": 1000}, "style": {"steps": 1500, "noise_offset": 0.0}, "likeness": {"steps": 1500}}),
    # ai-toolkit train_lora_sd35_large_24gb.yaml: rank 16, alpha 16, 1e-4, 2,000 steps, 1024 px.
    "SD3.5": _Family(("SD3",), _FLUX, overrides={
        "character": {"steps": 2000}, "style": {"noise_offset": 0.0}}),
    # SimpleTuner FLUX2.md: rank 16, 1e-4, 1024 px; steps as Flux.1's.
    "Flux.2": _Family(("Flux2",), _FLUX, overrides={
        "character": {"steps": 1000}, "style": {"steps": 1500, "noise_offset": 0.0}}),
    # ai-toolkit train_lora_chroma_24gb.yaml: rank 16, alpha 16, 1e-4, 2,000 steps, up to 1024 px.
    "Chroma": _Family(("Chroma",), _FLUX, overrides={
        "character": {"steps": 2000}, "style": {"noise_offset": 0.0}}),
    # ai-toolkit train_lora_qwen_image_24gb.yaml: rank 16, alpha 16, 1e-4, 2,000 steps, up to 1024 px.
    "Qwen-Image": _Family(("QwenImage",), _FLUX, overrides={
        "character": {"steps": 2000}, "style": {"noise_offset": 0.0}}),
    # ai-toolkit train_lora_zimage_base_32gb.yaml (character): Prodigy at 1.0, constant, rank 128 (64 "if VRAM
    # is tight", taken here), 3,000 steps, batch 2, 1024 px.
    "Z-Image": _Family(("Lumina2",), _FLUX, overrides={
        "character": {"optimizer": "Prodigy", "learning_rate": 1.0, "lr_scheduler": "constant", "lr_warmup": 0.0,
                      "rank": 64, "alpha": 64.0, "steps": 3000, "batch_size": 2},
        "style": {"noise_offset": 0.0}}, note="Z-Image and Lumina 2 load as ComfyUI's Lumina2"),
    # ai-toolkit train_lora_lumina.yaml: rank 16, alpha 16, 1e-4, 2,000 steps, up to 1024 px.
    "Lumina 2": _Family(("Lumina2",), _FLUX, overrides={
        "character": {"steps": 2000}, "style": {"noise_offset": 0.0}}, note="Z-Image and Lumina 2 load as ComfyUI's Lumina2"),
    # ai-toolkit train_lora_hidream_48.yaml: rank 32, alpha 32, 2e-4, 3,000 steps, 1024 px, attention layers
    # (it leaves the mixture-of-experts feed-forward out).
    "HiDream": _Family(("HiDream",), _FLUX, overrides={
        "character": {"rank": 32, "alpha": 32.0, "learning_rate": 2e-4, "steps": 3000},
        "style": {"target_layers": "attention", "noise_offset": 0.0}}),
    # ai-toolkit train_lora_wan21_14b_24gb.yaml, one frame per image: rank 32, alpha 32, 1e-4, 2,000 steps,
    # 632 px (about 480p; 640 here, a multiple of the bucket step).
    "Wan (image)": _Family(("WAN21", "WAN22"), {**_FLUX, "dataset_resolution": 640}, overrides={
        "character": {"rank": 32, "alpha": 32.0, "steps": 2000}, "style": {"noise_offset": 0.0}}),
}


def _build() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {
        "quick test (any model)": {
            "description": "does it learn at all, on any family? 300 steps at 2e-4 (twice the family presets' rate), rank 8: minutes, not hours",
            "family": "any", "model_classes": [],
            "values": {**_COMMON, "rank": 8, "alpha": 8.0, "learning_rate": 2e-4, "steps": 300,
                       "lr_scheduler": "constant_with_warmup", "lr_warmup": 0.05, "target_layers": "attention",
                       "noise_offset": 0.0},
        }
    }
    for family, spec in _FAMILIES.items():
        for goal in spec.goals:
            description, goal_values = _GOALS[goal]
            values = {**spec.values, **goal_values, **spec.overrides.get(goal, {})}
            presets[f"{family} · {goal}"] = {"description": f"{family}, {description}: {_summary(values)}", "family": family,
                                            "model_classes": list(spec.model_classes), "values": values}
    return presets


def _summary(values: dict[str, Any]) -> str:
    """The values a user weighs first, as the description states them (so it cannot disagree with them)."""
    parts = [f"rank {values['rank']}, alpha {values['alpha']:g}", f"{values['steps']:,} steps",
             f"{values['optimizer']} at {_rate(values['learning_rate'])}", values["lr_scheduler"].replace("_", " ")]
    if values.get("batch_size", 1) > 1:
        parts.append(f"batch {values['batch_size']}")
    if values.get("noise_offset"):
        parts.append(f"noise offset {values['noise_offset']:g}")
    parts.append(f"{values['dataset_resolution']} px")
    return ", ".join(parts)


def _rate(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-") if value < 0.01 else f"{value:g}"


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
    """The table the canvas extension reads: preset name -> {description, family, model_classes, values}."""
    custom = {"description": "keep the fields as they are", "family": "any", "model_classes": [], "values": {}}
    return {"custom": custom, **PRESETS}


def preset_family_warning(name: str, model_class: str) -> str | None:
    """A console warning when the preset ``name`` is for another model family than the MODEL's (ComfyUI's
    model class name), None when it fits, is for any model, or is ``custom``."""
    preset = PRESETS.get(name)
    if preset is None or not preset["model_classes"] or model_class in preset["model_classes"]:
        return None
    fits = [other for other, p in PRESETS.items() if model_class in p["model_classes"]]
    hint = f" (for this model: {', '.join(fits)})" if fits else " ('quick test (any model)' fits any model)"
    return (
        f"preset '{name}' is for {preset['family']} ({', '.join(preset['model_classes'])}), but this MODEL is "
        f"ComfyUI's {model_class}: the fields it filled may not suit it; check them or pick another preset{hint}."
    )

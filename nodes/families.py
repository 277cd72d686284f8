"""Which model families Train LoRA trains, tests, or refuses: decided from ComfyUI's model class.

``TESTED_FAMILIES`` are the ``comfy.model_base`` classes LoRA Lab's tests train end to end; another
image or video family trains through the generic path with a console note; ``UNTRAINABLE_FAMILIES``
(and any model whose latent is not an image or video latent) are refused before anything is loaded.
"""

from __future__ import annotations

from typing import Any

from .bridge import UnsupportedModelError

# ComfyUI model classes (``comfy.model_base``) that LoRA Lab's tests train: BaseModel is SD1.5 and SD2.x; the
# others are the family matrix of tests/integration/test_model_families.py (Z-Image is a Lumina2; Wan 2.2's
# 14B is a WAN21, its 5B a WAN22).
TESTED_FAMILIES = (
    "BaseModel", "SDXL", "SD3", "Flux", "Flux2", "Chroma", "Lumina2", "QwenImage", "HiDream", "AuraFlow", "PixArt",
    "HunyuanDiT", "WAN21", "WAN22", "HunyuanVideo", "HunyuanImage21", "CosmosPredict2",
)

# ComfyUI model classes that are not text-to-image diffusion models LoRA Lab can train, and what they are.
# Subclasses are refused too (matched along the class's ancestry).
UNTRAINABLE_FAMILIES = {
    "StableCascade_C": "a Stable Cascade stage (stage C, the prior)",
    "StableCascade_B": "a Stable Cascade stage (stage B, the decoder)",
    "StableAudio1": "an audio model (Stable Audio)",
    "ACEStep": "an audio model (ACE-Step)",
    "Hunyuan3Dv2": "a 3D model (Hunyuan3D)",
    "Hunyuan3Dv2_1": "a 3D model (Hunyuan3D 2.1)",
    "SD_X4Upscaler": "an upscaler (SD x4 upscaler)",
    "HunyuanVideo15_SR_Distilled": "an upscaler (HunyuanVideo 1.5 super-resolution)",
    # Wan variants whose input adds control video, camera, audio or pose streams Train LoRA does not build.
    "WAN21_Vace": "a Wan model conditioned on control video (VACE)",
    "WAN21_Camera": "a camera-controlled Wan model (Wan Fun Camera)",
    "WAN21_HuMo": "an audio-driven Wan model (HuMo)",
    "WAN22_Animate": "a pose-driven Wan model (Wan 2.2 Animate)",
    "WAN22_S2V": "an audio-driven Wan model (Wan 2.2 S2V)",
}


# Image-to-video models Train LoRA does not train: HunyuanVideo I2V (its input concatenates a first-frame latent
# and mask, v1 "concat", or replaces the first latent frame, v2 "replace"). Wan 2.1 / 2.2 14B I2V train, each
# clip conditioned by its own first frame (image_to_video.py).
I2V_MODEL_CLASSES = ("HunyuanVideoI2V", "HunyuanVideoSkyreelsI2V")


def image_to_video_refusal(model: Any) -> str | None:
    """Why Train LoRA does not train ``model``: a HunyuanVideo image-to-video model; None otherwise (Wan 2.1 /
    2.2 14B I2V train with their first frames; Wan 2.2 5B TI2V trains: its image conditioning is the latent's
    own first frame)."""
    family = type(model).__name__
    if family not in I2V_MODEL_CLASSES:
        return None
    return (
        f"TrainLoRA: this MODEL is ComfyUI's {family}, a HunyuanVideo image-to-video model (its input adds a "
        "first-frame latent, as HunyuanImageToVideo builds it). LoRA Lab trains image-to-video LoRAs for Wan 2.1 "
        "and Wan 2.2 14B I2V only: load the HunyuanVideo text-to-video model and train on it (such LoRAs usually "
        "load on the I2V model too), or train this one with musubi-tuner."
    )


def training_refusal(model: Any) -> str | None:
    """Why Train LoRA cannot train ``model`` (a ComfyUI ``BaseModel``), naming its class; None when it can try.

    Decided from the class and its latent format alone, before anything is loaded or cloned."""
    family = type(model).__name__
    ancestry = [cls.__name__ for cls in type(model).__mro__]
    kind = next((UNTRAINABLE_FAMILIES[name] for name in ancestry if name in UNTRAINABLE_FAMILIES), None)
    if kind is None:
        dimensions = getattr(getattr(model, "latent_format", None), "latent_dimensions", 2)
        if dimensions not in (2, 3):
            kind = f"a model whose latent ({dimensions}-D) is not an image or video latent"
        elif not hasattr(model, "diffusion_model"):
            kind = "a model without a diffusion network"
    if kind is None:
        kind = _wan_control_input(model)
    if kind is None:
        return image_to_video_refusal(model)
    return (
        f"TrainLoRA: this MODEL is ComfyUI's {family}, {kind}. LoRA Lab trains LoRAs for image models "
        "(SD1.5, SDXL, Flux and other image or video diffusion models): connect an image model's MODEL, "
        "or train this one with a trainer made for it."
    )


def check_trainable_family(patcher: Any) -> None:
    """Train LoRA's first check: refuse a family it cannot train (naming ComfyUI's model class), and say
    in the console when the family is not one LoRA Lab's tests train."""
    refusal = training_refusal(patcher.model)
    if refusal is not None:
        raise UnsupportedModelError(refusal)
    note = untested_family_note(patcher.model)
    if note is not None:
        print(f"[LoRA Lab] TrainLoRA: {note}", flush=True)


def untested_family_note(model: Any) -> str | None:
    """The console note for a family LoRA Lab's tests do not cover; None for a tested one."""
    family = type(model).__name__
    if family in TESTED_FAMILIES:
        return None
    return f"{family} is not in LoRA Lab's tested families; training it through the generic path"


def _wan_control_input(model: Any) -> str | None:
    """What a plain ``WAN21`` is when its input adds channels other than an I2V start image and mask (Wan Fun
    Control's control video, 16 + 32): Train LoRA would feed them zeros; None for T2V and I2V inputs."""
    if type(model).__name__ != "WAN21":
        return None
    embedding = getattr(getattr(model, "diffusion_model", None), "patch_embedding", None)
    channels = getattr(getattr(model, "latent_format", None), "latent_channels", None)
    if embedding is None or channels is None:
        return None
    extra = embedding.weight.shape[1] - channels
    if extra in (0, channels + 4):  # text-to-video; image-to-video (start-image latent + mask)
        return None
    return f"a Wan model whose input adds {extra} channels of control (e.g. Wan Fun Control)"

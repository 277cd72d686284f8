"""Which key names a LoRA file gets, per model family: the names that family's own trainers write and that
other tools load, always among the names ComfyUI's LoRA loader maps (``comfy.lora.model_lora_keys_unet``).

``KEY_FORMATS`` is the one table (ComfyUI model class → ``KeyFormat``); ``lora_key_namer`` turns it into
the module path → key stem function training exports with. The format's name goes into the file's
metadata (``lora_lab_key_format``). Families outside the table get kohya's ``lora_unet_<module path>``,
which ComfyUI maps for every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import comfy.lora
import comfy.utils

from .bridge import UnsupportedModelError


@dataclass(frozen=True)
class KeyFormat:
    name: str  # recorded in the file's metadata as lora_lab_key_format
    prefix: str  # "lora_unet_" (module path with "_"), "diffusion_model." or "transformer." (with ".")
    example: str  # one key stem, for the README
    loaded_by: str  # the tools that read these names, for the README
    tensors: str = "kohya"  # "kohya": .lora_down.weight/.lora_up.weight/.alpha; "peft": .lora_A.weight/.lora_B.weight
    alias: bool = False  # the name is ComfyUI's alias for the layer (another trainer's spelling), not its own path
    diffusers_pipeline: str | None = None  # the diffusers pipeline whose lora_state_dict reads the file


KOHYA = KeyFormat(
    "kohya", "lora_unet_", "lora_unet_<ComfyUI module path>", "ComfyUI (every model type)",
)
KOHYA_SD = KeyFormat(
    "kohya", "lora_unet_", "lora_unet_down_blocks_1_attentions_0_proj_in",
    "ComfyUI, A1111, Forge, diffusers", diffusers_pipeline="StableDiffusionPipeline",
)
MUSUBI = "ComfyUI, musubi-tuner, diffusers"

# The diffusers pipelines' own conversions read these files (tests/integration/test_diffusers_key_formats.py).
KEY_FORMATS: dict[str, KeyFormat] = {
    "BaseModel": KOHYA_SD,  # SD1.5 and SD2.x
    "SDXL": KeyFormat("kohya", "lora_unet_", KOHYA_SD.example, KOHYA_SD.loaded_by,
                      diffusers_pipeline="StableDiffusionXLPipeline"),
    # kohya's sd3 scripts write these; diffusers' SD3 loader reads only its own q/k/v-split names.
    "SD3": KeyFormat("kohya", "lora_unet_", "lora_unet_joint_blocks_0_x_block_attn_qkv", "ComfyUI, kohya sd-scripts"),
    "Flux": KeyFormat("kohya_flux", "lora_unet_", "lora_unet_double_blocks_0_img_attn_qkv",
                      "ComfyUI, Forge, kohya sd-scripts, diffusers", diffusers_pipeline="FluxPipeline"),
    "Chroma": KeyFormat("kohya_flux", "lora_unet_", "lora_unet_double_blocks_0_img_attn_qkv",
                        "ComfyUI, Forge, diffusers", diffusers_pipeline="ChromaPipeline"),
    "Flux2": KeyFormat("kohya_flux", "lora_unet_", "lora_unet_double_blocks_0_img_attn_qkv", MUSUBI,
                       diffusers_pipeline="Flux2Pipeline"),
    "Lumina2": KeyFormat("diffusion_model", "diffusion_model.", "diffusion_model.layers.0.attention.qkv",
                         "ComfyUI, diffusion-pipe, diffusers", tensors="peft", diffusers_pipeline="Lumina2Pipeline"),
    "ZImage": KeyFormat("kohya", "lora_unet_", "lora_unet_layers_0_attention_qkv", MUSUBI,
                        diffusers_pipeline="ZImagePipeline"),
    "QwenImage": KeyFormat("kohya", "lora_unet_", "lora_unet_transformer_blocks_0_attn_to_q", MUSUBI,
                           diffusers_pipeline="QwenImagePipeline"),
    "HiDream": KeyFormat("diffusion_model", "diffusion_model.", "diffusion_model.double_stream_blocks.0.block.attn1.to_q",
                         "ComfyUI, diffusion-pipe, diffusers", tensors="peft",
                         diffusers_pipeline="HiDreamImagePipeline"),
    "AuraFlow": KeyFormat("diffusers", "transformer.", "transformer.joint_transformer_blocks.0.attn.to_q",
                          "ComfyUI, SimpleTuner, diffusers", tensors="peft", alias=True,
                          diffusers_pipeline="AuraFlowPipeline"),
    "WAN21": KeyFormat("kohya", "lora_unet_", "lora_unet_blocks_0_self_attn_q", MUSUBI, diffusers_pipeline="WanPipeline"),
    "WAN22": KeyFormat("kohya", "lora_unet_", "lora_unet_blocks_0_self_attn_q", MUSUBI, diffusers_pipeline="WanPipeline"),
    "HunyuanVideo": KeyFormat("diffusion_pipe", "diffusion_model.", "diffusion_model.double_blocks.0.img_attn_qkv",
                              "ComfyUI, diffusion-pipe, diffusers", tensors="peft", alias=True,
                              diffusers_pipeline="HunyuanVideoPipeline"),
    # diffusers has no LoRA loader for these two.
    "PixArt": KeyFormat("kohya", "lora_unet_", "lora_unet_blocks_0_attn_qkv", "ComfyUI"),
    "HunyuanDiT": KeyFormat("kohya", "lora_unet_", "lora_unet_blocks_0_attn1_Wqkv", "ComfyUI"),
}


def family_key(model: Any) -> str:
    """The table's key for a ComfyUI ``BaseModel``: its class name, and ``ZImage`` for a Lumina2 with Z-Image's
    modulation (ComfyUI builds both with one class; their trainers name the layers differently)."""
    family = type(model).__name__
    unet_config = getattr(getattr(model, "model_config", None), "unet_config", None) or {}
    if family == "Lumina2" and unet_config.get("z_image_modulation"):
        return "ZImage"
    return family


def key_format(model: Any) -> KeyFormat:
    return KEY_FORMATS.get(family_key(model), KOHYA)


def lora_key_namer(patcher: Any) -> Any:
    """Module path (in the diffusion network) → key stem in the family's key format, checked against ComfyUI's
    own LoRA key map so LoraLoader places every key. The function carries ``tensor_names`` ("kohya" or "peft")
    and ``key_format`` (the table's entry)."""
    model = patcher.model
    chosen = key_format(model)
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    spelled = _unet_diffusers_paths(model) if chosen.prefix == "lora_unet_" else {}
    aliases = _aliases(key_map, chosen.prefix) if chosen.alias else {}

    def name(module_path: str) -> str:
        if chosen.alias:
            stem = aliases.get(module_path, "")
        elif chosen.prefix == "lora_unet_":
            stem = "lora_unet_" + spelled.get(module_path, module_path).replace(".", "_")
        else:
            stem = chosen.prefix + module_path
        if key_map.get(stem) != f"diffusion_model.{module_path}.weight":
            raise UnsupportedModelError(
                f"TrainLoRA: ComfyUI's LoRA loader has no {chosen.name} name for the layer {module_path} of this "
                f"{type(model).__name__} model, so a LoRA trained there would not load: choose target_layers "
                "'attention' on the LoRA Lab Adapter Settings node"
            )
        return stem

    name.tensor_names = chosen.tensors  # type: ignore[attr-defined]
    name.key_format = chosen  # type: ignore[attr-defined]
    return name


def _unet_diffusers_paths(model: Any) -> dict[str, str]:
    """ComfyUI (LDM) module path → diffusers UNet path, for SD UNets; empty for other networks."""
    unet_config = getattr(model.model_config, "unet_config", {}) or {}
    paths: dict[str, str] = {}
    try:
        for diffusers_key, ldm_key in comfy.utils.unet_to_diffusers(unet_config).items():
            if diffusers_key.endswith(".weight") and ldm_key.endswith(".weight"):
                paths[ldm_key[: -len(".weight")]] = diffusers_key[: -len(".weight")]
    except (KeyError, TypeError, IndexError):
        return {}
    return paths


def _aliases(key_map: dict[str, Any], prefix: str) -> dict[str, str]:
    """Module path → the name with ``prefix`` that ComfyUI maps to its weight, other than the plain path."""
    aliases: dict[str, str] = {}
    for stem, weight in key_map.items():
        if isinstance(weight, str) and stem.startswith(prefix) and weight.endswith(".weight"):
            path = weight[len("diffusion_model.") : -len(".weight")]
            if stem != prefix + path or path not in aliases:
                aliases[path] = stem
    return aliases

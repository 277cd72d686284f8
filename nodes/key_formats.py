"""Which key names a LoRA file gets, per model family: the names that family's own trainers write and that
other tools load, always among the names ComfyUI's LoRA loader maps (``comfy.lora.model_lora_keys_unet``).

``KEY_FORMATS`` is the one table (ComfyUI model class → ``KeyFormat``); ``lora_key_namer`` turns it into
the module path → key stem function training exports with. The format's name goes into the file's
metadata (``lora_lab_key_format``). Families outside the table get kohya's ``lora_unet_<module path>``,
which ComfyUI maps for every model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import comfy.lora
import comfy.utils
import torch

from .bridge import UnsupportedModelError


@dataclass(frozen=True)
class KeyFormat:
    name: str  # recorded in the file's metadata as lora_lab_key_format
    prefix: str  # "lora_unet_" (module path with "_"), "diffusion_model." or "transformer." (with ".")
    example: str  # one key stem, for the README's family table
    written_by: str  # the trainers that write these names, for the README
    loaded_by: str  # the tools that read them, for the README
    tensors: str = "kohya"  # "kohya": .lora_down.weight/.lora_up.weight/.alpha; "peft": .lora_A.weight/.lora_B.weight
    alias: bool = False  # the name is ComfyUI's alias for the layer (another trainer's spelling), not its own path
    diffusers_pipeline: str | None = None  # the diffusers pipeline whose lora_state_dict reads the file
    split_fused: bool = False  # a layer ComfyUI maps from several names (fused qkv) is saved under each of them


def _kohya(example: str, written_by: str, loaded_by: str, name: str = "kohya", pipeline: str | None = None) -> KeyFormat:
    return KeyFormat(name, "lora_unet_", example, written_by, loaded_by, diffusers_pipeline=pipeline)


def _diffusion_model(example: str, written_by: str, pipeline: str, name: str = "diffusion_model",
                     alias: bool = False) -> KeyFormat:
    return KeyFormat(name, "diffusion_model.", example, written_by, "ComfyUI, diffusers", tensors="peft", alias=alias,
                     diffusers_pipeline=pipeline)


KOHYA = _kohya("lora_unet_<ComfyUI module path>", "ComfyUI's generic names", "ComfyUI (every model type)")
SD_UNET = "lora_unet_down_blocks_1_attentions_0_proj_in"
FLUX_BLOCK = "lora_unet_double_blocks_0_img_attn_qkv"
WAN_BLOCK = "lora_unet_blocks_0_self_attn_q"

# ComfyUI model class -> key format. Where a pipeline is named, the file goes through that diffusers pipeline's
# own lora_state_dict and loader with every key placed (tests/integration/test_diffusers_key_formats.py).
KEY_FORMATS: dict[str, KeyFormat] = {
    "BaseModel": _kohya(SD_UNET, "kohya sd-scripts", "ComfyUI, A1111, Forge, diffusers", pipeline="StableDiffusionPipeline"),
    "SDXL": _kohya(SD_UNET, "kohya sd-scripts", "ComfyUI, A1111, Forge, diffusers", pipeline="StableDiffusionXLPipeline"),
    # diffusers' SD3 loader reads only its own names: ComfyUI's fused qkv layers are saved split into to_q/to_k/to_v
    # (add_q_proj/... for the text stream), each with the LoRA's down weights and its third of the up weights.
    "SD3": KeyFormat("diffusers", "transformer.", "transformer.transformer_blocks.0.attn.to_q",
                     "diffusers' SD3 DreamBooth LoRA script", "ComfyUI, diffusers", tensors="peft", alias=True,
                     diffusers_pipeline="StableDiffusion3Pipeline", split_fused=True),
    "Flux": _kohya(FLUX_BLOCK, "kohya sd-scripts", "ComfyUI, Forge, diffusers", "kohya_flux", "FluxPipeline"),
    "Chroma": _kohya(FLUX_BLOCK, "kohya sd-scripts", "ComfyUI, diffusers", "kohya_flux", "ChromaPipeline"),
    "Flux2": _kohya(FLUX_BLOCK, "musubi-tuner", "ComfyUI, diffusers", "kohya_flux", "Flux2Pipeline"),
    "Lumina2": _diffusion_model("diffusion_model.layers.0.attention.qkv", "ai-toolkit, diffusion-pipe", "Lumina2Pipeline"),
    "ZImage": _kohya("lora_unet_layers_0_attention_qkv", "musubi-tuner", "ComfyUI, diffusers", pipeline="ZImagePipeline"),
    "QwenImage": _kohya("lora_unet_transformer_blocks_0_attn_to_q", "musubi-tuner", "ComfyUI, diffusers",
                        pipeline="QwenImagePipeline"),
    "HiDream": _diffusion_model("diffusion_model.double_stream_blocks.0.block.attn1.to_q", "ai-toolkit, diffusion-pipe",
                                "HiDreamImagePipeline"),
    "AuraFlow": KeyFormat("diffusers", "transformer.", "transformer.joint_transformer_blocks.0.attn.to_q",
                          "SimpleTuner", "ComfyUI, diffusers", tensors="peft", alias=True,
                          diffusers_pipeline="AuraFlowPipeline"),
    "WAN21": _kohya(WAN_BLOCK, "musubi-tuner", "ComfyUI, diffusers", pipeline="WanPipeline"),
    "WAN22": _kohya(WAN_BLOCK, "musubi-tuner", "ComfyUI, diffusers", pipeline="WanPipeline"),
    "HunyuanVideo": _diffusion_model("diffusion_model.double_blocks.0.img_attn_qkv", "diffusion-pipe",
                                     "HunyuanVideoPipeline", name="diffusion_pipe", alias=True),
    # diffusers has no LoRA loader for these two.
    "PixArt": _kohya("lora_unet_blocks_0_attn_qkv", "ComfyUI's generic names", "ComfyUI"),
    "HunyuanDiT": _kohya("lora_unet_blocks_0_attn1_Wqkv", "ComfyUI's generic names", "ComfyUI"),
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
    own LoRA key map so LoraLoader places every key (a layer the format has no name for keeps ComfyUI's generic
    ``lora_unet_`` name, with a console note). The function carries ``tensor_names`` ("kohya" or "peft"),
    ``row_splits`` (the layers a LoRA saves as several, ``_row_splits``) and ``key_format`` (the table's entry)."""
    model = patcher.model
    chosen = key_format(model)
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    spelled = _unet_diffusers_paths(model) if chosen.prefix == "lora_unet_" else {}
    aliases = _aliases(key_map, chosen.prefix) if chosen.alias else {}
    row_splits = _row_splits(model, key_map, chosen.prefix) if chosen.split_fused else {}
    noted: set[str] = set()

    def name(module_path: str) -> str:
        if chosen.alias:
            stem = aliases.get(module_path, "")
        elif chosen.prefix == "lora_unet_":
            stem = "lora_unet_" + spelled.get(module_path, module_path).replace(".", "_")
        else:
            stem = chosen.prefix + module_path
        weight = f"diffusion_model.{module_path}.weight"
        if key_map.get(stem) == weight:
            return stem
        generic = "lora_unet_" + module_path.replace(".", "_")  # ComfyUI maps it for every model type
        if key_map.get(generic) == weight:
            if module_path not in noted:  # once, though every checkpoint names the layers again
                noted.add(module_path)
                print(f"[LoRA Lab] the layer {module_path} has no {chosen.name} name; it is saved as {generic}, "
                      "which ComfyUI loads but other tools may not", flush=True)
            return generic
        raise UnsupportedModelError(
            f"TrainLoRA: ComfyUI's LoRA loader has no name for the layer {module_path} of this "
            f"{type(model).__name__} model, so a LoRA trained there would not load: choose target_layers "
            "'attention' on the LoRA Lab Adapter Settings node"
        )

    name.tensor_names = chosen.tensors  # type: ignore[attr-defined]
    name.row_splits = row_splits  # type: ignore[attr-defined]
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


def _row_splits(model: Any, key_map: dict[str, Any], prefix: str) -> dict[str, tuple[tuple[str, tuple[int, ...]], ...]]:
    """Module path → ((name with ``prefix``, rows of the layer's weight it covers), ...) for the layers ComfyUI
    maps from names with ``prefix`` that cover part of them (SD3's fused qkv from diffusers' to_q, to_k, to_v)
    or keep their rows in another order (SD3's last modulation layers, whose shift and scale halves diffusers
    swaps: ComfyUI swaps them back on loading). A LoRA layer saved as these parts (up weights' rows ``rows``
    each) loads in ComfyUI as the layer it trained."""
    modules = dict(model.diffusion_model.named_modules())  # the map also names layers this model lacks
    splits: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for stem, target in key_map.items():
        if not (stem.startswith(prefix) and isinstance(target, tuple) and target[0].endswith(".weight")):
            continue
        path = target[0][len("diffusion_model.") : -len(".weight")]
        if path not in modules:
            continue
        if len(target) == 2 and target[1][0] == 0:  # (weight, (axis 0, first row, rows))
            rows = tuple(range(target[1][1], target[1][1] + target[1][2]))
        elif len(target) == 3 and target[1] is None and target[2] is comfy.utils.swap_scale_shift:
            out_features = modules[path].weight.shape[0]
            rows = tuple(range(out_features // 2, out_features)) + tuple(range(out_features // 2))
        else:
            continue
        splits.setdefault(path, []).append((stem, rows))
    return {path: tuple(sorted(parts, key=lambda part: part[1][0])) for path, parts in splits.items()}


# Save LoRA's key_names choices. musubi-tuner's HunyuanVideo and Wan generation scripts read kohya names only
# (networks/lora.py create_network_from_weights takes a module's name from the key up to its first dot and
# builds only modules named "lora_unet_" + module path with "_", with .lora_down/.lora_up/.alpha;
# utils/lora_utils.py merges "lora_unet_" + path + ".lora_down.weight" into each weight); its trainer converts
# diffusion-pipe names only for --base_weights (hv_train_network.py convert_weight_keys).
KEY_NAMES = ("family default", "musubi-tuner (lora_unet_)")
MUSUBI = "musubi"  # lora_lab_key_format of a file renamed to musubi-tuner's names
# musubi-tuner's HunyuanVideo module names that ComfyUI spells otherwise (img_mod.lin, img_mlp.0 / .2,
# modulation.lin): comfy/lora.py maps them only from diffusion-pipe names, so LoraLoader leaves these
# layers out of a file with musubi's names.
COMFY_UNREAD_MUSUBI = re.compile(r"_(img|txt)_mod_linear\.|_(img|txt)_mlp_fc[12]\.|_modulation_linear\.")
_PEFT_TENSORS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}


def with_key_names(tensors: dict[str, Any], metadata: dict[str, str], choice: str) -> tuple[dict[str, Any], str]:
    """The LoRA's tensors under Save LoRA's ``key_names`` choice, and the key format the file records.

    "musubi-tuner (lora_unet_)" turns a HunyuanVideo LoRA's diffusion-pipe names into musubi-tuner's, by the
    rule of musubi's own convert_lora.py (``convert_from_diffusers``): ``diffusion_model.<path>.lora_A.weight``
    -> ``lora_unet_<path with _>.lora_down.weight`` (lora_B -> lora_up), alpha = rank (the scale is in the
    down weights already). diffusion-pipe spells HunyuanVideo's layers as musubi's model names them (both
    follow Tencent's model). A LoRA whose names are kohya's already (Wan, Flux, ...) is written as it is."""
    family_format = metadata.get("lora_lab_key_format", "")
    if choice == KEY_NAMES[0]:
        return tensors, family_format
    if choice != KEY_NAMES[1]:
        raise ValueError(f"key_names must be one of {list(KEY_NAMES)}, got {choice!r}")
    if all(key.startswith("lora_") for key in tensors):
        return tensors, family_format
    if family_format != "diffusion_pipe":
        raise ValueError(
            f"key_names: musubi-tuner names are offered for HunyuanVideo LoRAs; this LoRA's names are "
            f"{family_format or 'not kohya'}'s, which its family's tools read: set key_names to 'family default'"
        )
    renamed: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    for key, tensor in tensors.items():
        if not key.startswith("diffusion_model."):  # text encoder keys are kohya's already
            renamed[key] = tensor
            continue
        body = key[len("diffusion_model.") :]
        tail = next((t for t in _PEFT_TENSORS if body.endswith("." + t)), None)
        path, name = (body[: -len(tail) - 1], _PEFT_TENSORS[tail]) if tail else body.rsplit(".", 1)
        stem = "lora_unet_" + path.replace(".", "_")
        renamed[f"{stem}.{name}"] = tensor
        if name == "lora_down.weight":
            ranks[stem] = tensor.shape[0]
    for stem, rank in ranks.items():
        renamed.setdefault(f"{stem}.alpha", torch.tensor(float(rank)))
    return renamed, MUSUBI


def comfy_unread_layers(tensors: dict[str, Any]) -> list[str]:
    """The layers of a file with musubi-tuner's HunyuanVideo names that ComfyUI's LoraLoader does not read."""
    return sorted({key.split(".")[0] for key in tensors if COMFY_UNREAD_MUSUBI.search(key.split(".")[0] + ".")})

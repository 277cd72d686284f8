"""The one place where ComfyUI's objects meet trainer_core's protocols.

``ModelPatcher`` → ``Denoiser`` (its diffusion network, noise schedule and prediction type, called
through ``BaseModel.extra_conds`` + ``apply_model`` exactly as the sampler calls it), ``CLIP`` →
``TextEncoder`` (as ``CLIPTextEncode`` encodes), ``VAE`` → ``LatentCodec`` (as ``VAEEncode`` plus the
model's own latent scaling; in ``latent_codec``, clips included). Also: LoRA key names for the model's
layers (the per-family table is in ``key_formats``), and ComfyUI's LoRA loader.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import comfy.model_management
import comfy.model_sampling
import comfy.sd
import torch

from ..trainer_core.models.protocols import PredictionType, TextEmbedding
from ..trainer_core.training.memory import base_weight_dtype, low_precision_copy, needs_low_precision_copy
from .attention import autograd_safe_attention
from .image_to_video import CLIP_VISION_KEY, clip_vision_output
from .latent_codec import ComfyLatentCodec  # noqa: F401  (the VAE's side of the bridge lives there)


class UnsupportedModelError(ValueError):
    pass


def prediction_type(model_sampling: Any) -> PredictionType:
    # Subclasses first: V_PREDICTION and X0 derive from EPS.
    if isinstance(model_sampling, comfy.model_sampling.V_PREDICTION):
        return "v"
    if isinstance(model_sampling, comfy.model_sampling.X0):
        return "x0"
    if isinstance(model_sampling, comfy.model_sampling.EPS):
        return "eps"
    if isinstance(model_sampling, comfy.model_sampling.CONST):
        return "flow"
    if isinstance(model_sampling, comfy.model_sampling.COSMOS_RFLOW):  # Cosmos Predict2
        return "flow_cosmos"
    raise UnsupportedModelError(
        f"LoRA Lab cannot train this model: its prediction type ({type(model_sampling).__name__}) is not eps, v, "
        "flow, Cosmos rectified flow or x0."
    )


def model_family(patcher: Any) -> str:
    """A short name for the base model's architecture, for messages and metadata."""
    return type(patcher.model).__name__


class ComfyDenoiser:
    def __init__(self, patcher: Any):
        self.patcher = patcher
        self.base_model = patcher.model
        self.model_sampling = patcher.get_model_object("model_sampling")
        self._prediction = prediction_type(self.model_sampling)
        if not hasattr(self.base_model, "diffusion_model"):
            raise UnsupportedModelError(f"the MODEL ({model_family(patcher)}) has no diffusion network to train")

    @property
    def network(self) -> torch.nn.Module:
        return self.base_model.diffusion_model

    @property
    def prediction(self) -> PredictionType:
        return self._prediction

    @property
    def training_sigmas(self) -> torch.Tensor:
        return self.model_sampling.sigmas

    @property
    def device(self) -> torch.device:
        return torch.device(self.patcher.load_device)

    def denoise(self, noisy: torch.Tensor, sigma: torch.Tensor, text: TextEmbedding) -> torch.Tensor:
        # CONDITIONING from CLIPTextEncode always has "pooled_output", None where the encoder pools nothing
        # (T5, Mistral, Qwen); ComfyUI's sampler passes it on, and Flux's encode_adm reads it.
        params: dict[str, Any] = {"pooled_output": None}
        params.update(text)
        if CLIP_VISION_KEY in params:  # image-to-video: the start image's CLIP-vision features (image_to_video.py)
            params["clip_vision_output"] = clip_vision_output(params.pop(CLIP_VISION_KEY))
        params.update(
            device=self.device,
            noise=noisy,
            width=noisy.shape[-1] * 8,
            height=noisy.shape[-2] * 8,
            prompt_type="positive",
        )
        conds = self.base_model.extra_conds(**params)
        kwargs = {
            name: cond.process_cond(batch_size=noisy.shape[0], device=self.device, area=None).cond
            for name, cond in conds.items()
        }
        options = {"optimized_attention_override": autograd_safe_attention}
        return self.base_model.apply_model(noisy, sigma, transformer_options=options, **kwargs)


class ComfyTextEncoder:
    """Encodes as ``CLIPTextEncode`` does; every tensor the encoder returns is kept for the model.

    Its ``network`` (the CLIP's ``cond_stage_model``, shared by every node holding this CLIP) is where a
    text-encoder LoRA goes; nothing in encoding blocks gradients."""

    def __init__(self, clip: Any):
        if clip is None:
            raise ValueError("TrainLoRA needs the CLIP output of the checkpoint loader: connect it to 'clip'")
        self.clip = clip

    @property
    def network(self) -> torch.nn.Module:
        return self.clip.cond_stage_model

    def with_clip_skip(self, clip_skip: int) -> ComfyTextEncoder:
        return ComfyTextEncoder(clip_with_skip(self.clip, clip_skip))

    def encode(self, captions: Sequence[str]) -> list[TextEmbedding]:
        out = []
        for caption in captions:
            # Captions are literal text (as kohya reads them): "(cosplay)" is a word, not a prompt weight.
            literal = caption.replace("(", "\\(").replace(")", "\\)")
            conditioning = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(literal))
            cond, extras = conditioning[0][0], conditioning[0][1]
            embedding: TextEmbedding = {"cross_attn": cond}
            embedding.update({k: v for k, v in extras.items() if torch.is_tensor(v)})
            out.append(embedding)
        return out


def clip_layer_count(clip: Any) -> int:
    """Layers of the CLIP's shallowest text encoder (12 for SD1.5 and SDXL's CLIP-L)."""
    counts = [m.num_layers for m in clip.cond_stage_model.modules() if isinstance(getattr(m, "num_layers", None), int)]
    return min(counts) if counts else 0


def clip_with_skip(clip: Any, clip_skip: int) -> Any:
    """What ``CLIPSetLastLayer`` with ``-clip_skip`` gives (a clone; ``clip`` is unchanged). 1 = ``clip`` itself:
    the CLIP as connected (SDXL's encoders already stop at their penultimate layer)."""
    if clip_skip == 1:
        return clip
    layers = clip_layer_count(clip)
    if layers and clip_skip > layers:
        raise ValueError(f"clip_skip {clip_skip} is more than this CLIP's {layers} layers: set clip_skip to 1-{layers}")
    skipped = clip.clone()
    skipped.clip_layer(-clip_skip)
    return skipped


def effective_clip_skip(clip: Any, clip_skip: int) -> int:
    """The clip skip captions are really encoded with: ``clip_skip``, or the CLIP's own last layer when
    clip_skip is 1 and the CLIP comes through CLIPSetLastLayer."""
    if clip_skip == 1 and clip.layer_idx is not None and clip.layer_idx < 0:
        return -int(clip.layer_idx)
    return clip_skip


def clip_key_namer(clip: Any, train_t5: bool = False) -> Any:
    """Module path in the CLIP's ``cond_stage_model`` → kohya key stem, from ComfyUI's own LoRA key map
    (``comfy.lora.model_lora_keys_clip``), so LoraLoader finds every key.

    Among the names ComfyUI maps to a weight, kohya's are chosen: ``lora_te_`` when the CLIP has one text
    encoder with LoRA names (SD1.5), ``lora_te1_`` / ``lora_te2_`` when it has several (CLIP-L / CLIP-G), and
    ``lora_te3_`` for T5-XXL where ComfyUI maps it (SD3, Flux, HiDream: kohya's name for it), else the one
    ComfyUI maps (Chroma's lone T5: ``lora_te1_``). Refuses, before training, an encoder whose layers
    ComfyUI's loader has no such name for."""
    import comfy.lora

    from ..trainer_core.training.text_encoder_parts import trained_parts

    network = clip.cond_stage_model
    key_map = comfy.lora.model_lora_keys_clip(network, {})
    numbered = any(key.startswith("lora_te2_") for key in key_map)
    names: dict[str, list[str]] = {}
    for lora_key, weight_key in key_map.items():
        if lora_key.startswith("lora_te") and weight_key.endswith(".weight"):
            names.setdefault(weight_key[: -len(".weight")], []).append(lora_key)
    parts, _ = trained_parts(network, train_t5)
    t5_targets = {target for part in parts if part.kind == "t5" for target in part.targets}

    def name(module_path: str) -> str | None:
        if module_path in t5_targets:
            prefixes: tuple[str, ...] = ("lora_te3_", "lora_te2_", "lora_te1_")
        else:
            prefixes = ("lora_te1_", "lora_te2_") if numbered else ("lora_te_",)
        candidates = names.get(module_path, [])
        for prefix in prefixes:
            for candidate in candidates:
                if candidate.startswith(prefix):
                    return candidate
        return None

    for part in parts:  # fail before training, not when saving
        if any(name(target) is None for target in part.targets):
            fix = "turn train_t5 off or " if part.kind == "t5" else ""
            raise UnsupportedModelError(
                f"ComfyUI's LoRA loader has no kohya name (lora_te*) for the layers of the text encoder "
                f"{part.describe()}, so a LoRA trained there would not load: {fix}set text_encoder_lr to 0 to "
                "train the diffusion model only"
            )

    def checked(module_path: str) -> str:
        stem = name(module_path)
        if stem is None:
            raise UnsupportedModelError(
                f"ComfyUI's LoRA loader has no kohya name for the text-encoder layer {module_path}: set "
                "text_encoder_lr to 0 to train the UNet only"
            )
        return stem

    return checked


# What a VAE is, told by its latents (channels, axes), for messages: ComfyUI's VAE does not know its file.
_VAE_KINDS = {
    (4, 2): "an SD1.5 / SDXL VAE", (16, 2): "an SD3 / Flux.1 VAE", (128, 2): "a Flux.2 VAE",
    (64, 2): "a HunyuanImage 2.1 VAE", (16, 3): "a Wan 2.1 / HunyuanVideo / Qwen-Image VAE", (48, 3): "a Wan 2.2 5B VAE",
}
_AXES = {2: "image", 3: "video"}


def vae_mismatch(vae: Any, patcher: Any) -> str | None:
    """Why ``vae`` cannot encode or decode the latents of ``patcher``'s model (another family's VAE: other
    latent channels, or image latents for a video model); None when it fits (or cannot be told)."""
    channels: int | None = getattr(vae, "latent_channels", None)
    axes: int = getattr(vae, "latent_dim", 2)
    latent_format = patcher.get_model_object("latent_format")
    wanted_channels, wanted_axes = latent_format.latent_channels, latent_format.latent_dimensions
    if channels is None or channels == wanted_channels and (
        axes == wanted_axes or axes not in _AXES or wanted_axes not in _AXES
    ):
        return None
    kind = _VAE_KINDS.get((channels, axes), "a VAE")
    return (
        f"the VAE ({kind}: {channels}-channel {_AXES.get(axes, f'{axes}-D')} latents) does not fit the MODEL "
        f"(ComfyUI's {model_family(patcher)}, which works on {wanted_channels}-channel "
        f"{_AXES.get(wanted_axes, f'{wanted_axes}-D')} latents). Connect this model's own VAE: the VAE output of "
        "the checkpoint loader that gives the MODEL, or a Load VAE node with the VAE file made for this model."
    )


def check_vae_fits(vae: Any, patcher: Any, where: str) -> None:
    """Refuse another family's VAE before anything is encoded, sampled or decoded; ``where`` names the node
    and input for the message (e.g. "TrainLoRA: vae"). For a family LoRA Lab's tests do not cover, whose
    VAE may legitimately differ from its latent format, it is a console warning instead."""
    from .families import TESTED_FAMILIES  # families imports this module

    problem = None if vae is None else vae_mismatch(vae, patcher)
    if problem is None:
        return
    if model_family(patcher) not in TESTED_FAMILIES:
        print(f"[LoRA Lab] Warning: {where}: {problem}", flush=True)
        return
    raise ValueError(f"{where}: {problem}")


def kohya_key_namer(patcher: Any) -> Any:
    """Module path → key stem in the key format of the model's family (``key_formats.KEY_FORMATS``): kohya's
    ``lora_unet_`` names for SD UNets, Flux and musubi-tuner's families, ``diffusion_model.`` / diffusers names
    where the family's trainers and diffusers use those; always names ComfyUI's LoRA loader maps."""
    from .key_formats import lora_key_namer

    return lora_key_namer(patcher)


def base_model_version(patcher: Any) -> str:
    """kohya's ``ss_base_model_version`` for the common families, else the ComfyUI class name."""
    family = model_family(patcher)
    return {"BaseModel": "sd_v1", "SDXL": "sdxl_base_v1-0", "Flux": "flux1", "SD3": "sd3"}.get(family, family.lower())


def model_fingerprint(patcher: Any) -> str:
    """A quick sha256 of the base network: every tensor's name, shape and first and last 4 KiB.

    The MODEL does not say which file it came from, so this identifies the weights themselves."""
    return weights_fingerprint(patcher.model.diffusion_model.state_dict())


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A quick sha256 of a state dict: every tensor's name, shape, dtype and first and last 4 KiB."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        for part in (flat[:1024], flat[-1024:]):
            digest.update(part.float().cpu().numpy().tobytes())
    return digest.hexdigest()


def load_for_training(patcher: Any, unload_others: bool, clip: Any = None) -> None:
    """Bring the model (and the CLIP whose text encoder is trained) fully onto their devices, with any
    patches already on them: a LoRA cannot be put into layers ComfyUI is still to load or patch."""
    memory = 1e20 if unload_others else 0
    patchers = [patcher] if clip is None else [patcher, clip.patcher]
    comfy.model_management.load_models_gpu(patchers, memory_required=memory, force_full_load=True)


def base_weights_problem(choice: str | None) -> str | None:
    """Why ``choice`` of base-weight precision cannot be used on the training device (None if it can)."""
    if choice is None or choice == "as loaded":
        return None
    device = comfy.model_management.get_torch_device()
    try:
        dtype = base_weight_dtype(choice)
    except ValueError as error:
        return str(error)
    if not comfy.model_management.supports_cast(device, dtype):
        return (
            f"base_weights: ComfyUI cannot convert {choice} weights on this device ({device.type}); choose "
            "'as loaded' or fp16."
        )
    return None


def use_base_weights(patcher: Any, choice: str) -> bool:
    """Make the clone ``patcher`` train on a copy of the diffusion network with weights stored in ``choice``'s
    precision; returns whether a copy was made (not when the weights already are in that precision).

    The copy is an object patch of this clone only, ComfyUI's own way of swapping a part of a shared
    model: ComfyUI puts the copy in place while it has this clone loaded and the MODEL's own network back
    when it unloads it (``release``). The copy is made from unpatched weights (any LoRAs already on the
    MODEL are applied to it by ComfyUI at load), so loaded clones of the model are unloaded first, which
    also moves the MODEL's weights off the GPU while the copy trains.
    """
    dtype = base_weight_dtype(choice)
    problem = base_weights_problem(choice)
    if problem is not None:
        raise ValueError(problem)
    _unload_loaded_clones(patcher)
    network = patcher.get_model_object("diffusion_model")
    if not needs_low_precision_copy(network, dtype):
        return False
    assert dtype is not None
    patcher.add_object_patch("diffusion_model", low_precision_copy(network, dtype))
    return True


def release(patcher: Any) -> None:
    """Unload ``patcher`` from ComfyUI's loaded models: its patches and object patches come off the model."""
    _unload_loaded_clones(patcher, only_itself=True)


def _unload_loaded_clones(patcher: Any, only_itself: bool = False) -> None:
    loaded_models = comfy.model_management.current_loaded_models
    for loaded in list(loaded_models):
        model = loaded.model
        if model is None or not (model is patcher if only_itself else model.is_clone(patcher)):
            continue
        loaded.model_unload()
        loaded_models.remove(loaded)


def apply_lora(model: Any, clip: Any, weights: dict, strength_model: float, strength_clip: float) -> tuple[Any, Any]:
    """ComfyUI's own LoRA loading, the path ``LoraLoader`` takes."""
    return comfy.sd.load_lora_for_models(model, clip, weights, strength_model, strength_clip)


def lora_fit(model: Any, clip: Any, weights: dict) -> tuple[int, int, list[str]]:
    """How many of the LoRA's layers ComfyUI's loader can place on this model (and CLIP):
    (matched, total, a few unmatched names). An SDXL LoRA on SD1.5 matches none."""
    import comfy.lora

    key_map: dict[str, str] = {}
    if model is not None:
        key_map = comfy.lora.model_lora_keys_unet(model.model, key_map)
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    suffixes = (".lora_up.weight", ".lora_down.weight", ".lora_B.weight", ".lora_A.weight", ".alpha", ".hada_w1_a",
                ".lokr_w1", ".diff", ".dora_scale")
    stems = set()
    for key in weights:
        for suffix in suffixes:
            if key.endswith(suffix):
                stems.add(key[: -len(suffix)])
                break
    unmatched = sorted(stem for stem in stems if stem not in key_map)
    return len(stems) - len(unmatched), len(stems), unmatched[:5]

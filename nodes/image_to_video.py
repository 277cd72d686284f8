"""Image-to-video models on ComfyUI's side: which models take a first frame, and the codec that builds it.

Wan 2.1 I2V and Wan 2.2 I2V 14B are ComfyUI's ``WAN21`` whose patch embedding reads 16 latent channels plus
4 mask channels plus 16 channels of the start image's latent (36). ComfyUI tells them apart by their image
embedding: Wan 2.1 I2V has ``img_emb`` (it reads CLIP-vision features of the start image, ``clip_fea``),
Wan 2.2 I2V 14B has none (ComfyUI loads it as a ``WAN21`` with ``image_to_video`` off). HunyuanVideo's I2V
models are not trained (``families.image_to_video_refusal``).

``FirstFrameCodec`` builds each training item's conditioning with ComfyUI's own ``WanImageToVideo`` (the start
image encoded by the VAE, padded with 0.5 grey to the item's length, and the mask that keeps its frame) and,
for Wan 2.1 I2V, ``ClipVisionModel.encode_image`` as ``CLIPVisionEncode`` (crop "center") runs it. The
denoiser (``bridge.ComfyDenoiser``) hands them to the model's ``extra_conds``, which builds the concat input
and ``clip_fea`` exactly as at inference.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from .latent_codec import ComfyLatentCodec

# The conditioning value holding CLIP vision's penultimate hidden states (what WAN21.extra_conds reads from
# a ``clip_vision_output``): a tensor, so it batches and caches like the rest; the bridge wraps it back.
CLIP_VISION_KEY = "clip_vision_penultimate"
FIRST_FRAME_KEYS = ("concat_latent_image", "concat_mask")


def wan_image_to_video(model: Any) -> bool:
    """Whether ``model`` (a ComfyUI ``BaseModel``) is Wan 2.1 I2V or Wan 2.2 I2V 14B: a ``WAN21`` whose input
    adds a start-image latent and a 4-channel mask to the noise."""
    if type(model).__name__ != "WAN21":
        return False
    channels = model.latent_format.latent_channels
    extra = model.diffusion_model.patch_embedding.weight.shape[1] - channels
    return extra == channels + 4


def needs_clip_vision(model: Any) -> bool:
    """Whether the I2V model reads CLIP-vision features of its start image (Wan 2.1 I2V: it has ``img_emb``)."""
    return wan_image_to_video(model) and getattr(model.diffusion_model, "img_emb", None) is not None


CLIP_VISION_HELP = (
    "Only for Wan 2.1 image-to-video models (I2V 14B 480p/720p), which read CLIP-vision features of the start "
    "image: connect Load CLIP Vision with clip_vision_h. Each clip trains with its own first frame as the start "
    "image, as WanImageToVideo conditions it. Not needed (and not used) for other models, Wan 2.2 I2V included."
)


def sample_every(codec: Any, every: int) -> int:
    """Train LoRA's sample-image interval: 0 (with a console note) for an I2V model, whose samples would need
    a start image the sample prompts do not give; ``every`` otherwise."""
    if every and getattr(codec, "first_frame_conditioning", False):
        print("[LoRA Lab] TrainLoRA: no sample images for an image-to-video model (they need a start image): "
              "test the LoRA with a WanImageToVideo + LoraLoader + KSampler graph.", flush=True)
        return 0
    return every


def missing_clip_vision_message(family: str) -> str:
    return (
        f"TrainLoRA: clip_vision: this MODEL is ComfyUI's {family}, Wan 2.1 image-to-video, which reads CLIP-vision "
        "features of each clip's first frame. Connect a CLIP vision model to Train LoRA's clip_vision input: a Load "
        "CLIP Vision node with clip_vision_h.safetensors (the one WanImageToVideo workflows use)."
    )


def first_frame_codec(vae: Any, patcher: Any, clip_vision: Any = None) -> ComfyLatentCodec:
    """Train LoRA's codec: ``FirstFrameCodec`` for a Wan I2V model (an error naming ``clip_vision`` when Wan
    2.1 I2V has none), else the plain ``ComfyLatentCodec``."""
    model = patcher.model
    if not wan_image_to_video(model):
        return ComfyLatentCodec(vae, patcher)
    if needs_clip_vision(model) and clip_vision is None:
        raise ValueError(missing_clip_vision_message(type(model).__name__))
    if not needs_clip_vision(model) and clip_vision is not None:
        print("[LoRA Lab] TrainLoRA: clip_vision is not used: this Wan I2V model (Wan 2.2 I2V 14B) reads no "
              "CLIP-vision features", flush=True)
        clip_vision = None
    return FirstFrameCodec(vae, patcher, clip_vision)


class FirstFrameCodec(ComfyLatentCodec):
    """A video codec that also builds each item's first-frame conditioning (``trainer_core.training.first_frame``)."""

    first_frame_conditioning = True

    def __init__(self, vae: Any, patcher: Any, clip_vision: Any = None):
        super().__init__(vae, patcher)
        self.clip_vision = clip_vision
        self.first_frame_identity = clip_vision_identity(clip_vision)

    def encode_first_frame(self, first: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
        """``first`` [1, H, W, 3] in 0..1, the start of an item of ``length`` frames → what WanImageToVideo
        puts in the conditioning (``concat_latent_image``, ``concat_mask``) and, with a CLIP vision model,
        its features (``CLIP_VISION_KEY``)."""
        from comfy_extras.nodes_wan import WanImageToVideo

        height, width = first.shape[1], first.shape[2]
        empty = [[torch.zeros(1, 1, 1), {}]]
        positive = WanImageToVideo.execute(empty, empty, self.vae, width, height, length, 1, start_image=first)[0]
        values = positive[0][1]
        out = {key: values[key] for key in FIRST_FRAME_KEYS}
        if self.clip_vision is not None:
            out[CLIP_VISION_KEY] = self.clip_vision.encode_image(first, crop=True).penultimate_hidden_states
        return out


def clip_vision_output(penultimate: torch.Tensor) -> Any:
    """A ``comfy.clip_vision.Output`` carrying ``penultimate`` (all ``WAN21.extra_conds`` reads of it)."""
    import comfy.clip_vision

    output = comfy.clip_vision.Output()
    output["penultimate_hidden_states"] = penultimate
    return output


def clip_vision_identity(clip_vision: Any) -> str:
    """What decides a CLIP vision model's features: its class, image size and weights ('' without one)."""
    if clip_vision is None:
        return ""
    from .bridge import weights_fingerprint

    return json.dumps([type(clip_vision.model).__name__, getattr(clip_vision, "image_size", None),
                       weights_fingerprint(clip_vision.model.state_dict())])


START_IMAGE_HELP = (
    "Image-to-video models only (Wan 2.1 I2V, Wan 2.2 I2V 14B): the start image every cell's clip begins from, "
    "conditioned as WanImageToVideo conditions it (Wan 2.1 I2V also needs a CLIP vision model on clip_vision, "
    "e.g. clip_vision_h). Without one the sweep refuses an I2V model. Other models ignore it."
)


def refuse_in_grids(model: Any, start_image: Any = None) -> None:
    """The grids render text-to-video cells unless given a start image (the strength sweep's ``start_image``):
    refuse an image-to-video model without one (and HunyuanVideo I2V always), naming what tests its LoRA."""
    patcher_model = getattr(model, "model", model)
    family = type(patcher_model).__name__
    hunyuan_i2v = family in ("HunyuanVideoI2V", "HunyuanVideoSkyreelsI2V")
    if not hunyuan_i2v and (start_image is not None or not wan_image_to_video(patcher_model)):
        return
    fix = ("" if hunyuan_i2v else "Connect a start_image to Test LoRA Strength Sweep (Compare LoRA Stack takes none), "
           "or test")
    start = "HunyuanImageToVideo" if hunyuan_i2v else "WanImageToVideo"
    raise ValueError(
        f"model: this MODEL is ComfyUI's {family}, an image-to-video model: its cells need a start image. "
        f"{fix or 'Test'} the LoRA with a {start} (start_image) + LoraLoader + KSampler graph, or run the sweep on "
        "the text-to-video model of the same family."
    )


def start_values(model: Any, vae: Any, sampling: Any) -> dict[str, Any] | None:
    """What ComfyUI's ``WanImageToVideo`` adds to a conditioning for the grid's ``sampling.start_image`` at its
    cell size and frames (with ``CLIPVisionEncode``'s output of ``sampling.clip_vision`` for Wan 2.1 I2V); None
    without a start image or on a model that takes none."""
    if sampling.start_image is None or not wan_image_to_video(model.model):
        return None
    from comfy_extras.nodes_wan import WanImageToVideo

    vision = None
    if needs_clip_vision(model.model):
        if sampling.clip_vision is None:
            raise ValueError(
                f"clip_vision: this MODEL is ComfyUI's {type(model.model).__name__}, Wan 2.1 image-to-video, whose "
                "cells need CLIP-vision features of the start image: connect Load CLIP Vision with clip_vision_h to "
                "the sweep's clip_vision input."
            )
        vision = sampling.clip_vision.encode_image(sampling.start_image, crop=True)
    empty = [[torch.zeros(1, 1, 1), {}]]
    positive = WanImageToVideo.execute(empty, empty, vae, sampling.width, sampling.height, sampling.frames, 1,
                                       start_image=sampling.start_image, clip_vision_output=vision)[0]
    return dict(positive[0][1])


def with_start(conditioning: list, values: dict[str, Any] | None) -> list:
    """``conditioning`` with the start image's ``values`` (``start_values``) set, as WanImageToVideo sets them."""
    if not values:
        return conditioning
    import node_helpers

    return node_helpers.conditioning_set_values(conditioning, values)

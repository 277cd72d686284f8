"""ComfyUI's ``VAE`` → trainer_core's ``LatentCodec``: ``VAE.encode`` then the model's own latent scaling
(``process_latent_in``), and which models are video models (their clips train as clips).

A video VAE (Wan's, HunyuanVideo's: ``latent_dim`` 3, not an image-only 3-D VAE) reads a batch of pixels
as the frames of one clip and returns ``[1, C, T, h, w]`` (T = 1 + (F-1)/4 for Wan): such a codec encodes
one item at a time (``encode_clip``), so images never end up as frames of one another.
"""

from __future__ import annotations

from typing import Any

import torch

# ComfyUI model classes (comfy.model_base) whose LoRAs are trained on clips: Wan 2.1 / 2.2 and HunyuanVideo.
# Qwen-Image and Cosmos Predict2 T2I also have a frame axis but are image models (one frame).
VIDEO_MODEL_CLASSES = ("WAN21", "WAN22", "HunyuanVideo")


def is_video_model(model: Any) -> bool:
    """Whether ``model`` (a ComfyUI ``BaseModel``) is a video model: its training items are clips."""
    return any(cls.__name__ in VIDEO_MODEL_CLASSES for cls in type(model).__mro__)


class ComfyLatentCodec:
    """``VAE.encode`` then the model's ``process_latent_in`` (SD1.5's x0.18215 and the like)."""

    def __init__(self, vae: Any, patcher: Any):
        if vae is None:
            raise ValueError("TrainLoRA needs the VAE output of the checkpoint loader: connect it to 'vae'")
        self.vae = vae
        self.base_model = patcher.model
        self.video_vae = getattr(vae, "latent_dim", 2) == 3 and not getattr(vae, "not_video", False)
        self.trains_clips = self.video_vae and is_video_model(self.base_model)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        latent = self.vae.encode(images[..., :3])
        return self.base_model.process_latent_in(latent.to(torch.float32))

    def encode_clip(self, frames: torch.Tensor) -> torch.Tensor:
        """One clip's frames [F, H, W, 3] in 0..1 → its latent [1, C, T, h, w], as ``VAEEncode`` gives it."""
        return self.encode(frames)


# Wan 2.1 / 2.2's and HunyuanVideo's VAEs keep the first frame and fold every 4 after it into one latent frame.
TEMPORAL_COMPRESSION = 4


def latent_frames(frames: int) -> int:
    """Latent frames of a clip of ``frames`` frames through a video VAE (17 -> 5; an image -> 1)."""
    return 1 + (max(1, frames) - 1) // TEMPORAL_COMPRESSION


def longest_clip(data: Any) -> int:
    """The most frames one item of ``data`` trains (1 for an image dataset)."""
    return max((max(1, int(getattr(item, "frames", 1) or 1)) for item in data.items), default=1)


def clips_on_image_model_note(data: Any, codec: ComfyLatentCodec) -> str | None:
    """The warning for clips given to a model that trains images: each clip window trains as its first
    sampled frame. None when the dataset has no clips or the model trains them as clips."""
    clips = sum(1 for item in data.items if int(getattr(item, "frames", 1) or 1) > 1)
    if clips == 0 or codec.trains_clips:
        return None
    family = type(codec.base_model).__name__
    why = "an image model" if not is_video_model(codec.base_model) else "a video model whose VAE is an image VAE"
    return (
        f"Warning: the dataset has {clips} clip(s), but ComfyUI's {family} is {why}: each clip window trains as "
        "its first sampled frame, an image (motion is not learnt). To train on the clips, connect a video "
        "model (Wan 2.1 / 2.2, HunyuanVideo) and its own VAE."
    )

"""The strength sweep on an image-to-video model, given a start image: each cell is, frame for frame, what a
Load Image -> WanImageToVideo (+ CLIPVisionEncode for Wan 2.1 I2V) -> LoraLoader -> KSampler -> VAEDecode graph
gives, on tiny Wan 2.1 I2V and Wan 2.2 I2V 14B (ComfyUI's own model classes and 3-D VAE, ComfyUI's own
ClipVisionModel, built tiny in this process). Wan 2.1 I2V without a CLIP vision model says what to connect."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from family_models import FakeClip, family_patcher, family_vae  # noqa: E402
from tiny_clip_vision import tiny_clip_vision  # noqa: E402

from tests.integration import test_video_sweep as video_sweep  # noqa: E402

pytestmark = pytest.mark.comfy
FRAMES, HEIGHT, WIDTH = video_sweep.FRAMES, video_sweep.HEIGHT, video_sweep.WIDTH
output_folder = video_sweep.output_folder  # the fixture: ComfyUI's output folder in a temporary folder
random_lora, read_webp, sweep = video_sweep.random_lora, video_sweep.read_webp, video_sweep.sweep


@pytest.fixture(scope="module")
def clip_vision(tmp_path_factory):
    from comfy_inproc import import_comfy

    import_comfy()
    return tiny_clip_vision(tmp_path_factory.mktemp("models"), hidden_size=1280)


def start_image() -> torch.Tensor:
    """A 48x40 picture: WanImageToVideo scales and crops it to the cell size, as it would any start image."""
    image = torch.full((1, 40, 48, 3), 0.2)
    image[:, 8:28, 10:30] = torch.tensor([0.9, 0.4, 0.1])
    return image


def loader_clip(patcher, clip, vae, lora, strength, vision):
    """The clip a WanImageToVideo (+ CLIPVisionEncode) + LoraLoader + KSampler + VAEDecode graph gives."""
    import comfy.sd

    comfy_nodes = importlib.import_module("nodes")
    wan = importlib.import_module("comfy_extras.nodes_wan").WanImageToVideo
    with torch.inference_mode():
        model = patcher if strength == 0 else comfy.sd.load_lora_for_models(patcher, None, lora, strength, 0)[0]
        vision_output = None if vision is None else vision.encode_image(start_image(), crop=True)
        positive, negative, latent = wan.execute(
            clip.encode_from_tokens_scheduled(clip.tokenize("sks square")),
            clip.encode_from_tokens_scheduled(clip.tokenize("")), vae, WIDTH, HEIGHT, FRAMES, 1,
            start_image=start_image(), clip_vision_output=vision_output).result
        (out,) = comfy_nodes.common_ksampler(model, 3, 2, 1.0, "euler", "simple", positive, negative, latent)
        frames = vae.decode(out["samples"]).reshape(-1, HEIGHT, WIDTH, 3)
    return np.clip(255.0 * frames.float().cpu().numpy(), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("family", ["wan21_i2v", "wan22_i2v"])
def test_the_sweep_with_a_start_image_gives_the_clips_wan_image_to_video_gives(output_folder, family, clip_vision):
    patcher, clip, vae = family_patcher(family), FakeClip("wan21"), family_vae("wan21")
    vision = clip_vision if family == "wan21_i2v" else None
    lora = random_lora(patcher)
    result = sweep(patcher, clip, vae, lora, start_image=start_image(), clip_vision=vision)
    _grid, images, report, _scores = result.result
    ui = result.ui if isinstance(result.ui, dict) else result.ui.as_dict()
    assert tuple(images.shape) == (2, HEIGHT, 4 * WIDTH, 3) and f"2 clips of {FRAMES} frames" in report
    saved = [output_folder / entry["subfolder"] / entry["filename"] for entry in ui["images"][1:]]
    clips = [read_webp(path) for path in saved]
    for strength, frames in zip((0.0, 1.0), clips, strict=True):
        expected = loader_clip(patcher, clip, vae, lora, strength, vision)
        assert np.abs(frames.astype(int) - expected.astype(int)).max() <= 1, strength  # lossless WebP, rounding
    assert not np.array_equal(clips[0], clips[1])  # the LoRA changed the clip
    # The start image really conditions the cells: another start image, another clip.
    other = sweep(patcher, clip, vae, lora, start_image=1.0 - start_image(), clip_vision=vision)
    assert not torch.equal(other.result[1], images)


def test_wan21_i2v_cells_without_clip_vision_say_what_to_connect(output_folder):
    patcher = family_patcher("wan21_i2v")
    with pytest.raises(ValueError, match="clip_vision") as error:
        sweep(patcher, FakeClip("wan21"), family_vae("wan21"), random_lora(patcher), start_image=start_image())
    assert "Load CLIP Vision" in str(error.value) and "clip_vision_h" in str(error.value)

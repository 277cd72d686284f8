"""The strength sweep on a video model renders clips: a tiny Wan 2.1 (ComfyUI's own model class and 3-D VAE,
built tiny in this process) swept at two strengths gives a grid whose cells are frame strips, and the clips
as animated WebP files in ComfyUI's output folder, frame for frame what ComfyUI's LoRA loader, its empty
video latent node, KSampler and VAEDecode give. An image model ignores ``frames``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack  # noqa: E402
from family_models import FakeClip, family_patcher, family_vae  # noqa: E402

pytestmark = pytest.mark.comfy

WIDTH, HEIGHT, FRAMES = 32, 32, 5


@pytest.fixture
def output_folder(tmp_path):
    load_pack()
    import folder_paths

    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(before)


def random_lora(patcher, layers=6):
    """A LoRA on the first ``layers`` linear layers of the network, seeded and large enough to change the picture."""
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.export import LoRAWeights

    name, g, weights = bridge.kohya_key_namer(patcher), torch.Generator().manual_seed(5), {}
    for path, layer in patcher.model.diffusion_model.named_modules():
        if isinstance(layer, torch.nn.Linear) and len(weights) < 3 * layers:
            stem = name(path)
            weights[f"{stem}.lora_down.weight"] = torch.randn(4, layer.in_features, generator=g)
            weights[f"{stem}.lora_up.weight"] = torch.randn(layer.out_features, 4, generator=g)
            weights[f"{stem}.alpha"] = torch.tensor(4.0)
    return LoRAWeights(weights, {"ss_output_name": "moving square", "ss_trigger_word": "sks"})


def sweep(patcher, clip, vae, lora, **changes):
    from lora_lab.nodes import grid_render, strength_sweep

    inputs = dict(prompts="{trigger} square", negative="", strengths="1", include_baseline=True,
                  clip_strength_mode=strength_sweep.CLIP_MODES[0], clip_strength=1.0, seed=3, steps=2, cfg=1.0,
                  sampler_name="euler", scheduler="simple", width=WIDTH, height=HEIGHT, lora_name=grid_render.NO_FILE,
                  lora=lora, frames=FRAMES)
    inputs.update(changes)
    with torch.inference_mode():
        return strength_sweep.TestLoRAStrengthSweep.execute(model=patcher, clip=clip, vae=vae, **inputs)


def loader_clip(patcher, clip, vae, lora, strength):
    """The clip a LoraLoader + EmptyHunyuanLatentVideo + KSampler + VAEDecode graph gives, as uint8 frames."""
    import comfy.sd

    comfy_nodes = importlib.import_module("nodes")
    empty = importlib.import_module("comfy_extras.nodes_hunyuan").EmptyHunyuanLatentVideo
    with torch.inference_mode():
        model = patcher if strength == 0 else comfy.sd.load_lora_for_models(patcher, None, lora, strength, 0)[0]
        latent = empty.execute(width=WIDTH, height=HEIGHT, length=FRAMES, batch_size=1).result[0]
        positive = clip.encode_from_tokens_scheduled(clip.tokenize("sks square"))
        negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        (out,) = comfy_nodes.common_ksampler(model, 3, 2, 1.0, "euler", "simple", positive, negative, latent)
        frames = vae.decode(out["samples"]).reshape(-1, HEIGHT, WIDTH, 3)
    return np.clip(255.0 * frames.float().cpu().numpy(), 0, 255).astype(np.uint8)


def read_webp(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])


def test_the_sweep_on_a_video_model_shows_frame_strips_and_saves_the_clips_comfyui_makes(output_folder):
    patcher, clip, vae = family_patcher("wan21"), FakeClip("wan21"), family_vae("wan21")
    lora = random_lora(patcher)
    result = sweep(patcher, clip, vae, lora)
    grid, images, report, _scores = result.result
    ui = result.ui if isinstance(result.ui, dict) else result.ui.as_dict()

    # Two cells (strength 0 and 1), each a strip of 4 frames side by side.
    assert tuple(images.shape) == (2, HEIGHT, 4 * WIDTH, 3)
    assert grid.shape[2] > 2 * 4 * WIDTH
    assert f"2 clips of {FRAMES} frames saved as animated WebP" in report
    # The node shows the grid and the two animations; the files are in ComfyUI's output folder.
    assert ui.get("animated") == (True,) and len(ui["images"]) == 3
    saved = [output_folder / entry["subfolder"] / entry["filename"] for entry in ui["images"][1:]]
    assert all(path.suffix == ".webp" and path.is_file() for path in saved)

    clips = [read_webp(path) for path in saved]
    for strength, frames, cell in zip((0.0, 1.0), clips, images, strict=True):
        assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
        expected = loader_clip(patcher, clip, vae, lora, strength)
        assert np.abs(frames.astype(int) - expected.astype(int)).max() <= 1, strength  # lossless WebP, rounding
        strip = (cell.numpy() * 255).astype(np.float32)
        for slot, index in enumerate((0, 1, 3, 4)):  # 4 of 5 frames, evenly spaced: first and last included
            shown = strip[:, slot * WIDTH : (slot + 1) * WIDTH]
            assert np.abs(shown - frames[index]).max() <= 1.5, (strength, index)
    assert not np.array_equal(clips[0], clips[1])  # the LoRA changed the clip
    assert not np.array_equal(clips[0][0], clips[0][-1])  # and the frames are not one picture repeated


def test_frames_1_draws_still_images_and_an_image_model_ignores_frames(output_folder):
    patcher, clip, vae = family_patcher("wan21"), FakeClip("wan21"), family_vae("wan21")
    result = sweep(patcher, clip, vae, random_lora(patcher), frames=1)
    _, images, report, _ = result.result
    assert tuple(images.shape) == (2, HEIGHT, WIDTH, 3) and "animated" not in report
    assert not list(output_folder.rglob("*.webp"))

    sdxl = family_patcher("sdxl")
    result = sweep(sdxl, FakeClip("sdxl"), family_vae("sdxl"), random_lora(sdxl), strengths="1", frames=17)
    _, images, report, _ = result.result
    assert tuple(images.shape) == (2, HEIGHT, WIDTH, 3) and "frames" not in report
    assert not list(output_folder.rglob("*.webp"))


def test_the_stack_comparison_on_a_video_model_renders_clips_too(output_folder):
    """Compare LoRA Stack shares the sweep's cells: on Wan each column (base, the LoRA) is a clip shown as a
    strip, each saved as an animated WebP of every frame."""
    from lora_lab.nodes import grid_render, stack_compare

    patcher, clip, vae = family_patcher("wan21"), FakeClip("wan21"), family_vae("wan21")
    with torch.inference_mode():
        result = stack_compare.CompareLoRAStack.execute(
            model=patcher, clip=clip, vae=vae, lora_name=grid_render.NO_FILE, lora_strength=1.0, other_loras="",
            stack_strengths="0.7", prompts="sks square", negative="", seed=3, steps=2, cfg=1.0, sampler_name="euler",
            scheduler="simple", width=WIDTH, height=HEIGHT, lora=random_lora(patcher), frames=FRAMES)
    _, images, report = result.result
    assert tuple(images.shape) == (2, HEIGHT, 4 * WIDTH, 3) and "2 clips of 5 frames" in report
    files = sorted(output_folder.rglob("*.webp"))
    assert len(files) == 2 and all(read_webp(path).shape == (FRAMES, HEIGHT, WIDTH, 3) for path in files)

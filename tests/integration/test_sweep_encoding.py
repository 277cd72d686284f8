"""The sweep encodes a prompt once for every strength when the LoRA leaves the CLIP as it was (no text encoder
weights), and once per clip strength when it patches the CLIP; either way every cell equals the LoraLoader +
CLIPTextEncode + KSampler + VAEDecode cell. On ComfyUI's own tiny SD1.5 checkpoint inside this process, with
LoRAs under ComfyUI's own key names (the canvas-level equality with a trained LoRA is in
``test_strength_sweep.py``)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import import_comfy, load_pack  # noqa: E402

pytestmark = pytest.mark.comfy

PROMPTS = ["a yellow ring", "a ring on blue"]
STRENGTHS = [0.0, 0.5, 1.0]
STEPS, SIZE, SEED = 3, 64, 7


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    import_comfy()
    load_pack()
    import comfy.sd

    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoint), output_vae=True,
                                                                   output_clip=True)
    return model, clip, vae


def random_lora(key_map: dict[str, str], state: dict[str, torch.Tensor], prefix: str, count: int) -> dict:
    """A LoRA on the first ``count`` linear layers whose kohya names start with ``prefix``, strong enough to show."""
    generator = torch.Generator().manual_seed(0)
    out = {}
    names = sorted(name for name, key in key_map.items()
                   if name.startswith(prefix) and key in state and state[key].ndim == 2)
    for name in names[:count]:
        rows, columns = state[key_map[name]].shape
        out[f"{name}.lora_up.weight"] = torch.randn(rows, 4, generator=generator)
        out[f"{name}.lora_down.weight"] = torch.randn(4, columns, generator=generator) * 0.5
        out[f"{name}.alpha"] = torch.tensor(4.0)
    assert out, f"no layer named {prefix}*"
    return out


@pytest.fixture(scope="module")
def loras(checkpoint):
    import comfy.lora

    model, clip, _ = checkpoint
    unet = random_lora(comfy.lora.model_lora_keys_unet(model.model, {}), model.model.state_dict(), "lora_unet_", 4)
    text = random_lora(comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}),
                       clip.cond_stage_model.state_dict(), "lora_te_", 4)
    return {"unet only": unet, "with text encoder": {**unet, **text}}


def sweep(checkpoint, lora, clip_strength=None):
    """The sweep's cells (one prompt at a time) and how many prompts it encoded."""
    from lora_lab.nodes import grid_render, sampler

    model, clip, vae = checkpoint
    cells = [[grid_render.Cell((("lora", s, s if clip_strength is None else clip_strength),), p) for s in STRENGTHS]
             for p in PROMPTS]
    sampling = grid_render.Sampling("", SEED, STEPS, 3.0, "euler", "normal", SIZE, SIZE)
    encode, calls = sampler.encode_prompt, []

    def counting(clip, text):
        calls.append(text)
        return encode(clip, text)

    sampler.encode_prompt = counting
    try:
        with torch.inference_mode():
            rows = grid_render.render_cells(model, clip, vae, {"lora": lora}, cells, sampling, {})
    finally:
        sampler.encode_prompt = encode
    return rows, calls


def loraloader_cell(checkpoint, lora, strength_model: float, strength_clip: float, prompt: str):
    """The cell the plain way, with ComfyUI's own functions: LoraLoader's loader, CLIPTextEncode, KSampler, VAE."""
    import comfy.sd

    comfy_nodes = importlib.import_module("nodes")
    model, clip, vae = checkpoint
    with torch.inference_mode():
        if strength_model != 0 or strength_clip != 0:
            model, clip = comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip)
        positive = comfy_nodes.CLIPTextEncode().encode(clip, prompt)[0]
        negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = {"samples": torch.zeros([1, 4, SIZE // 8, SIZE // 8])}
        (samples,) = comfy_nodes.common_ksampler(model, SEED, STEPS, 3.0, "euler", "normal", positive, negative, latent)
        return vae.decode(samples["samples"])[0].float().cpu().numpy()


def assert_cells_equal_loraloader(checkpoint, lora, rows, clip_strength=None):
    for row, prompt in enumerate(PROMPTS):
        for column, strength in enumerate(STRENGTHS):
            clip = strength if clip_strength is None else clip_strength
            expected = loraloader_cell(checkpoint, lora, strength, clip, prompt)
            assert (rows[row][column] == expected).all(), f"{prompt!r} at strength {strength} differs from LoraLoader"


def test_a_lora_without_text_encoder_weights_encodes_each_prompt_once_and_draws_the_same_cells(checkpoint, loras):
    rows, encoded = sweep(checkpoint, loras["unet only"])
    # The negative and each prompt once, for the baseline and both strengths alike (was once per strength).
    assert sorted(encoded) == sorted(["", *PROMPTS])
    assert_cells_equal_loraloader(checkpoint, loras["unet only"], rows)


def test_a_lora_that_patches_the_clip_encodes_at_each_clip_strength_and_draws_the_same_cells(checkpoint, loras):
    lora = loras["with text encoder"]
    at_strength = loraloader_cell(checkpoint, lora, 1.0, 1.0, PROMPTS[0])
    assert not (at_strength == loraloader_cell(checkpoint, lora, 1.0, 0.0, PROMPTS[0])).all(), (
        "the text encoder part changes nothing: this test could not tell shared encodings from separate ones")
    rows, encoded = sweep(checkpoint, lora)
    assert sorted(encoded) == sorted(["", *PROMPTS] * len(STRENGTHS))  # the baseline's, then 0.5's, then 1.0's
    assert_cells_equal_loraloader(checkpoint, lora, rows)


def test_a_fixed_clip_strength_encodes_once_for_the_lora_and_once_for_the_baseline(checkpoint, loras):
    lora = loras["with text encoder"]
    rows, encoded = sweep(checkpoint, lora, clip_strength=0.7)
    # Strength 0 with clip strength 0.7 still loads the LoRA (LoraLoader skips only 0 / 0): one clip for all.
    assert sorted(encoded) == sorted(["", *PROMPTS])
    assert_cells_equal_loraloader(checkpoint, lora, rows, clip_strength=0.7)

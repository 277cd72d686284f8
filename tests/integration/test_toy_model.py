"""The toy base model draws what its prompt says, through the stock ComfyUI chain
(CheckpointLoaderSimple → CLIPTextEncode → KSampler → VAEDecode), and refuses to assemble with a
text encoder other than the one it was trained with."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import tools.toy_model as toy_model
from tests.helpers.toy import install_toy_checkpoint
from tools.comfy_server import ComfyServer
from tools.graph import Graph
from tools.toy_model import ToyModelError, assemble_toy_checkpoint, read_recipe, verify_text_encoder
from tools.toy_scenes import CAPTION_TEMPLATE, picture_colours

# (shape, colour, background): every pretraining shape, and one pair with the colours swapped,
# so a model that ignored which colour goes where would fail one of the two.
PROMPTS = [
    ("circle", "red", "blue"),
    ("circle", "blue", "red"),
    ("square", "yellow", "black"),
    ("triangle", "white", "green"),
    ("diamond", "green", "white"),
]
SEEDS = range(5)
SAMPLING = dict(steps=20, cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0)
# A picture passes when the median colour of its central CENTRE_WIDTH² patch is nearest to the
# prompt's shape colour and the median of its outer BORDER_WIDTH-pixel band nearest to the
# prompt's background (nearest of the six palette colours, Euclidean RGB).
# Measured with the shipped toy (ComfyUI 0.3.75, torch 2.14.1 CPU): 25/25. The margin is for
# other ComfyUI versions and torch builds, whose numerics differ slightly.
MIN_SEEDS_PER_PROMPT = 4  # of 5
MIN_PASS_RATE = 0.85  # over all 25 pictures


@pytest.fixture(scope="module")
def toy_pictures(comfy_server: ComfyServer) -> dict[tuple[str, str, str], list[np.ndarray]]:
    server = comfy_server
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=install_toy_checkpoint(server))
    negative = graph.node("CLIPTextEncode", clip=checkpoint[1], text="")
    latent = graph.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    savers = {}
    for shape, colour, background in PROMPTS:
        text = CAPTION_TEMPLATE.format(shape=shape, colour=colour, background=background)
        positive = graph.node("CLIPTextEncode", clip=checkpoint[1], text=text)
        for seed in SEEDS:
            sampled = graph.node("KSampler", model=checkpoint[0], positive=positive[0], negative=negative[0],
                                 latent_image=latent[0], seed=seed, **SAMPLING)
            decoded = graph.node("VAEDecode", samples=sampled[0], vae=checkpoint[2])
            savers[(shape, colour, background, seed)] = graph.node(
                "SaveImage", images=decoded[0], filename_prefix=f"toy_{shape}_{colour}_{background}_{seed}")
    result = server.run(graph.to_api(), timeout=900).raise_for_error()
    pictures: dict[tuple[str, str, str], list[np.ndarray]] = {prompt: [] for prompt in PROMPTS}
    for (shape, colour, background, _seed), saver in savers.items():
        (path,) = server.output_files(result, saver.id, "images")
        pictures[(shape, colour, background)].append(np.asarray(Image.open(path).convert("RGB")))
    return pictures


def test_a_prompt_naming_a_shape_and_two_colours_gets_those_colours_in_place(toy_pictures):
    report, passed = [], 0
    for (shape, colour, background), images in toy_pictures.items():
        seen = [picture_colours(image) for image in images]
        ok = [s.centre == colour and s.border == background for s in seen]
        passed += sum(ok)
        report.append(f"{colour} {shape} on {background}: {sum(ok)}/{len(ok)} "
                      f"(centre/border per seed: {[f'{s.centre}/{s.border}' for s in seen]})")
        assert sum(ok) >= MIN_SEEDS_PER_PROMPT, "\n".join(report)
    print("\n".join(report))  # the measured pass rates, shown with pytest -rP
    total = sum(len(images) for images in toy_pictures.values())
    assert passed / total >= MIN_PASS_RATE, "\n".join(report)


def test_the_text_encoder_rebuilds_to_the_recorded_checksum():
    recipe = read_recipe()
    verify_text_encoder(toy_model.build_text_encoder_state(recipe["text_encoder"]["seed"]),
                        recipe["text_encoder"]["sha256"])


def test_a_text_encoder_that_differs_is_refused_with_a_clear_error(tmp_path, monkeypatch):
    rebuild = toy_model.build_text_encoder_state

    def corrupted(seed: int):
        state = rebuild(seed)
        state["cond_stage_model.transformer.text_model.encoder.layers.5.mlp.fc1.weight"][0, 0] += 1
        return state

    monkeypatch.setattr(toy_model, "build_text_encoder_state", corrupted)
    destination = tmp_path / "toy.safetensors"
    with pytest.raises(ToyModelError, match="differs from the one the toy UNet was trained with") as error:
        assemble_toy_checkpoint(destination)
    assert "numpy" in str(error.value) and "pretrain_toy.py" in str(error.value)
    assert not destination.exists()

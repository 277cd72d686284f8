"""Sample images and sweep cells start from the empty latent each family's own empty-latent node makes.

Built at the MODEL level with ComfyUI's own model classes and tiny configs, in this process: the latent
LoRA Lab samples from is compared with what the family's node (``EmptyLatentImage``,
``EmptySD3LatentImage``, ``EmptyFlux2LatentImage``, ``EmptyHunyuanLatentVideo`` with one frame) returns
for the same width and height, and every family with a VAE built here samples and decodes at the size asked
through the code TrainLoRA's sample images and the grid nodes' cells use (``sampler``, ``train_progress``,
``grid_render``), from conditioning shaped as its real text encoders give it (``family_models.FakeClip``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack  # noqa: E402
from family_models import VIDEO_FAMILIES, FakeClip, family_node_latent, family_patcher, family_vae  # noqa: E402
from tiny_families import FAMILIES  # noqa: E402

pytestmark = pytest.mark.comfy

WIDTH, HEIGHT = 80, 48  # multiples of 16, not square: a swapped axis shows
WIDE, TALL = 160, 96  # multiples of 32, for HunyuanImage 2.1

ALL_FAMILIES = ["sd15", *FAMILIES]  # every family of the matrix, and SD1.5
# Every family decodes with a VAE of its own kind (family_models.family_vae).
DECODED_FAMILIES = ALL_FAMILIES
PROMPTS = ("a red square", "a small blue circle")  # different lengths: masks and Llama features differ too
# PixArt cannot draw below width + height = 528 px (test_pixart_draws_small_sizes_at_the_nearest_it_can_make).
PIXART_SIZE = (304, 240)


def asked_size(family: str) -> tuple[int, int]:
    return {"pixart_sigma": PIXART_SIZE, "hunyuan_image21": (WIDE, TALL)}.get(family, (WIDTH, HEIGHT))


def zero_lora(patcher, prefix: str):
    """One zero LoRA layer (the first linear layer under ``prefix``) in the key names the family's files use:
    a LoRA, drawn at strength 0 only."""
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.export import LoRAWeights

    path, layer = next((path, module) for path, module in patcher.model.diffusion_model.named_modules()
                       if isinstance(module, torch.nn.Linear) and path.startswith(prefix))
    stem = bridge.kohya_key_namer(patcher)(path)
    weights = {f"{stem}.lora_down.weight": torch.zeros(4, layer.in_features),
               f"{stem}.lora_up.weight": torch.zeros(layer.out_features, 4), f"{stem}.alpha": torch.tensor(4.0)}
    return LoRAWeights(weights, {"ss_output_name": "zero"})


@pytest.fixture(scope="module")
def sampler():
    load_pack()
    from lora_lab.nodes import sampler

    return sampler


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_empty_latent_is_the_one_the_familys_own_node_makes(sampler, family):
    for width, height in ((WIDTH, HEIGHT), (WIDE, TALL)):
        expected = family_node_latent(family, width, height)
        latent = sampler.empty_latent(family_patcher(family), width, height, 1, family_vae(family))
        assert latent.shape == expected.shape and latent.dtype == expected.dtype and latent.device == expected.device
        assert not latent.any()
    downscale = FAMILIES.get(family, FAMILIES["sdxl"]).downscale
    assert latent.shape[-2:] == (TALL // downscale, WIDE // downscale)


def test_flux2_latents_are_16x_smaller_with_128_channels(sampler):
    latent = sampler.empty_latent(family_patcher("flux2"), 512, 256, 2, family_vae("flux2"))
    assert tuple(latent.shape) == (2, 128, 16, 32)


def test_a_format_that_names_its_downscale_is_believed_over_the_vae(sampler):
    """Newer ComfyUI formats carry ``spacial_downscale_ratio``: no VAE is needed then."""
    patcher = family_patcher("flux2")
    latent_format = patcher.get_model_object("latent_format")
    latent_format.spacial_downscale_ratio = 16
    try:
        assert tuple(sampler.empty_latent(patcher, WIDTH, HEIGHT).shape) == (1, 128, HEIGHT // 16, WIDTH // 16)
    finally:
        del latent_format.spacial_downscale_ratio


def test_without_a_word_on_the_downscale_it_assumes_8x_and_says_so(sampler, caplog):
    with caplog.at_level(logging.WARNING):
        latent = sampler.empty_latent(family_patcher("sd3"), WIDTH, HEIGHT)
    assert tuple(latent.shape) == (1, 16, HEIGHT // 8, WIDTH // 8)
    assert "SD3's latent format does not say" in caplog.text and "assuming 8x" in caplog.text


def test_a_vae_for_another_family_does_not_set_the_downscale(sampler, caplog):
    """A 4-channel VAE on an SD3 MODEL says nothing about SD3's latent: the 8x assumption stands (and
    decoding will say the VAE does not fit); on Flux.2, whose format is known to be 16x, that holds."""
    with caplog.at_level(logging.WARNING):
        latent = sampler.empty_latent(family_patcher("sd3"), WIDTH, HEIGHT, 1, family_vae("sd15"))
    assert tuple(latent.shape) == (1, 16, HEIGHT // 8, WIDTH // 8) and "assuming 8x" in caplog.text
    latent = sampler.empty_latent(family_patcher("flux2"), WIDTH, HEIGHT, 1, family_vae("sd15"))
    assert tuple(latent.shape) == (1, 128, HEIGHT // 16, WIDTH // 16)


@pytest.mark.parametrize("family", DECODED_FAMILIES)
def test_a_sampled_image_decodes_at_the_size_asked_and_shows_the_prompt(sampler, family):
    patcher, vae, clip = family_patcher(family), family_vae(family), FakeClip(family)
    width, height = asked_size(family)
    negative = sampler.encode_prompt(clip, "")
    samples, images = [], []
    with torch.inference_mode():
        for prompt in PROMPTS:
            samples.append(sampler.ksample(patcher, sampler.encode_prompt(clip, prompt), negative, 0, 2, 1.0, "euler",
                                           "simple", width, height, vae))
            images.append(sampler.decode(vae, samples[-1]))
    assert [tuple(image.shape) for image in images] == [(1, height, width, 3)] * 2
    assert all(image.isfinite().all() for image in images)
    assert not torch.equal(samples[0], samples[1]), "the prompt did not reach the sampled latent"


@pytest.mark.parametrize("family", DECODED_FAMILIES)
def test_train_loras_sample_images_render_every_family_at_the_size_asked(sampler, family):
    from lora_lab.nodes.train_progress import SampleImages
    from lora_lab.trainer_core.training.results import StepReport

    patcher, size = family_patcher(family), 272 if family == "pixart_sigma" else 64
    samples = SampleImages(every=1, prompts=list(PROMPTS), patcher=patcher, clip=FakeClip(family),
                           vae=family_vae(family), seed=0, steps=2, cfg=1.0, size=size,
                           networks=[patcher.model.diffusion_model])
    with torch.inference_mode():
        preview = samples(StepReport(step=1, total=1, loss=0.5, learning_rate=1e-4))
    assert samples.size_note is None and preview.size == (2 * size, size)
    assert tuple(samples.output().shape) == (2, size, size, 3)


@pytest.mark.parametrize("family", DECODED_FAMILIES)
def test_sweep_cells_render_every_family_at_the_size_asked(sampler, family):
    """One prompt at a time and all prompts in one sampler call (``batch_prompts``) give the same pictures;
    captions of different token lengths, whose masks cannot batch, fall back to one call each."""
    from lora_lab.nodes import grid_render

    width, height = asked_size(family)
    cells = [[grid_render.Cell((), prompt) for prompt in PROMPTS]]
    rendered = []
    for batch_prompts in (False, True):
        sampling = grid_render.Sampling("", 0, 2, 1.0, "euler", "simple", width, height, batch_prompts)
        with torch.inference_mode():
            rows = grid_render.render_cells(family_patcher(family), FakeClip(family), family_vae(family), {},
                                            cells, sampling, {})
        assert [image.shape for image in rows[0]] == [(height, width, 3)] * 2
        rendered.append(rows[0])
    for alone, batched in zip(*rendered, strict=True):
        assert abs(alone - batched).max() < 2 / 255  # a level of rounding at most (grid_render._render_batched)


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_models_sample_one_frame(sampler, family):
    patcher, clip = family_patcher(family), FakeClip(family)
    positive, negative = sampler.encode_prompt(clip, "a red square"), sampler.encode_prompt(clip, "")
    with torch.inference_mode():
        samples = sampler.ksample(patcher, positive, negative, 0, 2, 1.0, "euler", "simple", WIDE, TALL)
    channels, downscale = FAMILIES[family].latent[0], FAMILIES[family].downscale
    assert tuple(samples.shape) == (1, channels, 1, TALL // downscale, WIDE // downscale)
    assert samples.isfinite().all() and samples.any()


def test_hunyuan_image_samples_at_a_32nd_of_the_size(sampler):
    patcher, clip = family_patcher("hunyuan_image21"), FakeClip("hunyuan_image21")
    positive, negative = sampler.encode_prompt(clip, "a red square"), sampler.encode_prompt(clip, "")
    with torch.inference_mode():
        samples = sampler.ksample(patcher, positive, negative, 0, 2, 1.0, "euler", "simple", WIDE, TALL)
    assert tuple(samples.shape) == (1, 64, TALL // 32, WIDE // 32)
    assert samples.isfinite().all() and samples.any()


def test_a_sweep_size_flux2_cannot_make_is_drawn_at_the_nearest_and_the_report_says_so(sampler, capsys):
    """ComfyUI's own EmptyFlux2LatentImage cannot make 68x40 either (it steps by 16 and rounds down): the
    cells are drawn at the nearest size Flux.2 can make, said in the console and in the node's report."""
    from lora_lab.nodes import grid_render

    asked = grid_render.Sampling("", 0, 2, 1.0, "euler", "simple", 68, 40)
    sampling, note = grid_render.fit_cell_size(family_patcher("flux2"), family_vae("flux2"), asked)
    assert (sampling.width, sampling.height) == (64, 48)  # 68 -> 64, 40 -> 48 (not 32, ComfyUI's node's)
    assert note == ("width/height: this MODEL (Flux2) makes images in steps of 16 px, so 68x40 is drawn at "
                    "64x48, the nearest size it can make")
    assert f"[LoRA Lab] {note}" in capsys.readouterr().out
    with torch.inference_mode():
        rows = grid_render.render_cells(family_patcher("flux2"), FakeClip("flux2"), family_vae("flux2"), {},
                                        [[grid_render.Cell((), "a red square")]], sampling, {})
    assert rows[0][0].shape == (48, 64, 3)
    unchanged, none = grid_render.fit_cell_size(family_patcher("flux2"), family_vae("flux2"),
                                                grid_render.Sampling("", 0, 2, 1.0, "euler", "simple", 96, 48))
    assert (unchanged.width, unchanged.height, none) == (96, 48, None)


def test_the_sweep_nodes_report_the_size_they_drew(sampler, capsys, monkeypatch):
    """Through TestLoRAStrengthSweep's own execute: the report names the size drawn, the grid is that size."""
    from lora_lab.nodes import grid_render, strength_sweep

    monkeypatch.setattr(grid_render, "save_grid", lambda *a: {})
    patcher = family_patcher("flux2")
    inputs = dict(
        prompts="a red square", negative="", strengths="0", include_baseline=False,
        clip_strength_mode=strength_sweep.CLIP_MODES[0], clip_strength=1.0, seed=0, steps=1, cfg=1.0,
        sampler_name="euler", scheduler="simple", width=72, height=40, lora_name=grid_render.NO_FILE,
        lora=zero_lora(patcher, "double_blocks."),
    )
    with torch.inference_mode():  # as ComfyUI runs every node
        result = strength_sweep.TestLoRAStrengthSweep.execute(
            model=patcher, clip=FakeClip("flux2"), vae=family_vae("flux2"), **inputs)
    _, images, report, _ = result.result  # grid, cells, report, scores plot
    assert tuple(images.shape[1:3]) == (48, 80)  # 40 -> 48 (nearest step of 16), 72 -> 80
    assert "72x40 is drawn at 80x48" in report and "72x40 is drawn at 80x48" in capsys.readouterr().out


def test_train_loras_sample_images_at_a_size_flux2_cannot_make_come_at_the_nearest(sampler, capsys):
    from lora_lab.nodes.train_progress import SampleImages
    from lora_lab.trainer_core.training.results import StepReport

    patcher = family_patcher("flux2")
    samples = SampleImages(every=1, prompts=["a red square"], patcher=patcher, clip=FakeClip("flux2"),
                           vae=family_vae("flux2"), seed=0, steps=1, cfg=1.0, size=72,
                           networks=[patcher.model.diffusion_model])
    assert samples.size_note == ("TrainLoRA: sample images: this MODEL (Flux2) makes images in steps of 16 px, so "
                                 "72x72 is drawn at 80x80, the nearest size it can make")
    assert samples.size_note in capsys.readouterr().out
    with torch.inference_mode():
        samples(StepReport(step=1, total=1, loss=0.5, learning_rate=1e-4))
    assert tuple(samples.output().shape) == (1, 80, 80, 3)


def test_pixart_draws_small_sizes_at_the_nearest_it_can_make(sampler, capsys, monkeypatch):
    """ComfyUI's own sampler cannot draw PixArt at width + height under 528 px (its position embedding divides
    by round(mean latent side / 64) * 64, which is 0 there), nor at odd latent sides (it is made for whole 2x2
    patches). Sample images and sweep cells asked for less are drawn at the nearest size that works, keeping
    their shape, and say so."""
    import importlib

    from lora_lab.nodes import grid_render, strength_sweep
    from lora_lab.nodes.train_progress import SampleImages

    comfy_nodes = importlib.import_module("nodes")
    patcher, vae, clip = family_patcher("pixart_sigma"), family_vae("pixart_sigma"), FakeClip("pixart_sigma")
    positive, negative = sampler.encode_prompt(clip, "a red square"), sampler.encode_prompt(clip, "")
    for latent, error in (((32, 32), ZeroDivisionError), ((33, 33), RuntimeError)):  # 256x256, 264x264
        with torch.inference_mode(), pytest.raises(error):  # ComfyUI's own KSampler
            comfy_nodes.common_ksampler(patcher, 0, 1, 1.0, "euler", "simple", positive, negative,
                                        {"samples": torch.zeros(1, 4, *latent)})
    with torch.inference_mode():  # 272x256: width + height of 528 px, latent sides even
        assert tuple(sampler.ksample(patcher, positive, negative, 0, 1, 1.0, "euler", "simple", 272, 256).shape) == (
            1, 4, 32, 34)

    samples = SampleImages(every=1, prompts=["a red square"], patcher=patcher, clip=clip, vae=vae, seed=0, steps=1,
                           cfg=1.0, size=64, networks=[patcher.model.diffusion_model])
    assert samples.size_note == ("TrainLoRA: sample images: this MODEL (PixArt) makes images in steps of 16 px with "
                                 "width + height of 528 px or more, so 64x64 is drawn at 272x272, the nearest size it "
                                 "can make")
    assert (samples.width, samples.height) == (272, 272) and samples.size_note in capsys.readouterr().out

    with pytest.raises(ValueError, match=r"cannot draw 80x48: it needs width \+ height of 528 px or more"):
        grid_render.render_cells(patcher, clip, vae, {}, [[grid_render.Cell((), "a red square")]],
                                 grid_render.Sampling("", 0, 1, 1.0, "euler", "simple", WIDTH, HEIGHT), {})
    monkeypatch.setattr(grid_render, "save_grid", lambda *a: {})
    inputs = dict(prompts="a red square", negative="", strengths="0", include_baseline=False,
                  clip_strength_mode=strength_sweep.CLIP_MODES[0], clip_strength=1.0, seed=0, steps=1, cfg=1.0,
                  sampler_name="euler", scheduler="simple", width=WIDTH, height=HEIGHT, lora_name=grid_render.NO_FILE,
                  lora=zero_lora(patcher, "blocks.0."))
    with torch.inference_mode():
        _, images, report, _ = strength_sweep.TestLoRAStrengthSweep.execute(model=patcher, clip=clip, vae=vae,
                                                                         **inputs).result
    assert tuple(images.shape[1:3]) == (208, 336)  # 80x48 grown 4.125x (330x198), keeping its shape, to steps of 16
    assert "80x48 is drawn at 336x208" in report

"""Sample images and sweep cells start from the empty latent each family's own empty-latent node makes.

Built at the MODEL level with ComfyUI's own model classes and tiny configs, in this process: the latent
LoRA Lab samples from is compared with what the family's node (``EmptyLatentImage``,
``EmptySD3LatentImage``, ``EmptyFlux2LatentImage``, ``EmptyHunyuanLatentVideo`` with one frame) returns
for the same width and height, and sampled images decode at the size asked.
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

ALL_FAMILIES = ["sd15", "sdxl", "sd3", "flux", "flux2", "wan21", "wan22_14b", "wan22_5b", "hunyuan_video",
                "hunyuan_image21", "cosmos_predict2"]
IMAGE_FAMILIES = ["sd15", "sdxl", "sd3", "flux", "flux2"]


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


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_a_sampled_image_decodes_at_the_size_asked(sampler, family):
    patcher, vae, clip = family_patcher(family), family_vae(family), FakeClip(family)
    positive, negative = sampler.encode_prompt(clip, "a red square"), sampler.encode_prompt(clip, "")
    with torch.inference_mode():
        samples = sampler.ksample(patcher, positive, negative, 0, 2, 1.0, "euler", "simple", WIDTH, HEIGHT, vae)
        image = sampler.decode(vae, samples)
    assert tuple(image.shape) == (1, HEIGHT, WIDTH, 3)


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


def test_train_loras_sample_images_render_flux2_at_the_size_asked(sampler):
    from lora_lab.nodes.train_progress import SampleImages
    from lora_lab.trainer_core.training.results import StepReport

    patcher = family_patcher("flux2")
    samples = SampleImages(every=1, prompts=["a red square", "a blue circle"], patcher=patcher,
                           clip=FakeClip("flux2"), vae=family_vae("flux2"), seed=0, steps=2, cfg=1.0, size=64,
                           networks=[patcher.model.diffusion_model])
    with torch.inference_mode():
        preview = samples(StepReport(step=1, total=1, loss=0.5, learning_rate=1e-4))
    assert preview.size == (128, 64)
    assert tuple(samples.output().shape) == (2, 64, 64, 3)


def test_sweep_cells_render_flux2_at_the_size_asked(sampler):
    from lora_lab.nodes import grid_render

    cells = [[grid_render.Cell((), "a red square"), grid_render.Cell((), "a blue circle")]]
    for batch_prompts in (False, True):
        sampling = grid_render.Sampling("", 0, 2, 1.0, "euler", "simple", WIDTH, HEIGHT, batch_prompts)
        with torch.inference_mode():
            rows = grid_render.render_cells(family_patcher("flux2"), FakeClip("flux2"), family_vae("flux2"), {},
                                            cells, sampling, {})
        assert [image.shape for image in rows[0]] == [(HEIGHT, WIDTH, 3)] * 2


def test_a_sweep_size_flux2_cannot_make_is_refused_with_the_sizes_it_can(sampler):
    from lora_lab.nodes import grid_render

    sampling = grid_render.Sampling("", 0, 2, 1.0, "euler", "simple", 520, 512)
    with pytest.raises(ValueError, match=r"\(Flux2\) makes images in steps of 16 px, and 520x512 .* use 512x512"):
        grid_render.render_cells(family_patcher("flux2"), FakeClip("flux2"), family_vae("flux2"), {},
                                 [[grid_render.Cell((), "a red square")]], sampling, {})

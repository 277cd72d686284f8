"""Sample images and sweep cells start from the empty latent each family's own empty-latent node makes.

Built at the MODEL level with ComfyUI's own model classes and tiny configs, in this process: the latent
LoRA Lab samples from is compared with what the family's node (``EmptyLatentImage``,
``EmptySD3LatentImage``, ``EmptyFlux2LatentImage``, ``EmptyHunyuanLatentVideo`` with one frame) returns
for the same width and height, and sampled images decode at the size asked.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack, tiny_model_patcher  # noqa: E402

pytestmark = pytest.mark.comfy

WIDTH, HEIGHT = 80, 48  # multiples of 16, not square: a swapped axis shows

TINY_CONFIGS = {  # ComfyUI's supported_models class and a tiny config of its network
    "sd15": ("SD15", dict(
        model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[0, 1],
        transformer_depth_output=[0, 0, 1, 1], transformer_depth_middle=-2, num_head_channels=16, num_heads=-1,
        in_channels=4, out_channels=4, use_spatial_transformer=True, legacy=False, image_size=32,
        use_checkpoint=False, use_temporal_resblock=False)),
    "sd3": ("SD3", dict(
        in_channels=16, out_channels=16, patch_size=2, depth=1, input_size=None, adm_in_channels=2048,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64}},
        pos_embed_max_size=32, num_patches=1024)),
    "flux2": ("Flux2", dict(
        in_channels=128, out_channels=128, hidden_size=64, num_heads=2, axes_dim=[8, 8, 8, 8], depth=1,
        depth_single_blocks=1, context_in_dim=64, mlp_ratio=3.0, theta=2000, global_modulation=True,
        vec_in_dim=None, mlp_silu_act=True, qkv_bias=False, ops_bias=False, default_ref_method="index",
        ref_index_scale=10.0, patch_size=1, guidance_embed=True)),
    "wan21": ("WAN21_T2V", dict(
        image_model="wan2.1", dim=64, out_dim=16, num_heads=2, ffn_dim=128, num_layers=1, patch_size=(1, 2, 2),
        freq_dim=256, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6, in_dim=16,
        model_type="t2v", text_dim=4096)),
    "hunyuan_video": ("HunyuanVideo", dict(
        image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2], vec_in_dim=768,
        axes_dim=[8, 12, 12], meanflow=False, context_in_dim=4096, hidden_size=64, mlp_ratio=4.0, num_heads=2,
        depth=1, depth_single_blocks=1, theta=256, qkv_bias=True, byt5=False, guidance_embed=True,
        use_cond_type_embedding=False, vision_in_dim=None)),
}

CONDITIONING = {  # text-encoder outputs shaped like the real encoders' (None: the encoder gives no pooled output)
    "sd15": ((77, 768), None),
    "sdxl": ((77, 2048), (1280,)),
    "sd3": ((77, 4096), (2048,)),
    "flux": ((16, 4096), (768,)),
    "flux2": ((16, 64), None),
    "wan21": ((16, 4096), None),
    "hunyuan_video": ((16, 4096), (768,)),
}


def family_patcher(family: str):
    """A ModelPatcher over ComfyUI's own model class for ``family``, tiny and seeded."""
    if family in ("sdxl", "flux"):
        return tiny_model_patcher(family)
    import comfy.model_patcher
    import comfy.supported_models

    class_name, tiny = TINY_CONFIGS[family]
    model_class = getattr(comfy.supported_models, class_name)
    config = dict(model_class.unet_config)
    config.update(tiny)
    model_config = model_class(config)
    model_config.set_inference_dtype(torch.float32, None)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        model = model_config.get_model({})
        for name, param in model.diffusion_model.named_parameters():  # ComfyUI's ops leave them unset
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 / param[0].numel() ** 0.5))
            else:
                param.copy_(torch.zeros(param.shape) if "bias" in name else torch.ones(param.shape))
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


@functools.cache
def family_vae(family: str):
    """The VAE a workflow of ``family`` decodes with: ComfyUI's TAESD layout with the family's latent
    channels, and for Flux.2 its own VAE (the 2x2-packed 128-channel, 16x one, as ComfyUI detects it).
    None for the video families (their VAEs are too large to build here)."""
    import comfy.sd

    if family in ("wan21", "hunyuan_video"):
        return None
    if family == "flux2":
        vae = comfy.sd.VAE(sd={
            "decoder.conv_in.weight": torch.zeros(512, 32, 3, 3), "decoder.up.3.upsample.conv.weight": torch.zeros(512, 512, 3, 3),
            "post_quant_conv.weight": torch.zeros(32, 32, 1, 1), "bn.running_mean": torch.zeros(128),
            "bn.running_var": torch.ones(128),
        })
    else:
        channels = 16 if family in ("sd3", "flux") else 4
        vae = comfy.sd.VAE(sd={"taesd_decoder.1.weight": torch.zeros(64, channels, 3, 3)})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in vae.first_stage_model.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 / param[0].numel() ** 0.5))
            else:
                param.copy_(torch.zeros(param.shape) if "bias" in name else torch.ones(param.shape))
    return vae


def family_node_latent(family: str, width: int, height: int) -> torch.Tensor:
    """What the family's own empty-latent node returns for one image (one frame for video models)."""
    import importlib

    if family in ("sd15", "sdxl"):
        comfy_nodes = importlib.import_module("nodes")
        return comfy_nodes.EmptyLatentImage().generate(width, height, 1)[0]["samples"]
    if family in ("sd3", "flux"):  # Flux's workflows use the SD3 node (16 channels, 8x)
        node = importlib.import_module("comfy_extras.nodes_sd3").EmptySD3LatentImage
        return node.execute(width=width, height=height, batch_size=1).result[0]["samples"]
    if family == "flux2":
        node = importlib.import_module("comfy_extras.nodes_flux").EmptyFlux2LatentImage
        return node.execute(width=width, height=height, batch_size=1).result[0]["samples"]
    node = importlib.import_module("comfy_extras.nodes_hunyuan").EmptyHunyuanLatentVideo  # Wan's too
    return node.execute(width=width, height=height, length=1, batch_size=1).result[0]["samples"]


class FakeClip:
    """Encodes every prompt to seeded noise shaped like ``family``'s real text encoders' output."""

    def __init__(self, family: str):
        self.cross_attn, self.pooled = CONDITIONING[family]

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        generator = torch.Generator().manual_seed(sum(map(ord, text)))
        cond = torch.randn((1, *self.cross_attn), generator=generator)
        pooled = None if self.pooled is None else torch.randn((1, *self.pooled), generator=generator)
        return [[cond, {"pooled_output": pooled}]]


ALL_FAMILIES = ["sd15", "sdxl", "sd3", "flux", "flux2", "wan21", "hunyuan_video"]
IMAGE_FAMILIES = ["sd15", "sdxl", "sd3", "flux", "flux2"]


@pytest.fixture(scope="module")
def bridge():
    load_pack()
    from lora_lab.nodes import bridge

    return bridge


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_empty_latent_is_the_one_the_familys_own_node_makes(bridge, family):
    expected = family_node_latent(family, WIDTH, HEIGHT)
    latent = bridge.empty_latent(family_patcher(family), WIDTH, HEIGHT, 1, family_vae(family))
    assert latent.shape == expected.shape and latent.dtype == expected.dtype and latent.device == expected.device
    assert not latent.any()


def test_flux2_latents_are_16x_smaller_with_128_channels(bridge):
    latent = bridge.empty_latent(family_patcher("flux2"), 512, 256, 2, family_vae("flux2"))
    assert tuple(latent.shape) == (2, 128, 16, 32)


def test_a_format_that_names_its_downscale_is_believed_over_the_vae(bridge):
    """Newer ComfyUI formats carry ``spacial_downscale_ratio``: no VAE is needed then."""
    patcher = family_patcher("flux2")
    latent_format = patcher.get_model_object("latent_format")
    latent_format.spacial_downscale_ratio = 16
    try:
        assert tuple(bridge.empty_latent(patcher, WIDTH, HEIGHT).shape) == (1, 128, HEIGHT // 16, WIDTH // 16)
    finally:
        del latent_format.spacial_downscale_ratio


def test_without_a_word_on_the_downscale_it_assumes_8x_and_says_so(bridge, caplog):
    with caplog.at_level(logging.WARNING):
        latent = bridge.empty_latent(family_patcher("sd3"), WIDTH, HEIGHT)
    assert tuple(latent.shape) == (1, 16, HEIGHT // 8, WIDTH // 8)
    assert "SD3's latent format does not say" in caplog.text and "assuming 8x" in caplog.text


def test_a_vae_for_another_family_does_not_set_the_downscale(bridge):
    """A 4-channel VAE on a Flux.2 MODEL says nothing about Flux.2's latent: the 8x assumption stands
    (and decoding will say the VAE does not fit), never a latent shaped for the wrong family."""
    latent = bridge.empty_latent(family_patcher("flux2"), WIDTH, HEIGHT, 1, family_vae("sd15"))
    assert tuple(latent.shape) == (1, 128, HEIGHT // 8, WIDTH // 8)


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_a_sampled_image_decodes_at_the_size_asked(bridge, family):
    patcher, vae, clip = family_patcher(family), family_vae(family), FakeClip(family)
    positive, negative = bridge.encode_prompt(clip, "a red square"), bridge.encode_prompt(clip, "")
    with torch.inference_mode():
        samples = bridge.ksample(patcher, positive, negative, 0, 2, 1.0, "euler", "simple", WIDTH, HEIGHT, vae)
        image = bridge.decode(vae, samples)
    assert tuple(image.shape) == (1, HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("family", ["wan21", "hunyuan_video"])
def test_video_models_sample_one_frame(bridge, family):
    patcher, clip = family_patcher(family), FakeClip(family)
    positive, negative = bridge.encode_prompt(clip, "a red square"), bridge.encode_prompt(clip, "")
    with torch.inference_mode():
        samples = bridge.ksample(patcher, positive, negative, 0, 2, 1.0, "euler", "simple", WIDTH, HEIGHT)
    assert tuple(samples.shape) == (1, 16, 1, HEIGHT // 8, WIDTH // 8)


def test_train_loras_sample_images_render_flux2_at_the_size_asked(bridge):
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


def test_sweep_cells_render_flux2_at_the_size_asked(bridge):
    from lora_lab.nodes import grid_render

    cells = [[grid_render.Cell((), "a red square"), grid_render.Cell((), "a blue circle")]]
    for batch_prompts in (False, True):
        sampling = grid_render.Sampling("", 0, 2, 1.0, "euler", "simple", WIDTH, HEIGHT, batch_prompts)
        with torch.inference_mode():
            rows = grid_render.render_cells(family_patcher("flux2"), FakeClip("flux2"), family_vae("flux2"), {},
                                            cells, sampling, {})
        assert [image.shape for image in rows[0]] == [(HEIGHT, WIDTH, 3)] * 2

"""Tiny models of several families built from ComfyUI's own model classes, their VAEs, their own
empty-latent nodes and conditioning shaped like their text encoders', for tests at the MODEL level.

Every family but SD1.5 comes from the family matrix's table (``tiny_families``) through
``comfy_inproc.tiny_model_patcher``; SD1.5's tiny config is here.
"""

from __future__ import annotations

import functools

import torch
from comfy_inproc import tiny_model_patcher
from tiny_families import FAMILIES, I2V_FAMILIES

# SD1.5 is trained through the canvas, not in the family matrix: its tiny config lives here.
SD15_TINY = (
    "SD15",
    dict(
        model_channels=32,
        channel_mult=[1, 2],
        num_res_blocks=[1, 1],
        transformer_depth=[0, 1],
        transformer_depth_output=[0, 0, 1, 1],
        transformer_depth_middle=-2,
        num_head_channels=16,
        num_heads=-1,
        in_channels=4,
        out_channels=4,
        use_spatial_transformer=True,
        legacy=False,
        image_size=32,
        use_checkpoint=False,
        use_temporal_resblock=False,
    ),
)

# Families whose latent has a frame axis (image mode = one frame).
VIDEO_FAMILIES = ("wan21", "wan22_14b", "wan22_5b", "hunyuan_video", "cosmos_predict2")
# Families whose VAE is Wan 2.1's (3-D causal, 16 channels, 8x): Qwen-Image's VAE is Wan 2.1's too.
WAN21_VAE_FAMILIES = ("qwen_image", "wan21", "wan22_14b", "cosmos_predict2")


def text_shapes(family: str) -> dict[str, tuple]:
    """Per-caption shapes (without the batch axis; "T" = the caption's token count) of what the family's real
    text encoders return, from the family matrix's table (``tiny_families.FAMILIES``); SD1.5's CLIP-L gives
    77 x 768 and no pooled output its model uses."""
    return {"cross_attn": (77, 768)} if family == "sd15" else dict(FAMILIES[family].text)


def family_patcher(family: str):
    """A ModelPatcher over ComfyUI's own model class for ``family``, tiny and seeded."""
    if family in FAMILIES or family in I2V_FAMILIES:
        return tiny_model_patcher(family)
    import comfy.model_patcher
    import comfy.supported_models

    class_name, tiny = SD15_TINY
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
def wan22_vae():
    """Wan 2.2's own VAE (48 channels, 16x in space, 4x in time), seeded: ComfyUI 0.3.75 builds it only at its
    real size (705 M parameters, 2.8 GB in fp32, about 10 s to fill here), and its tiny TAEHV cannot encode."""
    import comfy.sd

    vae = comfy.sd.VAE(sd={"decoder.middle.0.residual.0.gamma": torch.ones(1024, 1, 1, 1),
                           "decoder.upsamples.0.upsamples.0.residual.2.weight": torch.zeros(1024, 1024, 3, 3, 3)})
    _fill(vae.first_stage_model)
    return vae


def _fill(module) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 / param[0].numel() ** 0.5))
            else:
                param.copy_(torch.zeros(param.shape) if "bias" in name else torch.ones(param.shape))


@functools.cache
def family_vae(family: str):
    """The VAE a workflow of ``family`` decodes with, tiny and seeded, as ComfyUI detects it from a state
    dict: Wan 2.1's (3-D causal, 16 channels; Qwen-Image's too) with its width cut to 8, Flux.2's own
    (2x2-packed, 128 channels, 16x), ComfyUI's tiny video VAEs (TAEHV) for Wan 2.2 5B (48 channels, 16x) and
    HunyuanVideo, HunyuanImage 2.1's own at its real size (ComfyUI fixes its widths), else ComfyUI's TAESD
    layout with the family's latent channels (4 or 16)."""
    import comfy.sd

    if family == "hunyuan_image21":  # its real size (ComfyUI fixes the widths): 406 M parameters, 1.6 GB
        vae = comfy.sd.VAE(sd={"decoder.conv_in.weight": torch.zeros(1024, 64, 3, 3)})
    elif family in ("wan22_5b", "hunyuan_video"):  # decoder.1 reads the latent; fp16 marks HunyuanVideo's scaling
        channels, out, dtype = (48, 12, torch.float32) if family == "wan22_5b" else (16, 3, torch.float16)
        vae = comfy.sd.VAE(sd={"decoder.1.weight": torch.zeros(256, channels, 3, 3, dtype=dtype),
                               "decoder.22.bias": torch.zeros(out)})
    elif family in WAN21_VAE_FAMILIES:  # ComfyUI reads the width from decoder.head.0.gamma
        vae = comfy.sd.VAE(sd={"decoder.middle.0.residual.0.gamma": torch.ones(32, 1, 1, 1),
                               "decoder.head.0.gamma": torch.ones(8, 1, 1, 1)})
    elif family == "flux2":
        vae = comfy.sd.VAE(
            sd={
                "decoder.conv_in.weight": torch.zeros(512, 32, 3, 3),
                "decoder.up.3.upsample.conv.weight": torch.zeros(512, 512, 3, 3),
                "post_quant_conv.weight": torch.zeros(32, 32, 1, 1),
                "bn.running_mean": torch.zeros(128),
                "bn.running_var": torch.ones(128),
            }
        )
    else:
        channels = 4 if family == "sd15" else FAMILIES[family].latent[0]
        vae = comfy.sd.VAE(sd={"taesd_decoder.1.weight": torch.zeros(64, channels, 3, 3)})
    _fill(vae.first_stage_model)
    return vae


def family_node_latent(family: str, width: int, height: int) -> torch.Tensor:
    """What the family's own empty-latent node returns for one image (one frame for video models)."""
    import importlib

    if family in ("sd15", "sd2_v", "sdxl", "auraflow", "pixart_sigma", "hunyuan_dit"):  # 4-channel VAEs
        comfy_nodes = importlib.import_module("nodes")
        return comfy_nodes.EmptyLatentImage().generate(width, height, 1)[0]["samples"]
    # Flux's, Chroma's, Lumina 2's, Z-Image's, Qwen-Image's and HiDream's workflows use the SD3 node (16 channels, 8x)
    if family in ("sd3", "flux", "flux_schnell", "chroma", "lumina2", "z_image", "hidream"):
        node = importlib.import_module("comfy_extras.nodes_sd3").EmptySD3LatentImage
        return node.execute(width=width, height=height, batch_size=1).result[0]["samples"]
    if family == "flux2":
        node = importlib.import_module("comfy_extras.nodes_flux").EmptyFlux2LatentImage
        return node.execute(width=width, height=height, batch_size=1).result[0]["samples"]
    if family == "wan22_5b":  # the 5B's own latent node (its VAE input is read only for a start image)
        node = importlib.import_module("comfy_extras.nodes_wan").Wan22ImageToVideoLatent
        return node.execute(vae=None, width=width, height=height, length=1, batch_size=1).result[0]["samples"]
    if family == "hunyuan_image21":
        node = importlib.import_module("comfy_extras.nodes_hunyuan").EmptyHunyuanImageLatent
        return node.execute(width=width, height=height, batch_size=1).result[0]["samples"]
    # Wan 2.1 / 2.2 14B's too; Cosmos Predict2's and Qwen-Image's workflows use EmptySD3LatentImage, which
    # ComfyUI widens to this (one frame) for their 3-D latent format (Qwen-Image's is Wan 2.1's).
    node = importlib.import_module("comfy_extras.nodes_hunyuan").EmptyHunyuanLatentVideo
    return node.execute(width=width, height=height, length=1, batch_size=1).result[0]["samples"]


class FakeClip:
    """Encodes every prompt to seeded noise shaped like ``family``'s real text encoders' CONDITIONING: the
    tensor and every extra entry the family's model reads (pooled output, attention masks, Llama or mT5
    features). A caption has as many tokens as words + 2 (start and end), unless the family's encoder pads
    to a fixed length; attention masks are ComfyUI's (int64, 1 over the caption's own tokens)."""

    cond_stage_model = torch.nn.Module()  # no text-encoder layers for a LoRA to match
    layer_idx = None  # a CLIP's last layer as loaded (no CLIPSetLastLayer)

    def __init__(self, family: str):
        self.shapes = text_shapes(family)
        self.fixed_tokens = 77 if family == "sd15" else FAMILIES[family].fixed_tokens

    def tokenize(self, text):
        return text

    def clone(self):  # what ComfyUI's LoRA loader patches: there are no text-encoder layers to patch
        return self

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        return []

    def encode_from_tokens_scheduled(self, text):
        generator = torch.Generator().manual_seed(sum(map(ord, text)))
        used = len(text.split()) + 2
        encoded = {}
        for key, shape in self.shapes.items():
            shape = tuple((self.fixed_tokens or used) if size == "T" else size for size in shape)
            if key.startswith("attention_mask"):
                encoded[key] = (torch.arange(shape[-1]) < used).long().expand(1, *shape).clone()
            else:
                encoded[key] = torch.randn((1, *shape), generator=generator)
        cond = encoded.pop("cross_attn")
        encoded.setdefault("pooled_output", None)  # ComfyUI's encoders give one, None where they have none
        return [[cond, encoded]]

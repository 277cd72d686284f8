"""Tiny models of several families built from ComfyUI's own model classes, their VAEs, their own
empty-latent nodes and conditioning shaped like their text encoders', for tests at the MODEL level.

SDXL and Flux come from ``comfy_inproc.tiny_model_patcher``; the rest are configs small enough to build in
well under a second on a CPU.
"""

from __future__ import annotations

import functools

import torch
from comfy_inproc import tiny_model_patcher

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

"""The family matrix's one table: per image-model family ComfyUI loads, a tiny config for ComfyUI's own
``comfy.supported_models`` class and conditioning shaped like that family's real text encoders.

Each config is ComfyUI's ``unet_config`` for the family (what ``comfy/model_detection.py`` reads from
a checkpoint) with the sizes cut down; the keys detection fixes by family (axes, theta, flags) are kept.
Conditioning keys and widths are the ones each ``model_base`` class's ``extra_conds`` reads, as the
family's text encoder returns them (``cross_attn`` = CONDITIONING's tensor; the rest its dict).
Token counts vary with the caption (``tokens``: None = the encoder pads to a fixed length).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str
    model_class: str  # in comfy.supported_models
    config: dict[str, Any]
    text: dict[str, tuple[int, ...]]  # key -> per-caption shape without the batch axis; "T" = token count
    latent: tuple[int, ...]  # latent shape without the batch axis, for 64 px images
    prediction: str  # what the bridge must report: eps, v, flow, flow_cosmos
    downscale: int = 8
    fixed_tokens: int | None = None  # the encoder pads every caption to this many tokens
    masked: bool = False  # the encoder also returns an attention mask over its tokens
    model_state: dict[str, Any] = field(default_factory=dict)  # what get_model() reads from a checkpoint
    loaded_buffers: tuple[str, ...] = ()  # buffers a checkpoint fills (ComfyUI leaves them uninitialised)


SDXL_TINY = dict(
    model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[0, 1],
    transformer_depth_output=[0, 0, 1, 1], transformer_depth_middle=-2, num_head_channels=16, num_heads=-1,
    context_dim=2048, adm_in_channels=2816, in_channels=4, out_channels=4, use_linear_in_transformer=True,
    use_spatial_transformer=True, legacy=False, num_classes="sequential", image_size=32, use_checkpoint=False,
    use_temporal_resblock=False, use_temporal_attention=False,
)
SD2_TINY = dict(SDXL_TINY, context_dim=1024, adm_in_channels=None, num_classes=None, num_head_channels=16)

FLUX_TINY = dict(
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=64,
    mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000, patch_size=2,
    qkv_bias=True, guidance_embed=True,
)

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("sdxl", "SDXL", SDXL_TINY, {"cross_attn": (77, 2048), "pooled_output": (1280,)}, (4, 8, 8), "eps",
           fixed_tokens=77),
    # SD2.x 768-v: ComfyUI tells v from eps by the spread of one norm bias in the checkpoint.
    Family("sd2_v", "SD20", SD2_TINY, {"cross_attn": (77, 1024)}, (4, 8, 8), "v", fixed_tokens=77,
           model_state={"output_blocks.11.1.transformer_blocks.0.norm1.bias": "spread"}),
    Family("sd3", "SD3", dict(
        in_channels=16, out_channels=16, patch_size=2, depth=1, num_patches=64, pos_embed_max_size=8,
        adm_in_channels=2048, context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64}},
        pos_embed_scaling_factor=None, qk_norm="rms", x_block_self_attn_layers=[], input_size=None,
    ), {"cross_attn": (154, 4096), "pooled_output": (2048,)}, (16, 8, 8), "flow", fixed_tokens=154,
       loaded_buffers=("pos_embed",)),
    Family("flux", "Flux", FLUX_TINY, {"cross_attn": ("T", 4096), "pooled_output": (768,)}, (16, 8, 8), "flow"),
    Family("flux_schnell", "FluxSchnell", dict(FLUX_TINY, guidance_embed=False),
           {"cross_attn": ("T", 4096), "pooled_output": (768,)}, (16, 8, 8), "flow"),
    Family("flux2", "Flux2", dict(
        image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=15360, hidden_size=64,
        mlp_ratio=3.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 8, 8, 8], theta=2000, patch_size=1,
        qkv_bias=False, guidance_embed=True, global_modulation=True, mlp_silu_act=True, ops_bias=False,
        default_ref_method="index", ref_index_scale=10.0,
    ), {"cross_attn": ("T", 15360)}, (128, 4, 4), "flow", downscale=16),
    Family("chroma", "Chroma", dict(
        image_model="chroma", in_channels=64, out_channels=64, context_in_dim=4096, hidden_size=64, mlp_ratio=4.0,
        num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000, patch_size=2, qkv_bias=True,
        in_dim=64, out_dim=64, hidden_dim=32, n_layers=1,
    ), {"cross_attn": ("T", 4096)}, (16, 8, 8), "flow"),
    Family("lumina2", "Lumina2", dict(
        image_model="lumina2", patch_size=2, in_channels=16, dim=64, cap_feat_dim=2304, n_layers=1, n_refiner_layers=1,
        n_heads=2, n_kv_heads=1, axes_dims=[8, 12, 12], axes_lens=[300, 512, 512], rope_theta=10000.0, qk_norm=True,
        ffn_dim_multiplier=4.0,
    ), {"cross_attn": ("T", 2304), "attention_mask": ("T",)}, (16, 8, 8), "flow", masked=True),
    Family("z_image", "ZImage", dict(
        # Z-Image's modulation is 256 wide: dim cannot be smaller.
        image_model="lumina2", patch_size=2, in_channels=16, dim=256, cap_feat_dim=2560, n_layers=1, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0, qk_norm=True,
        ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32,
    ), {"cross_attn": ("T", 2560), "attention_mask": ("T",)}, (16, 8, 8), "flow", masked=True),
    Family("qwen_image", "QwenImage", dict(
        image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=1, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=3584, axes_dims_rope=[8, 12, 12],
    ), {"cross_attn": ("T", 3584)}, (16, 1, 8, 8), "flow"),
    Family("hidream", "HiDream", dict(
        image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1,
        attention_head_dim=32, num_attention_heads=2, caption_channels=[4096, 4096], text_emb_dim=2048,
        num_routed_experts=2, num_activated_experts=1, axes_dims_rope=[16, 8, 8], max_resolution=[128, 128],
        llama_layers=[1, 3],  # one Llama layer per block; the real encoder stacks 32 (4 here)
    ), {"cross_attn": ("T", 4096), "conditioning_llama3": (4, "T", 4096), "pooled_output": (2048,)}, (16, 8, 8), "flow"),
    Family("auraflow", "AuraFlow", dict(
        in_channels=4, out_channels=4, patch_size=2, dim=64, n_layers=2, n_double_layers=1, n_heads=2,
        global_conddim=64, cond_seq_dim=2048, max_seq=64,
    ), {"cross_attn": ("T", 2048)}, (4, 8, 8), "flow"),
    Family("pixart_sigma", "PixArtSigma", dict(
        image_model="pixart_sigma", patch_size=2, in_channels=4, hidden_size=64, depth=1, num_heads=2,
        caption_channels=4096, model_max_length=300, input_size=64, pe_interpolation=0.5, micro_condition=False,
        learn_sigma=True, pred_sigma=True,
    ), {"cross_attn": ("T", 4096)}, (4, 64, 64), "eps",  # its position embedding needs 512 px or more
       loaded_buffers=("y_embedder.y_embedding",)),
    Family("hunyuan_dit", "HunyuanDiT1", dict(
        image_model="hydit1", input_size=[8, 8], patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=2,
        text_states_dim=1024, text_states_dim_t5=2048, text_len=77, text_len_t5=256, size_cond=False,
        use_style_cond=False, learn_sigma=True,
    ), {"cross_attn": (77, 1024), "attention_mask": (77,), "conditioning_mt5xl": (256, 2048),
        "attention_mask_mt5xl": (256,)}, (4, 8, 8), "v", fixed_tokens=77),
    Family("cosmos_predict2", "CosmosT2IPredict2", dict(
        image_model="cosmos_predict2", max_img_h=16, max_img_w=16, max_frames=4, in_channels=16, out_channels=16,
        patch_spatial=2, patch_temporal=1, concat_padding_mask=True, model_channels=64, num_blocks=1, num_heads=2,
        crossattn_emb_channels=1024, pos_emb_cls="rope3d", pos_emb_learnable=True, pos_emb_interpolation="crop",
        use_adaln_lora=True, adaln_lora_dim=16, rope_enable_fps_modulation=False,
    ), {"cross_attn": ("T", 1024)}, (16, 1, 8, 8), "flow_cosmos"),
    Family("wan21", "WAN21_T2V", dict(
        image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=64, ffn_dim=128,
        freq_dim=32, text_dim=4096, out_dim=16, num_heads=2, num_layers=1, window_size=(-1, -1), qk_norm=True,
        cross_attn_norm=True, eps=1e-6,
    ), {"cross_attn": ("T", 4096)}, (16, 1, 8, 8), "flow"),
    # Wan 2.2 14B T2V (the high- and low-noise experts alike) is Wan 2.1's architecture and latent: ComfyUI
    # detects it as WAN21_T2V. The config follows the 14B's proportions (ffn = 2.7 x dim, 40 layers -> 2).
    Family("wan22_14b", "WAN21_T2V", dict(
        image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=64, ffn_dim=176,
        freq_dim=32, text_dim=4096, out_dim=16, num_heads=2, num_layers=2, window_size=(-1, -1), qk_norm=True,
        cross_attn_norm=True, eps=1e-6,
    ), {"cross_attn": ("T", 4096)}, (16, 1, 8, 8), "flow"),
    # Wan 2.2 5B TI2V: 48-channel latents at 1/16 of the size (its own VAE); text-to-image = one frame.
    Family("wan22_5b", "WAN22_T2V", dict(
        image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=48, dim=64, ffn_dim=128,
        freq_dim=32, text_dim=4096, out_dim=48, num_heads=2, num_layers=1, window_size=(-1, -1), qk_norm=True,
        cross_attn_norm=True, eps=1e-6,
    ), {"cross_attn": ("T", 4096)}, (48, 1, 4, 4), "flow", downscale=16),
    # HunyuanImage 2.1: HunyuanVideo's network on 2-D 64-channel latents at 1/32 of the size, patch 1,
    # Qwen2.5-VL's 3584-wide features with their attention mask, no pooled vector; the ByT5 glyph input is
    # there (byt5_in) and used only for quoted text, which these captions have none of.
    Family("hunyuan_image21", "HunyuanImage21", dict(
        image_model="hunyuan_video", in_channels=64, out_channels=64, patch_size=[1, 1], vec_in_dim=None,
        context_in_dim=3584, hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1,
        axes_dim=[16, 16], theta=256, qkv_bias=True, guidance_embed=False, byt5=True, meanflow=False,
        use_cond_type_embedding=False, vision_in_dim=None,
    ), {"cross_attn": ("T", 3584), "attention_mask": ("T",)}, (64, 2, 2), "flow", downscale=32, masked=True),
    Family("hunyuan_video", "HunyuanVideo", dict(
        image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2], vec_in_dim=768,
        context_in_dim=4096, hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1,
        axes_dim=[8, 12, 12], theta=256, qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False,
        use_cond_type_embedding=False, vision_in_dim=None,
    ), {"cross_attn": ("T", 4096), "pooled_output": (768,)}, (16, 1, 8, 8), "flow"),
]}


# Image-to-video Wan, at the MODEL level only (not in the family matrix): Wan 2.1's tiny config with the I2V
# input (16 noise + 4 mask + 16 start-image channels). Wan 2.1 I2V (WAN21_I2V) also has the image embedding
# that reads CLIP vision's 1280-wide features; Wan 2.2 I2V 14B has none and ComfyUI detects it as WAN21_T2V.
I2V_FAMILIES = {
    "wan21_i2v": Family("wan21_i2v", "WAN21_I2V", dict(FAMILIES["wan21"].config, model_type="i2v", in_dim=36),
                        FAMILIES["wan21"].text, (16, 1, 8, 8), "flow"),
    "wan22_i2v": Family("wan22_i2v", "WAN21_T2V", dict(FAMILIES["wan22_14b"].config, in_dim=36),
                        FAMILIES["wan22_14b"].text, (16, 1, 8, 8), "flow"),
}

"""The key names a family's LoRA file carries (``nodes/key_formats.py``) are ones diffusers reads, for every
family whose diffusers pipeline has a LoRA loader.

Each file is made as Train LoRA makes it (peft adapters on ComfyUI's own model class for the family, exported
through the family's key namer), then goes through that pipeline's own ``lora_state_dict`` conversion and
``load_lora_into_unet`` / ``load_lora_into_transformer`` into a diffusers model of the family built from a
config. Neither model's base weights are ever written (ComfyUI's on the meta device, diffusers' in unwritten
memory): only the LoRA tensors are real, so families whose diffusers
conversion splits fused layers at the real widths (Flux, Chroma, Lumina 2, HunyuanVideo) are built at those
widths with one block of each kind.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack  # noqa: E402
from family_models import SD15_TINY  # noqa: E402
from tiny_families import FAMILIES  # noqa: E402

pytestmark = pytest.mark.comfy

RANK, ALPHA = 4, 2.0

FLUX_REAL_WIDTH = dict(hidden_size=3072, num_heads=24, axes_dim=[16, 56, 56])
# The matrix's ComfyUI configs at other widths: the ones diffusers' conversions split fused layers at, and for
# Z-Image one where ComfyUI's and diffusers' rounding of the feed-forward width agree (as at the real 3840).
WIDTHS = {
    "flux": FLUX_REAL_WIDTH,
    "flux_schnell": FLUX_REAL_WIDTH,
    "chroma": FLUX_REAL_WIDTH,
    "lumina2": dict(dim=2304, n_heads=24, n_kv_heads=8, cap_feat_dim=2304, axes_dims=[32, 32, 32]),
    "hunyuan_video": dict(hidden_size=3072, num_heads=24, axes_dim=[16, 56, 56]),
    "z_image": dict(dim=384, n_heads=3, n_kv_heads=3),
}
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), mid_block_type=None, attention_head_dim=(2, 4))
FLUX = dict(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128, num_attention_heads=24,
            joint_attention_dim=4096, axes_dims_rope=(16, 56, 56))
# The diffusers model of each family, shaped as the ComfyUI model above (same widths, one block of each kind).
DIFFUSERS_MODELS = {
    "sd15": ("UNet2DConditionModel", dict(UNET, cross_attention_dim=768, use_linear_projection=False)),
    "sd2_v": ("UNet2DConditionModel", dict(UNET, cross_attention_dim=1024, use_linear_projection=True)),
    "sdxl": ("UNet2DConditionModel", dict(UNET, cross_attention_dim=2048, use_linear_projection=True,
                                          addition_embed_type="text_time", addition_time_embed_dim=256,
                                          projection_class_embeddings_input_dim=2816)),
    # ComfyUI's MMDiT is 64 wide per block of depth, with one head per block: one 64-wide head here.
    "sd3": ("SD3Transformer2DModel", dict(sample_size=8, patch_size=2, in_channels=16, num_layers=1,
                                          attention_head_dim=64, num_attention_heads=1, joint_attention_dim=4096,
                                          caption_projection_dim=64, pooled_projection_dim=2048, out_channels=16,
                                          pos_embed_max_size=8, qk_norm="rms_norm")),
    "flux": ("FluxTransformer2DModel", dict(FLUX, pooled_projection_dim=768, guidance_embeds=True)),
    "flux_schnell": ("FluxTransformer2DModel", dict(FLUX, pooled_projection_dim=768, guidance_embeds=False)),
    "chroma": ("ChromaTransformer2DModel", dict(FLUX, approximator_hidden_dim=32, approximator_layers=1)),
    "flux2": ("Flux2Transformer2DModel", dict(in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=32,
                                              num_attention_heads=2, joint_attention_dim=15360, mlp_ratio=3.0,
                                              axes_dims_rope=(8, 8, 8, 8))),
    "lumina2": ("Lumina2Transformer2DModel", dict(hidden_size=2304, num_layers=1, num_refiner_layers=1,
                                                  num_attention_heads=24, num_kv_heads=8, cap_feat_dim=2304,
                                                  axes_dim_rope=(32, 32, 32))),
    "z_image": ("ZImageTransformer2DModel", dict(dim=384, n_layers=1, n_refiner_layers=1, n_heads=3, n_kv_heads=3,
                                                 cap_feat_dim=2560, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])),
    "qwen_image": ("QwenImageTransformer2DModel", dict(in_channels=64, out_channels=16, num_layers=1,
                                                       attention_head_dim=32, num_attention_heads=2,
                                                       joint_attention_dim=3584, axes_dims_rope=(8, 12, 12))),
    "hidream": ("HiDreamImageTransformer2DModel", dict(
        patch_size=2, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
        caption_channels=[4096, 4096], text_emb_dim=2048, num_routed_experts=2, num_activated_experts=1,
        axes_dims_rope=(16, 8, 8), llama_layers=[1, 3])),
    "auraflow": ("AuraFlowTransformer2DModel", dict(sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1,
                                                    num_single_dit_layers=1, attention_head_dim=32, num_attention_heads=2,
                                                    joint_attention_dim=2048, caption_projection_dim=64, out_channels=4,
                                                    pos_embed_max_size=64)),
    "wan21": ("WanTransformer3DModel", dict(num_attention_heads=2, attention_head_dim=32, text_dim=4096, freq_dim=32,
                                            ffn_dim=128, num_layers=1)),
    "hunyuan_video": ("HunyuanVideoTransformer3DModel", dict(num_attention_heads=24, attention_head_dim=128, num_layers=1,
                                                             num_single_layers=1, num_refiner_layers=1)),
}
# Families whose diffusers pipeline has no LoRA loader (the README says so).
NO_DIFFUSERS_LOADER = {"pixart_sigma": "PixArtSigmaPipeline", "hunyuan_dit": "HunyuanDiTPipeline"}


@pytest.fixture(scope="module")
def pack():
    return load_pack()


def comfy_model_on_meta(family: str):
    """ComfyUI's own model class for ``family`` (the matrix's tiny config, at real widths where needed)."""
    import comfy.supported_models

    if family == "sd15":
        class_name, tiny, model_state = SD15_TINY[0], SD15_TINY[1], {}
    else:
        spec = FAMILIES[family]
        class_name, tiny = spec.model_class, dict(spec.config, **WIDTHS.get(family, {}))
        model_state = {k: torch.linspace(-1, 1, 64) if v == "spread" else v for k, v in spec.model_state.items()}
    model_class = getattr(comfy.supported_models, class_name)
    model_config = model_class(dict(model_class.unet_config, **tiny))
    model_config.set_inference_dtype(torch.float32, None)
    return model_config.get_model(model_state, device="meta")


def exported_file(family: str) -> tuple[dict[str, torch.Tensor], list[tuple[int, float]], object, dict]:
    """(the file's tensors as Train LoRA exports them, each trained layer's change as ``delta_size`` gives it,
    the key namer, each trained layer's (up, down) weights by module path)."""
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.adapters.adapter_types import ADAPTER
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.adapters.inject import inject_adapter
    from lora_lab.trainer_core.training.bookkeeping import extract_weights

    model = comfy_model_on_meta(family)
    namer = bridge.kohya_key_namer(types.SimpleNamespace(model=model))
    adapter = inject_adapter(model.diffusion_model, LoRAConfig(rank=RANK, alpha=ALPHA), seed=0)
    generator = torch.Generator().manual_seed(1)
    trained, layers = [], {}
    for path, layer in adapter.layers():  # trained values: peft starts lora_B at zero
        down, up = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
        down.weight = torch.nn.Parameter(torch.randn(down.weight.shape, generator=generator) / 8)
        up.weight = torch.nn.Parameter(torch.randn(up.weight.shape, generator=generator) / 8)
        trained.append(delta_size(up.weight, down.weight, ALPHA / RANK))
        layers[path] = (up.weight.detach(), down.weight.detach())
    return extract_weights(adapter, namer), trained, namer, layers


def delta_size(up: torch.Tensor, down: torch.Tensor, scale: float) -> tuple[int, float]:
    """(how many weight values ``scale * up @ down`` changes, its squared Frobenius norm), without building it:
    ||U D||^2 = sum((U^T U) * (D D^T))."""
    up, down = up.detach().double().flatten(1), down.detach().double().flatten(1)
    squared = ((up.T @ up) * (down @ down.T)).sum().item() * scale**2
    return up.shape[0] * down.shape[1], squared


@contextlib.contextmanager
def diffusers_log():
    """What diffusers logs (warnings and up) inside the block."""
    from diffusers.utils import logging as diffusers_logging

    log = io.StringIO()
    handler = logging.StreamHandler(log)
    diffusers_logging.get_logger("diffusers").addHandler(handler)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()
    try:
        yield log
    finally:
        diffusers_logging.get_logger("diffusers").removeHandler(handler)
        diffusers_logging.set_verbosity(verbosity)


def empty_model(model_class, *args, **kwargs):
    """A model built without writing its weights: they are never read, and never take up RAM."""
    with torch.device("meta"):
        model = model_class(*args, **kwargs)
    return model.to_empty(device="cpu")


def assert_clean(log: str) -> None:
    for complaint in ("unexpected", "missing", "No LoRA keys", "unsuccessful", "not loaded", "not compatible"):
        assert complaint not in log, log


def load_into_diffusers(pipeline_name: str, family: str, file: dict[str, torch.Tensor]):
    """The pipeline's own conversion, then its loader into a diffusers model of the family; returns (the
    model, what diffusers logged)."""
    import diffusers

    pipeline = getattr(diffusers, pipeline_name)
    model_name, config = DIFFUSERS_MODELS[family]
    model = empty_model(getattr(diffusers, model_name), **config)
    with diffusers_log() as log:
        converted = pipeline.lora_state_dict(dict(file))
        alphas = None
        if isinstance(converted, tuple):
            converted, alphas = converted[0], converted[1]
        if model_name == "UNet2DConditionModel":
            pipeline.load_lora_into_unet(converted, alphas, unet=model, adapter_name="file")
        else:
            load = pipeline.load_lora_into_transformer
            extra = {"network_alphas": alphas} if "network_alphas" in inspect.signature(load).parameters else {}
            load(converted, transformer=model, adapter_name="file", **extra)
    return model, log.getvalue()


def diffusers_deltas(model) -> list[tuple[int, float]]:
    from peft.tuners.lora import LoraLayer

    return [delta_size(module.lora_B["file"].weight, module.lora_A["file"].weight, module.scaling["file"])
            for module in model.modules() if isinstance(module, LoraLayer) and "file" in module.lora_A]


@pytest.mark.parametrize("family", list(DIFFUSERS_MODELS))
def test_the_file_loads_into_diffusers_through_the_pipelines_own_loader_with_every_key_placed(pack, family):
    from lora_lab.nodes import bridge

    file, trained, namer, _ = exported_file(family)
    pipeline_name = namer.key_format.diffusers_pipeline
    assert pipeline_name is not None, f"the key-format table names no diffusers pipeline for {family}"
    # The same names place every layer through ComfyUI's key map (what the sweep's "matches" note counts); a
    # fused layer saved split (SD3's qkv as to_q, to_k, to_v) has a name per part.
    fit = bridge.lora_fit(types.SimpleNamespace(model=comfy_model_on_meta(family)), None, file)
    names = len(trained) + sum(len(parts) - 1 for parts in namer.row_splits.values() if f"{parts[0][0]}.lora_A.weight" in file)
    assert fit == (names, names, [])

    model, log = load_into_diffusers(pipeline_name, family, file)
    assert_clean(log)
    deltas = diffusers_deltas(model)
    assert deltas, f"{pipeline_name} placed no LoRA layer on {DIFFUSERS_MODELS[family][0]}"
    # Fused layers (qkv) may land as several diffusers layers: the weights they change add up to the same
    # number of values with the same size of change, so nothing was dropped, doubled or rescaled.
    assert sum(numel for numel, _ in deltas) == sum(numel for numel, _ in trained)
    assert sum(size for _, size in deltas) == pytest.approx(sum(size for _, size in trained), rel=1e-6)


def test_sd3s_fused_qkv_goes_into_diffusers_q_k_v_exactly_as_trained(pack):
    """diffusers' SD3 has to_q, to_k, to_v (add_q_proj, ... for the text stream) where ComfyUI's MMDiT has one
    qkv layer, and keeps the halves of the last modulation layers swapped. The file holds a LoRA per diffusers
    layer; the weight changes diffusers loads, put in ComfyUI's layout by ComfyUI's own diffusers map for SD3
    (``comfy.utils.mmdit_to_diffusers``), are the trained ones, row for row."""
    import comfy.utils
    from peft.tuners.lora import LoraLayer

    file, _, namer, layers = exported_file("sd3")
    assert any(".attn.to_q." in key for key in file) and not any(".qkv." in key for key in file)
    assert any(".attn.add_v_proj." in key for key in file) and any(".norm1_context.linear." in key for key in file)
    model, log = load_into_diffusers("StableDiffusion3Pipeline", "sd3", file)
    assert_clean(log)
    to_comfy = comfy.utils.mmdit_to_diffusers(comfy_model_on_meta("sd3").model_config.unet_config)
    loaded = {path: torch.zeros(up.shape[0], down.shape[1]) for path, (up, down) in layers.items()}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "file" in module.lora_A:
            change = module.scaling["file"] * module.lora_B["file"].weight @ module.lora_A["file"].weight
            target = to_comfy[f"{name}.weight"]
            if isinstance(target, str):
                loaded[target.removesuffix(".weight")] += change
            elif target[1] is None:  # (weight, None, function): swap_scale_shift
                loaded[target[0].removesuffix(".weight")] += target[2](change)
            else:  # (weight, (axis, first row, rows)): one of q, k, v
                loaded[target[0].removesuffix(".weight")].narrow(*target[1]).add_(change)
    assert sum(1 for parts in namer.row_splits.values() if len(parts) == 3) == 2  # x_block's and context_block's qkv
    for path, (up, down) in layers.items():
        torch.testing.assert_close(loaded[path], (ALPHA / RANK) * up @ down, msg=path)


@pytest.mark.parametrize("family", list(NO_DIFFUSERS_LOADER))
def test_families_the_table_gives_no_diffusers_pipeline_have_none_with_a_lora_loader(pack, family):
    import diffusers
    from lora_lab.nodes.key_formats import key_format

    assert key_format(comfy_model_on_meta(family)).diffusers_pipeline is None
    assert not hasattr(getattr(diffusers, NO_DIFFUSERS_LOADER[family]), "load_lora_into_transformer")


def test_the_readme_family_table_shows_each_familys_key_format_and_who_loads_it(pack):
    from lora_lab.nodes.key_formats import KEY_FORMATS

    rows = [line for line in (Path(__file__).resolve().parents[2] / "README.md").read_text().splitlines()
            if line.startswith("| ")]
    for family, key_format in KEY_FORMATS.items():
        assert any(f"`{key_format.example}`" in row and f"— {key_format.loaded_by}" in row for row in rows), family


CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280)


@pytest.mark.parametrize("family, pipeline_name, encoders", [
    ("sd15", "StableDiffusionPipeline", {"text_encoder": ("CLIPTextModel", CLIP_L)}),
    ("sdxl", "StableDiffusionXLPipeline", {"text_encoder": ("CLIPTextModel", CLIP_L),
                                           "text_encoder_2": ("CLIPTextModelWithProjection", CLIP_G)}),
])
def test_text_encoder_keys_load_into_diffusers_text_encoders_with_every_key_placed(pack, family, pipeline_name, encoders):
    """The kohya ``lora_te_`` (SD1.5) / ``lora_te1_``, ``lora_te2_`` (SDXL) names of a text-encoder LoRA, on
    ComfyUI's own CLIP at its real size, go into diffusers' text encoders through the pipeline's loader."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import diffusers
    import transformers
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.training.text_encoder import find_text_encoder_targets

    clip = comfy.sd.CLIP(no_init=True)
    clip_class = comfy.sdxl_clip.SDXLClipModel if family == "sdxl" else comfy.sd1_clip.SD1ClipModel
    clip.cond_stage_model = clip_class(device="meta", dtype=torch.float16)
    name = bridge.clip_key_namer(clip)
    generator = torch.Generator().manual_seed(2)
    file, trained = {}, []
    for target in find_text_encoder_targets(clip.cond_stage_model):
        out_features, in_features = clip.cond_stage_model.get_submodule(target).weight.shape
        down = torch.randn(RANK, in_features, generator=generator) / 8
        up = torch.randn(out_features, RANK, generator=generator) / 8
        file.update({f"{name(target)}.lora_down.weight": down, f"{name(target)}.lora_up.weight": up,
                     f"{name(target)}.alpha": torch.tensor(ALPHA)})
        trained.append(delta_size(up, down, ALPHA / RANK))

    pipeline = getattr(diffusers, pipeline_name)
    loaded = []
    with diffusers_log() as log:
        converted, alphas = pipeline.lora_state_dict(dict(file))
        for prefix, (class_name, config) in encoders.items():
            text_encoder = empty_model(getattr(transformers, class_name), transformers.CLIPTextConfig(**config))
            pipeline.load_lora_into_text_encoder(converted, alphas, text_encoder=text_encoder, prefix=prefix,
                                                 adapter_name="file")
            loaded += diffusers_deltas(text_encoder)
    assert_clean(log.getvalue())
    assert len(loaded) == len(trained)
    assert sum(size for _, size in loaded) == pytest.approx(sum(size for _, size in trained), rel=1e-6)


def test_a_layer_the_format_has_no_name_for_keeps_comfyuis_generic_name_with_one_console_note(pack, monkeypatch, capsys):
    """Saving must not fail after training: with a format ComfyUI has no names for on this model (diffusers'
    ``transformer.`` names on Wan), each layer gets ``lora_unet_<module path>`` and one console note."""
    import comfy.lora
    from lora_lab.nodes import bridge, key_formats

    model = comfy_model_on_meta("wan21")
    monkeypatch.setitem(key_formats.KEY_FORMATS, "WAN21", key_formats.KEY_FORMATS["AuraFlow"])
    name = bridge.kohya_key_namer(types.SimpleNamespace(model=model))
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    for _ in range(2):  # a checkpoint, then the final file
        assert name("blocks.0.self_attn.q") == "lora_unet_blocks_0_self_attn_q"
    assert key_map["lora_unet_blocks_0_self_attn_q"] == "diffusion_model.blocks.0.self_attn.q.weight"
    assert capsys.readouterr().out.count("blocks.0.self_attn.q has no diffusers name") == 1

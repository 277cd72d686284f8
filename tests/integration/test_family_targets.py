"""Each target choice means what its help text says, on every family of the matrix: 'attention' = the
attention and feed-forward layers of the transformer blocks (with the modulation inside them), 'all_linear' =
every linear layer of the network's blocks, also between the transformer blocks; neither trains the input
projections, the embedders or the output layer (kohya's Flux LoRA trains img_in / txt_in only when asked).

What each layer is comes from ComfyUI's model code (``comfy/ldm/...``); the patterns below name layers
by what they are, not one by one.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack, tiny_model_patcher  # noqa: E402
from tiny_families import FAMILIES  # noqa: E402

pytestmark = pytest.mark.comfy

# Layers inside a transformer block: the UNet's SpatialTransformer (``*_blocks.N.1``, ``middle_block.1``)
# and the DiT families' lists of attention / feed-forward blocks (Flux's double/single blocks, SD3's joint
# blocks, Lumina's layers and refiners, AuraFlow's double/single layers, HiDream's stream blocks,
# Qwen's transformer blocks; PixArt, HunyuanDiT, Cosmos and Wan call theirs ``blocks``). Only top-level
# lists: HunyuanVideo's text token refiner (``txt_in...blocks``) is part of its text input, not a block.
IN_BLOCK = re.compile(
    r"^((input_blocks|output_blocks)\.\d+\.1|middle_block\.1"
    r"|(double_blocks|single_blocks|joint_blocks|layers|noise_refiner|context_refiner|transformer_blocks"
    r"|double_stream_blocks|single_stream_blocks|double_layers|single_layers|blocks)\.\d+)\."
)

# Embedders, which neither target trains.
EMBEDDER = re.compile(
    # timestep / guidance embedders and the layers turning them into modulation (PixArt's t_block, Wan's
    # time_projection, Chroma's distilled-guidance approximator)
    r"(^|\.)(time_embed|t_embedder|time_in|guidance_in|time_text_embed|time_embedding|time_projection|t_block"
    r"|distilled_guidance_layer"
    # pooled-vector / class inputs (SDXL's label_emb, SD3's y_embedder, HiDream's p_embedder, HunyuanDiT's
    # attention pooler and extra_embedder, HunyuanVideo's c_embedder)
    r"|label_emb|vector_in|p_embedder|pooler|extra_embedder|c_embedder"
    # text embedders that are MLPs of their own (PixArt's y_embedder, Wan's text_embedding, HunyuanDiT's mlp_t5)
    r"|y_embedder|text_embedding|mlp_t5"
    # the output layer and its modulation
    r"|final_layer|norm_out)(\.|$)"
    r"|^(head|proj_out|final_linear|modF)(\.|$)"
)
# The input projections of the token streams (patch / x embedder, text / caption / context embedder, with
# HunyuanVideo's text refiner inside txt_in and HunyuanImage's ByT5 glyph mapper): in neither target.
INPUT_PROJECTION = re.compile(
    r"^(img_in|txt_in|x_embedder|context_embedder|cap_embedder|caption_projection|init_x_linear"
    r"|cond_seq_linear|patch_embedding|pos_embed|byt5_in)(\.|$)"
)


@pytest.fixture(scope="module")
def inject():
    load_pack()
    import lora_lab.trainer_core.adapters.inject as module

    return module


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_target_means_what_its_help_text_says(inject, family, caplog):
    network = tiny_model_patcher(family).model.diffusion_model
    linear = {name for name, module in network.named_modules() if isinstance(module, nn.Linear)}
    assert linear & {name for name in linear if EMBEDDER.search(name)}, "the embedder patterns match nothing here"

    with caplog.at_level(logging.WARNING):
        attention = inject.find_target_modules(network, "attention")
        all_linear = inject.find_target_modules(network, "all_linear")
    assert not [r for r in caplog.records if "found no transformer blocks" in r.getMessage()]

    assert attention
    assert [name for name in attention if not IN_BLOCK.search(name)] == []
    assert [name for name in attention if EMBEDDER.search(name) or INPUT_PROJECTION.search(name)] == []

    assert set(all_linear) == {name for name in linear if not (EMBEDDER.search(name) or INPUT_PROJECTION.search(name))}
    assert set(attention) <= set(all_linear)
    # 'attention' is not 'all_linear' in disguise: they are the same set only where every trainable
    # linear layer sits in a transformer block (Flux, PixArt, Wan...: their other layers are embedders,
    # input projections or the output layer).
    outside = {name for name in all_linear if not IN_BLOCK.search(name)}
    assert set(attention) != set(all_linear) or not outside
    input_projections = {name for name in linear if INPUT_PROJECTION.search(name)}
    assert not input_projections & (set(attention) | set(all_linear))


@pytest.mark.parametrize("family", ["flux", "flux_schnell", "hunyuan_video", "hunyuan_image21"])
def test_on_flux_like_models_both_targets_are_kohyas_default_the_double_and_single_blocks(inject, family):
    """kohya's Flux LoRA (networks/lora_flux.py) trains every linear layer of the double and single blocks,
    and img_in / txt_in / time_in / vector_in / guidance_in only when in_dims asks for them."""
    network = tiny_model_patcher(family).model.diffusion_model
    in_blocks = {name for name, module in network.named_modules()
                 if isinstance(module, nn.Linear) and re.match(r"(double|single)_blocks\.\d+\.", name)}
    assert in_blocks
    for target in ("attention", "all_linear"):
        assert set(inject.find_target_modules(network, target)) == in_blocks, target


def test_all_linear_adds_the_unets_time_projections_and_flux2s_shared_modulation(inject):
    sdxl = tiny_model_patcher("sdxl").model.diffusion_model
    added = set(inject.find_target_modules(sdxl, "all_linear")) - set(inject.find_target_modules(sdxl, "attention"))
    assert added and all(re.search(r"\.0\.emb_layers\.1$", name) for name in added)
    flux2 = tiny_model_patcher("flux2").model.diffusion_model
    added = set(inject.find_target_modules(flux2, "all_linear")) - set(inject.find_target_modules(flux2, "attention"))
    assert added == {"double_stream_modulation_img.lin", "double_stream_modulation_txt.lin",
                     "single_stream_modulation.lin"}


def test_attention_on_an_unknown_architecture_falls_back_to_all_linear_and_says_so(inject, caplog):
    class MysteryNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.time_embed = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 8))
            self.body = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))

    network = MysteryNet()
    with caplog.at_level(logging.WARNING, logger=inject.__name__):
        chosen = inject.find_target_modules(network, "attention")
    assert chosen == inject.find_target_modules(network, "all_linear") == ["body.0", "body.2"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == inject.__name__]
    assert len(warnings) == 1 and "MysteryNet" in warnings[0].getMessage()

"""Save LoRA's ``key_names`` on a HunyuanVideo LoRA, on the file Train LoRA exports (diffusion-pipe names, at
HunyuanVideo's real block width, ComfyUI's own model on the meta device; tests/integration/test_diffusers_key_formats.py).

musubi-tuner cannot be installed here, so nothing of it runs: the test asserts the names are exactly the form its
loaders take. Its rule (kohya-ss/musubi-tuner, src/musubi_tuner/networks/lora.py ``create_network_from_weights``
and ``LoRANetwork``): a LoRA module is built for each model layer named ``"lora_unet" + "." + <module path>``
with every "." replaced by "_", for the Linear layers inside ``MMDoubleStreamBlock`` / ``MMSingleStreamBlock``,
and it takes the file's ``<that name>.lora_down.weight`` (rank = its rows), ``.lora_up.weight`` and ``.alpha``;
its HunyuanVideo blocks name their layers ``img_mod.linear``, ``img_attn_qkv``, ``img_attn_proj``,
``img_mlp.fc1`` / ``fc2`` (and ``txt_*``), and ``linear1``, ``linear2``, ``modulation.linear``
(hunyuan_model/models.py). Its own convert_lora.py turns ``diffusion_model.<path>.lora_A/B.weight`` into
``lora_unet_<path with _>.lora_down/up.weight`` with alpha = rank.
"""

from __future__ import annotations

import re

import pytest
import torch

from tests.helpers.comfy_inproc import load_pack
from tests.integration.test_diffusers_key_formats import comfy_model_on_meta, exported_file

pytestmark = pytest.mark.comfy

MUSUBI_LAYER = re.compile(
    r"lora_unet_(double_blocks_\d+_(img|txt)_(mod_linear|attn_qkv|attn_proj|mlp_fc1|mlp_fc2)"
    r"|single_blocks_\d+_(linear1|linear2|modulation_linear))"
)


@pytest.fixture(scope="module")
def exports():
    load_pack()
    from lora_lab.nodes import key_formats

    file, _, _, _ = exported_file("hunyuan_video")
    metadata = {"lora_lab_key_format": "diffusion_pipe"}
    musubi, recorded = key_formats.with_key_names(dict(file), metadata, key_formats.KEY_NAMES[1])
    same, default_format = key_formats.with_key_names(dict(file), metadata, key_formats.KEY_NAMES[0])
    assert same == file and default_format == "diffusion_pipe" and recorded == "musubi"
    return file, musubi


def test_the_musubi_export_has_musubi_tuners_exact_names_and_kohya_tensors(exports):
    file, musubi = exports
    stems = {key.split(".", 1)[0] for key in musubi}
    assert stems and all(MUSUBI_LAYER.fullmatch(stem) for stem in stems), sorted(stems)
    assert set(musubi) == {f"{stem}.{t}" for stem in stems for t in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert len(stems) == len(file) // 2  # every layer of the diffusion-pipe file, none added or lost
    # Both kinds of block, with the layers where musubi's and ComfyUI's spellings differ among them.
    assert any("_img_mlp_fc1" in s for s in stems) and any("_modulation_linear" in s for s in stems)


def test_each_layer_changes_its_weight_exactly_as_in_the_diffusion_pipe_file(exports):
    """What musubi merges (up @ down * alpha / rank) is what ComfyUI and diffusers apply from lora_B @ lora_A."""
    file, musubi = exports
    for key in file:
        if not key.endswith(".lora_A.weight"):
            continue
        path = key[len("diffusion_model.") : -len(".lora_A.weight")]
        stem = "lora_unet_" + path.replace(".", "_")
        down, up, alpha = musubi[f"{stem}.lora_down.weight"], musubi[f"{stem}.lora_up.weight"], musubi[f"{stem}.alpha"]
        expected = file[f"diffusion_model.{path}.lora_B.weight"] @ file[key]
        assert torch.allclose(up @ down * (float(alpha) / down.shape[0]), expected, atol=1e-6), stem


def test_comfyui_reads_the_musubi_names_except_the_layers_the_node_names(exports):
    """ComfyUI's own key map (comfy.lora.model_lora_keys_unet) places the musubi names of the attention and
    linear1/linear2 layers on the weights the diffusion-pipe names go to, and has no entry for the modulation
    and MLP layers: exactly the layers Save LoRA reports (``comfy_unread_layers``)."""
    import comfy.lora
    from lora_lab.nodes import key_formats

    file, musubi = exports
    key_map = comfy.lora.model_lora_keys_unet(comfy_model_on_meta("hunyuan_video"), {})
    unread = set(key_formats.comfy_unread_layers(musubi))
    paths = [k[len("diffusion_model.") : -len(".lora_A.weight")] for k in file if k.endswith(".lora_A.weight")]
    stems = {"lora_unet_" + path.replace(".", "_"): path for path in paths}
    assert set(stems) == {key.split(".", 1)[0] for key in musubi}
    assert unread and unread < set(stems)
    for stem, path in stems.items():
        if stem in unread:
            assert stem not in key_map
        else:
            assert key_map[stem] == key_map[f"diffusion_model.{path}"], stem


def test_musubi_names_on_other_families(exports):
    """Wan's default names are musubi's already (written as they are); a diffusion_model. family musubi does not
    train stops with the fix."""
    from lora_lab.nodes import key_formats

    wan = {"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.ones(2, 4),
           "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.ones(4, 2),
           "lora_unet_blocks_0_self_attn_q.alpha": torch.tensor(2.0)}
    same, recorded = key_formats.with_key_names(wan, {"lora_lab_key_format": "kohya"}, key_formats.KEY_NAMES[1])
    assert same is wan and recorded == "kohya"
    lumina = {"diffusion_model.layers.0.attention.qkv.lora_A.weight": torch.ones(2, 4)}
    with pytest.raises(ValueError, match="key_names.*'family default'"):
        key_formats.with_key_names(lumina, {"lora_lab_key_format": "diffusion_model"}, key_formats.KEY_NAMES[1])

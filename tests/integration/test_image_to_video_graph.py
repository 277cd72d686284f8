"""Wan 2.1 I2V in a real ComfyUI server: a tiny Wan 2.1 I2V loaded by ComfyUI's own ``UNETLoader`` (detected from
its file as WAN21_I2V: 36 input channels and an image embedding) and its VAE by ``VAELoader``, with Train LoRA's
clip_vision left unconnected: the run stops before a step with the message a person at the canvas needs.

Only the refusal runs in the server: a Wan checkpoint's text encoder is umT5-XXL (4096 wide), too large to build
here, and ComfyUI's CLIPVisionLoader builds nothing smaller than ViT-L; training itself is tested at the MODEL
level (test_image_to_video_lora.py). The tiny SD1.5 checkpoint's CLIP stands in for the text encoder: nothing is
encoded before the refusal."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers.clip_files import write_video
from tests.helpers.training import CKPT, load_dataset_node, refusal_message, train_node
from tools.comfy_server import ComfyServer
from tools.graph import Graph

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))

pytestmark = pytest.mark.comfy

UNET, VAE = "tiny_wan21_i2v.safetensors", "tiny_wan21_vae.safetensors"
# What ComfyUI's detection fixes for Wan: 128 per head, freq_dim 256, a 4096-wide text input.
WAN21_I2V_128 = dict(
    image_model="wan2.1", model_type="i2v", patch_size=(1, 2, 2), text_len=512, in_dim=36, dim=128, ffn_dim=128,
    freq_dim=256, text_dim=4096, out_dim=16, num_heads=1, num_layers=1, window_size=(-1, -1), qk_norm=True,
    cross_attn_norm=True, eps=1e-6,
)


def write_model_files(server: ComfyServer) -> None:
    from comfy_inproc import import_comfy

    import_comfy()
    import comfy.supported_models
    from family_models import family_vae

    model_class = comfy.supported_models.WAN21_I2V
    config = model_class(dict(model_class.unet_config, **WAN21_I2V_128))
    config.set_inference_dtype(torch.float32, None)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, param in config.get_model({}).diffusion_model.state_dict().items():
        if param.ndim >= 2:
            state[name] = torch.randn(param.shape, generator=generator) * (0.5 / param.shape[1] ** 0.5)
        else:
            state[name] = torch.zeros(param.shape) if "bias" in name else torch.ones(param.shape)
    for folder, name, tensors in (("diffusion_models", UNET, state),
                                  ("vae", VAE, family_vae("wan21").first_stage_model.state_dict())):
        path = server.base_dir / "models" / folder
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / name))


def test_wan21_i2v_without_clip_vision_stops_with_what_to_connect(comfy_server: ComfyServer):
    write_model_files(comfy_server)
    folder = comfy_server.input_dir / "i2v_clips"
    write_video(folder / "clip0.mp4", 12, fps=16, size=(64, 64))
    (folder / "clip0.txt").write_text("sks, moving stripes")

    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    unet = graph.node("UNETLoader", unet_name=UNET, weight_dtype="default")
    vae = graph.node("VAELoader", vae_name=VAE)
    dataset = load_dataset_node(comfy_server, graph, "i2v_clips", frame_count=5, frame_start="head")
    trained = train_node(comfy_server, graph, checkpoint, dataset, model=unet[0], vae=vae[0], steps=2,
                         run_name="tests_i2v_refused")
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/i2v_refused", if_exists="overwrite")
    message = refusal_message(comfy_server, graph, trained)
    assert "clip_vision" in message and "WAN21" in message and "Wan 2.1 image-to-video" in message, message
    assert "Load CLIP Vision" in message and "clip_vision_h" in message, message
    assert not (comfy_server.base_dir / "models" / "loras" / "tests" / "i2v_refused.safetensors").exists()

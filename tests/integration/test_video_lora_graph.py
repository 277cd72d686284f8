"""A video LoRA end to end in a real ComfyUI server: Load Dataset on tiny generated clips -> Train LoRA on a
tiny HunyuanVideo loaded by ComfyUI's own ``UNETLoader`` and ``VAELoader`` -> Save LoRA -> the strength sweep,
whose cells are clips.

HunyuanVideo rather than Wan: ComfyUI's detection reads HunyuanVideo's text width from the checkpoint, so a
tiny one takes the tiny SD1.5 checkpoint's CLIP-L (768 wide, with a pooled vector) as its text encoder; Wan's
detection fixes a 4096-wide text input (umT5-XXL, which no loader builds small). The model is detected from
its file as a checkpoint of the real architecture would be (hidden size 128 = one head of axes 16+56+56); its
VAE is ComfyUI's TAEHV for HunyuanVideo (fp16 marks it), random weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageSequence
from safetensors.torch import save_file

from tests.helpers.clip_files import write_captioned_clips
from tests.helpers.training import CKPT, load_dataset_node, train_node
from tools.comfy_server import ComfyServer
from tools.graph import Graph

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))

pytestmark = pytest.mark.comfy

FRAMES = 5
UNET, VAE = "tiny_hunyuan_video.safetensors", "tiny_taehv_hunyuan_video.safetensors"
HUNYUAN_VIDEO_128 = dict(
    image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2], vec_in_dim=768,
    context_in_dim=768, hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1,
    axes_dim=[16, 56, 56], theta=256, qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False,
    use_cond_type_embedding=False, vision_in_dim=None,
)


def write_model_files(server: ComfyServer) -> None:
    """The tiny HunyuanVideo's diffusion model and its TAEHV, as files ComfyUI's loaders detect."""
    from comfy_inproc import import_comfy

    import_comfy()
    import comfy.supported_models
    from family_models import family_vae

    model_class = comfy.supported_models.HunyuanVideo
    config = model_class(dict(model_class.unet_config, **HUNYUAN_VIDEO_128))
    config.set_inference_dtype(torch.float32, None)
    generator = torch.Generator().manual_seed(0)
    network = config.get_model({}).diffusion_model
    state = {}
    for name, param in network.state_dict().items():
        if param.ndim >= 2:
            state[name] = torch.randn(param.shape, generator=generator) * (0.5 / param.shape[1] ** 0.5)
        else:
            state[name] = torch.zeros(param.shape) if "bias" in name else torch.ones(param.shape)
    folder = server.base_dir / "models" / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / UNET))
    vae_state = {k: v.to(torch.float16).contiguous() for k, v in family_vae("hunyuan_video").first_stage_model
                 .state_dict().items()}
    folder = server.base_dir / "models" / "vae"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(vae_state, str(folder / VAE))


def test_load_dataset_clips_train_a_hunyuan_video_lora_and_sweep_it_as_clips(comfy_server: ComfyServer):
    write_model_files(comfy_server)
    write_captioned_clips(comfy_server.input_dir / "vtrain_clips")

    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    unet = graph.node("UNETLoader", unet_name=UNET, weight_dtype="default")
    vae = graph.node("VAELoader", vae_name=VAE)
    dataset = load_dataset_node(comfy_server, graph, "vtrain_clips", frame_count=FRAMES, frame_start="head")
    trained = train_node(comfy_server, graph, checkpoint, dataset, model=unet[0], vae=vae[0], steps=12,
                         run_name="tests_video_lora", min_snr_gamma=0.0, lr_warmup=0.0)
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/video_lora", if_exists="overwrite")
    sweep = graph.node("TestLoRAStrengthSweep", model=unet[0], clip=checkpoint[1], vae=vae[0], lora=trained[0],
                       **{**comfy_server.widget_defaults("TestLoRAStrengthSweep"), "prompts": "sks, moving stripes",
                          "strengths": "1", "steps": 2, "cfg": 1.0, "width": 64, "height": 64, "frames": FRAMES,
                          "lora_name": "[none: use the lora input]", "scheduler": "simple"})
    log_start = comfy_server.log_offset()
    result = comfy_server.run(graph.to_api(), timeout=1800).raise_for_error()
    log = comfy_server.log_text(since=log_start)

    assert "lora key not loaded" not in log
    assert "latents 2" in log or "latents 0 cached, 2 encoded" in log, log[-3000:]
    assert "Warning: the dataset has" not in log  # a video model trains clips as clips
    report = result.outputs[sweep.id]["text"][0]
    assert f"2 clips of {FRAMES} frames saved as animated WebP" in report, report
    files = comfy_server.output_files(result, sweep.id)
    grid, clips = files[0], files[1:]
    assert grid.suffix == ".png" and len(clips) == 2 and result.outputs[sweep.id].get("animated")
    for path in clips:
        # Written by ComfyUI's own WebP saving (the graph in its EXIF, as SaveAnimatedWEBP writes it). WebP keeps
        # a run of identical frames as one: this random TAEHV decodes every frame alike, so a clip may be one
        # frame long here; frame-exact clips are checked on Wan in test_video_sweep.py.
        with Image.open(path) as image:
            assert image.format == "WEBP" and image.size == (64, 64)
            assert b"TestLoRAStrengthSweep" in image.info["exif"]
            frames = getattr(image, "n_frames", 1)
            durations = [frame.info.get("duration", 0) for frame in ImageSequence.Iterator(image)]
        assert 1 <= frames <= FRAMES
        if frames > 1:
            assert sum(durations) == FRAMES * int(1000 / 16), durations  # 5 frames at 16 fps
    with Image.open(grid) as image:
        assert image.width > 2 * 4 * 64  # two cells, each a strip of 4 frames
    saved = comfy_server.base_dir / "models" / "loras" / "tests" / "video_lora.safetensors"
    from safetensors import safe_open

    with safe_open(str(saved), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(key.startswith("diffusion_model.") for key in keys)  # HunyuanVideo's family format

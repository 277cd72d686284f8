"""TrainLoRA with a text-encoder LoRA (text_encoder_lr > 0) and clip skip, in a real ComfyUI server on the
tiny SD1.5 checkpoint: the file loads through the stock LoraLoader with every key used, gives the picture
TrainLoRA's own MODEL + CLIP outputs give, and the incoming CLIP is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers.training import (
    CKPT,
    checkpoint_and_dataset,
    make_ring_dataset,
    train_node,
)
from tests.integration.test_train_lora import PROMPT, latents, pixels, sample
from tools.comfy_server import ComfyServer
from tools.graph import Graph

STEPS = 12
TEXT_ENCODER_LR = 1e-3
LINEARS = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")


def passthrough(graph: Graph, checkpoint, lora_name: str):
    """The checkpoint's own MODEL and CLIP through a zero-strength LoraLoader: ComfyUI then re-encodes the
    prompt with the very CLIP object training used, instead of reusing a cached conditioning."""
    return graph.node("LoraLoader", model=checkpoint[0], clip=checkpoint[1], lora_name=lora_name,
                      strength_model=0.0, strength_clip=0.0)


@pytest.fixture(scope="module")
def te_run(comfy_server: ComfyServer):
    server = comfy_server
    make_ring_dataset(server, "te_rings", count=4)

    before = Graph()
    checkpoint = before.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    before_image, before_latent = sample(before, checkpoint[0], checkpoint, "te_before", batch=1)
    before_result = server.run(before.to_api()).raise_for_error()

    train = Graph()
    checkpoint, dataset = checkpoint_and_dataset(server, train, "te_rings")
    # A sample image at the last step, with sample() below's prompt, seed (42) and sampler settings.
    trained = train_node(server, train, checkpoint, dataset, steps=STEPS, text_encoder_lr=TEXT_ENCODER_LR, seed=42,
                         run_name="tests_te", sample_every=STEPS, sample_prompts=PROMPT, sample_steps=8, sample_cfg=3.0)
    train.node("SaveCheckpoint", lora=trained[0], filename="tests/te", if_exists="overwrite")
    samples = train.node("SaveImage", images=trained[3], filename_prefix="te_samples")
    in_memory, _ = sample(train, trained[1], checkpoint, "te_in_memory", clip=trained[4], batch=1)
    train_result = server.run(train.to_api(), timeout=900).raise_for_error()
    print(f"TrainLoRA with the text encoder: {train_result.node_seconds.get(trained.id, 0):.1f} s for {STEPS} steps")
    lora_name = "tests/te.safetensors"

    after = Graph()
    checkpoint = after.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    untouched = passthrough(after, checkpoint, lora_name)
    after_image, after_latent = sample(after, untouched[0], (untouched[0], untouched[1], checkpoint[2]),
                                       "te_after_untouched", batch=1)
    loaded = after.node("LoraLoader", model=checkpoint[0], clip=checkpoint[1], lora_name=lora_name,
                        strength_model=1.0, strength_clip=1.0)
    loader_image, _ = sample(after, loaded[0], checkpoint, "te_lora_loader", clip=loaded[1], batch=1)
    unet_only = after.node("LoraLoader", model=checkpoint[0], clip=checkpoint[1], lora_name=lora_name,
                           strength_model=1.0, strength_clip=0.0)
    unet_only_image, _ = sample(after, unet_only[0], checkpoint, "te_unet_only", clip=unet_only[1], batch=1)
    log_start = server.log_offset()
    after_result = server.run(after.to_api()).raise_for_error()

    return dict(
        server=server, before=(before_result, before_image, before_latent), train=train_result,
        in_memory=in_memory, samples=samples, after=after_result, after_image=after_image, after_latent=after_latent,
        loader=loader_image, unet_only=unet_only_image, after_log=server.log_text(since=log_start),
        lora_path=server.models_dir / "loras" / lora_name,
    )


def test_text_encoder_lora_is_saved_under_kohya_sd15_keys_with_metadata(te_run):
    tensors = load_file(str(te_run["lora_path"]))
    te_stems = {k.split(".")[0] for k in tensors if k.startswith("lora_te")}
    assert te_stems == {f"lora_te_text_model_encoder_layers_{i}_{name}" for i in range(12) for name in LINEARS}
    assert any(k.startswith("lora_unet_") for k in tensors)
    for stem in te_stems:
        assert tensors[f"{stem}.lora_down.weight"].shape[0] == 8 and tensors[f"{stem}.alpha"].item() == 8.0
    with safe_open(str(te_run["lora_path"]), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["ss_network_train_unet_only"] == "false"
    assert float(meta["ss_text_encoder_lr"]) == TEXT_ENCODER_LR and meta["ss_unet_lr"] == "0.001"
    assert meta["ss_clip_skip"] == "1"


def test_stock_lora_loader_uses_every_key_and_gives_trainloras_own_picture(te_run):
    server = te_run["server"]
    assert "lora key not loaded" not in te_run["after_log"] and "ERROR" not in te_run["after_log"]
    from_file = pixels(server, te_run["after"], te_run["loader"])
    in_memory = pixels(server, te_run["train"], te_run["in_memory"])
    assert np.array_equal(from_file, in_memory), np.abs(from_file - in_memory).max()


def test_sample_images_during_training_use_the_text_encoder_lora(te_run):
    server = te_run["server"]
    (last_sample,) = pixels(server, te_run["train"], te_run["samples"])
    (in_memory,) = pixels(server, te_run["train"], te_run["in_memory"])
    # Train-time (live adapters) vs load-time (patched weights): the same picture up to rounding.
    assert np.abs(last_sample - in_memory).max() <= 2


def test_the_text_encoder_lora_changes_the_picture(te_run):
    server = te_run["server"]
    both = pixels(server, te_run["after"], te_run["loader"])
    unet_only = pixels(server, te_run["after"], te_run["unet_only"])
    difference = np.abs(both - unet_only).mean()
    print(f"strength_clip 1 vs 0: {difference:.2f} levels per pixel on average")
    assert difference > 1.0, f"strength_clip 1 vs 0 differ by only {difference:.3f} levels per pixel"


def test_incoming_clip_and_model_are_left_as_they_were(te_run):
    server = te_run["server"]
    before_result, before_image, before_latent = te_run["before"]
    assert np.array_equal(pixels(server, before_result, before_image),
                          pixels(server, te_run["after"], te_run["after_image"]))
    assert (latents(server, before_result, before_latent) == latents(server, te_run["after"], te_run["after_latent"])).all()


def test_clip_skip_2_is_recorded_and_clip_with_lora_stops_at_the_penultimate_layer(comfy_server: ComfyServer, te_run):
    server = comfy_server
    graph = Graph()
    checkpoint, dataset = checkpoint_and_dataset(server, graph, "te_rings")
    trained = train_node(server, graph, checkpoint, dataset, steps=2, clip_skip=2, seed=6, run_name="tests_clip_skip")
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/clip_skip", if_exists="overwrite")
    from_node, _ = sample(graph, trained[1], checkpoint, "clip_skip_node", clip=trained[4], batch=1)
    penultimate = graph.node("CLIPSetLastLayer", clip=checkpoint[1], stop_at_clip_layer=-2)
    stock, _ = sample(graph, trained[1], checkpoint, "clip_skip_stock", clip=penultimate[0], batch=1)
    last_layer, _ = sample(graph, trained[1], checkpoint, "clip_skip_last", batch=1)
    result = server.run(graph.to_api()).raise_for_error()
    with safe_open(str(server.models_dir / "loras" / "tests" / "clip_skip.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["ss_clip_skip"] == "2" and meta["ss_network_train_unet_only"] == "true"
    assert np.array_equal(pixels(server, result, from_node), pixels(server, result, stock))
    assert not np.array_equal(pixels(server, result, from_node), pixels(server, result, last_layer))


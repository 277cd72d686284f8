"""TrainLoRA and SaveCheckpoint in a real ComfyUI server, on the tiny SD1.5 checkpoint.

One module-scoped training run feeds most tests, so the suite trains once.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers.training import (
    CKPT,
    STEPS,
    checkpoint_and_dataset,
    make_ring_dataset,
    train_node,
)
from tools.comfy_server import ComfyServer, PromptRejected, RunResult
from tools.graph import Graph

PROMPT = "sks, a yellow ring on a blue background"
SEEDS_PER_CELL = 4


def sample(graph: Graph, model, checkpoint, prefix: str, clip=None, seed: int = 42, batch: int = SEEDS_PER_CELL):
    """KSampler + decode + save image and latent; returns the SaveImage and SaveLatent handles."""
    clip = clip if clip is not None else checkpoint[1]
    positive = graph.node("CLIPTextEncode", clip=clip, text=PROMPT)
    negative = graph.node("CLIPTextEncode", clip=clip, text="")
    latent = graph.node("EmptyLatentImage", width=64, height=64, batch_size=batch)
    sampled = graph.node(
        "KSampler", model=model, positive=positive[0], negative=negative[0], latent_image=latent[0], seed=seed,
        steps=8, cfg=3.0, sampler_name="euler", scheduler="normal", denoise=1.0,
    )
    decoded = graph.node("VAEDecode", samples=sampled[0], vae=checkpoint[2])
    image = graph.node("SaveImage", images=decoded[0], filename_prefix=prefix)
    saved_latent = graph.node("SaveLatent", samples=sampled[0], filename_prefix=f"latents/{prefix}")
    return image, saved_latent


def pixels(server: ComfyServer, result: RunResult, node) -> np.ndarray:
    files = server.output_files(result, node.id, "images")
    return np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.int16) for f in files])


def latents(server: ComfyServer, result: RunResult, node) -> torch.Tensor:
    (path,) = server.output_files(result, node.id, "latents")
    return load_file(str(path))["latent_tensor"].float()


@pytest.fixture(scope="module")
def run(comfy_server: ComfyServer):
    """Baseline sample → train + save → samples after training, each its own prompt."""
    server = comfy_server
    dataset_dir = make_ring_dataset(server, "rings", count=8)

    before = Graph()
    checkpoint = before.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    before_image, before_latent = sample(before, checkpoint[0], checkpoint, "before")
    before_result = server.run(before.to_api()).raise_for_error()

    train = Graph()
    checkpoint, dataset = checkpoint_and_dataset(server, train, "rings")
    trained = train_node(server, train, checkpoint, dataset)
    saved = train.node("SaveCheckpoint", lora=trained[0], filename="tests/rings", if_exists="overwrite")
    curve = train.node("SaveImage", images=trained[2], filename_prefix="loss_curve")
    in_memory_image, _ = sample(train, trained[1], checkpoint, "in_memory")
    # ComfyUI's own LoraModelLoader takes TrainLoRA's LoRA output as it is.
    stock_loader = train.node("LoraModelLoader", model=checkpoint[0], lora=trained[0], strength_model=1.0)
    stock_loader_image, _ = sample(train, stock_loader[0], checkpoint, "lora_model_loader")
    train_log_start = server.log_offset()
    train_result = server.run(train.to_api(), timeout=900).raise_for_error()
    train_log = server.log_text(since=train_log_start)
    lora_name = "tests/rings.safetensors"

    after = Graph()
    checkpoint = after.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    passthrough = after.node("LoraLoaderModelOnly", model=checkpoint[0], lora_name=lora_name, strength_model=0.0)
    after_image, _ = sample(after, passthrough[0], checkpoint, "after_untouched")
    cells = {}
    for strength in (0.25, 0.5, 1.0):
        loaded = after.node(
            "LoraLoader", model=checkpoint[0], clip=checkpoint[1], lora_name=lora_name,
            strength_model=strength, strength_clip=strength,
        )
        cells[strength] = sample(after, loaded[0], checkpoint, f"strength_{strength}", clip=loaded[1])
    log_start = server.log_offset()
    after_result = server.run(after.to_api()).raise_for_error()
    after_log = server.log_text(since=log_start)

    return dict(
        server=server, before=(before_result, before_image, before_latent), train=train_result, saved=saved,
        curve=curve, in_memory=in_memory_image, stock_loader=stock_loader_image, after=after_result, after_image=after_image, cells=cells,
        after_log=after_log, train_log=train_log, lora_path=server.models_dir / "loras" / lora_name, dataset_dir=dataset_dir,
    )


def test_incoming_model_is_bit_identical_after_training(run):
    server = run["server"]
    before_result, before_image, _ = run["before"]
    assert np.array_equal(pixels(server, before_result, before_image), pixels(server, run["after"], run["after_image"]))


def test_saved_file_has_kohya_keys_alpha_and_metadata(run):
    path = run["lora_path"]
    assert path.is_file()
    tensors = load_file(str(path))
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)
    stems = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    for stem in stems:
        assert {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"} <= tensors.keys()
    assert any("down_blocks_0_attentions_0" in k for k in tensors), "kohya's diffusers-style names expected"
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["ss_trigger_word"] == "sks"
    assert meta["ss_steps"] == str(STEPS) and meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "8.0"
    assert meta["ss_learning_rate"] == "0.001" and meta["ss_optimizer"].startswith("AdamW")
    assert meta["ss_lr_scheduler"] == "constant_with_warmup" and meta["ss_lr_warmup_steps"] == str(round(STEPS * 0.05))
    assert meta["ss_num_train_images"] == "8" and meta["ss_resolution"] == "(64, 64)"
    assert json.loads(meta["ss_tag_frequency"])["rings"]["sks"] == 8
    assert meta["ss_base_model_version"] == "sd_v1" and len(meta["ss_new_sd_model_hash"]) == 64
    assert meta["lora_lab_key_format"] == "kohya"
    assert float(meta["ss_training_time_seconds"]) > 0
    assert meta["sshs_model_hash"]


def test_training_loss_falls_clearly(run):
    with safe_open(str(run["lora_path"]), framework="pt") as handle:
        losses = json.loads(handle.metadata()["lora_lab_losses"])
    assert len(losses) == STEPS
    first, last = np.mean(losses[:30]), np.mean(losses[-30:])
    assert last < 0.8 * first, f"loss fell only from {first:.4f} to {last:.4f}"


def test_stock_lora_loader_reads_every_key_and_matches_the_in_memory_lora(run):
    server = run["server"]
    assert "lora key not loaded" not in run["after_log"]
    assert "ERROR" not in run["after_log"]
    # LoraLoader at 1.0 from the file gives exactly what TrainLoRA's own MODEL output gave (tolerance: none).
    image_at_one = pixels(server, run["after"], run["cells"][1.0][0])
    assert np.array_equal(image_at_one, pixels(server, run["train"], run["in_memory"]))
    assert np.array_equal(image_at_one, pixels(server, run["train"], run["stock_loader"]))


def test_lora_effect_grows_with_strength_and_moves_towards_the_training_images(run):
    server = run["server"]
    base = latents(server, run["before"][0], run["before"][2])
    effect = {s: (latents(server, run["after"], cell[1]) - base).abs().mean().item() for s, cell in run["cells"].items()}
    assert 0 < effect[0.25] < effect[0.5] < effect[1.0], effect


def test_training_reports_progress_each_step(run):
    progress = [p for p in run["train"].progress if p.max == STEPS]
    assert [p.value for p in progress][-1] == STEPS
    assert len({p.value for p in progress}) >= STEPS // 2


def test_the_memory_estimate_is_shown_before_the_first_step(run):
    (line,) = [text for text in run["train_log"].splitlines() if "estimated GPU memory" in text]
    base = re.search(r"base weights (\d+) MiB", line)
    adapter = re.search(r"LoRA \+ gradients (\d+) MiB", line)
    assert base and 10 <= int(base.group(1)) <= 300, line  # the tiny UNet: about 52 MiB
    assert adapter and "this run trains on the CPU" in line, line


def test_loss_curve_is_an_image(run):
    (path,) = run["server"].output_files(run["train"], run["curve"].id, "images")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 10


def test_cancel_stops_training_within_a_step_and_the_next_job_runs(comfy_server: ComfyServer, run):
    server = comfy_server
    graph = Graph()
    checkpoint, dataset = checkpoint_and_dataset(server, graph, "rings")
    trained = train_node(server, graph, checkpoint, dataset, steps=5000, seed=7, run_name="tests_cancelled")
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/cancelled", if_exists="error")
    prompt_id = server.submit(graph.to_api())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.progress_value(prompt_id) < 5:
        time.sleep(0.05)
    at_interrupt = server.progress_value(prompt_id)
    server.interrupt()
    result = server.wait(prompt_id, timeout=120)
    assert result.status == "interrupted", result.error
    final = max((p.value for p in result.progress if p.max == 5000), default=0)
    assert at_interrupt >= 5 and final <= at_interrupt + 2, (at_interrupt, final)
    assert not (server.models_dir / "loras" / "tests" / "cancelled.safetensors").exists()
    # Cancel keeps what was learned, as a LoRA file LoraLoader lists and a state to resume from.
    kept = sorted((server.models_dir / "loras" / "lora_lab_checkpoints").glob("tests_cancelled_step*.safetensors"))
    assert len(kept) == 1 and (kept[0].parent / "tests_cancelled.lora_lab_state").is_file()
    step = int(kept[0].stem.rsplit("step", 1)[1])
    assert at_interrupt <= step <= final + 1
    assert server.run(_tiny_sample_graph().to_api()).ok


@pytest.mark.parametrize(
    "options, field, words",
    [
        ({"rank": 512}, "rank", ["rank 512", "larger than"]),
        ({"steps": -1}, "steps", ["steps"]),
    ],
)
def test_bad_training_settings_give_a_clear_error_and_the_server_goes_on(comfy_server, run, options, field, words):
    server = comfy_server
    graph = Graph()
    checkpoint, dataset = checkpoint_and_dataset(server, graph, "rings")
    trained = train_node(server, graph, checkpoint, dataset, **{**options, "steps": options.get("steps", 3)})
    graph.node("SaveCheckpoint", lora=trained[0], filename=f"tests/bad_{field}", if_exists="error")
    message = ""
    try:
        result = server.run(graph.to_api())
        message = result.error or ""
        assert not result.ok
    except Exception as error:  # rejected at validation: the 400 names the input
        message = str(getattr(error, "node_errors", "")) + str(error)
    for word in words:
        assert word in message, message
    assert not (server.models_dir / "loras" / "tests" / f"bad_{field}.safetensors").exists()
    assert server.run(_tiny_sample_graph().to_api()).ok


def _tiny_sample_graph() -> Graph:
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    sample(graph, checkpoint[0], checkpoint, "still_serving", seed=44, batch=1)
    return graph


def test_save_every_and_resume_continue_a_run_in_the_canvas(comfy_server: ComfyServer, run):
    server = comfy_server
    folder = server.models_dir / "loras" / "lora_lab_checkpoints"

    def train(steps: int, resume: bool, filename: str):
        graph = Graph()
        checkpoint, dataset = checkpoint_and_dataset(server, graph, "rings")
        trained = train_node(server, graph, checkpoint, dataset, steps=steps, run_name="tests_resume", save_every=3,
                             resume=resume, seed=3)
        graph.node("SaveCheckpoint", lora=trained[0], filename=filename, if_exists="overwrite")
        return server.run(graph.to_api())

    assert train(6, False, "tests/resume_first").raise_for_error()
    assert sorted(p.name for p in folder.glob("tests_resume_step*")) == [
        "tests_resume_step000003.safetensors", "tests_resume_step000006.safetensors"]
    assert train(9, True, "tests/resume_second").raise_for_error()
    with safe_open(str(server.models_dir / "loras" / "tests" / "resume_first.safetensors"), framework="pt") as f:
        first = json.loads(f.metadata()["lora_lab_losses"])
    with safe_open(str(server.models_dir / "loras" / "tests" / "resume_second.safetensors"), framework="pt") as f:
        meta = f.metadata()
    second = json.loads(meta["lora_lab_losses"])
    assert meta["ss_steps"] == "9" and len(second) == 9 and second[:6] == first


def test_an_8bit_optimizer_without_bitsandbytes_is_refused_before_running(comfy_server: ComfyServer, run):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here: the 8-bit optimizer may run")
    graph = Graph()
    checkpoint, dataset = checkpoint_and_dataset(comfy_server, graph, "rings")
    trained = train_node(comfy_server, graph, checkpoint, dataset, steps=2, optimizer="AdamW8bit")
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/eight_bit", if_exists="error")
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.run(graph.to_api())
    message = json.dumps(rejected.value.node_errors)
    assert "optimizer" in message and "pip install bitsandbytes" in message


def test_sample_images_during_training_show_the_lora_of_that_step_and_change_nothing(comfy_server: ComfyServer, run):
    server = comfy_server

    def train(sample_every: int, name: str):
        graph = Graph()
        checkpoint, dataset = checkpoint_and_dataset(server, graph, "rings")
        trained = train_node(server, graph, checkpoint, dataset, steps=10, seed=11, run_name=f"tests_{name}",
                             sample_every=sample_every, sample_prompts="{trigger}, a ring", sample_steps=4,
                             sample_cfg=3.0)
        graph.node("SaveCheckpoint", lora=trained[0], filename=f"tests/{name}", if_exists="overwrite")
        samples = graph.node("SaveImage", images=trained[3], filename_prefix=f"samples_{name}")
        # The final LoRA the stock way, same seed and settings as the last sample image.
        positive = graph.node("CLIPTextEncode", clip=checkpoint[1], text="sks, a ring")
        negative = graph.node("CLIPTextEncode", clip=checkpoint[1], text="")
        latent = graph.node("EmptyLatentImage", width=64, height=64, batch_size=1)
        sampled = graph.node("KSampler", model=trained[1], positive=positive[0], negative=negative[0],
                             latent_image=latent[0], seed=11, steps=4, cfg=3.0, sampler_name="euler",
                             scheduler="normal", denoise=1.0)
        decoded = graph.node("VAEDecode", samples=sampled[0], vae=checkpoint[2])
        final = graph.node("SaveImage", images=decoded[0], filename_prefix=f"final_{name}")
        result = server.run(graph.to_api()).raise_for_error()
        return result, samples, final

    result, samples, final = train(5, "with_samples")
    images = pixels(server, result, samples)
    assert images.shape[0] == 2  # steps 5 and 10, one prompt
    assert not np.array_equal(images[0], images[1])
    # Train-time (live adapter) vs load-time (patched weights): the same picture up to rounding.
    assert np.abs(images[1] - pixels(server, result, final)[0]).max() <= 2
    train(0, "without_samples")
    with_samples = load_file(str(server.models_dir / "loras" / "tests" / "with_samples.safetensors"))
    without = load_file(str(server.models_dir / "loras" / "tests" / "without_samples.safetensors"))
    assert all(torch.equal(with_samples[k], without[k]) for k in without), "sampling changed the training"

"""The encoding cache in a real ComfyUI server, on the toy base: what a run encodes, and what it reads back.

One dataset of 6 images with 6 different captions, trained for 2 steps per run. Run 1 encodes everything;
run 2, unchanged, encodes nothing; then one image's pixels, one caption and the VAE change in turn, and
each run encodes only what changed (the console line "[LoRA Lab] encoding: ..." counts it). The LoRA
trained from cached encodings equals, bit for bit, the one trained with the cache off.
"""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.helpers.toy import install_toy_checkpoint
from tests.helpers.training import CKPT, load_dataset_node, train_node
from tools.comfy_server import ComfyServer
from tools.graph import Graph
from tools.synthetic_dataset import make_shapes_dataset

DATASET = "encoding_cache_rings"
COUNT = 6
LINE = re.compile(r"\[LoRA Lab\] encoding: latents (\d+) cached, (\d+) encoded; captions (\d+) cached, (\d+) encoded"
                  r"( \(encoding cache off\))?")


def cache_folder(server: ComfyServer):
    return server.base_dir / "user" / "__lora_lab" / "encoding_cache"


def train(server: ComfyServer, name: str, other_vae: bool = False, cache: bool = True) -> dict:
    """Train 2 steps on the toy (with the tiny checkpoint's VAE when ``other_vae``); the console's counts
    and the saved LoRA. Each run has its own run_name, so ComfyUI runs Train LoRA again."""
    graph = Graph()
    toy = graph.node("CheckpointLoaderSimple", ckpt_name=install_toy_checkpoint(server))
    vae = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)[2] if other_vae else toy[2]
    dataset = load_dataset_node(server, graph, DATASET)
    trained = train_node(server, graph, [toy[0], toy[1], vae], dataset, steps=2, run_name=f"tests_cache_{name}",
                         encoding_cache=cache)
    graph.node("SaveCheckpoint", lora=trained[0], filename=f"tests/cache_{name}", if_exists="overwrite")
    start = server.log_offset()
    server.run(graph.to_api(), timeout=600).raise_for_error()
    log = server.log_text(since=start)
    (match,) = [m for m in map(LINE.search, log.splitlines()) if m]
    latents_cached, latents_encoded, texts_cached, texts_encoded = map(int, match.groups()[:4])
    return dict(latents=(latents_cached, latents_encoded), texts=(texts_cached, texts_encoded), off=bool(match[5]),
                log=log, lora=load_file(str(server.models_dir / "loras" / "tests" / f"cache_{name}.safetensors")))


@pytest.fixture(scope="module")
def runs(comfy_server: ComfyServer) -> dict:
    server = comfy_server
    folder = server.input_dir / DATASET
    shutil.rmtree(folder, ignore_errors=True)
    make_shapes_dataset(folder, count=COUNT, size=64, shape="ring", trigger_word="sks")
    for index in range(COUNT):
        (folder / f"{index:03d}.txt").write_text(f"sks, a yellow ring, picture {index}")
    shutil.rmtree(cache_folder(server), ignore_errors=True)  # the documented way to clear it
    results = {"cold": train(server, "cold")}
    results["files"] = sorted(p.relative_to(cache_folder(server)).parts[0] for p in cache_folder(server).rglob("*.safetensors"))
    results["warm"] = train(server, "warm")
    results["off"] = train(server, "off", cache=False)
    with Image.open(folder / "003.png") as image:
        changed = image.convert("RGB")
    changed.putpixel((5, 5), (0, 255, 0))
    changed.save(folder / "003.png")
    results["image"] = train(server, "image")
    (folder / "001.txt").write_text("sks, a yellow ring, a caption that changed")
    results["caption"] = train(server, "caption")
    results["vae"] = train(server, "vae", other_vae=True)
    # One of the entries the other VAE's run wrote: the latest written.
    victim = max((cache_folder(server) / "latents").rglob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    victim.write_bytes(victim.read_bytes()[:100])
    results["damaged"] = train(server, "damaged", other_vae=True)
    results["victim"] = victim
    return results


def test_run_one_encodes_every_image_and_caption_into_comfyuis_user_folder(runs):
    assert runs["cold"]["latents"] == (0, COUNT) and runs["cold"]["texts"] == (0, COUNT)
    assert runs["files"] == ["latents"] * COUNT + ["text"] * COUNT


def test_run_two_of_an_unchanged_dataset_encodes_nothing(runs):
    assert runs["warm"]["latents"] == (COUNT, 0) and runs["warm"]["texts"] == (COUNT, 0)


def test_the_lora_trained_from_the_cache_equals_the_one_trained_without_it(runs):
    assert runs["off"]["off"] and runs["off"]["latents"] == (0, COUNT) and runs["off"]["texts"] == (0, COUNT)
    off, warm, cold = runs["off"]["lora"], runs["warm"]["lora"], runs["cold"]["lora"]
    assert off.keys() == warm.keys() == cold.keys()
    assert all(torch.equal(off[key], warm[key]) and torch.equal(off[key], cold[key]) for key in off)


def test_a_changed_image_is_the_only_one_encoded_again(runs):
    assert runs["image"]["latents"] == (COUNT - 1, 1) and runs["image"]["texts"] == (COUNT, 0)


def test_a_changed_caption_is_the_only_one_encoded_again(runs):
    assert runs["caption"]["latents"] == (COUNT, 0) and runs["caption"]["texts"] == (COUNT - 1, 1)


def test_another_vae_encodes_every_image_again_and_no_caption(runs):
    assert runs["vae"]["latents"] == (0, COUNT) and runs["vae"]["texts"] == (COUNT, 0)


def test_a_damaged_cache_file_is_named_encoded_again_and_training_goes_on(runs):
    assert runs["damaged"]["latents"] == (COUNT - 1, 1) and runs["damaged"]["texts"] == (COUNT, 0)
    assert str(runs["victim"]) in runs["damaged"]["log"] and "cannot be read" in runs["damaged"]["log"]

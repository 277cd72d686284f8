"""LoHa, LoKr and DoRA trained by TrainLoRA in a real ComfyUI on the tiny SD1.5, loaded back with the
stock LoraLoader: every key is read and the picture is the one training drew.

One training graph trains all three (each also draws a sample image with its adapter still live in
the training model, the train-time picture); one graph after it loads each file with LoraLoader.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers.training import (
    checkpoint_and_dataset,
    refusal_message,
    train_node,
    trained_and_loaded_back,
)
from tests.integration.test_train_lora import PROMPT, latents, pixels
from tools.comfy_server import ComfyServer
from tools.graph import Graph
from tools.synthetic_dataset import make_shapes_dataset

ADAPTERS = ("loha", "lokr", "dora")
STEPS = 40
SEED = 5
# Per layer stem, the tensors each type must write (LoKr's second factor may be full or low-rank).
EXPECTED_SUFFIXES = {
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    "lokr": {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},
    "dora": {"lora_down.weight", "lora_up.weight", "dora_scale", "alpha"},
}


@pytest.fixture(scope="module")
def runs(comfy_server: ComfyServer):
    # rank 8 keeps LoKr's second factor low-rank on 320-wide layers (factors 16 x 20)
    return trained_and_loaded_back(comfy_server, "adapter_rings", {a: dict(adapter_type=a) for a in ADAPTERS},
                                   "adapter", STEPS, SEED, PROMPT)


def lora_file(server: ComfyServer, adapter: str):
    return server.models_dir / "loras" / "tests" / f"adapter_{adapter}.safetensors"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_file_has_lycoris_keys_and_names_its_network(runs, adapter):
    path = lora_file(runs["server"], adapter)
    tensors = load_file(str(path))
    by_stem: dict[str, set[str]] = {}
    for key in tensors:
        assert key.startswith("lora_unet_"), key
        stem, suffix = key.split(".", 1)
        by_stem.setdefault(stem, set()).add(suffix)
    assert len(by_stem) > 10
    for stem, suffixes in by_stem.items():
        assert suffixes == EXPECTED_SUFFIXES[adapter], stem
    if adapter == "dora":  # one magnitude per output row, shaped to broadcast over the weight
        for key, value in tensors.items():
            if key.endswith(".dora_scale"):
                up = tensors[key.replace(".dora_scale", ".lora_up.weight")]
                assert value.shape == (up.shape[0], *[1] * (up.dim() - 1))
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    args = json.loads(meta["ss_network_args"])
    assert args["algo"] == ("lora" if adapter == "dora" else adapter)
    assert json.loads(meta["lora_lab_config"])["lora"]["adapter"] == adapter


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_stock_lora_loader_reads_every_key_and_gives_the_training_picture(runs, adapter):
    server, nodes = runs["server"], runs["nodes"][adapter]
    assert "lora key not loaded" not in runs["after_log"]
    assert "ERROR" not in runs["after_log"]
    loaded = pixels(server, runs["after"], nodes["lora_loader"])
    # LoraLoader from the file = TrainLoRA's own MODEL output (tolerance: none).
    assert np.array_equal(loaded, pixels(server, runs["train"], nodes["in_memory"]))
    # = the picture drawn at the last step with the peft adapter live in the training model. The weights
    # agree to float32 rounding (see tests/core/test_adapter_types.py); 8 sampler steps on a random model
    # can move that by a level of 8-bit rounding.
    train_time = pixels(server, runs["train"], nodes["train_time"])
    assert np.abs(loaded - train_time).max() <= 2


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_each_type_learned_something_visible(runs, adapter):
    server = runs["server"]
    base = latents(server, runs["after"], runs["base"][1])
    with_lora = latents(server, runs["after"], runs["nodes"][adapter]["lora_loader_latent"])
    change = (with_lora - base).abs().mean().item()
    assert change > 1.0, f"{adapter}: mean latent change {change:.4f}"  # measured: about 30 to 50


@pytest.mark.parametrize(
    "options, words",
    [
        ({"adapter_type": "loha", "lora_dropout": 0.1}, ["adapter_type", "lora dropout 0.1", "set lora dropout to 0"]),
        ({"adapter_type": "dora", "lora_dropout": 0.95}, ["lora_dropout must be from 0 to 0.9"]),
    ],
)
def test_settings_an_adapter_type_cannot_take_are_refused_before_running(comfy_server, options, words):
    if not (comfy_server.input_dir / "adapter_refused").is_dir():
        make_shapes_dataset(comfy_server.input_dir / "adapter_refused", count=2, size=64)
    graph = Graph()
    checkpoint, dataset = checkpoint_and_dataset(comfy_server, graph, "adapter_refused")
    trained = train_node(comfy_server, graph, checkpoint, dataset, steps=2, **options)
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/adapter_refused", if_exists="error")
    message = refusal_message(comfy_server, graph, trained)
    for word in words:
        assert word in message, message

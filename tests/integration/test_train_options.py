"""Optimizer settings, EMA and the memory options of Train LoRA through a real ComfyUI server (tiny SD1.5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers.training import (
    CKPT,
    checkpoint_and_dataset,
    make_ring_dataset,
    refusal_message,
    train_node,
)
from tests.integration.test_train_lora import pixels, sample
from tools.comfy_server import ComfyServer
from tools.graph import Graph

DATASET = "options_rings"


@pytest.fixture(scope="module")
def dataset(comfy_server: ComfyServer) -> str:
    make_ring_dataset(comfy_server, DATASET, count=4)
    return DATASET


def saved(server: ComfyServer, name: str) -> tuple[dict, dict]:
    path = server.models_dir / "loras" / "tests" / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return load_file(str(path)), metadata


def up_size(tensors: dict) -> float:
    return sum(t.abs().sum().item() for k, t in tensors.items() if k.endswith(".lora_up.weight"))


def test_settings_node_and_ema_change_what_train_lora_learns(comfy_server: ComfyServer, dataset: str):
    server = comfy_server
    graph = Graph()
    checkpoint, data = checkpoint_and_dataset(server, graph, dataset)
    settings = graph.node(
        "LoraLabOptimizerSettings",
        **{**server.widget_defaults("LoraLabOptimizerSettings"), "relative_step": True},
    )
    runs = {
        "fixed": dict(optimizer="Adafactor", steps=4),
        "relative": dict(optimizer="Adafactor", steps=4, optimizer_settings=settings[0]),
        "plain": dict(steps=6),
        "ema": dict(steps=6, ema_decay=0.9),
    }
    for name, options in runs.items():
        trained = train_node(server, graph, checkpoint, data, run_name=f"tests_options_{name}", **options)
        graph.node("SaveCheckpoint", lora=trained[0], filename=f"tests/options_{name}", if_exists="overwrite")
    server.run(graph.to_api(), timeout=600).raise_for_error()
    lora = {name: saved(server, f"options_{name}") for name in runs}

    # relative_step from the settings node reached Adafactor: its own rate (1e-2) instead of 1e-3.
    assert json.loads(lora["relative"][1]["lora_lab_optimizer"])["relative_step"] is True
    assert json.loads(lora["fixed"][1]["lora_lab_optimizer"])["relative_step"] is False
    assert up_size(lora["relative"][0]) > 5 * up_size(lora["fixed"][0])
    # EMA: the exported average lags behind the weights, which grow from zero.
    assert json.loads(lora["ema"][1]["lora_lab_config"])["training"]["ema_decay"] == 0.9
    assert 0 < up_size(lora["ema"][0]) < 0.9 * up_size(lora["plain"][0])


def test_fp8_base_weights_and_state_in_ram_train_and_leave_the_model_bit_identical(
    comfy_server: ComfyServer, dataset: str
):
    server = comfy_server

    def sample_original(prefix: str):
        graph = Graph()
        checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
        image, _ = sample(graph, checkpoint[0], checkpoint, prefix, seed=3, batch=1)
        return pixels(server, server.run(graph.to_api()).raise_for_error(), image)

    before = sample_original("base_weights_before")
    graph = Graph()
    checkpoint, data = checkpoint_and_dataset(server, graph, dataset)
    trained = train_node(
        server,
        graph,
        checkpoint,
        data,
        steps=6,
        run_name="tests_fp8",
        base_weights="fp8_e4m3fn",
        optimizer_state_on_cpu=True,
        gradient_checkpointing=True,
    )
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/options_fp8", if_exists="overwrite")
    server.run(graph.to_api(), timeout=600).raise_for_error()
    after = sample_original("base_weights_after")

    assert np.array_equal(before, after), "training on the fp8 copy changed the shared MODEL"
    tensors, metadata = saved(server, "options_fp8")
    measured = json.loads(metadata["lora_lab_base_weights"])  # bytes of the network that trained, by dtype
    assert measured["choice"] == "fp8_e4m3fn"
    assert measured["bytes"]["float8_e4m3fn"] > 0.9 * sum(measured["bytes"].values()), measured
    assert all(np.isfinite(json.loads(metadata["lora_lab_losses"])))
    assert up_size(tensors) > 0


def test_state_in_ram_with_an_8bit_optimizer_is_refused_before_running(
    comfy_server: ComfyServer, dataset: str
):
    graph = Graph()
    checkpoint, data = checkpoint_and_dataset(comfy_server, graph, dataset)
    trained = train_node(
        comfy_server,
        graph,
        checkpoint,
        data,
        steps=2,
        optimizer="AdamW8bit",
        allow_8bit_fallback=True,
        optimizer_state_on_cpu=True,
    )
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/options_refused", if_exists="error")
    message = refusal_message(comfy_server, graph, trained)
    assert "optimizer_state_on_cpu cannot be used with AdamW8bit" in message


def test_settings_nodes_values_reach_training(comfy_server: ComfyServer, dataset: str):
    """Values set on the loss, memory, adapter and text-encoder settings nodes are what trained."""
    server = comfy_server
    graph = Graph()
    checkpoint, data = checkpoint_and_dataset(server, graph, dataset)
    trained = train_node(
        server, graph, checkpoint, data, steps=2, run_name="tests_settings_nodes", noise_offset=0.05,
        min_snr_gamma=0.0, timestep_sampling="logit_normal", gradient_accumulation=2, target_layers="all_linear",
        rslora=True, clip_skip=2,
    )
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/options_settings_nodes", if_exists="overwrite")
    api = graph.to_api()
    wired = {api[link[0]]["class_type"] for name, link in api[trained.id]["inputs"].items() if name.endswith("_settings")}
    assert wired == {"LoraLabLossSettings", "LoraLabMemorySettings", "LoraLabAdapterSettings",
                     "LoraLabTextEncoderSettings"}
    server.run(api, timeout=600).raise_for_error()
    config = json.loads(saved(server, "options_settings_nodes")[1]["lora_lab_config"])
    assert config["training"]["noise_offset"] == 0.05 and config["training"]["min_snr_gamma"] == 0.0
    assert config["training"]["timestep_sampling"] == "logit_normal"
    assert config["training"]["gradient_accumulation"] == 2 and config["training"]["clip_skip"] == 2
    assert config["lora"]["target"] == "all_linear" and config["lora"]["rslora"] is True


def test_an_api_graph_giving_train_lora_a_moved_input_hears_where_it_went(comfy_server: ComfyServer, dataset: str):
    server = comfy_server
    graph = Graph()
    checkpoint, data = checkpoint_and_dataset(server, graph, dataset)
    trained = train_node(server, graph, checkpoint, data, steps=2, run_name="tests_moved")
    trained.set(noise_offset=0.1, gradient_checkpointing=True)  # as a graph written before the settings nodes
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/options_moved", if_exists="overwrite")
    result = server.run(graph.to_api(), timeout=300)
    assert not result.ok
    assert (
        "TrainLoRA: 'noise_offset' moved to the LoRA Lab Loss Settings node: add that node, set noise_offset there "
        "and connect it to Train LoRA's loss_settings input." in result.error
    ), result.error
    assert "'gradient_checkpointing' moved to the LoRA Lab Memory Settings node" in result.error
    assert not (server.models_dir / "loras" / "tests" / "options_moved.safetensors").exists()

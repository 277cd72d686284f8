"""Block weights in a real ComfyUI on the tiny SD1.5 (input blocks with a transformer and a ResBlock, output
blocks with ResBlocks; conv_rank on, so both have adapters): a group weighted 0 is not trained (its LoRA
stays at its no-op start), a group weighted 0.5 learns at half the rate (the optimizer's own param groups,
read from the run's resume state), the file records the weights as kohya does, and all weights at 0 are
refused before anything runs. (A DiT's double / single blocks: ``test_locon_model_level.py``.)
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers.training import checkpoint_and_dataset, make_ring_dataset, refusal_message, train_node
from tools.comfy_server import ComfyServer
from tools.graph import Graph

STEPS, LEARNING_RATE = 20, 2e-3
RUNS = {"frozen_input": dict(input_blocks_lr_weight=0.0), "half_output": dict(output_blocks_lr_weight=0.5)}


@pytest.fixture(scope="module")
def runs(comfy_server: ComfyServer):
    server = comfy_server
    make_ring_dataset(server, "block_weight_rings", count=4)
    graph = Graph()
    checkpoint, dataset = checkpoint_and_dataset(server, graph, "block_weight_rings")
    for name, weights in RUNS.items():
        trained = train_node(server, graph, checkpoint, dataset, steps=STEPS, learning_rate=LEARNING_RATE,
                             conv_rank=4, conv_alpha=4.0, save_every=STEPS, run_name=f"tests_blocks_{name}", **weights)
        graph.node("SaveCheckpoint", lora=trained[0], filename=f"tests/blocks_{name}", if_exists="overwrite")
    server.run(graph.to_api(), timeout=1200).raise_for_error()
    return server


def lora_file(server: ComfyServer, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(server.models_dir / "loras" / "tests" / f"blocks_{name}.safetensors"))


def ups(tensors: dict[str, torch.Tensor], group: str) -> dict[str, torch.Tensor]:
    """The lora_up tensors of one group, by kohya's (diffusers') block names: down_blocks, mid_block, up_blocks."""
    return {k: v for k, v in tensors.items() if k.startswith(f"lora_unet_{group}") and k.endswith(".lora_up.weight")}


def test_a_group_weighted_0_is_not_trained_and_the_others_are(runs):
    tensors = lora_file(runs, "frozen_input")
    frozen, trained = ups(tensors, "down_blocks"), ups(tensors, "up_blocks")
    assert len(frozen) >= 4 and len(trained) >= 4  # the transformer's and ResBlock's layers; the ResBlocks'
    assert all(not value.any() for value in frozen.values()), "an input-block LoRA moved from its zero start"
    assert all(value.abs().max() > 0 for value in trained.values())


def test_a_group_weighted_half_gets_half_the_learning_rate_in_the_optimizer(runs):
    state = torch.load(runs.models_dir / "loras" / "lora_lab_checkpoints" / "tests_blocks_half_output.lora_lab_state",
                       map_location="cpu", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [group["initial_lr"] for group in groups] == [pytest.approx(LEARNING_RATE), pytest.approx(LEARNING_RATE / 2)]
    # The half-rate group holds exactly the output blocks' adapter tensors (two per LoRA layer), the other the rest.
    names = list(state["adapter"])
    output_blocks = [name for name in names if name.startswith("output_blocks.")]
    assert len(groups[1]["params"]) == len(output_blocks) > 0
    assert len(groups[0]["params"]) == len(names) - len(output_blocks) > 0
    # And both trained (the file's lora_up moved in both groups).
    tensors = lora_file(runs, "half_output")
    assert all(value.abs().max() > 0 for value in {**ups(tensors, "down_blocks"), **ups(tensors, "up_blocks")}.values())


def test_the_file_records_the_block_weights_as_kohya_writes_them(runs):
    with safe_open(str(runs.models_dir / "loras" / "tests" / "blocks_half_output.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
    args = json.loads(meta["ss_network_args"])
    assert args["down_lr_weight"] == ",".join(["1"] * 12)  # kohya's 12 blocks per side on SD1.x
    assert args["mid_lr_weight"] == "1"
    assert args["up_lr_weight"] == ",".join(["0.5"] * 12)
    assert json.loads(meta["lora_lab_config"])["lora"]["output_blocks_lr_weight"] == 0.5


def test_every_block_weight_at_0_is_refused_before_anything_runs(comfy_server):
    make_ring_dataset(comfy_server, "block_weight_refused", count=2)
    graph = Graph()
    checkpoint, dataset = checkpoint_and_dataset(comfy_server, graph, "block_weight_refused")
    zeros = dict(input_blocks_lr_weight=0.0, middle_block_lr_weight=0.0, output_blocks_lr_weight=0.0,
                 double_blocks_lr_weight=0.0, single_blocks_lr_weight=0.0)
    trained = train_node(comfy_server, graph, checkpoint, dataset, steps=2, **zeros)
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/blocks_refused", if_exists="error")
    message = refusal_message(comfy_server, graph, trained)
    assert "every block learning-rate weight is 0, so nothing would train" in message
    assert "input_blocks_lr_weight" in message and "above 0" in message

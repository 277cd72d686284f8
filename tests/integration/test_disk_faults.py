"""A full disk and a read-only folder, for real: small tmpfs mounts inside the server's models folder.

A read-only checkpoint folder is named before Train LoRA trains a step; a disk too full for the LoRA is named
with the space it needs and the space there is, and leaves no partial file. Mounting needs root (the CI
machine and the development containers run tests as root); elsewhere these tests skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.training import checkpoint_and_dataset, make_ring_dataset, train_node
from tools.comfy_server import ComfyServer
from tools.graph import Graph


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``folder`` (made if missing) for the block, with mount ``options``."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk or make a folder read-only needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="module")
def dataset(comfy_server: ComfyServer) -> str:
    make_ring_dataset(comfy_server, "fault_rings", count=2)
    return "fault_rings"


def training_graph(server: ComfyServer, dataset: str, steps: int, run_name: str):
    """Load Checkpoint, Load Dataset and Train LoRA for ``steps`` steps: the graph and Train LoRA's node."""
    graph = Graph()
    checkpoint, data = checkpoint_and_dataset(server, graph, dataset)
    return graph, train_node(server, graph, checkpoint, data, steps=steps, run_name=run_name)


def test_a_read_only_checkpoint_folder_is_named_before_a_step_trains(comfy_server: ComfyServer, dataset: str):
    server = comfy_server
    folder = server.models_dir / "loras" / "lora_lab_checkpoints"
    with tmpfs(folder, "ro,size=1m"):
        graph, trainer = training_graph(server, dataset, steps=3, run_name="read_only")
        graph.node("PreviewImage", images=trainer[2])  # the loss curve: an output, so the graph runs
        result = server.run(graph.to_api())
    assert not result.ok
    assert f"cannot write to {folder}" in result.error and "writable" in result.error, result.error
    assert not [event for event in result.progress if event.node == trainer.id], "Train LoRA trained a step"


def test_a_full_disk_at_save_names_the_folder_and_the_space_needed(comfy_server: ComfyServer, dataset: str):
    server = comfy_server
    folder = server.models_dir / "loras" / "full_disk"
    with tmpfs(folder, "size=16k"):
        graph, trained = training_graph(server, dataset, steps=2, run_name="full_disk")
        graph.node("SaveCheckpoint", lora=trained[0], filename="full_disk/my_lora", if_exists="overwrite")
        result = server.run(graph.to_api())
        left = sorted(path.name for path in folder.iterdir())
    assert not result.ok
    assert f"The disk holding {folder} is full: my_lora.safetensors needs" in result.error, result.error
    assert re.search(r"needs [\d.]+ (KiB|MiB) and [\d.]+ (KiB|MiB) is free", result.error), result.error
    assert "os error 28" not in result.error
    assert left == [], f"a partial file was left: {left}"
    follow_up = Graph()  # ComfyUI is still up and runs the next job
    follow_up.node("PreviewAny", source=follow_up.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")[0])
    assert server.run(follow_up.to_api()).ok

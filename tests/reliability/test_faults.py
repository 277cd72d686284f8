"""Faults a training survives in a real ComfyUI, with their figures: Cancel, a loss that goes non-finite, a
full disk, a read-only folder, and the server killed mid-training then restarted to resume.

The full disk and the read-only folder are small tmpfs mounts (tests/integration/test_disk_faults.py's
``tmpfs``; they need root and skip elsewhere)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.training import CKPT, checkpoint_and_dataset, make_ring_dataset, train_node
from tests.integration.test_disk_faults import tmpfs
from tools.comfy_server import ComfyServer
from tools.graph import Graph, NodeHandle

Figures = Callable[[str, str], None]
HEADING = "Faults survived"
CANCEL_BOUND_S = 2.0  # "within about a second": one step here is ~0.1 s; the rest is the event's way back


@pytest.fixture(scope="module")
def server(comfy_server: ComfyServer) -> ComfyServer:
    make_ring_dataset(comfy_server, "rel_fault_rings", count=2)
    return comfy_server


def training_graph(server: ComfyServer, **options) -> tuple[Graph, NodeHandle]:
    graph = Graph()
    checkpoint, dataset = checkpoint_and_dataset(server, graph, "rel_fault_rings")
    return graph, train_node(server, graph, checkpoint, dataset, **options)


def next_job_runs(server: ComfyServer) -> bool:
    graph = Graph()
    graph.node("PreviewAny", source=graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)[0])
    return server.run(graph.to_api()).ok


def partial_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*.tmp")) if folder.is_dir() else []


def test_cancel_stops_within_a_second_keeps_no_partial_file_and_the_next_job_runs(server: ComfyServer,
                                                                                 figures: Figures):
    graph, trained = training_graph(server, steps=5000, seed=21, run_name="rel_cancel")
    graph.node("SaveCheckpoint", lora=trained[0], filename="rel/cancelled", if_exists="error")
    submitted = time.monotonic()
    prompt_id = server.submit(graph.to_api())
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and server.progress_value(prompt_id, trained.id) < 5:
        time.sleep(0.02)
    at_interrupt = server.progress_value(prompt_id, trained.id)
    interrupted_at = time.monotonic() - submitted
    server.interrupt()
    result = server.wait(prompt_id, timeout=120)
    ended = [moment for moment, kind, _ in server.events(prompt_id) if kind == "execution_interrupted"]
    stop_seconds = (ended[0] if ended else time.monotonic() - submitted) - interrupted_at
    last_step = max((event.value for event in result.progress if event.node == trained.id), default=0)
    loras = server.models_dir / "loras"
    figures(HEADING, f"Cancel (POST /interrupt at step {at_interrupt} of 5000): stopped after {stop_seconds:.2f} s "
                     f"at step {last_step}; partial files: {len(partial_files(loras))}")
    assert result.status == "interrupted", result.error
    assert stop_seconds < CANCEL_BOUND_S
    assert not (loras / "rel" / "cancelled.safetensors").exists() and not partial_files(loras)
    assert next_job_runs(server)


def test_a_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_lora(server: ComfyServer,
                                                                                   figures: Figures):
    graph, trained = training_graph(server, steps=60, learning_rate=10.0, run_name="rel_nan", seed=5)
    graph.node("SaveCheckpoint", lora=trained[0], filename="rel/nan", if_exists="error")
    result = server.run(graph.to_api(), timeout=300)
    assert result.status == "error", "a learning rate of 10 should drive the loss to inf/NaN within 60 steps"
    message = result.error_details["exception_message"]
    found = re.search(r"the loss became (\S+) at step (\d+).* The last good LoRA \(step (\d+)\) was saved to (\S+)\.",
                      message, re.S)
    assert found, message
    kept = Path(found.group(4))
    weights = load_file(str(kept))
    figures(HEADING, f"NaN: learning rate 10 -> loss {found.group(1)} at step {found.group(2)}; training stopped, "
                     f"last good LoRA (step {found.group(3)}, {len(weights)} tensors, all finite) kept as {kept.name}")
    assert "Lower the learning rate" in message and "Traceback" not in message
    assert weights and all(torch.isfinite(tensor).all() for tensor in weights.values())
    assert kept.is_relative_to(server.output_dir)
    assert not (server.models_dir / "loras" / "rel" / "nan.safetensors").exists()
    assert next_job_runs(server)


def test_a_full_disk_names_the_space_needed_and_leaves_no_partial_file(server: ComfyServer, figures: Figures):
    folder = server.models_dir / "loras" / "rel_full_disk"
    with tmpfs(folder, "size=16k"):
        graph, trained = training_graph(server, steps=2, run_name="rel_full_disk")
        graph.node("SaveCheckpoint", lora=trained[0], filename="rel_full_disk/my_lora", if_exists="overwrite")
        result = server.run(graph.to_api())
        left = sorted(path.name for path in folder.iterdir())
    message = (result.error_details or {}).get("exception_message", "")
    figures(HEADING, f"Disk full (16 KiB tmpfs): {message.split(' Free some space')[0]}; files left: {len(left)}")
    assert not result.ok and re.search(r"needs [\d.]+ (KiB|MiB) and [\d.]+ (KiB|MiB) is free", message), message
    assert left == []
    assert next_job_runs(server)


def test_a_read_only_folder_is_named_before_a_step_trains(server: ComfyServer, figures: Figures):
    folder = server.models_dir / "loras" / "lora_lab_checkpoints"
    with tmpfs(folder, "ro,size=1m"):
        graph, trained = training_graph(server, steps=3, run_name="rel_read_only")
        graph.node("PreviewImage", images=trained[2])
        result = server.run(graph.to_api())
    steps = [event for event in result.progress if event.node == trained.id]
    message = (result.error_details or {}).get("exception_message", "")
    figures(HEADING, f"Read-only checkpoint folder: refused after {len(steps)} steps: {message.split(' (')[0]}")
    assert not result.ok and f"cannot write to {folder}" in message, message
    assert not steps
    assert next_job_runs(server)


@pytest.fixture
def own_server(comfy_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> Iterator[Callable[[], ComfyServer]]:
    """Start (and start again) a ComfyUI of this test's own on one base folder, to kill it without harm."""
    started: list[ComfyServer] = []

    def start() -> ComfyServer:
        checkpoints = tmp_path / "models" / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        if not (checkpoints / CKPT).exists():
            (checkpoints / CKPT).symlink_to(tiny_checkpoint)
        started.append(ComfyServer(tmp_path, comfy_root=comfy_root,
                                   log_path=tmp_path / f"comfyui_{len(started)}.log").start())
        return started[-1]

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def test_sigkill_mid_training_then_restart_resumes_from_the_last_checkpoint(own_server, figures: Figures):
    total, every = 40, 5
    first = own_server()
    make_ring_dataset(first, "rel_fault_rings", count=2)
    folder = first.models_dir / "loras" / "lora_lab_checkpoints"
    graph, trained = training_graph(first, steps=total, save_every=every, seed=9, run_name="rel_killed")
    graph.node("PreviewImage", images=trained[2])
    prompt_id = first.submit(graph.to_api())
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and first.progress_value(prompt_id, trained.id) < 2 * every + 2:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    killed_at = first.progress_value(prompt_id, trained.id)
    first.stop()
    saved = sorted(int(path.stem.rsplit("step", 1)[1]) for path in folder.glob("rel_killed_step*.safetensors"))
    assert saved and (folder / "rel_killed.lora_lab_state").is_file(), sorted(p.name for p in folder.iterdir())

    second = own_server()
    graph, trained = training_graph(second, steps=total, save_every=every, seed=9, run_name="rel_killed",
                                    resume=True)
    graph.node("SaveCheckpoint", lora=trained[0], filename="rel/resumed", if_exists="overwrite")
    result = second.run(graph.to_api(), timeout=300).raise_for_error()
    steps = sorted({event.value for event in result.progress if event.node == trained.id and event.max == total})
    from safetensors import safe_open

    with safe_open(str(second.models_dir / "loras" / "rel" / "resumed.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    figures(HEADING, f"SIGKILL of the server at step {killed_at} of {total} (checkpoints every {every}: "
                     f"{', '.join(map(str, saved))}); restarted; resumed from step {steps[0] - 1}, ran to step "
                     f"{steps[-1]}; partial files: {len(partial_files(folder))}")
    assert steps[0] == saved[-1] + 1 and steps[-1] == total
    assert metadata["ss_steps"] == str(total)
    assert not partial_files(folder)


class _TouchOnLoad:
    """Pickles as a call of Path.touch: loading it unsafely would create ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_a_resume_state_crafted_with_a_pickled_object_is_refused_in_the_canvas(server: ComfyServer,
                                                                               figures: Figures):
    marker = server.base_dir / "crafted_state_ran"
    state = server.models_dir / "loras" / "lora_lab_checkpoints" / "rel_crafted.lora_lab_state"
    state.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "lora_lab_training_state_v1", "step": 3, "payload": _TouchOnLoad(marker)}, state)
    graph, trained = training_graph(server, steps=6, resume=True, run_name="rel_crafted")
    graph.node("PreviewImage", images=trained[2])
    result = server.run(graph.to_api())
    message = (result.error_details or {}).get("exception_message", "")
    shown = message.split(": a resume state")[0].replace(str(state.parent) + "/", "")
    figures(HEADING, f"Resume state crafted with a pickled callable: refused before a step ('{shown}'); "
                     f"the callable ran: {marker.exists()}")
    assert not result.ok and str(state) in message and "holds Python objects LoRA Lab does not load" in message
    assert not marker.exists()
    assert not [event for event in result.progress if event.node == trained.id], "Train LoRA trained a step"

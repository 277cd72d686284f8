"""Training graphs for the integration tests, written once: yellow rings captioned "sks, ..." in the
server's input folder, the tiny SD1.5 checkpoint with a Load Dataset over them, and Train LoRA from one
flat set of inputs (each input it moved to a settings node goes to that node: tools/train_graph.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.helpers.toy import install_toy_checkpoint
from tools.comfy_result import RunResult
from tools.comfy_server import ComfyServer, PromptRejected
from tools.graph import Graph, NodeHandle
from tools.synthetic_dataset import make_shapes_dataset
from tools.toy_scenes import DEMO_CONCEPT, write_concept_dataset

CKPT = "tiny_sd15.safetensors"
STEPS = 150  # train_node's default
REPORT = 5  # Train LoRA's output index of its report (in words)


def make_ring_dataset(server: ComfyServer, folder: str, count: int) -> Path:
    """``count`` 64 px yellow rings captioned "sks, ...", made afresh in the server's input folder."""
    path = server.input_dir / folder
    shutil.rmtree(path, ignore_errors=True)
    make_shapes_dataset(path, count=count, size=64, shape="ring", trigger_word="sks")
    return path


def load_dataset_node(server: ComfyServer, graph: Graph, folder: str, **options) -> NodeHandle:
    """Load Dataset over ``folder`` at 64 px, trigger word from the captions."""
    inputs = server.widget_defaults("LoadDataset")
    inputs.update(folder=folder, resolution=64, bucket_step=64, trigger_word="")
    inputs.update(options)
    return graph.node("LoadDataset", **inputs)


def checkpoint_and_dataset(
    server: ComfyServer, graph: Graph, folder: str, **dataset_options
) -> tuple[NodeHandle, NodeHandle]:
    """The tiny checkpoint's loader and a Load Dataset over ``folder`` (see ``load_dataset_node``)."""
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    return checkpoint, load_dataset_node(server, graph, folder, **dataset_options)


def train_node(server: ComfyServer, graph: Graph, checkpoint, dataset, **options) -> NodeHandle:
    """Train LoRA on the tiny checkpoint: the tests' settings (every one named), changed by ``options``."""
    inputs = dict(optimizer="AdamW", lr_scheduler="constant_with_warmup", lr_warmup=0.05, allow_8bit_fallback=False,
        model=checkpoint[0], clip=checkpoint[1], vae=checkpoint[2], dataset=dataset[0], trigger_word="sks",
        preset="custom", adapter_type="lora", rank=8, alpha=8.0, learning_rate=1e-3, text_encoder_lr=0.0, clip_skip=1,
        steps=STEPS, epochs=10, batch_size=1, gradient_accumulation=1,
        seed=0, mixed_precision="fp32", gradient_checkpointing=False, min_snr_gamma=5.0, noise_offset=0.0,
        loss_type="mse", timestep_sampling="uniform", multires_noise_iterations=0, sample_every=0,
        sample_prompts="{trigger}", sample_steps=20, sample_cfg=7.0,
        target_layers="attention", lora_dropout=0.0, rslora=False, run_name="tests_rings", save_every=0, keep_last=0,
        resume=False, unload_other_models=True,
    )
    inputs.update(options)
    return server.train_lora(graph, **inputs)


def train_and_show(server: ComfyServer, graph: Graph, checkpoint, dataset, save_as: str | None = None,
                   **options) -> dict[str, NodeHandle]:
    """``train_node`` with its loss curve saved and its report shown (its LoRA saved as ``save_as`` when
    given): the nodes ``shown`` reads."""
    trainer = train_node(server, graph, checkpoint, dataset, **options)
    if save_as is not None:
        graph.node("SaveCheckpoint", lora=trainer[0], filename=save_as, if_exists="overwrite")
    prefix = f"curve_{options.get('run_name', 'tests_rings')}"
    return {"curve": graph.node("SaveImage", images=trainer[2], filename_prefix=prefix),
            "report": graph.node("PreviewAny", source=trainer[REPORT])}


def shown(server: ComfyServer, result: RunResult, nodes: dict[str, NodeHandle]) -> dict[str, Any]:
    """What ``train_and_show``'s nodes showed in ``result``: "report" (its text) and "curve" (the loss image's
    file)."""
    return {"report": "".join(result.outputs[nodes["report"].id]["text"]),
            "curve": server.output_files(result, nodes["curve"].id, "images")[0]}


def toy_runs(server: ComfyServer, folder: str, runs: dict[str, dict[str, Any]], save_as: str | None = None,
             timeout: float = 900) -> dict[str, dict[str, Any]]:
    """Short real trainings of the toy base in one prompt, one per entry of ``runs`` (its options for
    ``train_node``), on five images of the demo concept written afresh into ``folder``; each LoRA saved as
    ``save_as`` (a pattern with ``{name}``) when given. Per name, what ``shown`` reads."""
    shutil.rmtree(server.input_dir / folder, ignore_errors=True)
    write_concept_dataset(server.input_dir / folder, count=5, **DEMO_CONCEPT)
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=install_toy_checkpoint(server))
    dataset = load_dataset_node(server, graph, folder)
    nodes = {name: train_and_show(server, graph, checkpoint, dataset, save_as and save_as.format(name=name),
                                  **options) for name, options in runs.items()}
    result = server.run(graph.to_api(), timeout=timeout).raise_for_error()
    return {name: shown(server, result, run_nodes) for name, run_nodes in nodes.items()}


def refusal_message(server: ComfyServer, graph: Graph, trainer: NodeHandle) -> str:
    """Why ``graph`` was refused before Train LoRA trained a step, for a person to read.

    A setting wrong on its own is refused by ComfyUI's validation (nothing runs). A combination of
    values on two nodes (adapter type on Train LoRA, dropout on Adapter Settings) can only be seen by
    Train LoRA's run, since ComfyUI validates a node without the values of the nodes linked into it:
    that is refused in the run's first lines, before a step. Either way nothing trains and nothing
    after Train LoRA runs; anything else fails here."""
    try:
        result = server.run(graph.to_api())
    except PromptRejected as rejected:
        return json.dumps(rejected.node_errors)
    assert result.status == "error", f"the graph ran ({result.status}): it should have been refused"
    assert result.error is not None and result.error.startswith(f"{trainer.id} (TrainLoRA)"), result.error
    assert not [event for event in result.progress if event.node == trainer.id], "Train LoRA trained a step"
    after = {node_id for node_id, node in graph.nodes.items()
             if any(isinstance(value, list) and value[:1] == [trainer.id] for value in node["inputs"].values())}
    ran = after & (set(result.outputs) | set(result.node_seconds))
    assert not ran, f"nodes after Train LoRA ran: {sorted(ran)}"
    return result.error


def trained_and_loaded_back(server: ComfyServer, folder: str, runs: dict[str, dict], prefix: str, steps: int,
                            seed: int, prompt: str, **common) -> dict:
    """One graph trains a LoRA per entry of ``runs`` (Train LoRA's options by name) on a ring dataset in
    ``folder``, each saved as ``tests/<prefix>_<name>`` and drawing a sample at its last step with the adapter
    still live (the train-time picture) and through its ``model_with_lora``; one graph after it draws the base
    and each file through the stock LoraLoader. The nodes to read, per name, and the runs' results."""
    from tests.integration.test_train_lora import sample

    make_ring_dataset(server, folder, count=6)
    train = Graph()
    checkpoint, dataset = checkpoint_and_dataset(server, train, folder)
    nodes = {}
    for name, options in runs.items():
        trained = train_node(server, train, checkpoint, dataset, steps=steps, learning_rate=2e-3, seed=seed,
                             run_name=f"tests_{prefix}_{name}", sample_every=steps, sample_prompts=prompt,
                             sample_steps=8, sample_cfg=3.0, **common, **options)
        train.node("SaveCheckpoint", lora=trained[0], filename=f"tests/{prefix}_{name}", if_exists="overwrite")
        train_time = train.node("SaveImage", images=trained[3], filename_prefix=f"{prefix}_train_time_{name}")
        in_memory, _ = sample(train, trained[1], checkpoint, f"{prefix}_in_memory_{name}", seed=seed, batch=1)
        nodes[name] = {"train_time": train_time, "in_memory": in_memory}
    train_result = server.run(train.to_api(), timeout=1800).raise_for_error()

    after = Graph()
    checkpoint = after.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    base_image, base_latent = sample(after, checkpoint[0], checkpoint, f"{prefix}_base", seed=seed, batch=1)
    for name in runs:
        loaded = after.node("LoraLoader", model=checkpoint[0], clip=checkpoint[1],
                            lora_name=f"tests/{prefix}_{name}.safetensors", strength_model=1.0, strength_clip=1.0)
        image, latent = sample(after, loaded[0], checkpoint, f"{prefix}_loader_{name}", clip=loaded[1], seed=seed,
                               batch=1)
        nodes[name].update(lora_loader=image, lora_loader_latent=latent)
    log_start = server.log_offset()
    after_result = server.run(after.to_api()).raise_for_error()
    return dict(server=server, train=train_result, after=after_result, nodes=nodes, base=(base_image, base_latent),
                after_log=server.log_text(since=log_start))


def colour_pixels(path, colour: str, tolerance: int) -> int:
    """How many pixels of the picture at ``path`` are within ``tolerance`` (0-255, per channel) of ``colour``
    ('#rrggbb')."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).max(axis=-1) <= tolerance).sum())

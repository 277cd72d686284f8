"""Masked loss and regularisation images through a real ComfyUI server.

Masked loss (tiny SD1.5): an image whose mask is 0 everywhere trains nothing, so whatever its pixels the
LoRA is bit-identical; without masked loss the same change of pixels changes the LoRA. (Partial masks:
the exact claim, on a cell-local encoder and network, is tests/core/test_masked_loss.py; here the real
VAE and UNet mix neighbouring pixels into every latent cell and every output.)

Prior preservation (the toy base that draws): a LoRA teaches the toy green rings ("sks, a green ring on a
red background"); trained with class images (green circles captioned "a green circle on a red
background") the class prompt's pictures move less from the base model's than trained without them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers.toy import install_toy_checkpoint
from tests.helpers.training import checkpoint_and_dataset, load_dataset_node, make_ring_dataset, train_node
from tools.comfy_server import ComfyServer
from tools.graph import Graph
from tools.toy_scenes import DEMO_CONCEPT, write_concept_dataset

CLASS_PROMPT = "a green circle on a red background"
SEEDS = 4


def saved(server: ComfyServer, name: str) -> tuple[dict, dict]:
    path = server.models_dir / "loras" / "tests" / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return load_file(str(path)), metadata


def masked_folders(server: ComfyServer) -> tuple[str, str]:
    """Two datasets that differ only in the pixels of 001.png, whose mask is 0 everywhere; 000.png keeps
    its left half (a half mask)."""
    names = ("masks_a", "masks_b")
    for name, seed in zip(names, (1, 2), strict=True):
        folder = make_ring_dataset(server, name, count=2)
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "001.png")
        left = np.zeros((64, 64), np.uint8)
        left[:, :32] = 255
        Image.fromarray(left).save(folder / "000_mask.png")
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "001_mask.png")
    return names


def test_pixels_under_a_zero_mask_leave_the_lora_bit_identical(comfy_server: ComfyServer):
    server = comfy_server
    folders = masked_folders(server)
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    report = None
    for folder in folders:
        data = load_dataset_node(server, graph, folder)
        report = report or graph.node("PreviewAny", source=data[1])
        for masked in (True, False):
            name = f"{folder}_{'masked' if masked else 'plain'}"
            trained = train_node(server, graph, checkpoint, data, steps=6, masked_loss=masked, run_name=f"tests_{name}")
            graph.node("SaveCheckpoint", lora=trained[0], filename=f"tests/{name}", if_exists="overwrite")
    result = server.run(graph.to_api(), timeout=900).raise_for_error()

    text = result.outputs[report.id]["text"][0]
    assert "Masks: 2 of 2 images have a loss mask (2 <name>_mask files" in text, text
    (a, meta), (b, _) = saved(server, "masks_a_masked"), saved(server, "masks_b_masked")
    assert meta["ss_masked_loss"] == "true"
    assert a.keys() == b.keys() and all(a[key].equal(b[key]) for key in a)
    plain_a, plain_b = saved(server, "masks_a_plain")[0], saved(server, "masks_b_plain")[0]
    changed = max((plain_a[key] - plain_b[key]).abs().max().item() for key in plain_a)
    print(f"largest LoRA weight difference from the masked-out image's pixels: masked_loss on 0, off {changed:.3g}")
    assert changed > 0


def test_masked_loss_without_masks_is_refused_before_training(comfy_server: ComfyServer):
    server = comfy_server
    make_ring_dataset(server, "masks_none", count=2)
    graph = Graph()
    checkpoint, data = checkpoint_and_dataset(server, graph, "masks_none")
    trained = train_node(server, graph, checkpoint, data, steps=2, masked_loss=True, run_name="tests_masks_none")
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/masks_none", if_exists="overwrite")
    result = server.run(graph.to_api(), timeout=300)
    assert result.status == "error"
    assert "masked_loss is on" in (result.error or "") and "no image has a mask" in (result.error or "")


def test_class_images_from_the_same_or_an_empty_folder_are_refused(comfy_server: ComfyServer):
    server = comfy_server
    make_ring_dataset(server, "reg_same", count=2)
    graph = Graph()
    checkpoint, data = checkpoint_and_dataset(server, graph, "reg_same")
    classes = load_dataset_node(server, graph, "reg_same", trigger_word="ring")
    trained = train_node(server, graph, checkpoint, data, steps=2, regularization_images=classes[0],
                         run_name="tests_reg_same")
    graph.node("SaveCheckpoint", lora=trained[0], filename="tests/reg_same", if_exists="overwrite")
    same = server.run(graph.to_api(), timeout=300)
    assert same.status == "error" and "regularization_images: it reads the same folder as dataset" in same.error

    empty = server.input_dir / "reg_empty"
    shutil.rmtree(empty, ignore_errors=True)
    empty.mkdir()
    graph.nodes[classes.id]["inputs"]["folder"] = "reg_empty"
    result = server.run(graph.to_api(), timeout=300)
    assert result.status == "error"
    assert "Train LoRA's regularization_images (class images): No images in dataset folder" in result.error
    assert "reg_empty" in result.error and "it is empty" in result.error


def _sample(graph: Graph, model, checkpoint, prefix: str):
    positive = graph.node("CLIPTextEncode", clip=checkpoint[1], text=CLASS_PROMPT)
    negative = graph.node("CLIPTextEncode", clip=checkpoint[1], text="")
    latent = graph.node("EmptyLatentImage", width=64, height=64, batch_size=SEEDS)
    sampled = graph.node("KSampler", model=model, positive=positive[0], negative=negative[0], latent_image=latent[0],
                         seed=0, steps=10, cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    decoded = graph.node("VAEDecode", samples=sampled[0], vae=checkpoint[2])
    return graph.node("SaveImage", images=decoded[0], filename_prefix=prefix)


def _pixels(server: ComfyServer, result, node) -> np.ndarray:
    files = server.output_files(result, node.id, "images")
    return np.stack([np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) for path in files])


def test_class_images_keep_the_class_prompt_close_to_the_base_model(comfy_server: ComfyServer):
    server = comfy_server
    toy = install_toy_checkpoint(server)
    concept = write_concept_dataset(server.input_dir / "reg_rings", count=12, **DEMO_CONCEPT)
    classes = write_concept_dataset(server.input_dir / "reg_circles", count=12,
                                    **{**DEMO_CONCEPT, "shape": "circle", "trigger_word": "x"})
    for caption in Path(classes).glob("*.txt"):
        caption.write_text(CLASS_PROMPT, encoding="utf-8")  # the class prompt, no trigger word
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=toy)
    data = load_dataset_node(server, graph, concept.name)
    class_data = load_dataset_node(server, graph, classes.name)
    base = _sample(graph, checkpoint[0], checkpoint, "reg_base")
    pictures = {}
    for name, extra in (("without", {}), ("with", {"regularization_images": class_data[0]})):
        trained = train_node(server, graph, checkpoint, data, steps=60, batch_size=4, learning_rate=1e-3,
                             target_layers="all_linear", run_name=f"tests_reg_{name}", **extra)
        graph.node("SaveCheckpoint", lora=trained[0], filename=f"tests/reg_{name}", if_exists="overwrite")
        pictures[name] = _sample(graph, trained[1], checkpoint, f"reg_{name}")
    result = server.run(graph.to_api(), timeout=2700).raise_for_error()

    base_pixels = _pixels(server, result, base)
    distance = {name: float(np.abs(_pixels(server, result, node) - base_pixels).mean()) for name, node in pictures.items()}
    print(f"class prompt {CLASS_PROMPT!r}, mean |LoRA - base| per pixel (0-255) over {SEEDS} seeds: "
          f"without class images {distance['without']:.2f}, with class images {distance['with']:.2f}")
    assert distance["with"] < distance["without"]
    _, metadata = saved(server, "reg_with")
    assert metadata["ss_num_reg_images"] == "12" and metadata["ss_prior_loss_weight"] == "1.0"
    assert saved(server, "reg_without")[1]["ss_num_reg_images"] == "0"

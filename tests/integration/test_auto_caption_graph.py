"""AutoCaption in a real ComfyUI server: tiny captioners built here and put in models/captioners,
LoadDataset -> AutoCaption -> (captions shown, .txt files written) -> TrainLoRA."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from tools.comfy_server import ComfyServer, PromptRejected
from tools.graph import Graph, NodeHandle
from tools.tiny_captioners import build_tiny_blip, build_tiny_tagger

pytestmark = pytest.mark.comfy
pytest.importorskip("onnxruntime")

TAGGER, BLIP = "tiny_tagger", "tiny_blip"
_OBJECT_INFO: dict = {}


@pytest.fixture(scope="module")
def server(comfy_server: ComfyServer) -> ComfyServer:
    root = comfy_server.models_dir / "captioners"
    if not (root / TAGGER / "model.onnx").is_file():
        build_tiny_tagger(root / TAGGER)
    if not (root / BLIP / "config.json").is_file():
        build_tiny_blip(root / BLIP)
    return comfy_server


def colour_folder(server: ComfyServer, name: str) -> Path:
    """red.png captioned by hand; green.png and blue.png without captions."""
    folder = server.input_dir / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for stem, colour in (("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255))):
        Image.new("RGB", (64, 64), colour).save(folder / f"{stem}.png")
    (folder / "red.txt").write_text("my_cat, sitting", encoding="utf-8")
    return folder


def caption_graph(server: ComfyServer, folder: str, **options: object) -> tuple[Graph, NodeHandle]:
    graph = Graph()
    load = graph.node(
        "LoadDataset",
        **{
            **server.widget_defaults("LoadDataset"),
            "folder": folder,
            "resolution": 64,
            "stop_on_errors": False,
        },
    )
    inputs = server.widget_defaults("AutoCaption")
    inputs.update(dataset=load[0], tagger=TAGGER, caption_model=BLIP, max_new_tokens=2, batch_size=1)
    inputs.update(options)
    caption = graph.node("AutoCaption", **inputs)
    return graph, caption


def test_auto_caption_is_listed_with_the_installed_models(server: ComfyServer) -> None:
    info = server.object_info("AutoCaption")["AutoCaption"]
    assert info["display_name"] == "Auto Caption" and info["category"] == "LoRA Lab/Dataset"
    assert info["output"] == ["LORALAB_DATASET", "STRING"] and info["output_node"] is True
    required = info["input"]["required"]
    assert {TAGGER, BLIP, "none"} <= set(required["tagger"][1]["options"])
    assert required["style"][1]["options"] == ["tags", "natural", "mixed"]
    assert all(spec[1].get("tooltip") for spec in required.values())


def test_mixed_captions_are_shown_and_written_next_to_the_images(server: ComfyServer) -> None:
    folder = colour_folder(server, "ac_mixed")
    graph, node = caption_graph(server, "ac_mixed", style="mixed", write_sidecar_files=True)
    result = server.run(graph.to_api()).raise_for_error()

    [text] = result.outputs[node.id]["text"]
    assert "Captioned 2 of 3 images" in text and "Wrote 2 caption files" in text
    assert "green.png: hatsune miku, green background, simple background" in text and "square square" in text
    assert (folder / "red.txt").read_text(encoding="utf-8") == "my_cat, sitting"
    green = (folder / "green.txt").read_text(encoding="utf-8")
    assert green.startswith("hatsune_miku, green_background") and green.endswith(", square square")
    assert [(event.value, event.max) for event in result.progress if event.node == node.id][-1] == (2, 2)


def test_overwrite_keeps_a_backup_of_the_users_caption(server: ComfyServer) -> None:
    folder = colour_folder(server, "ac_overwrite")
    graph, node = caption_graph(
        server, "ac_overwrite", style="tags", mode="overwrite", write_sidecar_files=True
    )
    result = server.run(graph.to_api()).raise_for_error()
    assert (folder / "red.txt").read_text(encoding="utf-8").startswith("red_background")
    [backup] = (folder / ".caption_backups").glob("*/red.txt")
    assert backup.read_text(encoding="utf-8") == "my_cat, sitting"
    assert str(backup.parent) in result.outputs[node.id]["text"][0]


def test_a_missing_captioner_is_refused_before_running(server: ComfyServer) -> None:
    colour_folder(server, "ac_missing")
    graph, _ = caption_graph(server, "ac_missing", tagger="wd-vit-tagger-v3")
    with pytest.raises(PromptRejected) as rejected:
        server.run(graph.to_api())
    message = str(rejected.value)
    assert "wd-vit-tagger-v3" in message and str(server.models_dir / "captioners") in message


def test_the_captioned_dataset_trains(server: ComfyServer) -> None:
    colour_folder(server, "ac_train")
    graph, node = caption_graph(server, "ac_train", style="tags")
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    inputs = server.widget_defaults("TrainLoRA")
    inputs.update(
        model=checkpoint[0], clip=checkpoint[1], vae=checkpoint[2], dataset=node[0], steps=2, rank=4,
        alpha=4.0, mixed_precision="fp32", run_name="tests_auto_caption", save_every=0,
    )  # fmt: skip
    trained = server.train_lora(graph, **inputs)
    graph.node("PreviewImage", images=trained[2])
    result = server.run(graph.to_api(), timeout=600).raise_for_error()
    assert trained.id in result.node_seconds

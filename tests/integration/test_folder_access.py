"""Folder access fit for a shared server: a ComfyUI started on all interfaces (probed on 127.0.0.1 only)
confines Load Dataset and Auto Caption to its input folder plus LORA_LAB_ALLOWED_FOLDERS, and follows no link
out of them; on loopback, absolute paths keep working."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_load_dataset_graph import WIDGETS, make_dataset
from tools.comfy_server import ComfyServer, PromptRejected
from tools.graph import Graph

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders outside any ComfyUI's input folder: one allowed by the variable, one not."""
    root = tmp_path_factory.mktemp("outside")
    folders = {"allowed": root / "allowed", "private": root / "private"}
    for folder in folders.values():
        make_dataset(folder, count=2)
    return folders


@pytest.fixture(scope="module")
def shared_server(comfy_root: Path, tmp_path_factory: pytest.TempPathFactory,
                  outside: dict[str, Path]) -> Iterator[ComfyServer]:
    """A ComfyUI listening on every interface, with the 'allowed' folder in LORA_LAB_ALLOWED_FOLDERS."""
    server = ComfyServer(tmp_path_factory.mktemp("comfyui_shared"), comfy_root=comfy_root,
                         extra_args=["--listen", "0.0.0.0"],
                         env={"LORA_LAB_ALLOWED_FOLDERS": f"{tmp_path_factory.getbasetemp() / 'nowhere'}"
                                                          f"{os.pathsep}{outside['allowed']}"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run_load(server: ComfyServer, folder: str):
    graph = Graph()
    load = graph.node("LoadDataset", **{**WIDGETS, "folder": folder})
    graph.node("PreviewImage", images=load[2])
    return graph, load


def rejection(server: ComfyServer, folder: str) -> str:
    graph, _ = run_load(server, folder)
    with pytest.raises(PromptRejected) as rejected:
        server.run(graph.to_api())
    return str(rejected.value.node_errors)


def test_a_folder_outside_the_input_folder_is_refused_with_how_to_allow_it(shared_server, outside):
    message = rejection(shared_server, str(outside["private"]))
    assert str(outside["private"]) in message and "LORA_LAB_ALLOWED_FOLDERS" in message
    assert "--listen 0.0.0.0" in message and "input folder" in message
    # A folder that does not exist is refused the same way: the answer does not tell whether it exists.
    assert "LORA_LAB_ALLOWED_FOLDERS" in rejection(shared_server, str(outside["private"] / "no_such_folder"))
    assert "LORA_LAB_ALLOWED_FOLDERS" in rejection(shared_server, "../../../")


def test_the_input_folder_and_the_listed_folders_are_read(shared_server, outside):
    make_dataset(shared_server.input_dir / "mine", count=3)
    for folder in ("mine", str(outside["allowed"])):
        graph, load = run_load(shared_server, folder)
        result = shared_server.run(graph.to_api()).raise_for_error()
        assert shared_server.output_files(result, load.id) or result.outputs[load.id]["images"]


def test_links_that_lead_out_of_the_allowed_folders_are_not_followed(shared_server, outside):
    folder = shared_server.input_dir / "with_links"
    make_dataset(folder, count=2)
    subject = folder / "10_subject"
    (subject / "linked.png").symlink_to(outside["private"] / "10_subject" / "0.png")  # an image out
    (folder / "linked_folder").symlink_to(outside["private"] / "10_subject")  # a folder out
    (subject / "1.txt").unlink()
    (subject / "1.txt").symlink_to(outside["private"] / "10_subject" / "1.txt")  # a caption out
    graph = Graph()
    load = graph.node("LoadDataset", **{**WIDGETS, "folder": "with_links", "stop_on_errors": False})
    train_items = graph.node("PreviewAny", source=load[1])  # the report text
    log_start = shared_server.log_offset()
    result = shared_server.run(graph.to_api()).raise_for_error()
    log = shared_server.log_text(since=log_start)
    assert "linked.png: a link that leads out" in log and "linked_folder: a link that leads out" in log
    assert "skipped caption" in log and "1.txt" in log
    report = "".join(result.outputs[train_items.id]["text"])
    assert "2 images" in report, report  # the two real ones; nothing from the private folder


def test_on_loopback_an_absolute_folder_anywhere_still_works(comfy_server: ComfyServer, outside):
    graph, _ = run_load(comfy_server, str(outside["private"]))
    assert comfy_server.run(graph.to_api()).ok

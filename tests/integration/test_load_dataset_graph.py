"""LoadDataset in a real ComfyUI server: listed with its tooltips, runs in a graph, previews its
contact sheet, re-runs only when the folder's files change, stops with a readable error, and reads clips
(the clip report and a frame strip per clip on the contact sheet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.clip_files import frame_picture, write_animation, write_frame_folder, write_video
from tools.comfy_server import ComfyServer, PromptRejected
from tools.graph import Graph

pytestmark = pytest.mark.comfy

LOAD, PREVIEW = "1", "2"
# API graphs must give every widget a value (the canvas fills in the defaults; the API does not).
WIDGETS = dict(
    folder="", resolution=64, enable_bucketing=True, bucket_step=8, min_bucket_side=0, max_bucket_side=0,
    center_crop=True, background="white", trigger_word="ohwx", shuffle_tags=False, keep_tokens=1,
    caption_dropout_rate=0.0, tag_dropout_rate=0.0, blacklist="", prepend_tags="", append_tags="",
    underscores_to_spaces=True, max_tags=0, deduplicate=True, on_bad_file="error", stop_on_errors=True,
    sheet_images=16, frame_count=17, frame_stride=1, target_fps=0.0, frame_start="head", clip_windows=1,
    short_clips="as_bad_file",
)  # fmt: skip


def make_dataset(folder: Path, count: int = 5, captions: bool = True) -> None:
    rng = np.random.default_rng(1)
    for index in range(count):
        path = folder / "10_subject" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((96, 64 + 8 * index), Image.Resampling.BICUBIC).save(path)
        if captions:
            path.with_suffix(".txt").write_text(f"smiling, pose{index}")


def load_graph(folder: str, **inputs: object) -> Graph:
    graph = Graph()
    load = graph.node("LoadDataset", **{**WIDGETS, "folder": folder, **inputs})
    graph.node("PreviewImage", images=load[2])
    return graph


def test_load_dataset_is_listed_with_tooltips(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info("LoadDataset")["LoadDataset"]
    assert info["display_name"] == "Load Dataset" and info["category"] == "LoRA Lab/Dataset"
    assert info["output"] == ["LORALAB_DATASET", "STRING", "IMAGE"]
    required = info["input"]["required"]
    assert required["folder"][0] == "STRING" and required["on_bad_file"][0] == "COMBO"
    assert list(required) == list(WIDGETS)
    assert all(spec[1].get("tooltip") for spec in required.values())


def test_runs_in_a_graph_and_reruns_only_when_files_change(comfy_server: ComfyServer) -> None:
    folder = comfy_server.input_dir / "lld_run"
    make_dataset(folder)

    first = comfy_server.run(load_graph("lld_run").to_api()).raise_for_error()
    assert LOAD in first.node_seconds
    [sheet] = comfy_server.output_files(first, PREVIEW)
    with Image.open(sheet) as image:
        assert image.width >= 64 and image.height >= 64
    assert first.outputs[LOAD]["images"], "the node previews its contact sheet"

    again = comfy_server.run(load_graph("lld_run").to_api()).raise_for_error()
    assert LOAD in again.cached_nodes and LOAD not in again.node_seconds

    (folder / "10_subject" / "0.txt").write_text("frowning, pose0")
    changed = comfy_server.run(load_graph("lld_run").to_api()).raise_for_error()
    assert LOAD in changed.node_seconds


def test_missing_folder_is_refused_before_running(comfy_server: ComfyServer) -> None:
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.run(load_graph("lld_no_such_folder").to_api())
    assert "lld_no_such_folder" in str(rejected.value) and "does not exist" in str(rejected.value)


def test_dataset_errors_stop_the_graph_with_the_reason(comfy_server: ComfyServer) -> None:
    make_dataset(comfy_server.input_dir / "lld_uncaptioned", captions=False)
    result = comfy_server.run(load_graph("lld_uncaptioned", trigger_word="").to_api())
    assert result.status == "error"
    assert "DatasetError" in (result.error or "") and "no trigger word" in (result.error or "")


def test_clips_give_the_clip_report_and_a_frame_strip_each(comfy_server: ComfyServer) -> None:
    from trainer_core.data.captions import CaptionOptions
    from trainer_core.data.dataset import DatasetOptions
    from trainer_core.data.dataset_report import ReportOptions, load_checked_dataset
    from trainer_core.pictures.contact_sheet import contact_sheet_image

    folder = comfy_server.input_dir / "lld_clips"
    write_video(folder / "walk.mp4", 50, fps=24, size=(160, 96))
    (folder / "walk.txt").write_text("a walk")
    write_animation(folder / "spin.gif", 20, fps=10)
    write_frame_folder(folder / "steps", 18)
    (folder / "steps.txt").write_text("steps")
    frame_picture(5).save(folder / "still.png")
    choices = dict(frame_count=10, frame_start="uniform", clip_windows=2, target_fps=12.0)
    graph = Graph()
    load = graph.node("LoadDataset", **{**WIDGETS, "folder": "lld_clips", **choices})
    report = graph.node("PreviewAny", source=load[1])
    preview = graph.node("PreviewImage", images=load[2])
    result = comfy_server.run(graph.to_api()).raise_for_error()

    text = result.outputs[report.id]["text"][0]
    assert "Clips: 3 clip(s) giving 6 training window(s), and 1 image(s)" in text, text
    assert ("walk.mp4: 50 frames, 2.1 s at 24 fps, 160x96; trains 2 window(s) of 9 frames: frames 0-16 every 2, "
            "frames 33-49 every 2") in text, text
    assert "spin.gif: 20 frames, 2.0 s at 10 fps, 80x48; trains 2 window(s) of 9 frames: frames 0-8, frames 11-19" \
        in text, text
    assert "steps: 18 frames, no frame rate (a folder of frames), 80x48; trains 2 window(s) of 9 frames" in text
    assert "frame_count 10 snapped down to 9" in text
    [sheet] = comfy_server.output_files(result, preview.id)
    options = DatasetOptions(resolution=64, bucket_step=8, **choices)  # the node's widgets, as trainer_core options
    dataset, local_report = load_checked_dataset(folder, options, CaptionOptions(trigger_word="ohwx"),
                                                 ReportOptions(sheet_images=16))
    expected = np.asarray(contact_sheet_image(dataset, local_report), dtype=np.int16)
    with Image.open(sheet) as image:
        shown = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert shown.shape == expected.shape and np.abs(shown - expected).max() <= 1  # strips and labels as rendered
    strips = [thumb for thumb in local_report.thumbnails if thumb.width > 3 * thumb.height]
    assert len(strips) == 6  # one per clip window; the still image is a plain thumbnail

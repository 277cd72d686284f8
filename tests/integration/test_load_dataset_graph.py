"""LoadDataset in a real ComfyUI server: listed with its tooltips, runs in a graph, previews its
contact sheet, re-runs only when the folder's files change, stops with a readable error, reads clips
(the clip report and a frame strip per clip on the contact sheet), and flags blurred and darkened
pictures by name in its report and on its contact sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.clip_files import frame_picture, write_animation, write_frame_folder, write_video
from tests.helpers.quality_pictures import blurred, brightness, save, sharp_picture
from tools.comfy_server import ComfyServer, PromptRejected
from tools.graph import Graph
from trainer_core.pictures import contact_sheet

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
    optional = info["input"]["optional"]  # appended after the first release: API graphs without them still run
    assert list(required) + list(optional) == [*WIDGETS, "quality_checks"]
    assert list(optional) == ["frame_count", "frame_stride", "target_fps", "frame_start", "clip_windows",
                              "short_clips", "quality_checks"]
    assert all(spec[1].get("tooltip") for spec in [*required.values(), *optional.values()])


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


def test_a_blurred_and_a_darkened_copy_are_flagged_by_name_and_framed_on_the_sheet(comfy_server: ComfyServer) -> None:
    folder = comfy_server.input_dir / "lld_quality"
    names = ["1_sharp", "2_blurred", "3_sharp", "4_darkened", "5_sharp", "6_sharp"]
    pictures = [sharp_picture((192, 128), seed=seed) for seed in range(4)]
    images = [pictures[0], blurred(pictures[0]), pictures[1], brightness(pictures[1], 0.3), pictures[2], pictures[3]]
    for name, image in zip(names, images, strict=True):
        save(image, folder / f"{name}.png")
        (folder / f"{name}.txt").write_text("smiling, outdoors")
    graph = load_graph("lld_quality")
    report = graph.node("PreviewAny", source=graph.handle(LOAD)[1])

    result = comfy_server.run(graph.to_api()).raise_for_error()

    text = result.outputs[report.id]["text"][0]
    blurry = next(line for line in text.splitlines() if "Blurry:" in line)
    dark = next(line for line in text.splitlines() if "Too dark:" in line)
    assert "1 image(s) (variance of the Laplacian below 100" in blurry and "2_blurred.png (" in blurry
    assert "1 image(s) (mean luminance below 50 of 255)" in dark and "4_darkened.png (" in dark
    assert "_sharp" not in blurry + dark
    [sheet_file] = comfy_server.output_files(result, PREVIEW)
    with Image.open(sheet_file) as image:
        sheet = np.asarray(image.convert("RGB"))
    cell = 128  # thumbnails of the report's default size, 3 columns
    magenta = []
    for position in range(len(names)):
        left = contact_sheet._GAP + (position % 3) * (cell + contact_sheet._GAP)
        top = contact_sheet._HEADER_HEIGHT + (position // 3) * (cell + contact_sheet._LABEL_HEIGHT + contact_sheet._GAP)
        pixels = sheet[top : top + cell, left : left + cell]
        # the IMAGE's floats become bytes again when ComfyUI saves the preview: within 1 of the colour
        close = np.abs(pixels.astype(int) - np.array(contact_sheet.MAGENTA)).max(axis=-1) <= 1
        magenta.append(int(close.sum()))
    assert magenta[1] > 2 * cell and magenta[3] > 2 * cell, magenta  # a frame around each flagged picture
    assert magenta[0] == magenta[2] == magenta[4] == magenta[5] == 0, magenta

"""The LoadDataset node inside ComfyUI's own Python: schema, validation, fingerprint and execution.

ComfyUI is imported in-process (tests/helpers/comfy_inproc.py) and the node is run the way
ComfyUI's executor runs V3 nodes: on a locked class clone with its hidden inputs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
load_pack = pytest.importorskip("comfy_inproc", reason="the in-process ComfyUI helper is missing").load_pack

pytestmark = pytest.mark.comfy

DEFAULTS = dict(
    folder="", resolution=64, enable_bucketing=True, bucket_step=8, min_bucket_side=0, max_bucket_side=0,
    center_crop=True, background="white", trigger_word="", shuffle_tags=False, keep_tokens=1,
    caption_dropout_rate=0.0, tag_dropout_rate=0.0, blacklist="", prepend_tags="", append_tags="",
    underscores_to_spaces=True, max_tags=0, deduplicate=True, on_bad_file="error", stop_on_errors=True,
    sheet_images=16, frame_count=17, frame_stride=1, target_fps=0.0, frame_start="head", clip_windows=1,
    short_clips="as_bad_file", quality_checks=True,
)  # fmt: skip


@pytest.fixture(scope="module")
def node() -> type:
    load_pack()
    from lora_lab.nodes.load_dataset import LoadDataset

    return LoadDataset


@pytest.fixture
def comfy_dirs(tmp_path: Path) -> Iterator[Path]:
    """ComfyUI's input and temp folders pointed into the test's own folder."""
    import folder_paths

    saved = folder_paths.get_input_directory(), folder_paths.get_temp_directory()
    (tmp_path / "input").mkdir()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    folder_paths.set_temp_directory(str(tmp_path / "temp"))
    yield tmp_path / "input"
    folder_paths.set_input_directory(saved[0])
    folder_paths.set_temp_directory(saved[1])


def make_dataset(folder: Path, count: int = 6, captions: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / "10_subject" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((80 + 8 * index, 72), Image.Resampling.BICUBIC).save(path)
        if captions:
            path.with_suffix(".txt").write_text(f"smiling, red_hair, pose{index}")
    return folder


def run(node: type, **inputs):  # type: ignore[no-untyped-def]
    from comfy_api.internal import make_locked_method_func

    node.VALIDATE_CLASS()
    clone = node.PREPARE_CLASS_CLONE({})
    return make_locked_method_func(node, "execute", clone)(**{**DEFAULTS, **inputs})


def test_schema_names_and_tooltips(node: type) -> None:
    from lora_lab.trainer_core.data.captions import CaptionOptions
    from lora_lab.trainer_core.data.dataset import DatasetOptions
    from lora_lab.trainer_core.fields import help_text

    schema = node.define_schema()
    assert (schema.node_id, schema.display_name, schema.category) == (
        "LoadDataset",
        "Load Dataset",
        "LoRA Lab/Dataset",
    )
    inputs = {item.id: item for item in schema.inputs}
    assert list(inputs) == list(DEFAULTS)
    assert all(item.tooltip for item in schema.inputs)
    assert inputs["resolution"].tooltip == help_text(DatasetOptions, "resolution")
    assert inputs["keep_tokens"].tooltip == help_text(CaptionOptions, "keep_tokens")
    assert [output.io_type for output in schema.outputs] == ["LORALAB_DATASET", "STRING", "IMAGE"]


def test_quality_checks_can_be_turned_off(node: type, comfy_dirs: Path) -> None:
    from tests.helpers.quality_pictures import blurred, save, sharp_picture

    save(sharp_picture(), comfy_dirs / "pics" / "sharp.png")
    save(blurred(sharp_picture()), comfy_dirs / "pics" / "soft.png")
    checked = run(node, folder="pics", trigger_word="ohwx").result[1]
    unchecked = run(node, folder="pics", trigger_word="ohwx", quality_checks=False).result[1]
    assert "Blurry: 1 image(s)" in checked and "soft.png (" in checked
    assert "Blurry" not in unchecked and "quality_checks is off" in unchecked


def test_validation_is_cheap_and_names_the_fix(node: type, comfy_dirs: Path) -> None:
    make_dataset(comfy_dirs / "cats")
    good = dict(folder="cats", background="white", resolution=64, enable_bucketing=True, bucket_step=8,
                min_bucket_side=0, max_bucket_side=0)  # fmt: skip
    assert node.validate_inputs(**good) is True
    assert node.validate_inputs(**{**good, "folder": str(comfy_dirs / "cats")}) is True
    missing = node.validate_inputs(**{**good, "folder": "dogs"})
    assert str(comfy_dirs / "dogs") in missing and "does not exist" in missing
    assert "Enter the dataset folder" in node.validate_inputs(**{**good, "folder": "  "})
    assert "not a colour" in node.validate_inputs(**{**good, "background": "purplish"})
    assert "use 512 or 576" in node.validate_inputs(**{**good, "resolution": 520, "bucket_step": 64})
    linked = {name: None for name in good}
    assert node.validate_inputs(**linked) is True


def test_fingerprint_follows_the_folders_files(node: type, comfy_dirs: Path) -> None:
    folder = make_dataset(comfy_dirs / "cats", count=2)
    first = node.fingerprint_inputs(**{**DEFAULTS, "folder": "cats"})
    assert node.fingerprint_inputs(**{**DEFAULTS, "folder": "cats"}) == first
    (folder / "10_subject" / "0.txt").write_text("changed caption")
    assert node.fingerprint_inputs(**{**DEFAULTS, "folder": "cats"}) != first
    assert np.isnan(node.fingerprint_inputs(resolution=64))  # folder linked from another node


def test_execute_gives_dataset_report_and_contact_sheet(node: type, comfy_dirs: Path) -> None:
    make_dataset(comfy_dirs / "cats")
    output = run(node, folder="cats", trigger_word="ohwx", shuffle_tags=True, blacklist="smiling")
    dataset, report, sheet = output.result

    assert len(dataset.items) == 6 and dataset.sample_count == 60
    assert dataset.root == (comfy_dirs / "cats").resolve()
    assert dataset.caption_options.trigger_word == "ohwx" and dataset.caption_options.is_random
    assert dataset.caption_for(dataset.items[0]) == "ohwx, red hair, pose0"
    assert "6 images, 60 samples per epoch" in report and "'ohwx'" in report
    assert sheet.dtype.is_floating_point and sheet.ndim == 4 and sheet.shape[0] == 1 and sheet.shape[3] == 3
    assert 0.0 <= float(sheet.min()) and float(sheet.max()) <= 1.0
    assert output.ui is not None
    image = dataset.load_image(dataset.items[0])
    assert image.shape == (dataset.items[0].bucket[1], dataset.items[0].bucket[0], 3)


def test_errors_stop_the_node_unless_told_otherwise(node: type, comfy_dirs: Path) -> None:
    from lora_lab.trainer_core.data.dataset import DatasetError

    make_dataset(comfy_dirs / "uncaptioned", captions=False)
    with pytest.raises(DatasetError, match="no trigger word") as error:
        run(node, folder="uncaptioned")
    assert "stop_on_errors" in str(error.value)
    dataset, report, _ = run(node, folder="uncaptioned", stop_on_errors=False).result
    assert len(dataset.items) == 6 and "ERRORS (1)" in report


def test_bad_option_combinations_are_reported_as_dataset_errors(node: type, comfy_dirs: Path) -> None:
    from lora_lab.trainer_core.data.dataset import DatasetError

    make_dataset(comfy_dirs / "cats")
    with pytest.raises(DatasetError, match="tag_dropout_rate"):
        run(node, folder="cats", tag_dropout_rate=2.0)
    with pytest.raises(DatasetError, match="background"):
        run(node, folder="cats", background="not a colour")

"""The AutoCaption node inside ComfyUI's own Python: its model folder, schema, validation, execution,
progress bar and Cancel. The captioner is a tiny WD14-style tagger built here."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tools.tiny_captioners import build_tiny_tagger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
load_pack = pytest.importorskip("comfy_inproc", reason="the in-process ComfyUI helper is missing").load_pack
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.comfy

DEFAULTS = dict(
    style="tags", tagger="tiny_tagger", caption_model="none", mode="ignore", general_threshold=0.35,
    character_threshold=0.85, max_tags=30, prompt="", max_new_tokens=75, batch_size=4,
    write_sidecar_files=False, trust_remote_code=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def node() -> type:
    load_pack()
    from lora_lab.nodes.auto_caption import AutoCaption

    return AutoCaption


@pytest.fixture
def captioners(node: type, tmp_path: Path) -> Iterator[Path]:
    """ComfyUI's 'captioners' model folder pointed at the test's own folder, with a tiny tagger in it."""
    import folder_paths

    root = tmp_path / "models" / "captioners"
    build_tiny_tagger(root / "tiny_tagger")
    saved = folder_paths.folder_names_and_paths["captioners"]
    folder_paths.folder_names_and_paths["captioners"] = ([str(root)], set())
    yield root
    folder_paths.folder_names_and_paths["captioners"] = saved


def make_dataset(folder: Path):  # type: ignore[no-untyped-def]
    from lora_lab.trainer_core.data.dataset import DatasetOptions, load_dataset

    folder.mkdir(parents=True)
    for name, colour in (("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255))):
        Image.new("RGB", (64, 64), colour).save(folder / f"{name}.png")
    (folder / "red.txt").write_text("my_cat", encoding="utf-8")
    return load_dataset(folder, DatasetOptions(resolution=64))


def run(node: type, **inputs):  # type: ignore[no-untyped-def]
    from comfy_api.internal import make_locked_method_func

    node.VALIDATE_CLASS()
    clone = node.PREPARE_CLASS_CLONE({})
    return make_locked_method_func(node, "execute", clone)(**{**DEFAULTS, **inputs})


def test_captioners_is_a_model_folder_comfyui_knows(node: type) -> None:
    import folder_paths

    paths = folder_paths.get_folder_paths("captioners")
    assert str(Path(folder_paths.models_dir) / "captioners") in paths


def test_schema_lists_installed_models_with_tooltips(node: type, captioners: Path) -> None:
    (captioners / "tiny_blip").mkdir()
    (captioners / "tiny_blip" / "config.json").write_text("{}")
    (captioners / ".cache").mkdir()
    schema = node.define_schema()
    assert (schema.node_id, schema.display_name, schema.category) == (
        "AutoCaption",
        "Auto Caption",
        "LoRA Lab/Dataset",
    )
    inputs = {item.id: item for item in schema.inputs}
    assert list(inputs) == ["dataset", *DEFAULTS]
    assert all(item.tooltip for item in schema.inputs)
    assert inputs["tagger"].options == ["none", "tiny_blip", "tiny_tagger"]
    assert inputs["tagger"].default == "tiny_tagger" and inputs["caption_model"].default == "tiny_blip"
    assert [output.io_type for output in schema.outputs] == ["LORALAB_DATASET", "STRING"]


def test_validation_names_the_folder_and_what_to_put_there(
    node: type, captioners: Path, tmp_path: Path
) -> None:
    import folder_paths

    check = dict(style="tags", tagger="tiny_tagger", caption_model="none", mode="ignore")
    assert node.validate_inputs(**check) is True
    assert node.validate_inputs(style=None, tagger=None, caption_model=None, mode=None) is True
    missing = node.validate_inputs(**{**check, "tagger": "wd-vit-tagger-v3"})
    assert "No captioner folder 'wd-vit-tagger-v3'" in missing and str(captioners) in missing
    assert "needs an image-to-text model" in node.validate_inputs(**{**check, "style": "natural"})
    folder_paths.folder_names_and_paths["captioners"] = ([str(tmp_path / "empty")], set())
    nothing = node.validate_inputs(**{**check, "tagger": "none"})
    assert "No captioner is installed in" in nothing and "model.onnx + selected_tags.csv" in nothing


def test_execute_captions_and_previews(node: type, captioners: Path, tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "data")
    output = run(node, dataset=dataset, write_sidecar_files=True)
    captioned, text = output.result
    captions = {item.image_path.stem: item.caption for item in captioned.items}
    assert captions["red"] == "my_cat"
    assert captions["green"].startswith("hatsune_miku, green_background, simple_background")
    assert (tmp_path / "data" / "blue.txt").read_text(encoding="utf-8").startswith("blue_background")
    assert "Captioned 2 of 3 images" in text and "green.png: hatsune miku, green background" in text
    assert output.ui is not None and output.ui.as_dict() == {"text": (text,)}
    assert all(item.caption != captions["green"] for item in dataset.items)  # the input is untouched


def test_progress_bar_moves_per_batch(
    node: type, captioners: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import comfy.utils

    updates: list[tuple[int, int]] = []

    class Recorder:
        def __init__(self, total: int, node_id: str | None = None) -> None:
            self.total = total

        def update_absolute(self, value: int, total: int | None = None, preview: object = None) -> None:
            updates.append((value, total or self.total))

    monkeypatch.setattr(comfy.utils, "ProgressBar", Recorder)
    run(node, dataset=make_dataset(tmp_path / "data"), batch_size=1)
    assert updates[-3:] == [(0, 2), (1, 2), (2, 2)]


def test_cancel_stops_before_anything_is_written(node: type, captioners: Path, tmp_path: Path) -> None:
    import comfy.model_management as model_management

    dataset = make_dataset(tmp_path / "data")
    model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(model_management.InterruptProcessingException):
            run(node, dataset=dataset, write_sidecar_files=True)
    finally:
        model_management.interrupt_current_processing(False)
    assert sorted(path.name for path in (tmp_path / "data").glob("*.txt")) == ["red.txt"]


def test_a_broken_model_folder_is_named_when_run(node: type, captioners: Path, tmp_path: Path) -> None:
    from lora_lab.trainer_core.captioning import CaptionerModelError

    (captioners / "tiny_tagger" / "selected_tags.csv").unlink()
    with pytest.raises(CaptionerModelError, match=r"tiny_tagger has no selected_tags\.csv"):
        run(node, dataset=make_dataset(tmp_path / "data"))

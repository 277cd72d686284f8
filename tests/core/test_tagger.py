"""The WD14-style tagger back-end on a tiny ONNX tagger built here (tools/tiny_captioners.py) whose
answers are known by construction: thresholds, ordering, image preparation, the CUDA-to-CPU fallback
and the errors that name a broken model folder. (The ``models`` fixture is in conftest.py.)"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.core.test_captioners import BLUE, GREEN, RED, WHITE, solid
from tools.tiny_captioners import EXPECTED_SCORES, build_tiny_tagger
from trainer_core.captioning import CaptionerModelError, TaggerOptions, load_wd14_tagger, prepare_image

pytest.importorskip("onnxruntime")

FIXED_TAGS = ["simple_background", "solo", "looking_at_viewer", "smile", "open_mouth"]  # 0.9 .. 0.36


# --- WD14 tagger -----------------------------------------------------------------------------------


def test_tagger_names_the_colour_and_sorts_tags_by_confidence(models: Path) -> None:
    tagger = load_wd14_tagger(models / "tagger")
    red, blue = tagger.tag([solid(RED), solid(BLUE)])
    assert [tag.name for tag in red] == ["red_background", *FIXED_TAGS]
    assert [tag.name for tag in blue] == ["blue_background", *FIXED_TAGS]
    assert red[0].score > 0.99
    assert [round(tag.score, 2) for tag in red[1:]] == [
        round(EXPECTED_SCORES[name], 2) for name in FIXED_TAGS
    ]
    assert tagger.caption([solid(RED)]) == ["red_background, " + ", ".join(FIXED_TAGS)]


def test_rating_tags_are_never_output_even_when_surest(models: Path) -> None:
    tagger = load_wd14_tagger(models / "tagger", TaggerOptions(general_threshold=0.0, max_tags=0))
    names = [tag.name for tag in tagger.tag([solid(WHITE)])[0]]
    assert not {"general", "sensitive", "questionable", "explicit"} & set(names)
    assert "blush" in names  # everything else passes a threshold of 0


def test_general_threshold_decides_which_tags_are_kept(models: Path) -> None:
    image = solid(RED)
    default = load_wd14_tagger(models / "tagger").caption([image])[0]
    assert "open_mouth" in default and "blush" not in default  # 0.36 > 0.35 > 0.3
    strict = load_wd14_tagger(models / "tagger", TaggerOptions(general_threshold=0.45)).tag([image])[0]
    assert [tag.name for tag in strict] == [
        "red_background",
        "simple_background",
        "solo",
        "looking_at_viewer",
    ]


def test_characters_have_their_own_threshold_and_come_first(models: Path) -> None:
    default = load_wd14_tagger(models / "tagger").tag([solid(GREEN)])[0]
    assert [tag.name for tag in default][:2] == ["hatsune_miku", "green_background"]
    assert "kasane_teto" not in [tag.name for tag in default]  # 0.8 < 0.85, though far above 0.35
    lenient = load_wd14_tagger(models / "tagger", TaggerOptions(character_threshold=0.75)).tag(
        [solid(GREEN)]
    )[0]
    assert [tag.name for tag in lenient][:3] == ["hatsune_miku", "kasane_teto", "green_background"]


def test_max_tags_keeps_the_surest(models: Path) -> None:
    two = load_wd14_tagger(models / "tagger", TaggerOptions(max_tags=2)).caption([solid(RED)])
    assert two == ["red_background, simple_background"]
    unlimited = load_wd14_tagger(models / "tagger", TaggerOptions(max_tags=0, general_threshold=0.2))
    assert len(unlimited.tag([solid(RED)])[0]) == 7  # red + six fixed tags down to blush (0.3)


def test_images_are_prepared_like_the_wd_taggers_do() -> None:
    wide = Image.new("RGB", (40, 20), RED)
    array = prepare_image(wide, 32)
    assert array.shape == (32, 32, 3) and array.dtype == np.float32
    assert array[16, 16].tolist() == [0.0, 0.0, 255.0]  # BGR, 0..255
    assert array[0, 16].tolist() == [255.0, 255.0, 255.0]  # padded to a square with white
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert prepare_image(transparent, 8).min() == 255.0  # transparency flattened onto white


def test_non_square_images_are_padded_not_stretched(models: Path) -> None:
    tagger = load_wd14_tagger(models / "tagger")
    thin_red = Image.new("RGB", (64, 4), RED)  # mostly white once padded to a square
    assert tagger.caption([thin_red])[0].startswith("white_background")


def test_a_model_exported_for_one_image_at_a_time_still_takes_batches(models: Path) -> None:
    tagger = load_wd14_tagger(models / "tagger_batch1")
    captions = tagger.caption([solid(RED), solid(GREEN), solid(BLUE)])
    assert [caption.split(", ")[0] for caption in captions] == [
        "red_background",
        "hatsune_miku",
        "blue_background",
    ]


def test_the_input_size_is_read_from_the_onnx_model(tmp_path: Path) -> None:
    build_tiny_tagger(tmp_path / "t48", size=48)
    assert load_wd14_tagger(tmp_path / "t48").input_size == 48


class _GpuSessionThatFails:
    """Looks like a session on onnxruntime's CUDA provider whose every run fails."""

    def __init__(self, real: object) -> None:
        self._real = real

    def get_inputs(self):  # type: ignore[no-untyped-def]
        return self._real.get_inputs()  # type: ignore[attr-defined]

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def run(self, *args: object) -> None:
        raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")


def test_a_cuda_provider_that_fails_to_start_falls_back_to_the_cpu(
    models: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime

    real_session = onnxruntime.InferenceSession

    def session(path: str, providers: list) -> object:
        if any("CUDA" in str(provider) for provider in providers):
            raise RuntimeError("libcudnn.so.9: cannot open shared object file")
        return real_session(path, providers=providers)

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    with caplog.at_level(logging.WARNING):
        tagger = load_wd14_tagger(models / "tagger", device="cuda:0")
    assert tagger.providers == ["CPUExecutionProvider"]
    assert "CUDA provider failed" in caplog.text and "libcudnn" in caplog.text
    assert tagger.caption([solid(RED)])[0].startswith("red_background")


def test_a_cuda_session_that_fails_to_run_is_rebuilt_on_the_cpu(
    models: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime

    real_session = onnxruntime.InferenceSession

    def session(path: str, providers: list) -> object:
        if any("CUDA" in str(provider) for provider in providers):
            return _GpuSessionThatFails(real_session(path, providers=["CPUExecutionProvider"]))
        return real_session(path, providers=providers)

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    tagger = load_wd14_tagger(models / "tagger", device="cuda")
    with caplog.at_level(logging.WARNING):
        assert tagger.caption([solid(RED)])[0].startswith("red_background")
    assert "GPU run failed" in caplog.text and tagger.providers == ["CPUExecutionProvider"]


def test_a_tagger_folder_without_its_tags_csv_is_named(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "half_tagger"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((models / "tagger" / "model.onnx").read_bytes())
    with pytest.raises(
        CaptionerModelError,
        match=r"half_tagger has no selected_tags\.csv.*model\.onnx and selected_tags\.csv",
    ):
        load_wd14_tagger(folder)


def test_a_damaged_onnx_file_is_named(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "damaged"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"this is not an onnx model")
    (folder / "selected_tags.csv").write_text((models / "tagger" / "selected_tags.csv").read_text())
    with pytest.raises(CaptionerModelError, match=r"cannot load .*damaged/model\.onnx.*download it again"):
        load_wd14_tagger(folder)


def test_a_tags_csv_from_another_model_is_refused(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mismatch"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((models / "tagger" / "model.onnx").read_bytes())
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n1,only_one,0,5\n")
    tagger = load_wd14_tagger(folder)
    with pytest.raises(CaptionerModelError, match=r"gives 16 scores per image but .* lists 1 tags"):
        tagger.caption([solid(RED)])


def test_a_tags_csv_without_the_columns_is_refused(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "columns"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((models / "tagger" / "model.onnx").read_bytes())
    (folder / "selected_tags.csv").write_text("id,tag\n1,cat\n")
    with pytest.raises(
        CaptionerModelError, match=r"selected_tags\.csv has columns \['id', 'tag'\], not name and category"
    ):
        load_wd14_tagger(folder)


def test_without_onnxruntime_the_error_names_the_pip_command(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        load_wd14_tagger(models / "tagger")


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(CaptionerModelError, match="general_threshold"):
        TaggerOptions(general_threshold=1.5)
    with pytest.raises(CaptionerModelError, match="max_tags"):
        TaggerOptions(max_tags=-1)

"""Captioner back-ends on tiny models built here (tools/tiny_captioners.py): a WD14-style ONNX tagger
whose answers are known by construction, and tiny BLIP and ViT+GPT-2 image-to-text models."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.tiny_captioners import EXPECTED_SCORES, build_tiny_blip, build_tiny_tagger, build_tiny_vit_gpt2
from trainer_core.captioning import (
    CaptionerModelError,
    TaggerOptions,
    VisionLanguageOptions,
    build_captioner,
    combine_captions,
    detect_model_kind,
    load_vision_language_captioner,
    load_wd14_tagger,
    prepare_image,
    vision_language,
    wd14,
)

pytest.importorskip("onnxruntime")

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
FIXED_TAGS = ["simple_background", "solo", "looking_at_viewer", "smile", "open_mouth"]  # 0.9 .. 0.36


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (24, 24)) -> Image.Image:
    return Image.new("RGB", size, colour)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("captioners")
    build_tiny_tagger(root / "tagger")
    build_tiny_tagger(root / "tagger_batch1", dynamic_batch=False)
    build_tiny_blip(root / "blip")
    build_tiny_vit_gpt2(root / "vit_gpt2")
    return root


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


# --- transformers image-to-text -----------------------------------------------------------------


def test_blip_captions_each_image_of_a_batch(models: Path) -> None:
    captioner = load_vision_language_captioner(models / "blip", VisionLanguageOptions(max_new_tokens=3))
    assert (
        captioner.caption([solid(RED), solid(BLUE, (30, 20)), solid(GREEN)]) == ["square square square"] * 3
    )
    shorter = load_vision_language_captioner(models / "blip", VisionLanguageOptions(max_new_tokens=2))
    assert shorter.caption([solid(RED)]) == ["square square"]


def test_a_blip_prompt_starts_the_sentence(models: Path) -> None:
    options = VisionLanguageOptions(prompt="a picture of", max_new_tokens=2)
    captioner = load_vision_language_captioner(models / "blip", options)
    assert captioner.caption([solid(RED)]) == ["a picture of square square"]


def test_a_vision_encoder_decoder_folder_without_a_joint_processor_loads(models: Path) -> None:
    captioner = load_vision_language_captioner(models / "vit_gpt2", VisionLanguageOptions(max_new_tokens=3))
    assert type(captioner.model).__name__ == "VisionEncoderDecoderModel"
    assert captioner.caption([solid(RED), solid(BLUE)]) == ["square square square"] * 2
    prompted = load_vision_language_captioner(models / "vit_gpt2", VisionLanguageOptions(prompt="a photo of"))
    with pytest.raises(CaptionerModelError, match="takes no prompt"):
        prompted.caption([solid(RED)])


def test_a_model_folder_without_weights_is_named(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no_weights"
    folder.mkdir()
    for name in ("config.json", "processor_config.json"):
        (folder / name).write_bytes((models / "blip" / name).read_bytes())
    with pytest.raises(CaptionerModelError, match=r"no_weights has no weights \(model\.safetensors"):
        load_vision_language_captioner(folder)


def test_damaged_weights_are_named(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "damaged_blip"
    folder.mkdir()
    for path in (models / "blip").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CaptionerModelError, match=r"cannot load the model in .*damaged_blip"):
        load_vision_language_captioner(folder)


def test_a_model_that_cannot_write_text_is_refused(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path / "vit_only"
    ViTModel(
        ViTConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=32,
            patch_size=8,
        )
    ).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    with pytest.raises(
        CaptionerModelError, match=r"(not an image-to-text model|no tokenizer|cannot load the tokenizer)"
    ):
        load_vision_language_captioner(folder)


def test_an_unknown_model_type_names_the_transformers_version(models: Path, tmp_path: Path) -> None:
    import json

    folder = tmp_path / "future_model"
    folder.mkdir()
    for path in (models / "blip").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "captioner_from_the_future"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CaptionerModelError, match=r"This is transformers \d"):
        load_vision_language_captioner(folder)


@pytest.mark.parametrize(
    ("version", "keyword"), [("4.50.3", "torch_dtype"), ("4.56.0", "dtype"), ("5.0.0rc1", "dtype")]
)
def test_the_dtype_keyword_follows_the_transformers_version(version: str, keyword: str) -> None:
    class FakeTransformers:
        __version__ = version

    assert vision_language._dtype_argument(FakeTransformers) == keyword


# --- styles and folders -------------------------------------------------------------------------


def test_styles_pick_and_combine_the_back_ends(models: Path) -> None:
    language = VisionLanguageOptions(max_new_tokens=2)
    tags = build_captioner("tags", models / "tagger", models / "blip", describer_options=language)
    natural = build_captioner("natural", models / "tagger", models / "blip", describer_options=language)
    mixed = build_captioner(
        "mixed", models / "tagger", models / "blip", TaggerOptions(max_tags=2), describer_options=language
    )
    assert tags.describer is None and natural.tagger is None  # only what the style uses is loaded
    assert tags.caption([solid(RED)])[0].startswith("red_background, simple_background")
    assert natural.caption([solid(RED)]) == ["square square"]
    assert mixed.caption([solid(RED)]) == ["red_background, simple_background, square square"]


def test_a_style_without_its_model_says_which_is_missing(models: Path) -> None:
    with pytest.raises(CaptionerModelError, match="'mixed' needs an image-to-text model"):
        build_captioner("mixed", models / "tagger", None)
    with pytest.raises(CaptionerModelError, match="'tags' needs a WD14 tagger"):
        build_captioner("tags", None, models / "blip")


def test_a_folder_given_in_the_wrong_role_says_where_it_belongs(models: Path) -> None:
    with pytest.raises(
        CaptionerModelError,
        match="holds an image-to-text model, not a WD14 tagger: choose it as the caption model",
    ):
        build_captioner("tags", models / "blip", None)


def test_folder_kinds_and_missing_folders(models: Path, tmp_path: Path) -> None:
    assert detect_model_kind(models / "tagger") == "tagger"
    assert detect_model_kind(models / "blip") == "vision_language"
    with pytest.raises(CaptionerModelError, match=r"captioner folder .*nowhere does not exist.*model\.onnx"):
        detect_model_kind(tmp_path / "nowhere")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.ckpt").write_bytes(b"")
    with pytest.raises(
        CaptionerModelError, match=r"holds weights\.ckpt: neither model\.onnx nor config\.json"
    ):
        detect_model_kind(tmp_path / "odd")


def test_combine_captions() -> None:
    assert combine_captions("tags", "a, b", "A cat.") == "a, b"
    assert combine_captions("natural", "a, b", "A cat.") == "A cat."
    assert combine_captions("mixed", "a, b", "A cat.") == "a, b, A cat."
    assert combine_captions("mixed", "", "A cat.") == "A cat."


def test_captioners_never_import_comfyui() -> None:
    blocked = ["comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "execution", "nodes"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import trainer_core.captioning, trainer_core.captioning.wd14, trainer_core.captioning.vision_language\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], check=True)


def test_wd14_module_exports_the_category_numbers() -> None:
    assert (wd14.RATING_CATEGORY, wd14.GENERAL_CATEGORY, wd14.CHARACTER_CATEGORY) == (9, 0, 4)

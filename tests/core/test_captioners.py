"""Captioner back-ends on tiny models built here (tools/tiny_captioners.py): tiny BLIP and ViT+GPT-2
image-to-text models, and the styles and folders that pick and combine the back-ends (the WD14
tagger's own tests are in test_tagger.py; the ``models`` fixture is in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from trainer_core.captioning import (
    CaptionerModelError,
    TaggerOptions,
    VisionLanguageOptions,
    build_captioner,
    combine_captions,
    detect_model_kind,
    load_vision_language_captioner,
    vision_language,
    wd14,
)

pytest.importorskip("onnxruntime")

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (24, 24)) -> Image.Image:
    return Image.new("RGB", size, colour)


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

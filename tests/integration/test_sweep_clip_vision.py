"""The sweep's CLIP vision scorer runs on ComfyUI's own ``ClipVisionModel`` (in-process, CPU).

ComfyUI's CLIPVisionLoader picks its config from the file's key layout, and its smallest is ViT-L (300M
weights), too large to build here; so this test builds ComfyUI's ``ClipVisionModel`` from a tiny config in a
temporary clip_vision folder, with random weights. A random model cannot judge likeness: the test shows
that the scores come from it (every dataset image and cell goes through its ``encode_image``) and that the
report and the PNG info name it; the scores' claims are tested with the model-free scorer on the toy
(test_sweep_recommend.py). The dataset's features are kept in the encoding cache: a second sweep of the same
images encodes none of them, and a changed image alone is encoded again."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.helpers.comfy_inproc import import_comfy, load_pack
from tests.helpers.tiny_clip_vision import tiny_clip_vision
from tools.toy_scenes import write_concept_dataset


@pytest.fixture(scope="module")
def clip_vision(tmp_path_factory):
    import_comfy()
    return tiny_clip_vision(tmp_path_factory.mktemp("models"))


@pytest.fixture(autouse=True)
def user_folder(tmp_path, monkeypatch):
    """ComfyUI's user folder (the encoding cache's home) in this test's own folder, as --user-directory sets it."""
    import_comfy()
    import folder_paths

    monkeypatch.setattr(folder_paths, "user_directory", str(tmp_path / "user"))
    return tmp_path / "user"


def test_a_connected_clip_vision_model_scores_the_cells(clip_vision, tmp_path, monkeypatch):
    pack = load_pack()
    from lora_lab.nodes import sweep_scoring
    from lora_lab.trainer_core.data.dataset import DatasetOptions, load_dataset

    dataset = load_dataset(write_concept_dataset(tmp_path / "rings", count=4), DatasetOptions(resolution=64))
    seen = []
    encode = clip_vision.encode_image
    monkeypatch.setattr(clip_vision, "encode_image", lambda images, **kw: seen.append(len(images)) or encode(images, **kw))
    rng = np.random.default_rng(0)
    cells = [[rng.random((64, 64, 3), dtype=np.float32) for _ in range(3)] for _ in range(2)]
    verdict = sweep_scoring.score_sweep(cells, [("my_lora", "sks, a ring"), ("my_lora", "a ring")], [0.0, 0.5, 1.0],
                                        "sks", dataset, None, None, clip_vision, set())
    assert pack is not None and seen == [4, 3, 3], "the dataset and each row went through the CLIP vision model"
    assert verdict.scorer == "CLIP vision" and verdict.info["scorer"] == "CLIP vision"
    assert verdict.lines[0].startswith("scores: CLIP vision")
    (recommendation,) = verdict.recommendations
    assert recommendation.concept[0] == 0 and recommendation.bleed[0] == 0
    assert all(np.isfinite(recommendation.concept)) and all(np.isfinite(recommendation.bleed))
    assert verdict.plot.shape == (320, 512, 3)


def test_a_second_sweep_of_the_same_dataset_takes_its_clip_vision_features_from_the_cache(
        clip_vision, tmp_path, monkeypatch, capsys, user_folder):
    load_pack()
    from lora_lab.nodes import sweep_scoring
    from lora_lab.trainer_core.data.dataset import DatasetOptions, load_dataset

    folder = write_concept_dataset(tmp_path / "rings", count=4)
    seen = []
    encode = clip_vision.encode_image
    monkeypatch.setattr(clip_vision, "encode_image", lambda images, **kw: seen.append(len(images)) or encode(images, **kw))
    rng = np.random.default_rng(1)
    cells = [[rng.random((64, 64, 3), dtype=np.float32) for _ in range(3)] for _ in range(2)]

    def sweep():
        seen.clear()
        dataset = load_dataset(folder, DatasetOptions(resolution=64))
        verdict = sweep_scoring.score_sweep(cells, [("my_lora", "sks, a ring"), ("my_lora", "a ring")],
                                            [0.0, 0.5, 1.0], "sks", dataset, None, None, clip_vision, set())
        console = capsys.readouterr().out
        return verdict.recommendations[0], list(seen), console

    first, calls, console = sweep()
    assert calls == [4, 3, 3] and "CLIP vision features of 4 dataset images: 0 cached, 4 encoded" in console
    again, calls, console = sweep()
    assert calls == [3, 3], "the dataset went through the CLIP vision model again"
    assert "CLIP vision features of 4 dataset images: 4 cached, 0 encoded" in console
    np.testing.assert_array_equal(again.concept, first.concept)
    np.testing.assert_array_equal(again.bleed, first.bleed)

    changed = sorted(folder.glob("*.png"))[1]
    with Image.open(changed) as image:
        ImageOps.invert(image.convert("RGB")).save(changed)  # the same file name, another picture
    after_change, calls, console = sweep()
    assert calls == [1, 3, 3] and "3 cached, 1 encoded" in console
    assert not np.array_equal(after_change.concept, first.concept)  # the new picture counts
    shutil.rmtree(user_folder)  # clearing the cache: everything encoded afresh gives the same scores, up to
    cold, calls, _ = sweep()     # float32 rounding (the model saw a batch of 4 here, of 1 and of 4 before: 2e-8)
    assert calls == [4, 3, 3]
    np.testing.assert_allclose(cold.concept, after_change.concept, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cold.bleed, after_change.bleed, rtol=0, atol=1e-6)

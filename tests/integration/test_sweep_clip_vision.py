"""The sweep's CLIP vision scorer runs on ComfyUI's own ``ClipVisionModel`` (in-process, CPU).

ComfyUI's CLIPVisionLoader picks its config from the file's key layout, and its smallest is ViT-L (300M
weights), too large to build here; so this test builds ComfyUI's ``ClipVisionModel`` from a tiny config in a
temporary clip_vision folder, with random weights. A random model cannot judge likeness: the test shows
that the scores come from it (every dataset image and cell goes through its ``encode_image``) and that the
report and the PNG info name it; the scores' claims are tested with the model-free scorer on the toy
(test_sweep_recommend.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.comfy_inproc import import_comfy, load_pack
from tests.helpers.tiny_clip_vision import tiny_clip_vision
from tools.toy_scenes import write_concept_dataset


@pytest.fixture(scope="module")
def clip_vision(tmp_path_factory):
    import_comfy()
    return tiny_clip_vision(tmp_path_factory.mktemp("models"))


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

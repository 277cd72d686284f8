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
import torch
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


def clip_sweep(tmp_path):
    """A one-clip dataset (9 frames) and a row of clip cells: random frames (the baseline), random frames but the
    clip's own first frame, the clip's own frames; (dataset, grid rows of strips, clips by (row, column))."""
    from lora_lab.nodes import clip_cells
    from lora_lab.trainer_core.data.dataset import DatasetOptions, load_dataset

    from tests.helpers.clip_files import write_video

    write_video(tmp_path / "clips" / "walk.mp4", 9, fps=16, size=(64, 64))
    (tmp_path / "clips" / "walk.txt").write_text("sks, walking")
    dataset = load_dataset(tmp_path / "clips", DatasetOptions(resolution=64, frame_count=9, frame_start="head"))
    (item,) = dataset.items
    own = dataset.load_frames(item)  # [9, 64, 64, 3]
    baseline = np.random.default_rng(1).random(own.shape, dtype=np.float32)
    first_only = baseline.copy()
    first_only[0] = own[0]
    row_clips = [baseline, first_only, own]
    return dataset, [[clip_cells.frame_strip(clip) for clip in row_clips]], {(0, c): clip for c, clip in enumerate(row_clips)}


def test_clip_cells_score_as_the_mean_of_their_frames_against_the_datasets_clips(clip_vision, tmp_path, monkeypatch):
    """On a video model each cell is a clip: it is scored on the frames its strip shows (first, last, two between),
    as the mean of their embeddings, against the dataset's clip windows scored the same way. A cell whose frames
    are the dataset clip's own is at the dataset (concept 1); one that matches only in its first frame gets part
    of the way; the scored frames come from the clips, not from the strip pictures in the grid."""
    load_pack()
    from lora_lab.nodes import sweep_scoring

    dataset, rows, clips = clip_sweep(tmp_path)
    seen = []
    encode = clip_vision.encode_image
    monkeypatch.setattr(clip_vision, "encode_image", lambda images, **kw: seen.append(len(images)) or encode(images, **kw))
    verdict = sweep_scoring.score_sweep(rows, [("my_lora", "sks, walking")], [0.0, 0.5, 1.0], "sks", dataset, None,
                                        None, clip_vision, set(), clips=clips)
    assert seen == [4, 12], "the dataset clip's 4 strip frames, then the row's 3 cells x 4 frames"
    (recommendation,) = verdict.recommendations
    assert recommendation.concept[0] == 0
    assert recommendation.concept[2] == pytest.approx(1.0, abs=1e-3)  # the dataset's own frames: at the dataset
    assert 0.05 < recommendation.concept[1] < 0.9  # one of four frames matches: part of the way
    assert recommendation.strength is not None and verdict.scorer == "CLIP vision"


def test_a_clip_sweeps_recommendation_goes_into_the_file_save_lora_wrote_with_musubi_names(clip_vision, tmp_path,
                                                                                           monkeypatch):
    """Save LoRA's key_names 'musubi-tuner (lora_unet_)' renames a HunyuanVideo LoRA's keys in the file; the sweep
    after it gets the LoRA as trained and writes its recommendation into that renamed file, tensors unchanged."""
    load_pack()
    from lora_lab.nodes import key_formats, save_checkpoint, sweep_scoring
    from lora_lab.trainer_core.adapters.export import LoRAWeights, load_lora

    generator = torch.Generator().manual_seed(0)
    trained = LoRAWeights({"diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight": torch.randn(4, 8, generator=generator),
                           "diffusion_model.double_blocks.0.img_attn_qkv.lora_B.weight": torch.randn(24, 4, generator=generator)},
                          {"lora_lab_key_format": "diffusion_pipe", "ss_trigger_word": "sks"})
    monkeypatch.setattr(save_checkpoint, "loras_folder", lambda: tmp_path / "loras")
    (tmp_path / "loras").mkdir()
    saved, name = save_checkpoint.SaveCheckpoint.execute(trained, "hv_clip", "error", key_names=key_formats.KEY_NAMES[1]).args
    assert dict(saved) == dict(trained)  # the canvas goes on with the LoRA as trained
    written = load_lora(tmp_path / "loras" / name)
    dataset, rows, clips = clip_sweep(tmp_path)
    verdict = sweep_scoring.score_sweep(rows, [("my_lora", "sks, walking")], [0.0, 0.5, 1.0], "sks", dataset, None,
                                        None, clip_vision, set(), clips=clips)
    line = sweep_scoring.write_into_file(saved, "my_lora", verdict)
    after = load_lora(tmp_path / "loras" / name)
    (recommendation,) = verdict.recommendations
    assert line == f"{name}: lora_lab_recommended_strength = {recommendation.strength:g} written into its metadata"
    assert after.metadata["lora_lab_recommended_strength"] == f"{recommendation.strength:g}"
    assert after.metadata["lora_lab_key_format"] == "musubi"
    assert set(after) == set(written) == {f"lora_unet_double_blocks_0_img_attn_qkv.{t}"
                                          for t in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert all(torch.equal(after[key], written[key]) for key in written)


def test_a_second_sweep_on_the_same_dataset_does_not_encode_the_dataset_again(clip_vision, tmp_path, monkeypatch):
    """The dataset's features are kept in the encoding cache: run again (same dataset, same cell size) only the
    cells are encoded, with the same scores; another cell size encodes the dataset again, a new caption does not."""
    load_pack()
    from lora_lab.nodes import sweep_scoring

    dataset, rows, clips = clip_sweep(tmp_path)
    seen = []
    encode = clip_vision.encode_image
    monkeypatch.setattr(clip_vision, "encode_image", lambda images, **kw: seen.append(len(images)) or encode(images, **kw))
    args = ([("my_lora", "sks, walking")], [0.0, 0.5, 1.0], "sks", dataset, None, None, clip_vision, set())
    first = sweep_scoring.score_sweep(rows, *args, clips=clips)
    again = sweep_scoring.score_sweep(rows, *args, clips=clips)
    assert seen == [4, 12, 12]
    assert again.recommendations[0].concept == first.recommendations[0].concept
    smaller = {key: clip[:, :32, :32] for key, clip in clips.items()}
    sweep_scoring.score_sweep([[cell[:32, :32] for cell in rows[0]]], *args, clips=smaller)
    assert seen == [4, 12, 12, 4, 12]  # another cell size: the dataset at that size
    (tmp_path / "clips" / "walk.txt").write_text("sks, walking fast")  # a changed caption: the same pixels
    from lora_lab.trainer_core.data.dataset import DatasetOptions, load_dataset

    changed = load_dataset(tmp_path / "clips", DatasetOptions(resolution=64, frame_count=9, frame_start="head"))
    sweep_scoring.score_sweep(rows, args[0], args[1], args[2], changed, None, None, clip_vision, set(), clips=clips)
    assert seen == [4, 12, 12, 4, 12, 12]  # features are of pixels: a new caption encodes only the cells

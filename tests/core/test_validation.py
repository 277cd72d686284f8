"""Validation in the core: the held-out split, and the loss on held-out images during training (tiny
diffusers models, no ComfyUI). The claims a user sees are tested in a real ComfyUI in
tests/integration/test_validation.py; these pin the parts on their own."""

from __future__ import annotations

import pytest
import torch

from tests.core.test_training_core import HashTextEncoder, SyntheticData, tiny_models
from tools.synthetic_dataset import make_shapes_dataset
from trainer_core.adapters.config import LoRAConfig
from trainer_core.data.dataset import DatasetError, DatasetOptions, load_dataset
from trainer_core.data.validation_split import split_for_validation
from trainer_core.models.diffusers_backend import DiffusersLatentCodec, DiffusersUNetDenoiser
from trainer_core.training.checkpoints import CheckpointPolicy
from trainer_core.training.config import TrainingConfig
from trainer_core.training.loop import train_lora
from trainer_core.training.validation import ValidationConfig


def train(validation_data=None, checkpoints=None, steps=7, resume_from=None, **validation):
    unet, vae, alphas = tiny_models()
    return train_lora(
        DiffusersUNetDenoiser(unet, alphas), HashTextEncoder(), DiffusersLatentCodec(vae, 1.0), SyntheticData(),
        LoRAConfig(rank=4, alpha=4, dropout=0.2),  # dropout draws from the global stream: validation must not
        TrainingConfig(steps=steps, learning_rate=2e-3, seed=3, ema_decay=0.9),
        checkpoints=checkpoints, validation_data=validation_data, validation=ValidationConfig(**validation),
        resume_from=resume_from,
    )


def test_validation_is_deterministic_and_leaves_training_as_it_was(tmp_path):
    held_out = SyntheticData(count=2, size=32)
    plain = train()
    first = train(held_out, every=3)
    second = train(held_out, every=3)

    assert sorted(first.validation_losses) == [3, 6, 7]  # every 3 steps and the last
    assert first.validation_losses == second.validation_losses
    assert len(set(first.validation_losses.values())) == 3  # the LoRA changes, so does its held-out loss
    assert plain.validation_losses == {} and plain.best_checkpoint is None
    for name, tensor in plain.weights.items():
        assert torch.equal(tensor, first.weights[name]), f"validation changed what trained: {name}"


def test_best_checkpoint_is_the_lowest_validated_file_and_keep_last_keeps_it(tmp_path):
    policy = CheckpointPolicy(tmp_path, "run", every=2, keep_last=1)
    result = train(SyntheticData(count=2, size=32), checkpoints=policy, every=0)

    assert sorted(result.validation_losses) == [2, 4, 6, 7]  # checkpoint steps and the last
    step, path = result.best_checkpoint
    assert result.validation_losses[step] == min(result.validation_losses.values())
    assert path == policy.lora_path(step) and path.is_file()
    on_disk = sorted(p.name for p in tmp_path.glob("run_step*.safetensors"))
    assert on_disk == sorted({path.name, policy.lora_path(7).name})  # the last one, and the best one kept


def test_a_resumed_run_continues_the_validation_curve_and_the_best_checkpoint(tmp_path):
    held_out = SyntheticData(count=1, size=32)
    straight = train(held_out, CheckpointPolicy(tmp_path / "straight", "run", every=4), steps=6, every=2)
    halves = CheckpointPolicy(tmp_path / "halves", "run", every=4)
    train(held_out, halves, steps=4, every=2)
    resumed = train(held_out, halves, steps=6, every=2, resume_from=halves.state_path)

    assert sorted(resumed.validation_losses) == [2, 4, 6]  # the steps before the resume are kept
    for step, loss in straight.validation_losses.items():
        assert resumed.validation_losses[step] == pytest.approx(loss, rel=1e-5)
    assert resumed.best_checkpoint[0] == straight.best_checkpoint[0]
    assert resumed.best_checkpoint[1] == halves.lora_path(resumed.best_checkpoint[0])


@pytest.fixture
def five_images(tmp_path):
    make_shapes_dataset(tmp_path / "five", count=5, size=64)
    return load_dataset(tmp_path / "five", DatasetOptions(resolution=64))


def names(dataset):
    return [item.image_path.name for item in dataset.items]


def test_a_share_is_held_out_by_seed_and_never_trained_on(five_images):
    split = split_for_validation(five_images, 0.4, seed=1)
    again = split_for_validation(five_images, 0.4, seed=1)
    other_seeds = {tuple(names(split_for_validation(five_images, 0.4, seed=s).held_out)) for s in range(8)}

    assert len(split.held_out.items) == 2 and len(split.train.items) == 3
    assert names(split.held_out) == names(again.held_out)
    assert len(other_seeds) > 1
    assert not set(names(split.held_out)) & set(names(split.train))
    assert names(split.train) == [n for n in names(five_images) if n in names(split.train)]  # order kept
    assert split.train.content_hash != five_images.content_hash
    assert split_for_validation(five_images, 0.0, seed=1).held_out is None


def test_a_share_below_one_image_rounds_up_to_one_and_says_so(tmp_path):
    make_shapes_dataset(tmp_path / "three", count=3, size=64)
    split = split_for_validation(load_dataset(tmp_path / "three", DatasetOptions(resolution=64)), 0.1, seed=0)
    assert len(split.held_out.items) == 1 and len(split.train.items) == 2
    assert "validation_share 0.1 of 3 images is 0.3 image, rounded up to 1" in split.note


def test_a_share_that_leaves_nothing_to_train_on_is_refused_with_the_fix(five_images):
    with pytest.raises(DatasetError) as refused:
        split_for_validation(five_images, 0.9, seed=0)
    message = str(refused.value)
    assert "validation_share" in message and "holds out 5 of the 5 image(s)" in message
    assert "lower validation_share to 0.8 or less" in message
    assert len(split_for_validation(five_images, 0.8, seed=0).train.items) == 1  # the value it names works


def test_a_validation_dataset_must_be_other_images_and_not_also_a_share(five_images, tmp_path):
    make_shapes_dataset(tmp_path / "other", count=2, size=64, seed=9)
    other = load_dataset(tmp_path / "other", DatasetOptions(resolution=64))
    split = split_for_validation(five_images, 0.0, seed=0, validation_images=other)
    assert split.train is five_images and split.held_out is other

    with pytest.raises(DatasetError, match="validation_share .* is 0.2 and a dataset is connected"):
        split_for_validation(five_images, 0.2, seed=0, validation_images=other)
    with pytest.raises(DatasetError, match="validation_images: 5 of its 5 image.s. are also in the training dataset"):
        split_for_validation(five_images, 0.0, seed=0, validation_images=five_images)

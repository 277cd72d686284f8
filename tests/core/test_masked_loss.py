"""Loss masks: found beside the images (or in their alpha), shown and counted, and weighing the loss.

The exact claim (``test_pixels_under_a_zero_mask_do_not_change_what_the_lora_learns``): with masked loss,
changing an image's pixels only where its mask is 0 leaves the trained LoRA bit-identical, when the zero
region covers whole latent cells and neither the encoder nor the network mixes cells. Those two are
what the test chooses: an encoder whose latent cell is the mean of its own 8x8 pixels, and a network
applied to each latent cell on its own. With a real VAE and UNet the masked pixels still reach the
network as context (kohya's masked loss is the same): the loss never asks the LoRA to reproduce them,
but they are part of the input the LoRA sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer_core.adapters.config import LoRAConfig
from trainer_core.data.captions import CaptionOptions
from trainer_core.data.dataset import DatasetOptions, load_dataset
from trainer_core.data.dataset_folder import folder_fingerprint
from trainer_core.data.dataset_report import ReportOptions, load_checked_dataset
from trainer_core.data.masks import masks_note
from trainer_core.pictures.contact_sheet import MASKED_TINT, contact_sheet_image
from trainer_core.training.config import TrainingConfig
from trainer_core.training.loop import TrainingError, train_lora
from trainer_core.training.losses import diffusion_loss
from trainer_core.training.masked_loss import latent_masks

OPTIONS = DatasetOptions(resolution=64, bucket_step=64)


def picture(path: Path, colour, size=(64, 64)) -> Path:
    Image.new("RGB", size, colour).save(path)
    path.with_suffix(".txt").write_text("sks, a picture", encoding="utf-8")
    return path


def half_mask(path: Path, zero_from: int = 32, size=(64, 64)) -> Path:
    """White (train) left of column ``zero_from``, black (ignore) from it on."""
    mask = np.full((size[1], size[0]), 255, np.uint8)
    mask[:, zero_from:] = 0
    Image.fromarray(mask).save(path)
    return path


def test_mask_files_are_masks_not_images_and_a_file_wins_over_alpha(tmp_path: Path):
    picture(tmp_path / "a.png", (200, 20, 20))
    half_mask(tmp_path / "a_mask.png")
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:16, :, 3] = 0  # the top quarter is transparent
    Image.fromarray(rgba).save(tmp_path / "b.png")
    Image.fromarray(rgba).save(tmp_path / "c.png")
    half_mask(tmp_path / "c_mask.png")  # c has both: the file wins
    picture(tmp_path / "face_mask.png", (20, 20, 200))  # no 'face.*' beside it: a training image

    dataset = load_dataset(tmp_path, OPTIONS)
    by_name = {item.image_path.name: item for item in dataset.items}
    assert sorted(by_name) == ["a.png", "b.png", "c.png", "face_mask.png"]
    assert by_name["a.png"].mask_path == tmp_path / "a_mask.png"
    assert by_name["b.png"].mask_path is None and by_name["b.png"].alpha_mask
    assert by_name["c.png"].mask_path == tmp_path / "c_mask.png"
    assert by_name["face_mask.png"].mask_path is None and not by_name["face_mask.png"].alpha_mask

    a = dataset.load_mask(by_name["a.png"])
    assert a.shape == (64, 64) and (a[:, :32] == 1).all() and (a[:, 32:] == 0).all()
    b = dataset.load_mask(by_name["b.png"])
    assert (b[:16] == 0).all() and (b[16:] == 1).all()
    assert (dataset.load_mask(by_name["c.png"]) == a).all()
    assert dataset.load_mask(by_name["face_mask.png"]) is None


def test_a_changed_mask_changes_the_folder_fingerprint(tmp_path: Path):
    picture(tmp_path / "a.png", (200, 20, 20))
    before = folder_fingerprint(tmp_path)
    half_mask(tmp_path / "a_mask.png")
    assert folder_fingerprint(tmp_path) != before


def test_colour_and_damaged_masks_are_named_and_a_wrong_size_is_resized_with_a_warning(tmp_path: Path):
    picture(tmp_path / "colour.png", (200, 20, 20))
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "colour_mask.png")
    picture(tmp_path / "damaged.png", (20, 200, 20))
    (tmp_path / "damaged_mask.png").write_bytes(b"not a png at all")
    picture(tmp_path / "grey_rgb.png", (20, 20, 200))
    grey = np.zeros((64, 64, 3), np.uint8)
    grey[:, :32] = 255
    Image.fromarray(grey).save(tmp_path / "grey_rgb_mask.png")  # grey saved as RGB: a mask
    picture(tmp_path / "small.png", (200, 200, 20))
    half_mask(tmp_path / "small_mask.png", zero_from=16, size=(32, 32))

    dataset, report = load_checked_dataset(tmp_path, OPTIONS, CaptionOptions(), ReportOptions())
    names = {path.name for path in report.bad_masks}
    assert names == {"colour_mask.png", "damaged_mask.png"}
    assert "colour picture, not a greyscale or alpha mask" in report.bad_masks[tmp_path / "colour_mask.png"]
    summary = report.summary()
    assert "Masks: 2 of 4 images have a loss mask" in summary
    assert "colour_mask.png: a colour picture" in summary and "damaged_mask.png" in summary
    assert "mask " in summary and "small_mask.png is 32x32, its image 64x64: resized" in summary
    small = next(item for item in dataset.items if item.image_path.name == "small.png")
    resized = dataset.load_mask(small)
    assert resized.shape == (64, 64) and resized[:, :28].min() > 0.99 and resized[:, 36:].max() < 0.01
    colour = next(item for item in dataset.items if item.image_path.name == "colour.png")
    assert dataset.load_mask(colour) is None  # trains on every pixel


def test_the_contact_sheet_tints_what_the_mask_leaves_out(tmp_path: Path):
    picture(tmp_path / "a.png", (240, 240, 240))
    half_mask(tmp_path / "a_mask.png")
    dataset, report = load_checked_dataset(tmp_path, OPTIONS, CaptionOptions(), ReportOptions(thumbnail_size=64))
    sheet = np.asarray(contact_sheet_image(dataset, report), dtype=float)
    cell = sheet[22 + 8 : 22 + 56, 4 : 4 + 64]  # the first cell, inside its frame
    trained, ignored = cell[:, 8:24].reshape(-1, 3).mean(0), cell[:, 40:56].reshape(-1, 3).mean(0)
    assert np.abs(trained - 240).max() < 3  # the kept half is the picture as it is
    assert ignored[2] > ignored[0] + 40 and np.linalg.norm(ignored - 240) > 80  # the other half tinted blue
    assert MASKED_TINT[2] > MASKED_TINT[0]


def test_masked_loss_without_any_mask_is_refused_and_unused_masks_are_said(tmp_path: Path):
    picture(tmp_path / "a.png", (200, 20, 20))
    plain = load_dataset(tmp_path, OPTIONS)
    with pytest.raises(ValueError, match="masked_loss is on .* but no image has a mask"):
        masks_note(plain.items, masked_loss=True)
    assert masks_note(plain.items, masked_loss=False) is None
    half_mask(tmp_path / "a_mask.png")
    masked = load_dataset(tmp_path, OPTIONS)
    assert "1 image(s) have a loss mask" in masks_note(masked.items, masked_loss=False)
    assert masks_note(masked.items, masked_loss=True) is None


def test_the_mask_is_averaged_over_each_latent_cell(tmp_path: Path):
    picture(tmp_path / "a.png", (200, 20, 20))
    half_mask(tmp_path / "a_mask.png", zero_from=36)  # column 36 is inside the fifth 8-pixel cell
    dataset = load_dataset(tmp_path, OPTIONS)
    (mask,) = latent_masks(dataset, [torch.zeros(4, 8, 8)])
    assert mask.shape == (1, 8, 8)
    assert mask[0, :, :4].eq(1).all() and mask[0, :, 4].eq(0.5).all() and mask[0, :, 5:].eq(0).all()
    (frames,) = latent_masks(dataset, [torch.zeros(16, 1, 8, 8)])  # a video latent [C, T, H, W]
    assert frames.shape == (1, 1, 8, 8)


def test_the_masked_loss_ignores_the_target_under_a_zero_mask():
    """Given the same network output, the loss and its gradient do not depend on the latents where the mask is 0."""
    torch.manual_seed(0)
    estimate = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randn(2, 4, 8, 8)
    sigma = torch.tensor([0.5, 2.0])
    mask = torch.ones(2, 1, 8, 8)
    mask[:, :, :, 4:] = 0
    changed = target.clone()
    changed[..., 4:] += 5.0

    def gradient(latents, m):
        estimate.grad = None
        diffusion_loss(estimate, latents, sigma, "eps", 5.0, mask=m).backward()
        return estimate.grad.clone()

    assert torch.equal(gradient(target, mask), gradient(changed, mask))
    assert not torch.equal(gradient(target, None), gradient(changed, None))
    # kohya's normalisation: the mean over every element, masked ones counting as 0.
    full = diffusion_loss(estimate, target, sigma, "eps", 0.0, mask=torch.ones_like(mask))
    assert torch.equal(full, diffusion_loss(estimate, target, sigma, "eps", 0.0))


class CellEncoder:
    """A latent codec whose latent cell is the mean of its own 8x8 pixels (and their square): nothing spreads."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.permute(0, 3, 1, 2).float()
        means = torch.nn.functional.avg_pool2d(pixels, 8)
        return torch.cat([means, torch.nn.functional.avg_pool2d(pixels.mean(1, keepdim=True) ** 2, 8)], dim=1)


class CellNetwork(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mix = torch.nn.Linear(5, 32)
        self.out = torch.nn.Linear(32, 4)


class CellDenoiser:
    """An eps denoiser applied to each latent cell on its own (a 1x1 network), text ignored."""

    def __init__(self):
        self.net = CellNetwork()

    network = property(lambda self: self.net)
    prediction = property(lambda self: "eps")
    training_sigmas = property(lambda self: torch.linspace(0.2, 4.0, 20))
    device = property(lambda self: torch.device("cpu"))

    def denoise(self, noisy, sigma, text):
        s = sigma.view(-1, 1, 1, 1)
        features = torch.cat([noisy / (s**2 + 1).sqrt(), s.expand(-1, 1, *noisy.shape[2:])], dim=1)
        eps = self.net.out(torch.tanh(self.net.mix(features.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        return noisy - s * eps


class NoText:
    def encode(self, captions):
        return [{"cross_attn": torch.zeros(1, 1, 4)} for _ in captions]


def _train_on(folder: Path, masked_loss: bool) -> dict[str, torch.Tensor]:
    dataset = load_dataset(folder, OPTIONS)
    result = train_lora(CellDenoiser(), NoText(), CellEncoder(), dataset, LoRAConfig(rank=4, alpha=4, target="all_linear"),
                        TrainingConfig(steps=6, learning_rate=1e-2, masked_loss=masked_loss, min_snr_gamma=0.0),
                        caption_for=dataset.caption_for)
    return dict(result.weights)


def test_pixels_under_a_zero_mask_do_not_change_what_the_lora_learns(tmp_path: Path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    changed = base.copy()
    changed[:, 32:] = rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)  # other pixels where the mask is 0
    for name, pixels in (("base", base), ("changed", changed)):
        (tmp_path / name).mkdir()
        Image.fromarray(pixels).save(tmp_path / name / "a.png")
        half_mask(tmp_path / name / "a_mask.png")

    masked = {name: _train_on(tmp_path / name, masked_loss=True) for name in ("base", "changed")}
    unmasked = {name: _train_on(tmp_path / name, masked_loss=False) for name in ("base", "changed")}
    assert masked["base"].keys() == masked["changed"].keys()
    assert all(torch.equal(masked["base"][key], masked["changed"][key]) for key in masked["base"])
    assert any(masked["base"][k].abs().sum() > 0 for k in masked["base"] if k.endswith("lora_up.weight"))
    assert not all(torch.equal(unmasked["base"][key], unmasked["changed"][key]) for key in unmasked["base"])


def test_the_loop_refuses_masked_loss_when_no_image_has_a_mask(tmp_path: Path):
    picture(tmp_path / "a.png", (200, 20, 20))
    with pytest.raises(TrainingError, match="no image has a mask"):
        _train_on(tmp_path, masked_loss=True)

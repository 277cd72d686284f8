"""The loss options change what training sees, as the guides describe them."""

from __future__ import annotations

import pytest
import torch

from trainer_core.training.losses import (
    add_noise,
    diffusion_loss,
    min_snr_weight,
    prediction_space_factor,
    sample_noise,
    sample_sigmas,
)


def test_prediction_space_error_matches_each_parametrisation():
    torch.manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sigma = torch.tensor([0.1, 1.0, 8.0])
    s = sigma.view(-1, 1, 1, 1)
    wrong = torch.randn(3, 4, 8, 8)  # some network output, in its own space
    # eps: x0_hat = x_t - sigma * eps_hat; error vs noise
    x_t = add_noise(x0, noise, sigma, "eps")
    x0_hat = x_t - s * wrong
    factor = prediction_space_factor(sigma, "eps").view(-1, 1, 1, 1)
    torch.testing.assert_close((x0_hat - x0) * factor, -(wrong - noise))
    # v: x0_hat = x_t/(s^2+1) - v_hat * s/sqrt(s^2+1); target v = (noise - s x0)/sqrt(s^2+1)
    x0_hat = x_t / (s**2 + 1) - wrong * s / (s**2 + 1).sqrt()
    factor = prediction_space_factor(sigma, "v").view(-1, 1, 1, 1)
    torch.testing.assert_close((x0_hat - x0) * factor, -(wrong - (noise - s * x0) / (s**2 + 1).sqrt()), atol=1e-5, rtol=1e-5)
    # flow: x_t = s n + (1-s) x0, x0_hat = x_t - s v_hat, target n - x0
    sigma = torch.tensor([0.1, 0.5, 0.9])
    s = sigma.view(-1, 1, 1, 1)
    x_t = add_noise(x0, noise, sigma, "flow")
    x0_hat = x_t - s * wrong
    factor = prediction_space_factor(sigma, "flow").view(-1, 1, 1, 1)
    torch.testing.assert_close((x0_hat - x0) * factor, -(wrong - (noise - x0)), atol=1e-5, rtol=1e-5)


def test_cosmos_rectified_flow_noises_like_eps_and_learns_the_velocity_of_its_flow_path():
    """Cosmos Predict2: x = x0 + sigma*n (sigma up to 80); the network sees x/(1+sigma) = (1-t)x0 + t*n at
    t = sigma/(sigma+1) and predicts n - x0, so x0_hat = x/(1+sigma) - t*v_hat."""
    torch.manual_seed(0)
    x0, noise, wrong = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sigma = torch.tensor([0.01, 1.0, 80.0])
    s = sigma.view(-1, 1, 1, 1)
    t = s / (s + 1)
    x = add_noise(x0, noise, sigma, "flow_cosmos")
    torch.testing.assert_close(x, x0 + s * noise)
    torch.testing.assert_close(x / (1 + s), (1 - t) * x0 + t * noise)
    x0_hat = x / (1 + s) - t * wrong
    factor = prediction_space_factor(sigma, "flow_cosmos").view(-1, 1, 1, 1)
    torch.testing.assert_close((x0_hat - x0) * factor, -(wrong - (noise - x0)), atol=1e-4, rtol=1e-4)
    assert diffusion_loss(x0_hat, x0, sigma, "flow_cosmos", 0.0).item() == pytest.approx(
        (wrong - (noise - x0)).pow(2).mean().item(), rel=1e-4)


def test_min_snr_weights_cap_the_easy_low_noise_steps():
    sigma = torch.tensor([0.05, 0.3, 1.0, 5.0])  # SNR 400, 11.1, 1, 0.04
    eps = min_snr_weight(sigma, "eps", 5.0)
    torch.testing.assert_close(eps, torch.tensor([5 / 400, 5 / 11.111111, 1.0, 1.0]), rtol=1e-4, atol=0)
    v = min_snr_weight(sigma, "v", 5.0)
    torch.testing.assert_close(v, torch.tensor([5 / 401, 5 / 12.111111, 0.5, 0.04 / 1.04]), rtol=1e-4, atol=0)
    assert torch.equal(min_snr_weight(sigma, "eps", 0.0), torch.ones(4))  # off
    flow = min_snr_weight(torch.tensor([0.02, 0.5, 0.98]), "flow", 5.0)
    assert flow[0] < 0.01 and flow[1] == 1.0 and flow[2] == 1.0


def test_min_snr_keeps_the_loss_finite_at_flows_pure_noise_level():
    """SD3's schedule ends at sigma 1 (pure noise, SNR 0), one draw in 1,000: with min-SNR on (the default
    gamma 5) that draw weighs 1, as the levels next to it do, instead of stopping training with a NaN loss."""
    sigma = torch.tensor([0.999, 1.0])
    assert torch.equal(min_snr_weight(sigma, "flow", 5.0), torch.ones(2))
    x0, estimate = torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8)
    assert torch.isfinite(diffusion_loss(estimate, x0, sigma, "flow", 5.0))


def test_loss_types_weigh_large_errors_differently():
    latents = torch.zeros(2, 1, 2, 2)
    sigma = torch.ones(2)
    small, large = torch.full((1, 1, 2, 2), 0.05), torch.full((1, 1, 2, 2), 3.0)
    estimate = torch.cat([small, large])

    def loss(kind):
        return diffusion_loss(estimate, latents, sigma, "x0", 0.0, kind, huber_c=0.1).item()

    assert loss("mse") == pytest.approx((0.05**2 + 9) / 2)
    assert loss("l1") == pytest.approx((0.05 + 3) / 2)
    huber = loss("huber")
    assert huber < loss("l1") < loss("mse")  # outliers pull least
    with pytest.raises(ValueError, match="loss_type"):
        loss("cosine")


def test_logit_normal_sampling_prefers_middle_noise_levels():
    schedule = torch.linspace(0.001, 1.0, 1000)
    g = torch.Generator().manual_seed(0)
    uniform = sample_sigmas(schedule, 20000, g, "uniform")
    logit = sample_sigmas(schedule, 20000, g, "logit_normal")
    middle = lambda s: ((s > 0.3) & (s < 0.7)).float().mean().item()  # noqa: E731
    assert middle(uniform) == pytest.approx(0.4, abs=0.02)
    assert middle(logit) > 0.55
    assert set(logit.tolist()) <= set(schedule.tolist())  # still the model's own levels


def test_multires_noise_adds_low_frequencies_and_keeps_unit_variance():
    latents = torch.zeros(8, 4, 32, 32)
    plain = sample_noise(latents, torch.Generator().manual_seed(0), 0.0)
    pyramid = sample_noise(latents, torch.Generator().manual_seed(0), 0.0, multires_iterations=6, multires_discount=0.5)
    low = lambda n: torch.nn.functional.avg_pool2d(n, 8).std().item()  # noqa: E731
    assert low(pyramid) > 1.4 * low(plain)  # measured 1.6x with these settings
    assert pyramid.std().item() == pytest.approx(1.0, abs=0.05)
    offset = sample_noise(latents, torch.Generator().manual_seed(0), 0.5)
    channel_means = offset.mean(dim=(2, 3))
    assert channel_means.std().item() > 0.3  # noise offset shifts whole channels


def _spatial_low(noise: torch.Tensor) -> torch.Tensor:
    """Each frame's 8x8-pooled noise: [B, C, T, H/8, W/8] (what a pyramid raises)."""
    batch, channels, frames, height, width = noise.shape
    pooled = torch.nn.functional.avg_pool2d(noise.permute(0, 2, 1, 3, 4).reshape(-1, channels, height, width), 8)
    return pooled.reshape(batch, frames, channels, *pooled.shape[-2:]).permute(0, 2, 1, 3, 4)


def test_multires_noise_on_video_latents_is_a_spatial_pyramid_per_frame():
    latents = torch.zeros(4, 4, 6, 32, 32)  # [B, C, T, H, W]
    plain = sample_noise(latents, torch.Generator().manual_seed(0), 0.0)
    pyramid = sample_noise(latents, torch.Generator().manual_seed(0), 0.0, multires_iterations=6, multires_discount=0.5)
    assert pyramid.shape == latents.shape
    assert _spatial_low(pyramid).std().item() > 1.4 * _spatial_low(plain).std().item()  # low frequencies, as on images
    per_sample_std = pyramid.flatten(1).std(dim=1)
    assert torch.allclose(per_sample_std, torch.ones(4), atol=1e-4)  # rescaled to unit variance per clip
    low = _spatial_low(pyramid)
    # Each latent frame has its own pyramid: the low frequencies of neighbouring frames are unrelated, so
    # a clip's noise is not one picture's noise repeated over time.
    neighbours = torch.corrcoef(torch.stack([low[:, :, :-1].flatten(), low[:, :, 1:].flatten()]))[0, 1].item()
    assert abs(neighbours) < 0.15
    assert pyramid[:, :, 0].sub(pyramid[:, :, 1]).abs().mean().item() > 0.5


def test_multires_noise_on_video_is_deterministic_for_a_seed():
    latents = torch.zeros(2, 4, 3, 16, 24)
    first = sample_noise(latents, torch.Generator().manual_seed(7), 0.1, multires_iterations=4)
    again = sample_noise(latents, torch.Generator().manual_seed(7), 0.1, multires_iterations=4)
    other = sample_noise(latents, torch.Generator().manual_seed(8), 0.1, multires_iterations=4)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_a_one_frame_clip_gets_the_noise_of_the_same_image():
    """An image in a video dataset trains as a one-frame clip: its pyramid noise is the image's, number for number
    (the 4-D path is the one images always had)."""
    image = sample_noise(torch.zeros(2, 4, 16, 16), torch.Generator().manual_seed(3), 0.05, multires_iterations=5)
    clip = sample_noise(torch.zeros(2, 4, 1, 16, 16), torch.Generator().manual_seed(3), 0.05, multires_iterations=5)
    assert torch.equal(clip[:, :, 0], image)

"""The loss of every family in the matrix is in the family's own prediction space, on its own schedule.

Checked against the real model's ``model_sampling`` (what ComfyUI's sampler uses), per family:

1. noising: ``add_noise`` gives what ComfyUI's ``noise_scaling`` feeds the model;
2. target: a network whose raw output is the prediction-space target (eps: the noise; v: alpha*noise -
   sigma*x0; flow and Cosmos's rectified flow: noise - x0; x0: x0) gives x0 back through the bridge's ``denoise`` (ComfyUI's
   ``calculate_input`` / ``calculate_denoised``), the loss is 0 there, and an error ``d`` in that raw
   output costs exactly mean(d^2): the loss is the raw-output MSE;
3. noise levels: ``training_sigmas`` span ``sigma_min`` .. ``sigma_max``, and for flow families uniform
   sampling is uniform in the timestep with the family's shift applied (median = ComfyUI's
   ``percent_to_sigma(0.5)`` = ``sigma(multiplier / 2)``); Cosmos Predict2's rectified flow
   (``ModelType.FLOW_COSMOS``) draws from its EDM schedule (sigma 0.002 .. 80, log-spaced), so uniform
   draws are uniform in log sigma and follow ComfyUI's ``percent_to_sigma``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack, tiny_model_patcher  # noqa: E402
from tiny_families import FAMILIES  # noqa: E402

pytestmark = pytest.mark.comfy

SIGMA_POSITIONS = (0.0, 0.1, 0.5, 0.9, 1.0)  # fractions of the way along training_sigmas
MEDIAN_DRAWS = 40_000
MEDIAN_TOLERANCE = 0.01  # the median of 40k draws is within ~0.005 of the true one (2 standard errors)


@pytest.fixture(scope="module")
def pack():
    return load_pack()


def embedding(family, tokens=6):
    spec = FAMILIES[family]
    length = spec.fixed_tokens or tokens
    g = torch.Generator().manual_seed(3)
    out = {}
    for key, shape in spec.text.items():
        shape = tuple(length if size == "T" else size for size in shape)
        if key.startswith("attention_mask"):
            out[key] = torch.ones((1, *shape))
        else:
            out[key] = torch.randn((1, *shape), generator=g)
    return out


def denoiser_for(pack, family):
    from lora_lab.nodes import bridge

    return bridge.ComfyDenoiser(tiny_model_patcher(family))


def chosen_sigmas(denoiser):
    levels = denoiser.training_sigmas.float()
    return torch.stack([levels[round(p * (levels.shape[0] - 1))] for p in SIGMA_POSITIONS])


def raw_target(prediction, x0, noise, sigma, sigma_data):
    """What the network's raw output must be at (x0, noise, sigma), in ComfyUI's conventions."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    if prediction in ("eps",):
        return noise
    if prediction == "v":  # ComfyUI's V_PREDICTION, sigma_data = 1 for every v family here
        return (sigma_data * noise - s * x0 / sigma_data) * sigma_data / (s**2 + sigma_data**2) ** 0.5
    if prediction in ("flow", "flow_cosmos"):  # Cosmos: the velocity of the path (1-t)*x0 + t*noise
        return noise - x0
    return x0


class FakeNetwork:
    """A diffusion network's forward that returns ``output`` and records the input and timestep it got."""

    def __init__(self, output, seen):
        self.output, self.seen = output, seen

    def __call__(self, xc, t, *args, **kwargs):
        self.seen["xc"], self.seen["t"] = xc, t
        return self.output


@pytest.mark.parametrize("family", list(FAMILIES))
def test_noising_is_comfyuis_noise_scaling(pack, family):
    from lora_lab.trainer_core.training.losses import add_noise

    denoiser = denoiser_for(pack, family)
    ms = denoiser.model_sampling
    g = torch.Generator().manual_seed(1)
    sigma = chosen_sigmas(denoiser)
    shape = (sigma.shape[0], *FAMILIES[family].latent)
    x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    ours = add_noise(x0, noise, sigma, denoiser.prediction)
    comfy = ms.noise_scaling(sigma, noise.clone(), x0)
    torch.testing.assert_close(ours, comfy, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loss_target_is_the_raw_output_that_gives_x0(pack, family):
    from lora_lab.trainer_core.training.losses import add_noise, diffusion_loss

    denoiser = denoiser_for(pack, family)
    assert denoiser.prediction == FAMILIES[family].prediction
    ms = denoiser.model_sampling
    network = denoiser.network
    g = torch.Generator().manual_seed(2)
    sigma = chosen_sigmas(denoiser)[1:-1]  # inside the range: sigma > 0 and (flow) sigma < 1
    text = embedding(family)
    shape = (1, *FAMILIES[family].latent)
    for s in sigma:
        s = s.view(1)
        x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        noisy = add_noise(x0, noise, s, denoiser.prediction)
        target = raw_target(denoiser.prediction, x0, noise, s, float(getattr(ms, "sigma_data", 1.0)))
        error = 0.01 * torch.randn(shape, generator=g)
        for output, expected_loss in ((target, 0.0), (target + error, error.pow(2).mean().item())):
            seen: dict[str, torch.Tensor] = {}
            network.forward = FakeNetwork(output, seen)
            try:
                estimate = denoiser.denoise(noisy, s, text)
            finally:
                del network.forward
            # The network got ComfyUI's scaled input and its timestep for sigma, as in sampling.
            torch.testing.assert_close(seen["xc"].float(), ms.calculate_input(s, noisy), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(seen["t"].float().view(-1), ms.timestep(s).float().view(-1))
            if expected_loss == 0.0:
                torch.testing.assert_close(estimate, x0, rtol=1e-4, atol=1e-4)
            loss = diffusion_loss(estimate, x0, s, denoiser.prediction, min_snr_gamma=0.0).item()
            assert loss == pytest.approx(expected_loss, rel=1e-3, abs=1e-8), (family, float(s))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_sigmas_are_the_familys_schedule_with_its_shift(pack, family):
    import comfy.model_sampling as cms
    from lora_lab.trainer_core.training.losses import sample_sigmas

    denoiser = denoiser_for(pack, family)
    ms = denoiser.model_sampling
    levels = denoiser.training_sigmas.float()
    assert levels.min().item() == pytest.approx(float(ms.sigma_min), rel=1e-6)
    assert levels.max().item() == pytest.approx(float(ms.sigma_max), rel=1e-6)
    if denoiser.prediction == "flow_cosmos":
        assert_cosmos_schedule(denoiser)
    if denoiser.prediction != "flow":
        return
    # Flow: sigma in (0, 1], the timestep the network sees runs up to the family's multiplier.
    assert float(ms.sigma_max) == pytest.approx(1.0)
    assert 0.0 < float(ms.sigma_min) < 0.01
    multiplier = float(getattr(ms, "multiplier", 1.0))  # ModelSamplingFlux: timestep = sigma
    assert float(ms.timestep(torch.tensor(1.0))) == pytest.approx(multiplier)
    settings = getattr(denoiser.base_model.model_config, "sampling_settings", {})
    if isinstance(ms, cms.ModelSamplingDiscreteFlow):
        assert ms.shift == settings.get("shift", 1.0)
        assert ms.multiplier == settings.get("multiplier", 1000)
    else:
        assert isinstance(ms, cms.ModelSamplingFlux)
        assert ms.shift == settings.get("shift", 1.15)
    drawn = sample_sigmas(denoiser.training_sigmas, MEDIAN_DRAWS, torch.Generator().manual_seed(5), "uniform")
    expected = ms.percent_to_sigma(0.5)
    assert float(ms.sigma(torch.tensor(multiplier / 2))) == pytest.approx(expected, abs=1e-6)
    assert drawn.median().item() == pytest.approx(expected, abs=MEDIAN_TOLERANCE), (family, ms.shift)
    # Uniform in the timestep: the quartiles too.
    for q in (0.25, 0.75):
        assert drawn.quantile(q).item() == pytest.approx(
            float(ms.sigma(torch.tensor(q * multiplier))), abs=MEDIAN_TOLERANCE
        ), (family, q)


def assert_cosmos_schedule(denoiser):
    """Cosmos Predict2's own schedule (CosmosT2IPredict2.sampling_settings: sigma 0.002 .. 80), which its
    network sees as the flow time t = sigma/(sigma+1) in (0, 1); uniform draws are uniform in log sigma, so
    their quartiles are ComfyUI's percent_to_sigma at 0.75 / 0.5 / 0.25."""
    ms = denoiser.model_sampling
    assert float(ms.sigma_min) == pytest.approx(0.002) and float(ms.sigma_max) == pytest.approx(80.0)
    t = ms.timestep(denoiser.training_sigmas.float())
    assert 0.0 < t.min().item() < 0.01 and 0.98 < t.max().item() < 1.0
    drawn = sample_sigmas_for(denoiser)
    for q in (0.25, 0.5, 0.75):
        expected = ms.percent_to_sigma(1.0 - q)
        assert drawn.quantile(q).log().item() == pytest.approx(math.log(expected), abs=0.05), q


def sample_sigmas_for(denoiser):
    from lora_lab.trainer_core.training.losses import sample_sigmas

    return sample_sigmas(denoiser.training_sigmas, MEDIAN_DRAWS, torch.Generator().manual_seed(5), "uniform")


@pytest.mark.parametrize(("family", "node", "arguments"), [
    # HiDream: ComfyUI 0.3.75's HiDream class sets sampling_settings twice, the second time to {}, so its own
    # schedule is unshifted (shift 1.0); its workflows set the shift (3.0 Full, 6.0 Dev) with ModelSamplingSD3.
    ("hidream", "ModelSamplingSD3", {"shift": 3.0}),
    ("sd3", "ModelSamplingSD3", {"shift": 6.0}),
    ("auraflow", "ModelSamplingAuraFlow", {"shift": 3.0}),
    ("flux", "ModelSamplingFlux", {"max_shift": 1.15, "base_shift": 0.5, "width": 512, "height": 512}),
])
def test_training_follows_a_model_sampling_node_on_the_canvas(pack, family, node, arguments):
    """A shift set on the canvas (ComfyUI's ModelSampling* nodes patch the MODEL's model_sampling) is the
    schedule training draws from, as it is the one sampling uses."""
    import comfy_extras.nodes_model_advanced as advanced
    from lora_lab.nodes import bridge
    from lora_lab.trainer_core.training.losses import sample_sigmas

    base = tiny_model_patcher(family)
    node_class = getattr(advanced, node)()
    (patched,) = getattr(node_class, node_class.FUNCTION)(base, **arguments)
    ms = patched.get_model_object("model_sampling")
    assert ms is not base.get_model_object("model_sampling")
    denoiser = bridge.ComfyDenoiser(patched)
    assert denoiser.prediction == "flow"
    torch.testing.assert_close(denoiser.training_sigmas, ms.sigmas)
    drawn = sample_sigmas(denoiser.training_sigmas, MEDIAN_DRAWS, torch.Generator().manual_seed(5), "uniform")
    assert drawn.median().item() == pytest.approx(ms.percent_to_sigma(0.5), abs=MEDIAN_TOLERANCE)
    unpatched = base.get_model_object("model_sampling").percent_to_sigma(0.5)
    assert abs(ms.percent_to_sigma(0.5) - unpatched) > 5 * MEDIAN_TOLERANCE  # the node really moved it

"""What Train LoRA shows while it trains: the progress bar and loss text, the live chart's events, sample
images through ComfyUI's own sampler, and the memory estimate before the first step."""

from __future__ import annotations

import time
from typing import Any

import comfy.utils
import torch

from ..trainer_core.adapters.config import LoRAConfig
from ..trainer_core.adapters.inject import adapter_targets
from ..trainer_core.training.config import TrainingConfig
from ..trainer_core.training.live_progress import LiveProgress
from ..trainer_core.training.loop import StepReport, resolve_precision
from ..trainer_core.training.memory_estimate import (
    MemoryEstimate,
    adapter_parameter_count,
    estimate_training_memory,
    layer_shapes,
    linear_inputs,
    memory_advice,
    network_adapter_parameters,
    tensor_bytes,
)
from ..trainer_core.training.text_encoder import find_text_encoder_targets
from . import bridge, sampler

TRAIN_PROGRESS_EVENT = "lora_lab.train_progress"  # web/lora_lab_live.js draws it inside Train LoRA's node
_live_runs: dict[str, dict[str, Any]] = {}  # node id -> its latest run: prompt id, LiveProgress, running


class CanvasProgress:
    """Forwards each step to ComfyUI's progress bar (which also raises on Cancel), shows the loss, and sends
    the live chart's updates (``TRAIN_PROGRESS_EVENT``: step, loss, smoothed loss, learning rate, it/s,
    time left and the new points, at most 4 a second and always the last step) to the canvas."""

    def __init__(self, total: int, node_id: str | None, samples: SampleImages | None = None,
                 live: LiveProgress | None = None):
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.node_id = node_id
        self.last_text = 0.0
        self.samples = samples
        self.live = live or LiveProgress()
        self.prompt_id = _executing_prompt_id()
        if node_id is not None:
            _live_runs[node_id] = {"prompt_id": self.prompt_id, "live": self.live, "running": True}

    def __call__(self, report: StepReport) -> None:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
        preview = None
        if self.samples is not None and self.samples.due(report):
            preview = ("JPEG", self.samples(report), 512)
        self.bar.update_absolute(report.step, report.total, preview=preview)
        update = self.live.update(report)
        if self.node_id is None:
            return
        if update is not None:
            send_event(TRAIN_PROGRESS_EVENT, dict(update, node=self.node_id, prompt_id=self.prompt_id))
        now = time.monotonic()
        if now - self.last_text > 0.5 or report.step == report.total:
            self.last_text = now
            send_text(f"step {report.step}/{report.total}  loss {report.loss:.4f}", self.node_id)

    def close(self) -> None:
        run = _live_runs.get(self.node_id) if self.node_id is not None else None
        if run is not None and run["live"] is self.live:
            run["running"] = False


def live_history(node_id: str) -> dict[str, Any] | None:
    """The latest run of Train LoRA node ``node_id`` so far (for a page opened or reloaded mid-run), or None."""
    run = _live_runs.get(node_id)
    if run is None:
        return None
    return dict(run["live"].history(), node=node_id, prompt_id=run["prompt_id"], running=run["running"])


def _executing_prompt_id() -> str | None:
    try:
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        if context is not None:
            return context.prompt_id
    except ImportError:
        pass
    try:
        from server import PromptServer

        return getattr(PromptServer.instance, "last_prompt_id", None)
    except (ImportError, AttributeError):
        return None


class ConsoleProgress:
    """A tqdm bar in the console: step, loss, learning rate, it/s and time left."""

    def __init__(self, total: int):
        self.total = total
        self.bar: Any = None

    def __call__(self, report: StepReport) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=report.total, initial=report.step - 1, desc="Train LoRA", unit="step",
                            dynamic_ncols=True)
        self.bar.set_postfix(loss=f"{report.loss:.4f}", lr=f"{report.learning_rate:.2e}", refresh=False)
        self.bar.update(report.step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StepListeners:
    """Several ``on_step`` callbacks as one, called in order (put one that may raise, Cancel, last)."""

    def __init__(self, *listeners):
        self.listeners = listeners

    def __call__(self, report: StepReport) -> None:
        for listener in self.listeners:
            listener(report)

    def close(self) -> None:
        for listener in self.listeners:
            close = getattr(listener, "close", None)
            if close is not None:
                close()


class SampleImages:
    """Every N steps, images of the sample prompts through ComfyUI's own sampler, with the LoRA as it is
    at that step (the adapter is live in the training model), shown as the node's preview."""

    def __init__(self, every: int, prompts: list[str], patcher, clip, vae, seed: int, steps: int, cfg: float,
                 size: int, networks: list[torch.nn.Module]):
        self.every, self.prompts, self.patcher, self.vae = every, prompts, patcher, vae
        self.seed, self.steps, self.cfg, self.networks = seed, steps, cfg, networks
        self.size_note: str | None = None  # set when the model cannot draw at ``size``: said before training
        self.width = self.height = size
        if every and prompts:
            self.width, self.height, self.size_note = sampler.fitted_size(patcher, vae, size, size,
                                                                          "TrainLoRA: sample images")
        self.clip = clip
        self.images: list[torch.Tensor] = []
        self.steps_sampled: list[int] = []

    def due(self, report: StepReport) -> bool:
        return bool(self.every and self.prompts) and (report.step % self.every == 0 or report.step == report.total)

    def __call__(self, report: StepReport):
        """Returns a PIL preview of this step's images."""
        from PIL import Image

        was_training = [network.training for network in self.networks]
        for network in self.networks:
            network.eval()  # no LoRA dropout in the pictures
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):  # leave training's random streams alone
                negative = sampler.encode_prompt(self.clip, "")
                batch = []
                for prompt in self.prompts:
                    samples = sampler.ksample(self.patcher, sampler.encode_prompt(self.clip, prompt), negative,
                                             self.seed, self.steps, self.cfg, "euler", "normal", self.width, self.height,
                                             self.vae)
                    batch.append(sampler.decode(self.vae, samples)[0].float().cpu())
        finally:
            for network, mode in zip(self.networks, was_training, strict=True):
                network.train(mode)
        self.images += batch
        self.steps_sampled.append(report.step)
        strip = torch.cat(batch, dim=1).clamp(0, 1)
        return Image.fromarray((strip.numpy() * 255).round().astype("uint8"))

    def output(self) -> torch.Tensor:
        if not self.images:
            return torch.zeros(1, 64, 64, 3)
        return torch.stack(self.images)


def memory_estimate_for(denoiser, text_network, lora_config: LoRAConfig, training: TrainingConfig, optimizer: str,
                        resolution: int, device: torch.device, frames: int = 1) -> MemoryEstimate:
    """The GPU memory estimate of this run: the diffusion network as it will train (and the text encoder,
    when ``text_network`` trains too), at ``resolution`` px and ``frames`` latent frames per item (clips)."""
    network = denoiser.network
    parameters = network_adapter_parameters(network, adapter_targets(network, lora_config, note=False), lora_config)
    base_bytes = tensor_bytes(network)  # the low-precision copy when base_weights asks for one
    if text_network is not None:  # trained too: on the device, with its own LoRA
        shapes = layer_shapes(text_network, find_text_encoder_targets(text_network, training.train_t5))
        parameters += adapter_parameter_count(shapes, lora_config.rank, lora_config.adapter)
        base_bytes += tensor_bytes(text_network)
    return estimate_training_memory(
        base_weight_bytes=base_bytes,
        adapter_parameters=parameters,
        optimizer=optimizer, family=bridge.model_family(denoiser.patcher), batch_size=training.batch_size,
        optimizer_state_on_cpu=training.optimizer_state_on_cpu, ema=training.ema_decay > 0,
        width=resolution, height=resolution, precision=resolve_precision(training.mixed_precision, device),
        gradient_checkpointing=training.gradient_checkpointing, network_linear_inputs=linear_inputs(network),
        latent_frames=frames,
    )


def show_memory_estimate(denoiser, text_network, lora_config: LoRAConfig, training: TrainingConfig,
                          optimizer: str, resolution: int, node_id: str | None, announce: bool = True,
                          frames: int = 1) -> None:
    """Before the first step: the GPU memory this run needs, on the node and in the console (``announce``:
    only one process of a data parallel run says it); stop at once when even the exact parts cannot fit.
    ``frames``: latent frames of the longest clip (1 for images)."""
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    estimate = memory_estimate_for(denoiser, text_network, lora_config, training, optimizer, resolution, device,
                                   frames)
    text = estimate.describe()
    if device.type == "cuda":
        card = comfy.model_management.get_total_memory(device)
        verdict, advice = memory_advice(estimate, card, gradient_checkpointing=training.gradient_checkpointing,
                                        optimizer=optimizer, batch_size=training.batch_size, latent_frames=frames)
        if verdict == "no":
            raise MemoryError(advice)
        if advice:
            text = f"Warning: {advice}"
    else:
        text += f" (this run trains on the {device.type.upper()})"
    if announce:
        print(f"[LoRA Lab] TrainLoRA: {text}", flush=True)
        send_text(text, node_id)


def send_event(event: str, data: dict[str, Any]) -> None:
    """A custom websocket event to the client that queued the running prompt (as ComfyUI sends its
    progress), or to every client when none did; nothing outside a ComfyUI server."""
    try:
        from server import PromptServer

        instance = PromptServer.instance
        instance.send_sync(event, data, getattr(instance, "client_id", None))
    except (ImportError, AttributeError):
        pass


def send_text(text: str, node_id: str | None) -> None:
    if node_id is None:
        return
    try:
        from server import PromptServer

        send = getattr(PromptServer.instance, "send_progress_text", None)
        if send is not None:
            send(text, node_id)
    except (ImportError, AttributeError):
        pass

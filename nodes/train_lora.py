"""TrainLoRA: train a LoRA on the MODEL / CLIP / VAE the canvas already loaded."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..trainer_core.adapters.config import ADAPTER_CHOICES, LoRAConfig
from ..trainer_core.adapters.export import (
    LoRAWeights,
    default_text_key_name,
    sanitize_filename,
    save_lora,
    unique_path,
)
from ..trainer_core.adapters.inject import find_target_modules
from ..trainer_core.fields import default_of, help_text
from ..trainer_core.pictures.plots import loss_curve_image
from ..trainer_core.training.checkpoints import CheckpointPolicy
from ..trainer_core.training.config import MIXED_PRECISION_CHOICES, TrainingConfig
from ..trainer_core.training.loop import (
    NonFiniteLossError,
    StepReport,
    resolve_precision,
    samples_per_epoch,
    train_lora,
)
from ..trainer_core.training.losses import LOSS_TYPES, TIMESTEP_SAMPLING
from ..trainer_core.training.memory import (
    BASE_WEIGHT_CHOICES,
    BASE_WEIGHTS_HELP,
    check_state_on_cpu,
    stored_weight_bytes,
)
from ..trainer_core.training.memory_estimate import (
    adapter_parameter_count,
    estimate_training_memory,
    layer_shapes,
    memory_advice,
    tensor_bytes,
)
from ..trainer_core.training.metadata import training_metadata
from ..trainer_core.training.optimizer_settings import for_optimizer
from ..trainer_core.training.optimizers import OPTIMIZER_CHOICES, OptimizerConfig, check_optimizer_available
from ..trainer_core.training.presets import CUSTOM, PRESET_CHOICES
from ..trainer_core.training.schedulers import SCHEDULER_CHOICES, SchedulerConfig
from ..trainer_core.training.text_encoder import find_text_encoder_targets
from . import bridge
from .types import Dataset, LoraModel, OptimizerSettings

LORA_DROPOUT_MAX = 0.9


def _lora_help(name: str) -> str:
    return help_text(LoRAConfig, name)


def _train_help(name: str) -> str:
    return help_text(TrainingConfig, name)


class _CanvasProgress:
    """Forwards each step to ComfyUI's progress bar (which also raises on Cancel) and shows the loss."""

    def __init__(self, total: int, node_id: str | None, samples: _SampleImages | None = None):
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.node_id = node_id
        self.last_text = 0.0
        self.samples = samples

    def __call__(self, report: StepReport) -> None:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
        preview = None
        if self.samples is not None and self.samples.due(report):
            preview = ("JPEG", self.samples(report), 512)
        self.bar.update_absolute(report.step, report.total, preview=preview)
        now = time.monotonic()
        if self.node_id is not None and (now - self.last_text > 0.5 or report.step == report.total):
            self.last_text = now
            _send_text(f"step {report.step}/{report.total}  loss {report.loss:.4f}", self.node_id)


class _SampleImages:
    """Every N steps, images of the sample prompts through ComfyUI's own sampler, with the LoRA as it is
    at that step (the adapter is live in the training model), shown as the node's preview."""

    def __init__(self, every: int, prompts: list[str], patcher, clip, vae, seed: int, steps: int, cfg: float,
                 size: int, networks: list[torch.nn.Module]):
        self.every, self.prompts, self.patcher, self.vae = every, prompts, patcher, vae
        self.seed, self.steps, self.cfg, self.size, self.networks = seed, steps, cfg, size, networks
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
                negative = bridge.encode_prompt(self.clip, "")
                batch = []
                for prompt in self.prompts:
                    samples = bridge.ksample(self.patcher, bridge.encode_prompt(self.clip, prompt), negative,
                                             self.seed, self.steps, self.cfg, "euler", "normal", self.size, self.size)
                    batch.append(bridge.decode(self.vae, samples)[0].float().cpu())
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


class TrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TrainLoRA",
            display_name="Train LoRA",
            category="LoRA Lab/Training",
            description=(
                "Trains a LoRA on the model the canvas already loaded (the incoming MODEL is left untouched). "
                "Outputs the LoRA for Save LoRA / the strength sweep / LoraModelLoader, the MODEL with the LoRA "
                "applied, the loss curve, and the CLIP to encode prompts with (with the text-encoder LoRA when "
                "text_encoder_lr is above 0)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The base model to train on, from the checkpoint loader."),
                io.Clip.Input("clip", tooltip="Its text encoder: captions are encoded with it, once (every step when "
                              "text_encoder_lr is above 0, through the LoRA trained in it). It is left untouched."),
                io.Vae.Input("vae", tooltip="Its VAE: images are encoded to latents with it, once."),
                Dataset.Input("dataset", tooltip="Images and captions from Load Dataset (or Auto Caption)."),
                io.Combo.Input(
                    "preset", options=list(PRESET_CHOICES), default=CUSTOM,
                    tooltip="Settings from the guides for a goal and model family (quick test; character, style, "
                    "likeness for SD1.5, SDXL, Flux). Choosing one in the canvas fills the fields below (and the "
                    "resolution of a Load Dataset wired straight in); every field stays editable and what trains "
                    "is what the fields say. 'custom' changes nothing.",
                ),
                io.String.Input(
                    "trigger_word", default="",
                    tooltip="Word that calls up the LoRA, put first in every caption. Empty = the dataset's own.",
                ),
                io.Combo.Input("adapter_type", options=list(ADAPTER_CHOICES), default="lora",
                               tooltip=_lora_help("adapter")),
                io.Int.Input("rank", default=default_of(LoRAConfig, "rank"), min=1, max=1024, tooltip=_lora_help("rank")),
                io.Float.Input("alpha", default=default_of(LoRAConfig, "alpha"), min=0.01, max=1024, step=0.5,
                               tooltip=_lora_help("alpha")),
                io.Float.Input("learning_rate", default=default_of(TrainingConfig, "learning_rate"), min=1e-7, max=10.0,
                               step=1e-5, round=1e-7, tooltip=_train_help("learning_rate")),
                io.Float.Input("text_encoder_lr", default=default_of(TrainingConfig, "text_encoder_lr"), min=0.0,
                               max=10.0, step=1e-5, round=1e-7, tooltip=_train_help("text_encoder_lr")),
                io.Int.Input("clip_skip", default=default_of(TrainingConfig, "clip_skip"), min=1, max=12,
                             tooltip=_train_help("clip_skip")),
                io.Combo.Input("optimizer", options=list(OPTIMIZER_CHOICES), default="AdamW",
                               tooltip=help_text(OptimizerConfig, "name")),
                io.Combo.Input("lr_scheduler", options=list(SCHEDULER_CHOICES), default="constant_with_warmup",
                               tooltip=help_text(SchedulerConfig, "name")),
                io.Float.Input("lr_warmup", default=default_of(SchedulerConfig, "warmup"), min=0.0, max=100000.0,
                               step=0.01, tooltip=help_text(SchedulerConfig, "warmup")),
                io.Boolean.Input("allow_8bit_fallback", default=False,
                                 tooltip=help_text(OptimizerConfig, "allow_8bit_fallback")),
                io.Int.Input("steps", default=0, min=0, max=100000, tooltip=_train_help("steps")),
                io.Int.Input("epochs", default=default_of(TrainingConfig, "epochs"), min=1, max=10000,
                             tooltip=_train_help("epochs")),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip=_train_help("batch_size")),
                io.Int.Input("gradient_accumulation", default=1, min=1, max=256,
                             tooltip=_train_help("gradient_accumulation")),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip=_train_help("seed")),
                io.Combo.Input("mixed_precision", options=list(MIXED_PRECISION_CHOICES), default="auto",
                               tooltip=_train_help("mixed_precision")),
                io.Boolean.Input("gradient_checkpointing", default=False, tooltip=_train_help("gradient_checkpointing")),
                io.Float.Input("min_snr_gamma", default=default_of(TrainingConfig, "min_snr_gamma"), min=0.0, max=100.0,
                               step=0.5, tooltip=_train_help("min_snr_gamma")),
                io.Float.Input("noise_offset", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=_train_help("noise_offset")),
                io.Combo.Input("loss_type", options=list(LOSS_TYPES), default="mse", tooltip=_train_help("loss_type")),
                io.Combo.Input("timestep_sampling", options=list(TIMESTEP_SAMPLING), default="uniform",
                               tooltip=_train_help("timestep_sampling")),
                io.Int.Input("multires_noise_iterations", default=0, min=0, max=16,
                             tooltip=_train_help("multires_noise_iterations")),
                io.Combo.Input("target_layers", options=["attention", "all_linear"], default="attention",
                               tooltip=_lora_help("target")),
                io.Float.Input("lora_dropout", default=0.0, min=0.0, max=LORA_DROPOUT_MAX, step=0.05,
                               tooltip=_lora_help("dropout")),
                io.Boolean.Input("rslora", default=False, tooltip=_lora_help("rslora")),
                io.Int.Input("sample_every", default=0, min=0, max=100000,
                             tooltip="Every N steps (and at the end), draw the sample prompts with the LoRA as it is "
                             "then, through ComfyUI's own sampler; shown on the node and returned as 'samples'. 0 = off."),
                io.String.Input("sample_prompts", multiline=True, default="{trigger}",
                                tooltip="Prompts for the sample images, one per line; {trigger} becomes the trigger word."),
                io.Int.Input("sample_steps", default=20, min=1, max=200, tooltip="Sampling steps of the sample images."),
                io.Float.Input("sample_cfg", default=7.0, min=0.0, max=30.0, step=0.1,
                               tooltip="CFG of the sample images (about 7 for SD1.5/SDXL, 1 for Flux)."),
                io.String.Input(
                    "run_name", default="my_lora",
                    tooltip="Name of this training run: checkpoints are saved as models/loras/lora_lab_checkpoints/"
                    "<run_name>_step000100.safetensors (LoraLoader lists them) with a resume state beside them.",
                ),
                io.Int.Input("save_every", default=0, min=0, max=100000,
                             tooltip="Save a checkpoint every N steps (0 = only when you press Cancel)."),
                io.Int.Input("keep_last", default=0, min=0, max=1000,
                             tooltip="Keep only the last N step checkpoints of this run (0 = keep all)."),
                io.Boolean.Input(
                    "resume", default=False,
                    tooltip="Continue the run named run_name from its last checkpoint: LoRA weights, optimizer, "
                    "random state and step counter. Set steps to the new total.",
                ),
                io.Boolean.Input(
                    "unload_other_models", default=True,
                    tooltip="Unload every other model from the GPU before training: more memory for training, "
                    "the next sampler reloads what it needs.",
                ),
                # Optional, so API graphs written before these inputs existed still run.
                OptimizerSettings.Input(
                    "optimizer_settings", optional=True,
                    tooltip="Finer settings of the optimizer (weight decay, betas, Prodigy's d_coef, "
                    "Adafactor's relative_step, ...) from a LoRA Lab Optimizer Settings node; settings the "
                    "chosen optimizer does not use are ignored. Not connected = the guides' defaults.",
                ),
                io.Float.Input("ema_decay", optional=True, default=0.0, min=0.0, max=0.99999, step=0.001,
                               round=0.00001, tooltip=_train_help("ema_decay")),
                io.Boolean.Input("optimizer_state_on_cpu", optional=True, default=False,
                                 tooltip=_train_help("optimizer_state_on_cpu")),
                io.Combo.Input("base_weights", optional=True, options=list(BASE_WEIGHT_CHOICES),
                               default="as loaded", tooltip=BASE_WEIGHTS_HELP),
            ],
            outputs=[
                LoraModel.Output("lora", display_name="lora", tooltip="The trained LoRA: connect to Save LoRA or the strength sweep."),
                io.Model.Output("model_with_lora", display_name="model_with_lora", tooltip="The MODEL with the LoRA applied at strength 1."),
                io.Image.Output("loss_curve", display_name="loss_curve", tooltip="Loss per step, raw and smoothed."),
                io.Image.Output("samples", display_name="samples",
                                tooltip="The sample images, in order of step then prompt (a black square when off)."),
                # Last, so links of workflows saved before it keep their output indices.
                io.Clip.Output("clip_with_lora", display_name="clip_with_lora",
                               tooltip="The CLIP to encode prompts with: the text-encoder LoRA applied at strength 1 "
                               "(when text_encoder_lr is above 0) and the last layer set by clip_skip, as in training."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(
        cls, optimizer: str | None = None, allow_8bit_fallback: bool | None = None, adapter_type: str | None = None,
        lora_dropout: float | None = None, optimizer_state_on_cpu: bool | None = None, base_weights: str | None = None,
    ) -> bool | str:
        # Only the inputs named here skip ComfyUI's own range checks: never add **kwargs.
        if lora_dropout is not None and not 0 <= lora_dropout <= LORA_DROPOUT_MAX:
            return f"lora_dropout must be from 0 to {LORA_DROPOUT_MAX}, got {lora_dropout}"
        if adapter_type is not None:
            try:
                LoRAConfig(adapter=adapter_type, dropout=lora_dropout or 0.0)
            except ValueError as error:
                return f"adapter_type: {error}"
        problem = _memory_options_problem(optimizer, optimizer_state_on_cpu, base_weights)
        if problem is not None:
            return problem
        if optimizer is None or allow_8bit_fallback:
            return True
        import comfy.model_management

        try:
            check_optimizer_available(OptimizerConfig(name=optimizer), comfy.model_management.get_torch_device())
        except (ImportError, RuntimeError, ValueError) as error:
            return f"optimizer: {error}"
        return True

    @classmethod
    def execute(
        cls, model, clip, vae, dataset, preset: str, trigger_word: str, adapter_type: str, rank: int, alpha: float,
        learning_rate: float, text_encoder_lr: float, clip_skip: int, optimizer: str, lr_scheduler: str,
        lr_warmup: float, allow_8bit_fallback: bool, steps: int, epochs: int, batch_size: int,
        gradient_accumulation: int, seed: int, mixed_precision: str,
        gradient_checkpointing: bool, min_snr_gamma: float, noise_offset: float, loss_type: str,
        timestep_sampling: str, multires_noise_iterations: int, target_layers: str, sample_every: int,
        sample_prompts: str, sample_steps: int, sample_cfg: float,
        lora_dropout: float, rslora: bool, run_name: str, save_every: int, keep_last: int, resume: bool, unload_other_models: bool,
        optimizer_settings=None, ema_decay: float = 0.0, optimizer_state_on_cpu: bool = False,
        base_weights: str = "as loaded",
    ) -> io.NodeOutput:
        if trigger_word.strip():
            dataset = dataset.with_caption_options(replace(dataset.caption_options, trigger_word=trigger_word.strip()))
        lora_config = LoRAConfig(adapter=adapter_type, rank=rank, alpha=alpha, dropout=lora_dropout, target=target_layers,
                                 rslora=rslora)
        optimizer_config = for_optimizer(optimizer_settings, optimizer, allow_8bit_fallback)
        training = TrainingConfig(
            steps=steps, epochs=epochs, learning_rate=learning_rate, text_encoder_lr=text_encoder_lr,
            clip_skip=clip_skip, batch_size=batch_size,
            gradient_accumulation=gradient_accumulation, seed=seed, mixed_precision=mixed_precision,
            gradient_checkpointing=gradient_checkpointing, min_snr_gamma=min_snr_gamma, noise_offset=noise_offset,
            loss_type=loss_type, timestep_sampling=timestep_sampling, multires_noise_iterations=multires_noise_iterations,
            weight_decay=optimizer_config.weight_decay, ema_decay=ema_decay,
            optimizer_state_on_cpu=optimizer_state_on_cpu,
        )
        scheduler_config = SchedulerConfig(name=lr_scheduler, warmup=lr_warmup)
        total = training.resolved_steps(samples_per_epoch(dataset))
        checkpoints = CheckpointPolicy(checkpoint_folder(), sanitize_filename(run_name), every=save_every,
                                       keep_last=keep_last)
        resume_from = None
        if resume:
            resume_from = checkpoints.state_path
            if not resume_from.is_file():
                raise FileNotFoundError(
                    f"resume: run '{run_name}' has no checkpoint to resume from ({resume_from}). Turn resume off to "
                    "start it, or give the run_name of an earlier run."
                )
        train_text = training.text_encoder_lr > 0
        text_key_namer = bridge.clip_key_namer(clip) if train_text else default_text_key_name
        training_clip = bridge.clip_with_skip(clip, clip_skip)
        patcher = model.clone()
        copied_base = bridge.use_base_weights(patcher, base_weights)
        denoiser = bridge.ComfyDenoiser(patcher)
        _show_memory_estimate(denoiser, clip.cond_stage_model if train_text else None, lora_config, training,
                              optimizer, dataset.resolution, cls.hidden.unique_id)
        bridge.load_for_training(patcher, unload_other_models, clip=training_clip if train_text else None)
        base_weight_bytes = stored_weight_bytes(denoiser.network)  # the network that trains: the copy, if any
        trigger = dataset.caption_options.trigger_word
        prompts = [p.strip().replace("{trigger}", trigger).strip(" ,") for p in sample_prompts.splitlines()]
        samples = _SampleImages(sample_every, [p for p in prompts if p], patcher, training_clip, vae, seed,
                                sample_steps, sample_cfg, dataset.resolution,
                                [denoiser.network, clip.cond_stage_model] if train_text else [denoiser.network])
        started = time.time()
        try:
            result = train_lora(
                denoiser, bridge.ComfyTextEncoder(clip), bridge.ComfyLatentCodec(vae, patcher), dataset,
                lora_config, training, caption_for=dataset.caption_for,
                random_captions=dataset.caption_options.is_random, key_namer=bridge.kohya_key_namer(patcher),
                on_step=_CanvasProgress(total, cls.hidden.unique_id, samples), checkpoints=checkpoints,
                resume_from=resume_from, optimizer=optimizer_config, scheduler=scheduler_config,
                text_key_namer=text_key_namer,
            )
        except NonFiniteLossError as error:
            saved = _save_recovery(error.weights)
            raise RuntimeError(f"{error} The last good LoRA (step {error.step}) was saved to {saved}.") from error
        finally:
            if copied_base:  # take the copy off the shared model and free it
                bridge.release(patcher)
        weights = result.weights
        weights.metadata.update(training_metadata(
            lora_config, training, steps=result.steps, total_steps=result.total_steps,
            num_images=len(dataset.items), samples_per_epoch=samples_per_epoch(dataset),
            resolution=dataset.resolution, trigger_word=dataset.caption_options.trigger_word,
            tag_frequency=dataset.tag_frequency_metadata(), dataset_dirs=dataset.dataset_dirs_metadata(),
            base_model_version=bridge.base_model_version(patcher), base_model_hash=bridge.model_fingerprint(patcher),
            started_at=started, finished_at=time.time(), mixed_precision=result.mixed_precision,
            losses=result.losses, optimizer=optimizer, scheduler=lr_scheduler,
            warmup_steps=scheduler_config.warmup_steps(result.total_steps),
            clip_skip=bridge.effective_clip_skip(clip, clip_skip),
        ))
        if preset != CUSTOM:
            weights.metadata["lora_lab_preset"] = preset
        weights.metadata["lora_lab_optimizer"] = json.dumps(asdict(optimizer_config))
        weights.metadata["lora_lab_base_weights"] = json.dumps({"choice": base_weights,
                                                                "bytes": base_weight_bytes})
        model_with_lora, clip_with_lora = bridge.apply_lora(model, clip if train_text else None, weights, 1.0,
                                                            1.0 if train_text else 0.0)
        clip_with_lora = bridge.clip_with_skip(clip_with_lora if train_text else clip, clip_skip)
        curve = loss_curve_image(result.losses, result.learning_rates, checkpoints=_checkpoint_steps(result),
                                 title=f"Training loss, {result.steps} steps")
        return io.NodeOutput(weights, model_with_lora, torch.from_numpy(curve)[None], samples.output(), clip_with_lora)


def _show_memory_estimate(denoiser, text_network, lora_config: LoRAConfig, training: TrainingConfig,
                          optimizer: str, resolution: int, node_id: str | None) -> None:
    """Before the first step: the GPU memory this run needs, on the node and in the console; stop
    at once when even the exact parts cannot fit on the card."""
    import comfy.model_management

    network = denoiser.network
    device = comfy.model_management.get_torch_device()
    shapes = layer_shapes(network, find_target_modules(network, lora_config.target))
    base_bytes = tensor_bytes(network)  # the low-precision copy when base_weights asks for one
    if text_network is not None:  # trained too: on the device, with its own LoRA
        shapes += layer_shapes(text_network, find_text_encoder_targets(text_network))
        base_bytes += tensor_bytes(text_network)
    estimate = estimate_training_memory(
        base_weight_bytes=base_bytes,
        adapter_parameters=adapter_parameter_count(shapes, lora_config.rank, lora_config.adapter),
        optimizer=optimizer, family=bridge.model_family(denoiser.patcher), batch_size=training.batch_size,
        optimizer_state_on_cpu=training.optimizer_state_on_cpu, ema=training.ema_decay > 0,
        width=resolution, height=resolution, precision=resolve_precision(training.mixed_precision, device),
        gradient_checkpointing=training.gradient_checkpointing,
    )
    text = estimate.describe()
    if device.type == "cuda":
        card = comfy.model_management.get_total_memory(device)
        verdict, advice = memory_advice(estimate, card, gradient_checkpointing=training.gradient_checkpointing,
                                        optimizer=optimizer, batch_size=training.batch_size)
        if verdict == "no":
            raise MemoryError(advice)
        if advice:
            text = f"Warning: {advice}"
    else:
        text += f" (this run trains on the {device.type.upper()})"
    print(f"[LoRA Lab] TrainLoRA: {text}", flush=True)
    _send_text(text, node_id)


def _send_text(text: str, node_id: str | None) -> None:
    if node_id is None:
        return
    try:
        from server import PromptServer

        send = getattr(PromptServer.instance, "send_progress_text", None)
        if send is not None:
            send(text, node_id)
    except (ImportError, AttributeError):
        pass


def _memory_options_problem(
    optimizer: str | None, state_on_cpu: bool | None, base_weights: str | None
) -> str | None:
    if optimizer is not None and state_on_cpu:
        try:
            check_state_on_cpu(optimizer, state_on_cpu)
        except ValueError as error:
            return str(error)
    return bridge.base_weights_problem(base_weights)


def _checkpoint_steps(result) -> list[int]:
    return [int(path.stem.rsplit("_step", 1)[1]) for path in result.checkpoints]


def checkpoint_folder() -> Path:
    return Path(folder_paths.get_folder_paths("loras")[0]) / "lora_lab_checkpoints"


def _save_recovery(weights: LoRAWeights):
    folder = folder_paths.get_output_directory()
    path = unique_path(Path(folder) / "lora_lab" / "recovery", "last_good_lora")
    return save_lora(weights, path)

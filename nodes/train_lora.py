"""TrainLoRA: train a LoRA on the MODEL / CLIP / VAE the canvas already loaded.

The node shows the settings the guides teach; the advanced ones come from the settings nodes wired into
its ``*_settings`` inputs (train_settings.py, optimizer_settings.py), their defaults when none is wired.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import folder_paths
import torch
from comfy_api.latest import io

from ..trainer_core.adapters.config import ADAPTER_CHOICES, BLOCK_WEIGHT_FIELDS, LoRAConfig
from ..trainer_core.adapters.export import (
    LoRAWeights,
    check_writable,
    default_text_key_name,
    sanitize_filename,
    save_lora,
    unique_path,
)
from ..trainer_core.data import regularization
from ..trainer_core.data.masks import masks_note
from ..trainer_core.fields import default_of, help_text
from ..trainer_core.pictures.plots import loss_curve_image
from ..trainer_core.training.checkpoints import CheckpointPolicy
from ..trainer_core.training.config import TrainingConfig
from ..trainer_core.training.loop import NonFiniteLossError, samples_per_epoch, train_lora
from ..trainer_core.training.memory import stored_weight_bytes
from ..trainer_core.training.metadata import training_metadata
from ..trainer_core.training.optimizers import OPTIMIZER_CHOICES, OptimizerConfig
from ..trainer_core.training.presets import CUSTOM, PRESET_CHOICES, preset_family_warning
from ..trainer_core.training.schedulers import SCHEDULER_CHOICES, SchedulerConfig
from ..trainer_core.training.text_encoder_parts import skipped_text_encoders_note
from ..trainer_core.training.train_log import TrainingLog, log_paths
from ..trainer_core.training.validation import ValidationConfig
from . import bridge, families, image_to_video, train_validation
from .encoding_cache import encoding_cache
from .encoding_cache import summary as encoding_summary
from .key_formats import key_format
from .latent_codec import clips_on_image_model_note, latent_frames, longest_clip
from .optimizer_settings import LoRALabOptimizerSettings, optimizer_config
from .run_context import current_run_context
from .train_checks import SETTINGS_NODES, combination_problem, refuse_moved_inputs
from .train_progress import (
    CanvasProgress,
    ConsoleProgress,
    SampleImages,
    StepListeners,
    send_text,
    show_memory_estimate,
)
from .train_settings import (
    LoRALabAdapterSettings,
    LoRALabMemorySettings,
    NodeSettings,
    declared_defaults,
    merged_settings,
)
from .types import Dataset, LoraModel

_NOT_CONNECTED: Any = object()  # validate_inputs: an unconnected input is not passed, a linked one is None


def _lora_help(name: str) -> str:
    return help_text(LoRAConfig, name)


def _train_help(name: str) -> str:
    return help_text(TrainingConfig, name)


def _settings_input(node) -> io.Input:
    schema = node.GET_SCHEMA()
    names = ", ".join(declared_defaults(node))
    return node.SOCKET_TYPE.Input(
        node.SOCKET, optional=True,
        tooltip=f"From a {schema.display_name} node: {names}. Not connected = the guides' defaults.",
    )


@dataclass(frozen=True)
class _Run:
    """One training run's configs, merged from Train LoRA's widgets and its settings nodes."""

    lora: LoRAConfig
    training: TrainingConfig
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    checkpoints: CheckpointPolicy
    settings: dict[str, Any]
    validation: ValidationConfig = ValidationConfig()
    held_out: Any = None  # the held-out images' dataset (validation), None = no validation
    clip_vision: Any = None  # Wan 2.1 I2V: the CLIP vision model for each clip's first frame (image_to_video.py)


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
                "text_encoder_lr is above 0). The settings the guides teach are here; the advanced ones are on "
                "the LoRA Lab settings nodes wired into the *_settings inputs (not connected = the guides' defaults)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The base model to train on, from the checkpoint loader."),
                io.Clip.Input("clip", tooltip="Its text encoder: captions are encoded with it, once (every step when "
                              "text_encoder_lr is above 0, through the LoRA trained in it). It is left untouched."),
                io.Vae.Input("vae", tooltip="Its VAE: images are encoded to latents with it, once."),
                Dataset.Input("dataset", tooltip="Images and captions from Load Dataset (or Auto Caption)."),
                io.Combo.Input(
                    "preset", options=list(PRESET_CHOICES), default=CUSTOM,
                    tooltip="Settings from the guides for a goal and model family (quick test, any model; character, "
                    "style, likeness for SD1.5, SDXL, Flux; character, style for SD3.5, Flux.2, Chroma, Qwen-Image, "
                    "Z-Image, Lumina 2, HiDream, Wan in image mode). Choosing one in the canvas fills the fields "
                    "below, on the settings nodes wired in (adding one where a value differs from its default) and "
                    "the resolution of a Load Dataset wired straight in; every field stays editable and what trains "
                    "is what the fields say. The console warns when the preset is for another family than the "
                    "MODEL's. 'custom' changes nothing.",
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
                io.Combo.Input("optimizer", options=list(OPTIMIZER_CHOICES), default="AdamW",
                               tooltip=help_text(OptimizerConfig, "name")),
                io.Combo.Input("lr_scheduler", options=list(SCHEDULER_CHOICES), default="constant_with_warmup",
                               tooltip=help_text(SchedulerConfig, "name")),
                io.Int.Input("steps", default=0, min=0, max=100000, tooltip=_train_help("steps")),
                io.Int.Input("epochs", default=default_of(TrainingConfig, "epochs"), min=1, max=10000,
                             tooltip=_train_help("epochs")),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip=_train_help("batch_size")),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip=_train_help("seed")),
                io.String.Input(
                    "run_name", default="my_lora",
                    tooltip="Name of this training run: checkpoints are saved as models/loras/lora_lab_checkpoints/"
                    "<run_name>_step000100.safetensors (LoraLoader lists them) with a resume state beside them.",
                ),
                # Optional sockets, so graphs without settings nodes train with the guides' defaults.
                *[_settings_input(node) for node in SETTINGS_NODES],
                train_validation.validation_images_input(),
                Dataset.Input("regularization_images", optional=True, tooltip=regularization.REGULARIZATION_HELP),
                io.ClipVision.Input("clip_vision", optional=True, tooltip=image_to_video.CLIP_VISION_HELP),
            ],
            outputs=[
                LoraModel.Output("lora", display_name="lora", tooltip="The trained LoRA: connect to Save LoRA or the strength sweep."),
                io.Model.Output("model_with_lora", display_name="model_with_lora", tooltip="The MODEL with the LoRA applied at strength 1."),
                io.Image.Output("loss_curve", display_name="loss_curve", tooltip="Loss per step, raw and smoothed; the loss diagnosis is written under it."),
                io.Image.Output("samples", display_name="samples",
                                tooltip="The sample images, in order of step then prompt (a black square when off)."),
                # Last, so links of workflows saved before it keep their output indices.
                io.Clip.Output("clip_with_lora", display_name="clip_with_lora",
                               tooltip="The CLIP to encode prompts with: the text-encoder LoRA applied at strength 1 "
                               "(when text_encoder_lr is above 0) and the last layer set by clip_skip, as in training."),
                train_validation.report_output(),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def validate_inputs(
        cls, optimizer: str | None = None, adapter_type: str | None = None,
        optimizer_settings: Any = _NOT_CONNECTED, memory_settings: Any = _NOT_CONNECTED,
        adapter_settings: Any = _NOT_CONNECTED, run_name: str | None = None,
    ) -> bool | str:
        # Only the inputs named here skip ComfyUI's own range checks: never add **kwargs. A linked settings
        # input arrives as None (its values are unknown until it runs: execute checks them); an unconnected
        # one means its node's defaults, which can be checked now.
        known: dict[str, Any] = {}
        for node, given in ((LoRALabOptimizerSettings, optimizer_settings), (LoRALabMemorySettings, memory_settings),
                            (LoRALabAdapterSettings, adapter_settings)):
            if given is _NOT_CONNECTED:
                known.update(declared_defaults(node))
        if run_name is not None:
            try:
                run_stem(run_name)
            except ValueError as error:
                return str(error)
        return combination_problem(optimizer, adapter_type, known) or True

    @classmethod
    def execute(
        cls, model, clip, vae, dataset, preset: str, trigger_word: str, adapter_type: str, rank: int, alpha: float,
        learning_rate: float, optimizer: str, lr_scheduler: str, steps: int, epochs: int, batch_size: int,
        seed: int, run_name: str, optimizer_settings: NodeSettings | None = None,
        loss_settings: NodeSettings | None = None, memory_settings: NodeSettings | None = None,
        adapter_settings: NodeSettings | None = None, sample_settings: NodeSettings | None = None,
        text_encoder_settings: NodeSettings | None = None, validation_images=None,
        regularization_images=None, clip_vision=None,
    ) -> io.NodeOutput:
        families.check_trainable_family(model)  # before anything is cloned or loaded
        bridge.check_vae_fits(vae, model, "TrainLoRA: vae")
        preset_warning = preset_family_warning(preset, bridge.model_family(model))
        if preset_warning:
            print(f"[LoRA Lab] TrainLoRA: {preset_warning}", flush=True)
        refuse_moved_inputs(cls.hidden.prompt, cls.hidden.unique_id)
        settings = merged_settings(SETTINGS_NODES, {
            "optimizer_settings": optimizer_settings, "loss_settings": loss_settings,
            "memory_settings": memory_settings, "adapter_settings": adapter_settings,
            "sample_settings": sample_settings, "text_encoder_settings": text_encoder_settings,
        })
        problem = combination_problem(optimizer, adapter_type, settings)
        if problem is not None:  # the checks validate_inputs could not make while the settings were linked
            raise ValueError(problem)
        if trigger_word.strip():
            dataset = dataset.with_caption_options(replace(dataset.caption_options, trigger_word=trigger_word.strip()))
        validation = train_validation.validation_config(settings)
        split = train_validation.held_out_split(dataset, validation_images, validation, seed)
        dataset = split.train  # the held-out images are never trained on
        optimizer_choice = optimizer_config(settings, optimizer)
        run = _Run(
            lora=LoRAConfig(adapter=adapter_type, rank=rank, alpha=alpha, dropout=settings["lora_dropout"],
                            target=settings["target_layers"], rslora=settings["rslora"],
                            conv_rank=settings["conv_rank"], conv_alpha=settings["conv_alpha"],
                            **{name: settings[name] for name in BLOCK_WEIGHT_FIELDS}),
            training=_training_config(settings, steps=steps, epochs=epochs, learning_rate=learning_rate,
                                      batch_size=batch_size, seed=seed, weight_decay=optimizer_choice.weight_decay),
            optimizer=optimizer_choice,
            scheduler=SchedulerConfig(name=lr_scheduler, warmup=settings["lr_warmup"]),
            checkpoints=CheckpointPolicy(checkpoint_folder(), run_stem(run_name),
                                         every=settings["save_every"], keep_last=settings["keep_last"]),
            settings=settings, validation=validation, held_out=split.held_out, clip_vision=clip_vision,
        )
        check_writable(run.checkpoints.folder)  # before training, not when the first checkpoint is due
        resume_from = _resume_state(run, run_name)
        started = time.time()
        training_data = regularization.regularized(dataset, regularization_images, run.training.prior_loss_weight)
        note = masks_note(training_data.items, run.training.masked_loss)
        if note:
            print(f"[LoRA Lab] TrainLoRA: {note}", flush=True)
        result, patcher, samples, base_weight_bytes = _train(
            run, model, clip, vae, dataset, seed, optimizer, resume_from, cls.hidden.unique_id, training_data)
        weights = result.weights
        weights.metadata.update(training_metadata(
            run.lora, run.training, steps=result.steps, total_steps=result.total_steps,
            num_images=len(dataset.items), samples_per_epoch=samples_per_epoch(dataset),
            resolution=dataset.resolution, trigger_word=dataset.caption_options.trigger_word,
            tag_frequency=dataset.tag_frequency_metadata(), dataset_dirs=dataset.dataset_dirs_metadata(),
            base_model_version=bridge.base_model_version(patcher), base_model_hash=bridge.model_fingerprint(patcher),
            started_at=started, finished_at=time.time(), mixed_precision=result.mixed_precision,
            losses=result.losses, optimizer=optimizer, scheduler=lr_scheduler,
            warmup_steps=run.scheduler.warmup_steps(result.total_steps),
            clip_skip=bridge.effective_clip_skip(clip, run.training.clip_skip),
            processes=getattr(current_run_context().parallel, "world_size", 1),
        ))
        weights.metadata.update(regularization.regularization_metadata(regularization_images, run.training.prior_loss_weight))
        if preset != CUSTOM:
            weights.metadata["lora_lab_preset"] = preset
        weights.metadata["lora_lab_optimizer"] = json.dumps(asdict(run.optimizer))
        weights.metadata["lora_lab_key_format"] = key_format(patcher.model).name
        weights.metadata["lora_lab_base_weights"] = json.dumps({"choice": settings["base_weights"],
                                                                "bytes": base_weight_bytes})
        train_text = run.training.text_encoder_lr > 0
        model_with_lora, clip_with_lora = bridge.apply_lora(model, clip if train_text else None, weights, 1.0,
                                                            1.0 if train_text else 0.0)
        clip_with_lora = bridge.clip_with_skip(clip_with_lora if train_text else clip, run.training.clip_skip)
        report = train_validation.finish_report(weights, result, validation, seed, split)
        curve = loss_curve_image(result.losses, result.learning_rates, checkpoints=_checkpoint_steps(result),
                                 title=f"Training loss, {result.steps} steps", **train_validation.validation_curve(result))
        return io.NodeOutput(weights, model_with_lora, torch.from_numpy(curve)[None], samples.output(), clip_with_lora,
                             report)


def _training_config(settings: dict[str, Any], **widgets: Any) -> TrainingConfig:
    """TrainingConfig from Train LoRA's own values (``widgets``) and the settings nodes' values of its other fields."""
    names = ("text_encoder_lr", "clip_skip", "train_t5", "gradient_accumulation", "mixed_precision", "gradient_checkpointing",
             "min_snr_gamma", "noise_offset", "loss_type", "timestep_sampling", "multires_noise_iterations",
             "ema_decay", "optimizer_state_on_cpu", "masked_loss", "prior_loss_weight")
    return TrainingConfig(**widgets, **{name: settings[name] for name in names})


def _resume_state(run: _Run, run_name: str) -> Path | None:
    if not run.settings["resume"]:
        return None
    resume_from = run.checkpoints.state_path
    if not resume_from.is_file():
        raise FileNotFoundError(
            f"resume: run '{run_name}' has no checkpoint to resume from ({resume_from}). Turn resume off to "
            "start it, or give the run_name of an earlier run."
        )
    return resume_from


def _train(run: _Run, model, clip, vae, dataset, seed: int, optimizer: str, resume_from: Path | None,
           node_id: str | None, training_data):
    """Train on a clone of ``model``; returns (result, the clone, the sample images, stored base-weight bytes).
    ``training_data`` is ``dataset``, or it with regularisation images."""
    settings, training = run.settings, run.training
    train_text = training.text_encoder_lr > 0
    text_key_namer = bridge.clip_key_namer(clip, training.train_t5) if train_text else default_text_key_name
    if train_text:
        note = skipped_text_encoders_note(clip.cond_stage_model, training.train_t5)
        if note:
            print(f"[LoRA Lab] TrainLoRA: {note}", flush=True)
    training_clip = bridge.clip_with_skip(clip, training.clip_skip)
    patcher = model.clone()
    copied_base = bridge.use_base_weights(patcher, settings["base_weights"])
    denoiser = bridge.ComfyDenoiser(patcher)
    context = current_run_context()
    codec = image_to_video.first_frame_codec(vae, patcher, run.clip_vision)  # the plain codec unless I2V
    clips_note = clips_on_image_model_note(training_data, codec)
    if clips_note and context.is_main_process:
        print(f"[LoRA Lab] TrainLoRA: {clips_note}", flush=True)
        send_text(clips_note, node_id)
    frames = latent_frames(longest_clip(training_data)) if codec.trains_clips else 1
    show_memory_estimate(denoiser, clip.cond_stage_model if train_text else None, run.lora, training,
                         optimizer, dataset.resolution, node_id, announce=context.is_main_process, frames=frames)
    bridge.load_for_training(patcher, settings["unload_other_models"], clip=training_clip if train_text else None)
    base_weight_bytes = stored_weight_bytes(denoiser.network)  # the network that trains: the copy, if any
    trigger = dataset.caption_options.trigger_word
    prompts = [p.strip().replace("{trigger}", trigger).strip(" ,") for p in settings["sample_prompts"].splitlines()]
    every = image_to_video.sample_every(codec, settings["sample_every"])  # I2V: no previews without a start image
    samples = SampleImages(every, [p for p in prompts if p], patcher, training_clip, vae, seed,
                           settings["sample_steps"], settings["sample_cfg"], dataset.resolution,
                           [denoiser.network, clip.cond_stage_model] if train_text else [denoiser.network])
    if samples.size_note:  # in the console already; on the node too, before the first step
        send_text(samples.size_note, node_id)
    total = training.resolved_steps(samples_per_epoch(training_data), getattr(context.parallel, "world_size", 1))
    on_step = StepListeners(*_logs(run, total) if context.is_main_process else (),
                            CanvasProgress(total, node_id, samples))
    try:
        result = train_lora(
            denoiser, bridge.ComfyTextEncoder(clip), codec, training_data,
            run.lora, training, caption_for=training_data.caption_for,
            random_captions=regularization.random_captions(training_data), key_namer=bridge.kohya_key_namer(patcher),
            on_step=on_step, checkpoints=run.checkpoints,
            resume_from=resume_from, optimizer=run.optimizer, scheduler=run.scheduler,
            text_key_namer=text_key_namer, parallel=context.parallel,
            validation_data=run.held_out, validation=run.validation,
            encoding_cache=encoding_cache(settings["encoding_cache"], vae, clip, patcher),
        )
        if context.is_main_process:
            print(encoding_summary(result.encoding), flush=True)
    except NonFiniteLossError as error:
        saved = _save_recovery(error.weights)
        raise RuntimeError(f"{error} The last good LoRA (step {error.step}) was saved to {saved}.") from error
    finally:
        on_step.close()
        if copied_base:  # take the copy off the shared model and free it
            bridge.release(patcher)
    return result, patcher, samples, base_weight_bytes


def run_stem(run_name: str) -> str:
    """The file-name stem of the run's checkpoints; a ValueError naming run_name when it cannot be one."""
    try:
        return sanitize_filename(run_name)
    except ValueError as error:
        raise ValueError(f"run_name: {error}") from error


def _logs(run: _Run, total: int) -> tuple[TrainingLog, ConsoleProgress]:
    """The main process's log of the run (CSV and TensorBoard beside its checkpoints) and console progress."""
    csv_path, tensorboard_folder = log_paths(run.checkpoints.folder, run.checkpoints.stem)
    return TrainingLog(csv_path, tensorboard_folder), ConsoleProgress(total)


def _checkpoint_steps(result) -> list[int]:
    return [int(path.stem.rsplit("_step", 1)[1]) for path in result.checkpoints]


def checkpoint_folder() -> Path:
    return Path(folder_paths.get_folder_paths("loras")[0]) / "lora_lab_checkpoints"


def _save_recovery(weights: LoRAWeights):
    folder = folder_paths.get_output_directory()
    path = unique_path(Path(folder) / "lora_lab" / "recovery", "last_good_lora")
    return save_lora(weights, path)

"""What a run keeps and restores: the LoRA it exports (under kohya / LyCORIS keys, the moving average
when EMA is on), the checkpoints it writes, and the resume state (``state_dict`` / ``load_state``) that
makes N steps + resume + N steps equal 2N steps straight."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..adapters.adapter_types import export_layer
from ..adapters.export import KeyNamer, LoRAWeights, peft_tensor_names, save_lora, split_rows
from ..adapters.inject import InjectedAdapter
from .checkpoints import CheckpointPolicy, restore_random_state, save_training_state
from .ema import AdapterEMA, averaged
from .epochs import next_step_batch
from .results import TrainingError
from .run import TrainingRun
from .text_encoder import restore_text_encoder_state, text_encoder_state
from .validation import best_checkpoint, checkpoints_to_prune, record_checkpoint

log = logging.getLogger(__name__)


def extract_weights(adapter: InjectedAdapter, key_namer: KeyNamer) -> dict[str, torch.Tensor]:
    """The adapter's tensors under kohya / LyCORIS keys (fp32 on the CPU), scale recorded as ``.alpha``, or
    under peft's names when the namer asks for them (``tensor_names = "peft"``). A LoRA layer the namer lists
    in ``row_splits`` is saved as its parts (``split_rows``), any other under ``key_namer(path)``."""
    peft_names = getattr(key_namer, "tensor_names", "kohya") == "peft"
    row_splits = getattr(key_namer, "row_splits", {})
    out: dict[str, torch.Tensor] = {}
    for name, layer in adapter.layers():
        tensors = export_layer(layer, adapter.config)
        parts = split_rows(tensors, row_splits[name]) if name in row_splits else None
        for stem, part in parts or [(key_namer(name), tensors)]:
            for suffix, tensor in (peft_tensor_names(part) if peft_names else part).items():
                out[f"{stem}.{suffix}"] = tensor
    return out


def export_weights(run: TrainingRun) -> LoRAWeights:
    """The LoRA to export: the moving average when EMA is on, else the weights of the last step."""
    with averaged(run.ema):
        tensors = extract_weights(run.adapter, run.key_namer)
        if run.text_adapter is not None:
            tensors.update(extract_weights(run.text_adapter, run.text_key_namer))
        return LoRAWeights(tensors, run.metadata)


def save_checkpoint(run: TrainingRun, policy: CheckpointPolicy, wait: bool = True) -> Path:
    """The state to resume from, then a LoRA file LoraLoader can load (each written atomically): a run
    stopped between the two has the state of a step whose LoRA is missing, never the reverse.

    Only the main process writes; with ``wait`` every process waits until it has, so none reads a
    half-written file (a run stopping on a failure does not wait: the others may be gone)."""
    path = policy.lora_path(run.step)
    validation_keys = record_checkpoint(run, run.step)
    if run.parallel.is_main:
        save_training_state(policy.state_path, state_dict(run))
        _save_checkpoint_lora(run, path, validation_keys)
    run.saved_checkpoints.append(path)
    if policy.keep_last > 0:  # the best checkpoint so far (with validation) is kept too
        best = best_checkpoint(run, policy)
        for old in checkpoints_to_prune(run.saved_checkpoints, policy.keep_last, best[1] if best else None):
            run.saved_checkpoints.remove(old)
            run.validated_checkpoints = {step: loss for step, loss in run.validated_checkpoints.items()
                                         if policy.lora_path(step) != old}
            if run.parallel.is_main:
                old.unlink(missing_ok=True)
    if wait:
        run.parallel.barrier()
    return path


def _save_checkpoint_lora(run: TrainingRun, path: Path, validation_keys: dict[str, str]) -> None:
    weights = export_weights(run)
    weights.metadata.update({"ss_steps": str(run.step), "lora_lab_checkpoint_step": str(run.step), **validation_keys})
    save_lora(weights, path, overwrite=True)


def write_missing_checkpoint(run: TrainingRun, policy: CheckpointPolicy | None) -> Path | None:
    """After a resume: the LoRA of the state's step when it is missing (the run stopped after writing the
    state and before that file), written now from the state, with a note in the console. None otherwise."""
    if policy is None or run.step == 0:
        return None
    path = policy.lora_path(run.step)
    if path.is_file():
        return None
    if run.parallel.is_main:
        log.warning("LoRA Lab: resume: the checkpoint LoRA of step %d (%s) is missing: the run stopped after "
                    "writing its resume state and before this file. Writing it now from the resume state; "
                    "training continues from step %d.", run.step, path, run.step)
        _save_checkpoint_lora(run, path, record_checkpoint(run, run.step))
    run.saved_checkpoints.append(path)
    return path


def state_dict(run: TrainingRun) -> dict[str, Any]:
    return {
        "step": run.step,
        "total_steps": run.total_steps,
        "adapter": {name: p.detach().cpu().clone() for name, p in run.adapter_parameters().items()},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        **(run.streams_at_step_start or run.random_streams()),
        "global_batch_size": run.global_batch_size,  # images per step, over all processes
        "losses": list(run.losses),
        "learning_rates": list(run.learning_rates),
        "validation_losses": dict(run.validation_losses),
        "validated_checkpoints": dict(run.validated_checkpoints),
        "rank": run.adapter.config.rank,
        "adapter_type": run.adapter.config.adapter,
        "targets": list(run.adapter.targets),
        "conv_rank": run.adapter.config.conv_rank,
        "block_lr_weights": run.adapter.config.block_lr_weights(),
        **text_encoder_state(run.text_adapter),
        "ema": run.ema.state_dict() if run.ema is not None else None,
    }


def load_state(run: TrainingRun, state: dict[str, Any], source: Path | None,
               policy: CheckpointPolicy | None = None) -> None:
    """Continue ``run`` from ``state``; with ``policy``, write the state's checkpoint LoRA if it is missing."""
    _restore(run, state, source)
    write_missing_checkpoint(run, policy)


def _restore(run: TrainingRun, state: dict[str, Any], source: Path | None) -> None:
    where = f" ({source})" if source is not None else ""
    adapter_type = state.get("adapter_type", "lora")  # states written before adapter types were LoRA
    if adapter_type != run.adapter.config.adapter:
        raise TrainingError(
            f"the resume state{where} trained a {adapter_type} adapter, this run a {run.adapter.config.adapter}:"
            f" set adapter type to {adapter_type} to resume, or start a new run"
        )
    if state.get("rank") != run.adapter.config.rank or state.get("targets") != list(run.adapter.targets):
        raise TrainingError(
            f"the resume state{where} was trained with rank {state.get('rank')} on other layers; resume with the "
            "same rank, target layers and base model, or start a new run"
        )
    if state.get("conv_rank", 0) != run.adapter.config.conv_rank:
        raise TrainingError(
            f"the resume state{where} was trained with conv_rank {state.get('conv_rank', 0)}, this run has "
            f"{run.adapter.config.conv_rank}: set conv_rank as in that run to resume, or start a new run"
        )
    weights = run.adapter.config.block_lr_weights()
    saved_weights = state.get("block_lr_weights") or dict.fromkeys(weights, 1.0)  # states before block weights
    if saved_weights != weights:
        changed = ", ".join(f"{name} {saved_weights.get(name, 1.0):g}" for name in weights
                            if saved_weights.get(name, 1.0) != weights[name])
        raise TrainingError(
            f"the resume state{where} was trained with other block learning-rate weights ({changed}): set them as "
            "in that run on the Adapter Settings node to resume, or start a new run"
        )
    restore_text_encoder_state(run.text_adapter, state, where)
    _check_global_batch(run, state, where)
    if state["step"] >= run.total_steps:
        raise TrainingError(
            f"the resume state{where} is at step {state['step']}, and this run has {run.total_steps} steps: "
            "raise steps to continue training"
        )
    with torch.no_grad():
        for name, param in run.adapter_parameters().items():
            param.copy_(state["adapter"][name].to(param.device, param.dtype))
    run.placement.parameters_from_model()
    if run.ema is not None and state.get("ema"):
        run.ema.load_state_dict(state["ema"])
    elif run.ema is not None:  # the run had no EMA so far: average from here on
        run.ema = AdapterEMA(run.ema_parameters(), run.ema.decay, run.placement.device)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.caption_rng.setstate(restore_random_state(state["caption_rng"]))
    run.noise_rng.set_state(state["noise_rng"])
    run.global_rng_state = state["global_rng"]
    run.step = int(state["step"])
    run.losses = list(state["losses"])
    run.learning_rates = list(state["learning_rates"])
    run.validation_losses = dict(state.get("validation_losses", {}))  # states before validation: none
    run.validated_checkpoints = dict(state.get("validated_checkpoints", {}))
    run.step_items = []
    for _ in range(run.step):  # the batches trained before: skipped, their files kept for the loss diagnosis
        next_step_batch(run.batches, run.training.gradient_accumulation, run.step_items)


def _check_global_batch(run: TrainingRun, state: dict[str, Any], where: str) -> None:
    """A run resumes with any number of processes, as long as a step trains on as many images."""
    saved = state.get("global_batch_size", run.global_batch_size)  # states before data parallel: as now
    if saved != run.global_batch_size:
        processes = run.parallel.world_size
        raise TrainingError(
            f"the resume state{where} trained on {saved} images per step (batch size x processes), this run on"
            f" {run.training.batch_size} x {processes} = {run.global_batch_size}: set batch size so that batch"
            f" size x processes = {saved} (e.g. {saved} with 1 process) to resume, or start a new run"
        )

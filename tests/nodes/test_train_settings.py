"""Train LoRA shows the settings the guides teach; the others live on settings nodes wired into it. A
settings input left unconnected means exactly the core's defaults, so a graph without settings nodes
trains as before; an API graph that still gives Train LoRA a moved input hears where it went."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from comfy_inproc import load_pack  # noqa: E402

pytestmark = pytest.mark.comfy

TRAIN_LORA_INPUTS = [
    "model", "clip", "vae", "dataset", "preset", "trigger_word", "adapter_type", "rank", "alpha", "learning_rate",
    "optimizer", "lr_scheduler", "steps", "epochs", "batch_size", "seed", "run_name",
    "optimizer_settings", "loss_settings", "memory_settings", "adapter_settings", "sample_settings",
    "text_encoder_settings", "validation_images", "regularization_images", "clip_vision",
]
SOCKETS = ("model", "clip", "vae", "dataset", "validation_images", "regularization_images", "clip_vision")


def _pack():
    load_pack()
    from lora_lab.nodes import train_lora, train_settings

    return train_lora, train_settings


def test_train_lora_keeps_the_guides_settings_in_order_and_takes_the_rest_through_sockets():
    train_lora, _ = _pack()
    inputs = train_lora.TrainLoRA.GET_SCHEMA().inputs
    assert [entry.id for entry in inputs] == TRAIN_LORA_INPUTS
    widgets = [e.id for e in inputs if not e.id.endswith("_settings") and e.id not in SOCKETS]
    assert len(widgets) == 13
    assert all(e.optional for e in inputs if e.id.endswith("_settings"))
    assert [node.SOCKET for node in train_lora.SETTINGS_NODES] == [i for i in TRAIN_LORA_INPUTS if i.endswith("_settings")]
    assert inputs[-1].optional and inputs[-2].optional and inputs[-3].optional  # appended: validation_images,
    # regularization_images, clip_vision (Wan 2.1 I2V)


def test_unconnected_settings_mean_the_core_defaults():
    train_lora, train_settings = _pack()
    from lora_lab.nodes.optimizer_settings import optimizer_config
    from lora_lab.trainer_core.adapters.config import LoRAConfig
    from lora_lab.trainer_core.training.config import TrainingConfig
    from lora_lab.trainer_core.training.optimizers import OptimizerConfig
    from lora_lab.trainer_core.training.schedulers import SchedulerConfig

    settings = train_settings.merged_settings(train_lora.SETTINGS_NODES, {})
    widgets = {"steps": 0, "epochs": 10, "learning_rate": 5e-4, "batch_size": 1, "seed": 0,
               "weight_decay": optimizer_config(settings, "AdamW").weight_decay}
    training = train_lora._training_config(settings, **widgets)
    assert training == TrainingConfig()
    assert optimizer_config(settings, "AdamW") == OptimizerConfig(name="AdamW")
    assert settings["lr_warmup"] == SchedulerConfig().warmup
    lora = LoRAConfig(dropout=settings["lora_dropout"], target=settings["target_layers"], rslora=settings["rslora"])
    assert lora == LoRAConfig()
    # Every moved input lives on exactly one settings node.
    names = [name for node in train_lora.SETTINGS_NODES for name in train_settings.declared_defaults(node)]
    assert len(names) == len(set(names))
    assert {f.name for f in fields(TrainingConfig)} >= {"noise_offset", "min_snr_gamma", "clip_skip"}


def test_a_connected_settings_node_gives_its_values_and_the_others_keep_their_defaults():
    train_lora, train_settings = _pack()
    given = train_settings.LoRALabLossSettings.execute(
        **{**train_settings.declared_defaults(train_settings.LoRALabLossSettings), "noise_offset": 0.05}
    ).args[0]
    settings = train_settings.merged_settings(train_lora.SETTINGS_NODES, {"loss_settings": given})
    assert settings["noise_offset"] == 0.05 and settings["min_snr_gamma"] == 5.0
    assert settings["gradient_checkpointing"] is False


def test_a_moved_input_is_refused_naming_the_node_and_the_socket():
    train_lora, _ = _pack()
    prompt = {"7": {"class_type": "TrainLoRA", "inputs": {"rank": 8, "noise_offset": 0.1, "loss_type": "mse",
                                                          "gradient_checkpointing": True}}}
    with pytest.raises(ValueError) as refused:
        train_lora.refuse_moved_inputs(prompt, "7")
    message = str(refused.value)
    assert message.startswith("TrainLoRA: 'noise_offset', 'loss_type' moved to the LoRA Lab Loss Settings node: ")
    assert "connect it to Train LoRA's loss_settings input." in message
    assert "'gradient_checkpointing' moved to the LoRA Lab Memory Settings node" in message
    assert "memory_settings" in message
    train_lora.refuse_moved_inputs({"7": {"inputs": {"rank": 8}}}, "7")  # nothing moved: no error


def test_cross_node_checks_run_in_validation_when_the_settings_are_known_else_in_execute():
    train_lora, train_settings = _pack()
    node = train_lora.TrainLoRA
    # An unconnected adapter_settings means dropout 0: loha is fine; a linked one (None) is checked later.
    assert node.validate_inputs(adapter_type="loha") is True
    assert node.validate_inputs(adapter_type="loha", adapter_settings=None) is True
    adapter = train_settings.declared_defaults(train_settings.LoRALabAdapterSettings)
    problem = train_lora.combination_problem("AdamW", "loha", {**adapter, "lora_dropout": 0.1})
    assert problem.startswith("adapter_type: lora dropout 0.1")
    state = train_lora.combination_problem("AdamW8bit", "lora", {"optimizer_state_on_cpu": True})
    assert "optimizer_state_on_cpu cannot be used with AdamW8bit" in state
    assert train_lora.combination_problem("AdamW8bit", "lora", {}) is None  # fallback unknown: not judged


def test_settings_nodes_check_their_own_values():
    _, train_settings = _pack()
    assert "lora_dropout must be from 0 to 0.9" in train_settings.LoRALabAdapterSettings.validate_inputs(
        lora_dropout=0.95
    )
    assert train_settings.LoRALabAdapterSettings.validate_inputs(lora_dropout=0.1) is True
    assert train_settings.LoRALabMemorySettings.validate_inputs(base_weights="as loaded") is True


def test_an_api_graph_saved_before_train_t5_still_validates_and_means_train_t5_off():
    _, train_settings = _pack()
    node = train_settings.LoRALabTextEncoderSettings
    (entry,) = [e for e in node.GET_SCHEMA().inputs if e.id == "train_t5"]
    assert entry.optional  # ComfyUI refuses a graph that lacks a required input
    given = node.execute(text_encoder_lr=5e-5, clip_skip=1).result[0].as_dict()
    assert given == {"text_encoder_lr": 5e-5, "clip_skip": 1, "train_t5": False}
    assert node.execute(text_encoder_lr=5e-5, clip_skip=1, train_t5=True).result[0].as_dict()["train_t5"] is True


def test_a_loss_settings_node_saved_before_masked_loss_means_off_and_prior_weight_one():
    _, train_settings = _pack()
    node = train_settings.LoRALabLossSettings
    entries = {e.id: e for e in node.GET_SCHEMA().inputs}
    assert list(entries)[-2:] == ["masked_loss", "prior_loss_weight"]  # appended: saved widget values keep their places
    assert entries["masked_loss"].optional and entries["prior_loss_weight"].optional
    old = dict(min_snr_gamma=5.0, noise_offset=0.0, loss_type="mse", timestep_sampling="uniform",
               multires_noise_iterations=0)
    given = node.execute(**old).result[0].as_dict()
    assert given["masked_loss"] is False and given["prior_loss_weight"] == 1.0
    given = node.execute(**old, masked_loss=True, prior_loss_weight=0.5).result[0].as_dict()
    assert given["masked_loss"] is True and given["prior_loss_weight"] == 0.5

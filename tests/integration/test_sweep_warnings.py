"""The sweep's warnings where users go wrong (#15 item 5), in a real ComfyUI server on the tiny SD1.5.

LoRA files are written by the test with kohya keys on the tiny UNet's cross-attention and ``ss_*``
metadata as LoRA Lab writes it: "strong" and "other" change the picture (random weights, seeded), "idle"
is all zeros (changes nothing). One graph runs every case; each warning must fire where the mistake is
made and stay silent where it is not, in the node's ``report`` output.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers.training import CKPT
from tools.comfy_server import ComfyServer
from tools.graph import Graph

SAMPLING = dict(seed=3, steps=2, cfg=3.0, sampler_name="euler", scheduler="normal", width=64, height=64)
LAYERS = {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k": (320, 768),
          "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v": (320, 768)}
TRIGGER_WARNING = "no prompt contains the LoRA's trigger word 'sks'"
CLIP_SKIP_WARNING = "the LoRA was trained with clip skip 2 (ss_clip_skip)"
OVERRIDE_WARNING = "the stack is the same picture as"


def write_lora(server: ComfyServer, name: str, seed: int | None) -> str:
    """A LoRA on the tiny UNet's cross-attention (``seed`` None: all zeros), trigger "sks", clip skip 2."""
    generator = torch.Generator().manual_seed(seed or 0)
    tensors = {}
    for stem, (rows, columns) in LAYERS.items():
        scale = 0.0 if seed is None else 1.0
        tensors[f"{stem}.lora_down.weight"] = torch.randn(4, columns, generator=generator) * scale
        tensors[f"{stem}.lora_up.weight"] = torch.randn(rows, 4, generator=generator) * scale
        tensors[f"{stem}.alpha"] = torch.tensor(4.0)
    path = server.models_dir / "loras" / "tests" / f"warn_{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_trigger_word": "sks", "ss_clip_skip": "2",
                                             "ss_base_model_version": "sd_v1", "ss_output_name": f"warn_{name}"})
    return f"tests/warn_{name}.safetensors"


@pytest.fixture(scope="module")
def reports(comfy_server: ComfyServer) -> dict[str, str]:
    server = comfy_server
    strong, other, idle = (write_lora(server, name, seed) for name, seed in
                           (("strong", 1), ("other", 2), ("idle", None)))
    graph = Graph()
    checkpoint = graph.node("CheckpointLoaderSimple", ckpt_name=CKPT)
    skipped = graph.node("CLIPSetLastLayer", clip=checkpoint[1], stop_at_clip_layer=-2)
    nodes = {}

    def sweep(name: str, clip, prompts: str) -> None:
        values = server.widget_defaults("TestLoRAStrengthSweep")
        values.update(model=checkpoint[0], clip=clip, vae=checkpoint[2], lora_name=strong, prompts=prompts,
                      strengths="1.0", include_baseline=False, **SAMPLING)
        nodes[name] = graph.node("TestLoRAStrengthSweep", **values)

    def stack(name: str, others: str) -> None:
        values = server.widget_defaults("CompareLoRAStack")
        values.update(model=checkpoint[0], clip=skipped[0], vae=checkpoint[2], lora_name=strong, lora_strength=0.7,
                      other_loras=others, stack_strengths="0.7, 0.5", prompts="{trigger}, a ring", **SAMPLING)
        nodes[name] = graph.node("CompareLoRAStack", **values)

    sweep("no_trigger_default_clip", checkpoint[1], "a ring\na square")
    sweep("trigger_and_clip_skip_2", skipped[0], "a ring\n{trigger}, a square")
    stack("strong_over_idle", f"{idle}: 0.5")
    stack("strong_and_other", f"{other}: 0.5")
    result = server.run(graph.to_api(), timeout=900).raise_for_error()
    return {name: result.outputs[node.id]["text"][0] for name, node in nodes.items()}


def test_prompts_without_the_trigger_word_are_warned_about_and_prompts_with_it_are_not(reports):
    print(reports["no_trigger_default_clip"])  # shown with pytest -rP
    report = reports["no_trigger_default_clip"]
    assert TRIGGER_WARNING in report and "results look like the base model? Check your trigger word" in report
    assert "does not fit" not in report  # the LoRA was applied: the warning is about the prompts alone
    for name in ("trigger_and_clip_skip_2", "strong_over_idle", "strong_and_other"):
        assert TRIGGER_WARNING not in reports[name], name


def test_a_clip_at_another_clip_skip_than_training_is_warned_about_with_the_node_to_fix_it(reports):
    report = reports["no_trigger_default_clip"]
    assert CLIP_SKIP_WARNING in report and "encodes prompts at clip skip 1" in report
    assert "CLIPSetLastLayer node with stop_at_clip_layer = -2" in report
    for name in ("trigger_and_clip_skip_2", "strong_over_idle", "strong_and_other"):  # all through CLIPSetLastLayer -2
        assert CLIP_SKIP_WARNING not in reports[name], name


def test_a_stack_that_equals_one_lora_alone_says_that_lora_overrides_the_other(reports):
    print(reports["strong_over_idle"])
    report = reports["strong_over_idle"]
    strong, idle = "tests/warn_strong.safetensors", "tests/warn_idle.safetensors"  # names as the node shows them
    assert f"{OVERRIDE_WARNING} {strong} alone" in report
    assert f"{strong} overrides {idle}" in report and f"Lower {strong}'s strength" in report
    assert OVERRIDE_WARNING not in reports["strong_and_other"]  # two LoRAs that both show: no warning

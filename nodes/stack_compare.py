"""CompareLoRAStack: the new LoRA beside and on top of LoRAs the user already has."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..trainer_core.pictures.grids import labelled_grid
from ..trainer_core.pictures.sweep import (
    GUIDE_STACK_STRENGTHS,
    parse_lora_lines,
    parse_prompts,
    plan_grid,
    stack_strengths,
)
from .grid_render import (
    Cell,
    Sampling,
    check_fit,
    load_lora_file,
    lora_inputs,
    render_cells,
    resolve_new_lora,
    sampling_inputs,
    save_grid,
)


class CompareLoRAStack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CompareLoRAStack",
            display_name="Compare LoRA Stack",
            category="LoRA Lab/Testing",
            description=(
                "One grid: the base model, the new LoRA alone, each of your other LoRAs alone, and all of them "
                "stacked with reduced strengths (the guides' 0.7 / 0.5 / 0.35 by default). Rendered with ComfyUI's "
                "own LoRA loader and KSampler, chained in order like LoraLoader nodes."
            ),
            inputs=[
                *lora_inputs(
                    model="The base model (without LoRAs).",
                    vae="Its VAE.",
                    lora="The new LoRA (from Train LoRA or Save LoRA).",
                    lora_name="The new LoRA as a file, when the lora input is not connected.",
                ),
                io.Float.Input("lora_strength", default=1.0, min=-5.0, max=5.0, step=0.05,
                               tooltip="The new LoRA's strength in its own column."),
                io.String.Input("other_loras", multiline=True, default="",
                                tooltip="Your other LoRAs from models/loras, one per line as 'name.safetensors: 0.8' "
                                "(the strength of its own column; default 1.0)."),
                io.String.Input("stack_strengths", default=GUIDE_STACK_STRENGTHS,
                                tooltip="Strengths inside the stack: the new LoRA first, then the others in order; the "
                                "last value repeats. The guides: first 0.6-0.8, second 0.4-0.6, third 0.3-0.4."),
                io.String.Input("prompts", multiline=True, default="{trigger}, a photo",
                                tooltip="One prompt per line: one grid row each. {trigger} becomes the new LoRA's trigger word."),
                io.String.Input("negative", multiline=True, default="", tooltip="Negative prompt for every cell."),
                *sampling_inputs(),
            ],
            outputs=[
                io.Image.Output("grid", display_name="grid", tooltip="The labelled comparison grid."),
                io.Image.Output("images", display_name="images", tooltip="Every cell as a batch, row by row."),
                io.String.Output("report", display_name="report", tooltip="Which LoRAs were applied, and any that do not fit."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, lora_name: str, lora_strength: float, other_loras: str, stack_strengths: str,
                prompts: str, negative: str, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                width: int, height: int, lora=None) -> io.NodeOutput:
        lora, new_name = resolve_new_lora(lora, lora_name, unnamed="new LoRA",
                                          missing="lora: connect the new LoRA or pick it in lora_name")
        others = parse_lora_lines(other_loras)
        loras = {new_name: lora}
        for name, _ in others:
            loras[name] = load_lora_file(name)
        trigger = getattr(lora, "metadata", {}).get("ss_trigger_word", "")
        prompt_list = parse_prompts(prompts, trigger)
        in_stack = stack_strengths_for(stack_strengths, [new_name] + [name for name, _ in others])
        columns: list[tuple[str, tuple[tuple[str, float, float], ...]]] = [
            ("base", ()),
            (f"{new_name} {lora_strength:g}", ((new_name, lora_strength, lora_strength),)),
        ]
        columns += [(f"{name} {strength:g}", ((name, strength, strength),)) for name, strength in others]
        if others:
            columns.append(("stack: " + " + ".join(f"{s:g}" for _, s, _ in in_stack), in_stack))
        plan_grid(prompt_list, [0.0] * len(columns), width, height)
        cells = [[Cell(stack, prompt) for _, stack in columns] for prompt in prompt_list]
        problems, notes = check_fit(model, clip, loras)
        sampling = Sampling(negative, seed, steps, cfg, sampler_name, scheduler, width, height)
        rows = render_cells(model, clip, vae, loras, cells, sampling, problems)
        header = [f"Stack test, seed {seed}, {sampler_name} / {scheduler}, {steps} steps, cfg {cfg:g}",
                  "stack order: " + ", ".join(f"{name} {s:g}" for name, s, _ in in_stack)]
        grid = labelled_grid(rows, [label for label, _ in columns], prompt_list, header)
        images = torch.from_numpy(np.stack([cell for row in rows for cell in row]))
        saved = save_grid(cls, grid, "lora_lab/stacks/grid", {
            "columns": [label for label, _ in columns], "prompts": prompt_list, "seed": seed})
        report = "\n".join(notes)
        return io.NodeOutput(torch.from_numpy(grid)[None], images, report, ui={"images": [saved], "text": [report]})


def stack_strengths_for(text: str, names: list[str]) -> tuple[tuple[str, float, float], ...]:
    return tuple((name, s, s) for name, s in zip(names, stack_strengths(text, len(names)), strict=True))

"""CompareLoRAStack: the new LoRA beside and on top of LoRAs the user already has."""

from __future__ import annotations

from comfy_api.latest import io

from ..trainer_core.pictures.sweep import (
    GUIDE_STACK_STRENGTHS,
    parse_lora_lines,
    parse_prompts,
    plan_grid,
    stack_strengths,
)
from . import clip_cells, grid_render, sweep_warnings


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
                *grid_render.lora_inputs(
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
                *grid_render.sampling_inputs(),
                io.Int.Input(
                    "frames", default=clip_cells.DEFAULT_FRAMES, min=1, max=1025, optional=True,
                    tooltip="Video models only (Wan, HunyuanVideo): each cell is a clip of this many frames (4k+1 "
                    "suits their VAEs), shown in the grid as a strip of 4 frames and saved as an animated WebP in "
                    "ComfyUI's output folder. 1 = still images. Image models always draw still images.",
                ),
            ],
            outputs=grid_render.grid_outputs(grid="The labelled comparison grid.",
                                             report="Which LoRAs were applied, and any that do not fit."),
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, lora_name: str, lora_strength: float, other_loras: str, stack_strengths: str,
                prompts: str, negative: str, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                width: int, height: int, lora=None, frames: int = clip_cells.DEFAULT_FRAMES) -> io.NodeOutput:
        lora, new_name = grid_render.resolve_new_lora(lora, lora_name, unnamed="new LoRA",
                                                      missing="lora: connect the new LoRA or pick it in lora_name")
        others = parse_lora_lines(other_loras)
        loras = {new_name: lora}
        for name, _ in others:
            loras[name] = grid_render.load_lora_file(name, "other_loras")
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
        frames = clip_cells.clip_frames(model, frames)
        plan_grid(prompt_list, [0.0] * len(columns), width * clip_cells.strip_count(frames), height)
        cells = [[grid_render.Cell(stack, prompt) for _, stack in columns] for prompt in prompt_list]
        problems, notes = grid_render.check_fit(model, clip, loras)
        sampling, size_note = grid_render.fit_cell_size(model, vae, grid_render.Sampling(
            negative, seed, steps, cfg, sampler_name, scheduler, width, height, frames=frames))
        notes += [size_note] if size_note else []
        notes += sweep_warnings.lora_warnings("CompareLoRAStack", dict(getattr(lora, "metadata", {})), prompt_list, clip)
        clips: dict = {}
        rows = grid_render.render_cells(model, clip, vae, loras, cells, sampling, problems, clips)
        notes += sweep_warnings.stack_warnings("CompareLoRAStack", rows, prompt_list, [label for label, _ in columns],
                                               [new_name] + [name for name, _ in others])
        animated, clip_notes = clip_cells.save_cell_clips(cls, clips, frames, "lora_lab/stacks/clip")
        notes += clip_notes
        header = [f"Stack test, seed {seed}, {sampler_name} / {scheduler}, {steps} steps, cfg {cfg:g}",
                  "stack order: " + ", ".join(f"{name} {s:g}" for name, s, _ in in_stack)]
        labels = [label for label, _ in columns]
        return grid_render.finish_grid(cls, rows, labels, prompt_list, header, notes, "lora_lab/stacks/grid",
                                       {"columns": labels, "prompts": prompt_list, "seed": seed, "frames": frames},
                                       animated)


def stack_strengths_for(text: str, names: list[str]) -> tuple[tuple[str, float, float], ...]:
    return tuple((name, s, s) for name, s in zip(names, stack_strengths(text, len(names)), strict=True))

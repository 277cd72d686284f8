"""TestLoRAStrengthSweep: a labelled grid of a LoRA at several strengths, rendered with ComfyUI's own
LoRA loader and sampler, so each cell is what LoraLoader + KSampler give at that strength and seed."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..trainer_core.adapters.export import tensor_data_hash
from ..trainer_core.pictures.sweep import (
    DEFAULT_STRENGTHS,
    SweepError,
    parse_prompts,
    parse_strengths,
    plan_grid,
    strength_label,
)
from . import clip_cells, grid_render, image_to_video, sweep_scoring, sweep_warnings
from .types import Dataset

CLIP_MODES = ["same as model", "fixed"]


class TestLoRAStrengthSweep(io.ComfyNode):
    __test__ = False  # a node, not a pytest test class
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TestLoRAStrengthSweep",
            display_name="Test LoRA Strength Sweep",
            category="LoRA Lab/Testing",
            description=(
                "Renders a grid: columns are LoRA strengths (with a strength-0 baseline), rows are prompts. Every cell "
                "goes through ComfyUI's own LoRA loader and KSampler with a fixed seed, so it is exactly what "
                "LoraLoader + KSampler give."
            ),
            inputs=[
                *grid_render.lora_inputs(
                    model="The base model (without the LoRA).",
                    vae="Its VAE, to decode the images.",
                    lora="The LoRA from Train LoRA or Save LoRA. Leave empty to pick a file.",
                    lora_name="A LoRA file from models/loras, used when the lora input is not connected.",
                ),
                io.String.Input("prompts", multiline=True, default="{trigger}, a photo",
                                tooltip="One prompt per line: one grid row each. {trigger} becomes the LoRA's trigger word."),
                io.String.Input("negative", multiline=True, default="", tooltip="Negative prompt for every cell."),
                io.String.Input("strengths", default=DEFAULT_STRENGTHS,
                                tooltip="Model strengths, one grid column each, separated by commas. Negative and "
                                "above-1 values are allowed (-5 to 5)."),
                io.Boolean.Input("include_baseline", default=True, tooltip="Add a strength-0 column: the model without the LoRA."),
                io.Combo.Input("clip_strength_mode", options=CLIP_MODES, default=CLIP_MODES[0],
                               tooltip="'same as model': each column's CLIP strength equals its model strength; "
                               "'fixed': every column uses clip_strength."),
                io.Float.Input("clip_strength", default=1.0, min=-5.0, max=5.0, step=0.05,
                               tooltip="The CLIP (text encoder) strength when clip_strength_mode is 'fixed'."),
                *grid_render.sampling_inputs(),
                io.Boolean.Input(
                    "batch_prompts", default=False, optional=True,
                    tooltip="Sample all prompts of a column in one batch: faster, but a pixel may differ "
                    "by a level or two from a separate LoraLoader + KSampler run (batched maths rounds differently).",
                ),
                io.String.Input(
                    "checkpoints", multiline=True, default="", optional=True,
                    tooltip="Checkpoint x strength: more LoRA files of the same training, one per line, or a pattern "
                    "such as lora_lab_checkpoints/my_lora_step*. Each adds a row per prompt.",
                ),
                io.Int.Input(
                    "frames", default=clip_cells.DEFAULT_FRAMES, min=1, max=1025, optional=True,
                    tooltip="Video models only (Wan, HunyuanVideo): each cell is a clip of this many frames (4k+1 "
                    "suits their VAEs), shown in the grid as a strip of 4 frames and saved as an animated WebP in "
                    "ComfyUI's output folder. 1 = still images. Image models always draw still images.",
                ),
                Dataset.Input(
                    "dataset", optional=True,
                    tooltip="The training dataset (from Load Dataset): connect it to score every cell's likeness "
                    "to it, mark a recommended strength (and checkpoint) and plot the scores.",
                ),
                io.ClipVision.Input(
                    "clip_vision", optional=True,
                    tooltip="A CLIP vision model (Load CLIP Vision, models/clip_vision) to judge likeness with. "
                    "Without one the cells are compared in the VAE's latent space.",
                ),
                io.Image.Input("start_image", optional=True, tooltip=image_to_video.START_IMAGE_HELP),
            ],
            outputs=[
                *grid_render.grid_outputs(grid="The labelled grid; the recommended strength framed in green.",
                                          report="What was rendered, any cell that could not be, the scores and "
                                          "the recommendation."),
                io.Image.Output("scores", display_name="scores",
                                tooltip="Concept score and bleed against strength (needs the dataset input)."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, strengths: str | None = None, prompts: str | None = None) -> bool | str:
        try:
            if strengths is not None:
                parse_strengths(strengths, include_baseline=False)
            if prompts is not None:
                parse_prompts(prompts, "trigger")
        except SweepError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, model, clip, vae, lora_name: str, prompts: str, negative: str, strengths: str,
                include_baseline: bool, clip_strength_mode: str, clip_strength: float, seed: int, steps: int,
                cfg: float, sampler_name: str, scheduler: str, width: int, height: int, checkpoints: str = "",
                batch_prompts: bool = False, lora=None, frames: int = clip_cells.DEFAULT_FRAMES,
                dataset=None, clip_vision=None, start_image=None) -> io.NodeOutput:
        lora, display_name = grid_render.resolve_new_lora(
            lora, lora_name, unnamed="trained LoRA",
            missing="lora: connect a LoRA (from Train LoRA or Save LoRA) or pick a file in lora_name")
        metadata = dict(getattr(lora, "metadata", {}))
        trigger = metadata.get("ss_trigger_word", "")
        prompt_list = parse_prompts(prompts, trigger)
        strength_list = parse_strengths(strengths, include_baseline)
        loras = {display_name: lora}
        row_loras = [(display_name, prompt) for prompt in prompt_list]
        row_labels = list(prompt_list)
        for name in resolve_lora_names(checkpoints):  # checkpoint x strength: one row per checkpoint and prompt
            loras[name] = grid_render.load_lora_file(name, "checkpoints")
            step = loras[name].metadata.get("ss_steps", "?")
            row_loras += [(name, prompt) for prompt in prompt_list]
            row_labels += [f"step {step}: {prompt}" for prompt in prompt_list]
        if len(loras) > 1:
            row_labels[: len(prompt_list)] = [f"step {metadata.get('ss_steps', '?')}: {p}" for p in prompt_list]
        frames = clip_cells.clip_frames(model, frames)
        plan_grid(row_labels, strength_list, width * clip_cells.strip_count(frames), height)

        def clip_for(strength: float) -> float:
            return strength if clip_strength_mode == CLIP_MODES[0] else clip_strength

        cells = [[grid_render.Cell(((name, s, clip_for(s)),), prompt) for s in strength_list]
                 for name, prompt in row_loras]
        problems, notes = grid_render.check_fit(model, clip, loras)
        sampling, size_note = grid_render.fit_cell_size(model, vae, grid_render.Sampling(
            negative, seed, steps, cfg, sampler_name, scheduler, width, height, batch_prompts, frames, start_image,
            clip_vision))
        notes += [size_note] if size_note else []
        notes += sweep_warnings.lora_warnings("TestLoRAStrengthSweep", metadata, prompt_list, clip)
        clips: dict = {}
        rows = grid_render.render_cells(model, clip, vae, loras, cells, sampling, problems, clips)
        animated, clip_notes = clip_cells.save_cell_clips(cls, clips, frames, "lora_lab/sweeps/clip")
        notes += clip_notes
        verdict = sweep_scoring.score_sweep(rows, row_loras, strength_list, trigger, dataset, vae, model,
                                            clip_vision, set(problems), training_steps(loras), clips=clips)
        notes += verdict.lines + [line for line in [sweep_scoring.write_into_file(lora, display_name, verdict)] if line]
        header = [
            f"LoRA: {display_name}   steps: {metadata.get('ss_steps', '?')}   trigger: {trigger or '-'}   seed: {seed}",
            f"{sampler_name} / {scheduler}, {steps} steps, cfg {cfg:g}, {sampling.width}x{sampling.height}"
            + (f", {frames} frames" if frames > 1 else "")
            + ("" if clip_strength_mode == CLIP_MODES[0] else f", clip strength {clip_strength:g}"),
        ]
        info = {
            "lora": display_name, "lora_hash": metadata.get("sshs_model_hash") or tensor_data_hash(lora),
            "steps": metadata.get("ss_steps", ""), "seed": seed, "strengths": strength_list, "prompts": prompt_list,
            "checkpoints": list(loras)[1:], "frames": frames, **verdict.info,
        }
        column_labels = [strength_label(s) for s in strength_list]
        row_labels = sweep_scoring.mark_labels(row_labels, row_loras, verdict)
        header += sweep_scoring.header_lines(verdict)
        return grid_render.finish_grid(cls, rows, column_labels, row_labels, header, notes, "lora_lab/sweeps/grid",
                                       info, animated, marked=verdict.marked, more_outputs=(sweep_scoring.plot_tensor(verdict),))


def training_steps(loras: dict) -> dict[str, int]:
    """Each LoRA file's ``ss_steps`` (0 when missing or not a number)."""
    out = {}
    for name, weights in loras.items():
        try:
            out[name] = int(float(getattr(weights, "metadata", {}).get("ss_steps", 0) or 0))
        except (TypeError, ValueError):
            out[name] = 0
    return out


def resolve_lora_names(text: str) -> list[str]:
    """LoRA files named one per line; a line with * or ? is a pattern over models/loras
    (e.g. ``lora_lab_checkpoints/my_lora_step*``), matched in step order."""
    import fnmatch

    available = folder_paths.get_filename_list("loras")
    names: list[str] = []
    for line in (part.strip() for part in text.splitlines()):
        if not line:
            continue
        if any(ch in line for ch in "*?["):
            pattern = line if line.endswith(".safetensors") else line + ".safetensors"
            matched = sorted(n for n in available if fnmatch.fnmatch(n.replace("\\", "/"), pattern))
            if not matched:
                raise FileNotFoundError(f"checkpoints: nothing in models/loras matches {line!r}")
            names += matched
        else:
            names.append(line)
    return list(dict.fromkeys(names))

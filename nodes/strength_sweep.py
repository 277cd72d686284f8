"""TestLoRAStrengthSweep: a labelled grid of a LoRA at several strengths, rendered with ComfyUI's own
LoRA loader and sampler, so each cell is what LoraLoader + KSampler give at that strength and seed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import comfy.model_management
import folder_paths
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..trainer_core.export import LoRAWeights, tensor_data_hash
from ..trainer_core.grids import error_tile, labelled_grid
from ..trainer_core.sweep import DEFAULT_STRENGTHS, SweepError, parse_prompts, parse_strengths, plan_grid, strength_label
from . import bridge
from .types import LoraModel

NO_FILE = "[none: use the lora input]"
CLIP_MODES = ["same as model", "fixed"]
log = logging.getLogger(__name__)


def load_lora_file(name: str) -> LoRAWeights:
    """A LoRA from models/loras, with its metadata; a clear error for what is not a LoRA file."""
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        raise FileNotFoundError(f"lora_name: {name} is not in models/loras (refresh the page if you just added it)")
    if not path.lower().endswith(".safetensors"):
        raise ValueError(
            f"lora_name: {name} is not a .safetensors file. LoRA Lab reads only safetensors (a .ckpt/.pt file can run "
            "code when loaded): convert it, or use the stock LoraLoader."
        )
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"lora_name: {name} cannot be read as safetensors ({error}); the file is broken or truncated: "
                         "save or download it again") from error
    return LoRAWeights(tensors, metadata)


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
                io.Model.Input("model", tooltip="The base model (without the LoRA)."),
                io.Clip.Input("clip", tooltip="Its text encoder."),
                io.Vae.Input("vae", tooltip="Its VAE, to decode the images."),
                LoraModel.Input("lora", optional=True, tooltip="The LoRA from Train LoRA or Save LoRA. Leave empty to pick a file."),
                io.Combo.Input("lora_name", options=[NO_FILE] + folder_paths.get_filename_list("loras"), default=NO_FILE,
                               tooltip="A LoRA file from models/loras, used when the lora input is not connected."),
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
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The same seed in every cell, so only the strength changes."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps per cell."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="CFG scale."),
                io.Combo.Input("sampler_name", options=bridge.sampler_names(), default="euler", tooltip="Sampler."),
                io.Combo.Input("scheduler", options=bridge.scheduler_names(), default="normal", tooltip="Scheduler."),
                io.Int.Input("width", default=512, min=16, max=8192, step=8, tooltip="Image width of each cell."),
                io.Int.Input("height", default=512, min=16, max=8192, step=8, tooltip="Image height of each cell."),
            ],
            outputs=[
                io.Image.Output("grid", tooltip="The labelled grid."),
                io.Image.Output("images", tooltip="Every cell as a batch, row by row."),
                io.String.Output("report", tooltip="What was rendered, and any cell that could not be."),
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
                cfg: float, sampler_name: str, scheduler: str, width: int, height: int, lora=None) -> io.NodeOutput:
        if lora is None:
            if lora_name == NO_FILE:
                raise ValueError("lora: connect a LoRA (from Train LoRA or Save LoRA) or pick a file in lora_name")
            lora = load_lora_file(lora_name)
            display_name = lora_name
        else:
            display_name = getattr(lora, "metadata", {}).get("ss_output_name") or "trained LoRA"
        metadata = dict(getattr(lora, "metadata", {}))
        trigger = metadata.get("ss_trigger_word", "")
        plan = plan_grid(parse_prompts(prompts, trigger), parse_strengths(strengths, include_baseline), width, height)
        matched, total, unmatched = bridge.lora_fit(model, clip, lora)
        problem = None
        if total and not matched:
            problem = (f"this LoRA does not fit this model: none of its {total} layers match "
                       f"(e.g. {', '.join(unmatched[:2])}); is it for another model family?")
        notes = [f"{display_name}: {matched}/{total} layers applied"]
        if problem:
            notes.append(problem)
        elif unmatched:
            notes.append(f"{total - matched} layers do not fit this model and are ignored (e.g. {unmatched[0]})")

        negative_cond = {}
        rows: list[list[np.ndarray]] = [[] for _ in plan.prompts]
        for strength in plan.strengths:
            text_strength = strength if clip_strength_mode == CLIP_MODES[0] else clip_strength
            cells = _render_column(model, clip, vae, lora, strength, text_strength, plan, negative, negative_cond,
                                   seed, steps, cfg, sampler_name, scheduler, problem)
            for row, cell in zip(rows, cells):
                row.append(cell)
        header = [
            f"LoRA: {display_name}   steps: {metadata.get('ss_steps', '?')}   trigger: {trigger or '-'}   seed: {seed}",
            f"{sampler_name} / {scheduler}, {steps} steps, cfg {cfg:g}, {width}x{height}"
            + ("" if clip_strength_mode == CLIP_MODES[0] else f", clip strength {clip_strength:g}"),
        ]
        grid = labelled_grid(rows, [strength_label(s) for s in plan.strengths], list(plan.prompts), header)
        images = torch.from_numpy(np.stack([cell for row in rows for cell in row]))
        lora_hash = metadata.get("sshs_model_hash") or tensor_data_hash(lora)
        saved = _save_grid(cls, grid, {
            "lora": display_name, "lora_hash": lora_hash, "steps": metadata.get("ss_steps", ""), "seed": seed,
            "strengths": list(plan.strengths), "prompts": list(plan.prompts),
        })
        report = "\n".join(notes)
        return io.NodeOutput(torch.from_numpy(grid)[None], images, report,
                             ui={"images": [saved], "text": [report]})


def _render_column(model, clip, vae, lora, strength, text_strength, plan, negative, negative_cond, seed, steps, cfg,
                   sampler_name, scheduler, problem) -> list[np.ndarray]:
    """One strength: the model patched once, each prompt encoded once, one image per prompt."""
    if strength == 0 and text_strength == 0:
        patched_model, patched_clip = model, clip  # LoraLoader's own shortcut at 0/0
    elif problem:
        return [error_tile(plan.width, plan.height, problem) for _ in plan.prompts]
    else:
        patched_model, patched_clip = bridge.apply_lora(model, clip, lora, strength, text_strength)
    key = id(patched_clip) if text_strength != 0 else id(clip)
    if key not in negative_cond:
        negative_cond.clear()  # a new CLIP patch: the old negative conditioning no longer applies
        negative_cond[key] = bridge.encode_prompt(patched_clip, negative)
    cells = []
    for prompt in plan.prompts:
        comfy.model_management.throw_exception_if_processing_interrupted()
        try:
            positive = bridge.encode_prompt(patched_clip, prompt)
            samples = bridge.ksample(patched_model, positive, negative_cond[key], seed, steps, cfg, sampler_name,
                                     scheduler, plan.width, plan.height)
            image = bridge.decode(vae, samples)[0].float().cpu().numpy()
        except comfy.model_management.InterruptProcessingException:
            raise
        except torch.cuda.OutOfMemoryError as error:  # one cell too big: say so in the cell, render the others
            log.warning("strength %s, prompt %r: %s", strength, prompt, error)
            image = error_tile(plan.width, plan.height, "out of memory")
        cells.append(image)
    return cells


def _save_grid(cls, grid: np.ndarray, info: dict) -> dict:
    """The grid PNG in output/lora_lab/sweeps, carrying the workflow (as SaveImage does) and the LoRA's hash."""
    output = folder_paths.get_output_directory()
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        "lora_lab/sweeps/grid", output, grid.shape[1], grid.shape[0]
    )
    png = PngInfo()
    hidden = getattr(cls, "hidden", None)
    if hidden is not None and hidden.prompt is not None:
        png.add_text("prompt", json.dumps(hidden.prompt))
    if hidden is not None and hidden.extra_pnginfo:
        for key, value in hidden.extra_pnginfo.items():
            png.add_text(key, json.dumps(value))
    png.add_text("lora_lab", json.dumps(info))
    name = f"{filename}_{counter:05}_.png"
    Image.fromarray((np.clip(grid, 0, 1) * 255).round().astype(np.uint8)).save(Path(folder) / name, pnginfo=png)
    return {"filename": name, "subfolder": subfolder, "type": "output"}

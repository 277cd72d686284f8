"""Rendering grid cells through ComfyUI's own LoRA loading and sampler.

A cell is a list of LoRAs with strengths (applied in order, as chained LoraLoader nodes would) and a
prompt. Cells that share their LoRAs share one patched model; each prompt is encoded once per CLIP
patch; every image comes from ComfyUI's ``common_ksampler`` with the same seed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management
import folder_paths
import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..trainer_core.adapters.export import LoRAWeights
from ..trainer_core.pictures.grids import error_tile
from . import bridge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    negative: str
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    width: int
    height: int
    batch_prompts: bool = False


@dataclass(frozen=True)
class Cell:
    loras: tuple[tuple[str, float, float], ...]  # (LoRA name, model strength, clip strength), in order
    prompt: str


def sampling_inputs() -> list:
    """The KSampler settings every grid node offers, in KSampler's order, plus the cell size."""
    from comfy_api.latest import io

    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="The same seed in every cell, so only the LoRAs change."),
        io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps per cell."),
        io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="CFG scale."),
        io.Combo.Input("sampler_name", options=bridge.sampler_names(), default="euler", tooltip="Sampler."),
        io.Combo.Input("scheduler", options=bridge.scheduler_names(), default="normal", tooltip="Scheduler."),
        io.Int.Input("width", default=512, min=16, max=8192, step=8, tooltip="Image width of each cell."),
        io.Int.Input("height", default=512, min=16, max=8192, step=8, tooltip="Image height of each cell."),
    ]


def check_fit(model, clip, loras: dict[str, LoRAWeights]) -> tuple[dict[str, str], list[str]]:
    """Which LoRAs cannot be placed on this model (name → reason), and notes for the report."""
    problems: dict[str, str] = {}
    notes = []
    for name, weights in loras.items():
        matched, total, unmatched = bridge.lora_fit(model, clip, weights)
        notes.append(f"{name}: {matched}/{total} layers applied")
        if total and not matched:
            problems[name] = (f"{name} does not fit this model: none of its {total} layers match "
                              f"(e.g. {', '.join(unmatched[:2])}); is it for another model family?")
            notes.append(problems[name])
        elif unmatched:
            notes.append(f"{name}: {total - matched} layers do not fit this model and are ignored (e.g. {unmatched[0]})")
    return problems, notes


def render_cells(model, clip, vae, loras: dict[str, LoRAWeights], cells: list[list[Cell]], sampling: Sampling,
                 problems: dict[str, str]) -> list[list[np.ndarray]]:
    out: list[list[np.ndarray | None]] = [[None] * len(row) for row in cells]
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            active = tuple(entry for entry in cell.loras if entry[1] != 0 or entry[2] != 0)  # LoraLoader skips 0/0
            groups.setdefault(active, []).append((r, c))
    for active, positions in groups.items():
        bad = [problems[name] for name, _, _ in active if name in problems]
        if bad:
            for r, c in positions:
                out[r][c] = error_tile(sampling.width, sampling.height, bad[0])
            continue
        patched_model, patched_clip = model, clip
        for name, strength_model, strength_clip in active:
            patched_model, patched_clip = bridge.apply_lora(patched_model, patched_clip, loras[name], strength_model,
                                                            strength_clip)
        negative = bridge.encode_prompt(patched_clip, sampling.negative)
        encoded: dict[str, list] = {}
        if sampling.batch_prompts and len(positions) > 1:
            if _render_batched(patched_model, patched_clip, vae, cells, positions, negative, sampling, out):
                continue
        for r, c in positions:
            comfy.model_management.throw_exception_if_processing_interrupted()
            prompt = cells[r][c].prompt
            try:
                if prompt not in encoded:
                    encoded[prompt] = bridge.encode_prompt(patched_clip, prompt)
                samples = bridge.ksample(patched_model, encoded[prompt], negative, sampling.seed, sampling.steps,
                                         sampling.cfg, sampling.sampler_name, sampling.scheduler, sampling.width,
                                         sampling.height)
                out[r][c] = bridge.decode(vae, samples)[0].float().cpu().numpy()
            except torch.cuda.OutOfMemoryError as error:  # one cell too big: say so in it, render the others
                log.warning("grid cell %s: %s", (r, c), error)
                out[r][c] = error_tile(sampling.width, sampling.height, "out of memory")
    return [[cell for cell in row if cell is not None] for row in out]


def _render_batched(model, clip, vae, cells, positions, negative, sampling: Sampling, out) -> bool:
    """All prompts of one LoRA combination in one sampler call. Faster; on CPU the batched matrix
    products round differently, so a pixel can differ by a level from a separate KSampler run."""
    comfy.model_management.throw_exception_if_processing_interrupted()
    positive = bridge.batch_conditioning([bridge.encode_prompt(clip, cells[r][c].prompt) for r, c in positions])
    if positive is None:
        return False
    samples = bridge.ksample_batch(model, positive, negative, len(positions), sampling.seed, sampling.steps,
                                   sampling.cfg, sampling.sampler_name, sampling.scheduler, sampling.width,
                                   sampling.height)
    images = bridge.decode(vae, samples).float().cpu().numpy()
    for (r, c), image in zip(positions, images, strict=True):
        out[r][c] = image
    return True


def save_grid(cls, grid: np.ndarray, prefix: str, info: dict) -> dict:
    """The grid PNG in the output folder, carrying the workflow (as SaveImage does) and ``info``."""
    output = folder_paths.get_output_directory()
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, output, grid.shape[1], grid.shape[0])
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

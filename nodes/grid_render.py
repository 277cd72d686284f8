"""Rendering grid cells through ComfyUI's own LoRA loading and sampler, and the inputs the grid nodes share.

A cell is a list of LoRAs with strengths (applied in order, as chained LoraLoader nodes would) and a
prompt. Cells that share their LoRAs share one patched model; each prompt is encoded once per CLIP
patch; every image comes from ComfyUI's ``common_ksampler`` with the same seed.

The grid nodes take the LoRA they test the same way: a connected ``LORA_MODEL`` or, when nothing is
connected, a file picked in ``lora_name`` (``lora_inputs`` declares that, ``resolve_new_lora`` chooses).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import comfy.model_management
import folder_paths
import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..trainer_core.adapters.export import LoRAWeights
from ..trainer_core.pictures.grids import error_tile, labelled_grid
from . import bridge, clip_cells, image_to_video, sampler

log = logging.getLogger(__name__)

NO_FILE = "[none: use the lora input]"


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
    frames: int = 1  # a video model's clip length per cell (clip_cells); 1 = still images
    start_image: Any = None  # image-to-video models: every cell's start image (image_to_video.start_values)
    clip_vision: Any = None  # and, for Wan 2.1 I2V, the CLIP vision model that encodes it

    @property
    def cell_width(self) -> int:
        """A cell's width in the grid: a clip's frame strip is ``strip_count`` frames wide."""
        return self.width * clip_cells.strip_count(self.frames)


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
        io.Combo.Input("sampler_name", options=sampler.sampler_names(), default="euler", tooltip="Sampler."),
        io.Combo.Input("scheduler", options=sampler.scheduler_names(), default="normal", tooltip="Scheduler."),
        io.Int.Input("width", default=512, min=16, max=8192, step=8, tooltip="Image width of each cell."),
        io.Int.Input("height", default=512, min=16, max=8192, step=8, tooltip="Image height of each cell."),
    ]


def lora_inputs(*, model: str, vae: str, lora: str, lora_name: str) -> list:
    """model, clip, vae, the optional lora socket and the lora_name file picker, in that order; each node
    words its own tooltips (saved workflows keep widget values by position, so the order stays)."""
    from comfy_api.latest import io

    from .types import LoraModel

    return [
        io.Model.Input("model", tooltip=model),
        io.Clip.Input("clip", tooltip="Its text encoder."),
        io.Vae.Input("vae", tooltip=vae),
        LoraModel.Input("lora", optional=True, tooltip=lora),
        io.Combo.Input("lora_name", options=[NO_FILE] + folder_paths.get_filename_list("loras"), default=NO_FILE,
                       tooltip=lora_name),
    ]


def resolve_new_lora(lora: LoRAWeights | None, lora_name: str, *, missing: str,
                     unnamed: str) -> tuple[LoRAWeights, str]:
    """The connected LoRA, else the file picked in lora_name, with the name the grid shows for it.

    ``missing`` is the node's message when neither is given; ``unnamed`` names a connected LoRA whose
    metadata has no ``ss_output_name``."""
    if lora is None:
        if lora_name == NO_FILE:
            raise ValueError(missing)
        return load_lora_file(lora_name), lora_name
    return lora, getattr(lora, "metadata", {}).get("ss_output_name") or unnamed


def load_lora_file(name: str, field: str = "lora_name") -> LoRAWeights:
    """A LoRA from models/loras, with its metadata; a clear error, naming the input ``field``, for what is not
    a LoRA file."""
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        raise FileNotFoundError(f"{field}: {name} is not in models/loras (refresh the page if you just added it)")
    if not path.lower().endswith(".safetensors"):
        raise ValueError(
            f"{field}: {name} is not a .safetensors file. LoRA Lab reads only safetensors (a .ckpt/.pt file can run "
            "code when loaded): convert it, or use the stock LoraLoader."
        )
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{field}: {name} cannot be read as safetensors ({error}); the file is broken or truncated: "
                         "save or download it again") from error
    return LoRAWeights(tensors, metadata)


def check_fit(model, clip, loras: dict[str, LoRAWeights]) -> tuple[dict[str, str], list[str]]:
    """Which LoRAs cannot be placed on this model (name → reason), and notes for the report."""
    problems: dict[str, str] = {}
    notes = []
    for name, weights in loras.items():
        matched, total, unmatched = bridge.lora_fit(model, clip, weights)
        if not total:
            raise ValueError(not_a_lora_message(name, weights))
        notes.append(f"{name}: {matched}/{total} layers applied")
        if total and not matched:
            problems[name] = (f"{name} does not fit this model: none of its {total} layers match "
                              f"(e.g. {', '.join(unmatched[:2])}); is it for another model family?")
            notes.append(problems[name])
        elif unmatched:
            notes.append(f"{name}: {total - matched} layers do not fit this model and are ignored (e.g. {unmatched[0]})")
    return problems, notes


def not_a_lora_message(name: str, weights: dict) -> str:
    """For a file with no LoRA layer at all (a checkpoint, a VAE, an embedding picked by mistake)."""
    keys = sorted(weights)
    looks_like = next((kind for prefix, kind in (
        ("model.diffusion_model.", "a checkpoint (load it with Load Checkpoint)"),
        ("first_stage_model.", "a checkpoint (load it with Load Checkpoint)"),
        ("decoder.", "a VAE (load it with Load VAE)"), ("encoder.", "a VAE (load it with Load VAE)"),
        ("emb_params", "a textual-inversion embedding (write embedding:<name> in the prompt)"),
        ("string_to_param", "a textual-inversion embedding (write embedding:<name> in the prompt)"),
    ) if any(key.startswith(prefix) for key in keys)), "no LoRA")
    shown = ", ".join(keys[:3]) if keys else "no tensors at all"
    return (f"{name} is not a LoRA: none of its {len(keys)} tensors is a LoRA layer (.lora_down/.lora_up, "
            f".lora_A/.lora_B, hada_*, lokr_*; it has {shown}). It looks like {looks_like}. Pick a LoRA file from "
            "models/loras.")


def fit_cell_size(model, vae, sampling: Sampling) -> tuple[Sampling, str | None]:
    """``sampling`` at the cell size nearest the one asked that the model can make (Flux.2 draws in steps of
    16 px), with the note for the node's report when it had to change (said in the console too). Another
    family's VAE is refused first: it would misjudge the step; so is an image-to-video model (no start image)."""
    image_to_video.refuse_in_grids(model, sampling.start_image)
    bridge.check_vae_fits(vae, model, "vae")
    width, height, note = sampler.fitted_size(model, vae, sampling.width, sampling.height, "width/height")
    return replace(sampling, width=width, height=height), note


def check_cell_size(model, vae, width: int, height: int) -> None:
    """Refuse a cell size the model cannot make (the grid nodes fit it first, ``fit_cell_size``): every cell,
    and every error tile beside it, must be the size of the others, and PixArt cannot draw small cells."""
    step, minimum = sampler.size_rule(model, vae)
    if width % step or height % step:
        fits = f"{width // step * step or step}x{height // step * step or step}"
        raise ValueError(
            f"width/height: this MODEL ({bridge.model_family(model)}) makes images in steps of {step} px, and "
            f"{width}x{height} is not a multiple of {step}: use {fits} or the next step up"
        )
    if width + height < minimum:
        raise ValueError(
            f"width/height: this MODEL ({bridge.model_family(model)}) cannot draw {width}x{height}: it needs width + "
            f"height of {minimum} px or more (ComfyUI's sampler fails below that): make the cells larger"
        )


def render_cells(model, clip, vae, loras: dict[str, LoRAWeights], cells: list[list[Cell]], sampling: Sampling,
                 problems: dict[str, str], clips: dict[tuple[int, int], np.ndarray] | None = None,
                 ) -> list[list[np.ndarray]]:
    """Each cell's picture, row by row; with ``sampling.frames`` above 1 (a video model) each cell is a clip,
    shown as its frame strip, and the clips [F, H, W, 3] are put in ``clips`` by (row, column)."""
    bridge.check_vae_fits(vae, model, "vae")
    check_cell_size(model, vae, sampling.width, sampling.height)
    start = image_to_video.start_values(model, vae, sampling)  # None unless an I2V model has a start image
    out: list[list[np.ndarray | None]] = [[None] * len(row) for row in cells]
    texts: dict[tuple, list] = {}  # (the LoRAs patching the CLIP, text) -> CONDITIONING, shared by the groups
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            active = tuple(entry for entry in cell.loras if entry[1] != 0 or entry[2] != 0)  # LoraLoader skips 0/0
            groups.setdefault(active, []).append((r, c))
    for active, positions in groups.items():
        bad = [problems[name] for name, _, _ in active if name in problems]
        if bad:
            for r, c in positions:
                out[r][c] = error_tile(sampling.cell_width, sampling.height, bad[0])
            continue
        patched_model, patched_clip, clip_key = _with_loras(model, clip, loras, active)

        def encoded(text: str, clip_key=clip_key, patched_clip=patched_clip) -> list:
            if (clip_key, text) not in texts:
                texts[clip_key, text] = image_to_video.with_start(sampler.encode_prompt(patched_clip, text), start)
            return texts[clip_key, text]

        negative = encoded(sampling.negative)
        if sampling.batch_prompts and len(positions) > 1 and sampling.frames == 1 and start is None:
            if _render_batched(patched_model, encoded, vae, cells, positions, negative, sampling, out):
                continue
        for r, c in positions:
            comfy.model_management.throw_exception_if_processing_interrupted()
            try:
                samples = sampler.ksample(patched_model, encoded(cells[r][c].prompt), negative, sampling.seed,
                                          sampling.steps, sampling.cfg, sampling.sampler_name, sampling.scheduler,
                                          sampling.width, sampling.height, vae, sampling.frames)
                decoded = sampler.decode(vae, samples).float().cpu().numpy()
                out[r][c] = clip_cells.frame_strip(decoded) if sampling.frames > 1 else decoded[0]
                if sampling.frames > 1 and clips is not None:
                    clips[(r, c)] = decoded
            except torch.cuda.OutOfMemoryError as error:  # one cell too big: say so in it, render the others
                log.warning("grid cell %s: %s", (r, c), error)
                out[r][c] = error_tile(sampling.cell_width, sampling.height, "out of memory")
    return [[cell for cell in row if cell is not None] for row in out]


def _with_loras(model, clip, loras: dict[str, LoRAWeights], active: tuple) -> tuple[Any, Any, tuple]:
    """The MODEL and CLIP with ``active``'s LoRAs applied as LoraLoader applies them, and what the CLIP's
    encodings depend on: the (name, clip strength) of the LoRAs that patched CLIP weights. A LoRA without text
    encoder weights leaves the CLIP as it was, so its prompts encode as the plain CLIP's (the same tensors):
    the sweep encodes them once, not once per strength, and the plain CLIP is returned to encode them."""
    patched_model, patched_clip, clip_key = model, clip, []
    for name, strength_model, strength_clip in active:
        before = _clip_patch_count(patched_clip)
        patched_model, patched_clip = bridge.apply_lora(patched_model, patched_clip, loras[name], strength_model,
                                                        strength_clip)
        if _clip_patch_count(patched_clip) != before:
            clip_key.append((name, strength_clip))
    return patched_model, patched_clip if clip_key else clip, tuple(clip_key)


def _clip_patch_count(clip) -> int:
    """How many weight patches the CLIP carries (ComfyUI's ``add_patches`` only appends)."""
    patcher = getattr(clip, "patcher", None)
    return sum(len(entries) for entries in getattr(patcher, "patches", {}).values())


def _render_batched(model, encoded, vae, cells, positions, negative, sampling: Sampling, out) -> bool:
    """All prompts of one LoRA combination in one sampler call (``encoded(text)``: a prompt's CONDITIONING).
    Faster; on CPU the batched matrix products round differently, so a pixel can differ by a level from a
    separate KSampler run."""
    comfy.model_management.throw_exception_if_processing_interrupted()
    positive = sampler.batch_conditioning([encoded(cells[r][c].prompt) for r, c in positions])
    if positive is None:
        return False
    samples = sampler.ksample_batch(model, positive, negative, len(positions), sampling.seed, sampling.steps,
                                   sampling.cfg, sampling.sampler_name, sampling.scheduler, sampling.width,
                                   sampling.height, vae)
    images = sampler.decode(vae, samples).float().cpu().numpy()
    for (r, c), image in zip(positions, images, strict=True):
        out[r][c] = image
    return True


def grid_outputs(*, grid: str, report: str) -> list:
    """The three outputs every grid node gives: the grid, its cells as a batch, and a report."""
    from comfy_api.latest import io

    return [
        io.Image.Output("grid", display_name="grid", tooltip=grid),
        io.Image.Output("images", display_name="images", tooltip="Every cell as a batch, row by row."),
        io.String.Output("report", display_name="report", tooltip=report),
    ]


def finish_grid(cls, rows: list[list[np.ndarray]], column_labels: list[str], row_labels: list[str], header: list[str],
                notes: list[str], prefix: str, info: dict, animated: list[dict] | None = None,
                marked: list[tuple[int, int]] | tuple = (), more_outputs: tuple = ()):
    """The node's result for ``grid_outputs``: the labelled grid (saved under ``prefix`` and shown on the
    node; the (row, column) cells in ``marked`` framed), every cell as a batch, the notes as the report,
    then ``more_outputs`` (the node's outputs after those three); ``animated`` (saved clips' UI entries) are
    shown on the node after the grid."""
    from comfy_api.latest import io

    grid = labelled_grid(rows, column_labels, row_labels, header, marked=marked)
    images = torch.from_numpy(np.stack([cell for row in rows for cell in row]))
    saved = save_grid(cls, grid, prefix, info)
    report = "\n".join(notes)
    shown = {"images": [saved, *(animated or [])], "text": [report]}
    if animated:
        shown["animated"] = (True,)  # as SaveAnimatedWEBP says it: the frontend shows them as animations
    return io.NodeOutput(torch.from_numpy(grid)[None], images, report, *more_outputs, ui=shown)


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

"""The strength sweep's scores and recommendation: each cell compared with the dataset, through a CLIP
vision model when one is connected, else in the VAE's latent space (``trainer_core.pictures.recommend``
holds the scores' definitions and the rule). Also writes the recommendation into the LoRA file that
Save LoRA wrote."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import comfy.model_management
import numpy as np
import torch

from ..trainer_core.adapters.export import LoRAWeights, rewrite_metadata
from ..trainer_core.pictures.plots import sweep_scores_image
from ..trainer_core.pictures.recommend import (
    Recommendation,
    latent_features,
    recommend_checkpoint,
    recommend_strength,
    recommendation_metadata,
    rule_text,
    score_rows,
    unit,
)
from ..trainer_core.training.encoding_cache import (
    KeyedData,
    entry_key,
    entry_path,
    read_entry,
    trim,
    write_entry,
)
from . import clip_cells, encoding_cache
from .bridge import ComfyLatentCodec

MAX_DATASET_IMAGES = 32  # evenly spread over the dataset: enough for its mean, bounded in time


@dataclass
class Verdict:
    """What the sweep adds to its grid: frames on the recommended cells, report lines, PNG info, the plot."""

    marked: list[tuple[int, int]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    plot: np.ndarray | None = None
    recommendations: list[Recommendation] = field(default_factory=list)
    checkpoint: Recommendation | None = None
    scorer: str = ""


def has_trigger(prompt: str, trigger: str) -> bool:
    """Whether the prompt names the trigger word (as a word, any case); without a trigger word every
    prompt shows the concept."""
    if not trigger.strip():
        return True
    return re.search(rf"(?<!\w){re.escape(trigger.strip())}(?!\w)", prompt, flags=re.IGNORECASE) is not None


def compared_items(dataset) -> list:
    """Up to ``MAX_DATASET_IMAGES`` of the dataset's items, evenly spread: those the cells are compared with."""
    items = list(dataset.items)
    if not items:
        raise ValueError("dataset: it holds no images, so the sweep has nothing to compare its cells with")
    picks = sorted({round(i) for i in np.linspace(0, len(items) - 1, min(len(items), MAX_DATASET_IMAGES))})
    return [items[index] for index in picks]


def dataset_pixels(dataset, width: int, height: int, items: list | None = None) -> list[torch.Tensor]:
    """The pixels of ``items`` (default ``compared_items``) resized to the cell size: each a ``[k, height, width,
    3]`` batch in 0..1, an image's pixels (k = 1) or a clip window's frames at the positions a clip cell's strip
    shows (``clip_cells.strip_picks``: first, last and two between)."""
    groups = []
    for item in compared_items(dataset) if items is None else items:
        if item.clip is None:
            frames = dataset.load_image(item)[None]
        else:  # decode only the scored frames of the window
            chosen = tuple(item.clip.indices[i] for i in clip_cells.strip_picks(len(item.clip.indices)))
            frames = dataset.load_frames(replace(item, frames=len(chosen), clip=replace(item.clip, indices=chosen)))
        groups.append(_resized(torch.from_numpy(np.ascontiguousarray(frames)), width, height))
    return groups


def _resized(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    moved = torch.nn.functional.interpolate(frames.movedim(-1, 1), size=(height, width), mode="bilinear",
                                            antialias=True)
    return moved.movedim(1, -1).clamp(0, 1)


def cell_frames(rows: list[list[np.ndarray]], clips: dict[tuple[int, int], np.ndarray], row: int) -> list[torch.Tensor]:
    """What is scored of each cell of ``row``: a clip cell's frames at its strip's positions ``[k, H, W, 3]``,
    else the cell's picture ``[1, H, W, 3]``."""
    groups = []
    for column, cell in enumerate(rows[row]):
        clip = clips.get((row, column))
        frames = cell[None] if clip is None else clip[clip_cells.strip_picks(clip.shape[0])]
        groups.append(torch.from_numpy(np.ascontiguousarray(frames)).float())
    return groups


def embed(images: torch.Tensor, vae, model, clip_vision) -> np.ndarray:
    """One feature vector per image ``[B, H, W, 3]``: the CLIP vision embedding (length 1) when a model is
    connected, else ``latent_features`` of its latent (one image at a time: a video VAE reads a batch as frames)."""
    with torch.no_grad():
        if clip_vision is not None:
            embeds = clip_vision.encode_image(images).image_embeds
            return unit(embeds.detach().float().cpu().numpy().reshape(len(images), -1))
        codec = ComfyLatentCodec(vae, model)
        features = []
        for image in images:
            comfy.model_management.throw_exception_if_processing_interrupted()
            latent = codec.encode(image[None]).detach().float().cpu().numpy()[0]
            features.append(latent_features(latent.reshape(latent.shape[0], latent.shape[-2], -1)))
    return np.stack(features)


def embed_groups(groups: list[torch.Tensor], vae, model, clip_vision) -> np.ndarray:
    """One feature vector per group of frames ``[k, H, W, 3]`` (a picture, or a clip's scored frames): the mean
    of its frames' features (``embed``), back to length 1 for CLIP vision embeddings."""
    features = embed(torch.cat(groups), vae, model, clip_vision)
    bounds = np.cumsum([len(group) for group in groups])[:-1]
    means = np.stack([part.mean(axis=0) for part in np.split(features, bounds)])
    return unit(means) if clip_vision is not None else means


def dataset_features(dataset, width: int, height: int, vae, model, clip_vision) -> np.ndarray:
    """``embed_groups`` of ``dataset_pixels``: one vector per compared item. With a CLIP vision model, each item's
    features are kept in the encoding cache (Train LoRA's: ``nodes.encoding_cache``), keyed on the pixels it
    loads (a clip's window included), the cell size and the model, so a sweep of an unchanged dataset encodes
    none of them again; a changed image is encoded."""
    if clip_vision is None or not isinstance(dataset, KeyedData):
        return embed_groups(dataset_pixels(dataset, width, height), vae, model, clip_vision)
    items = compared_items(dataset)
    folder, identity = encoding_cache.cache_folder(), encoding_cache.clip_vision_identity(clip_vision)
    paths = [entry_path(folder, "clip_vision", entry_key("clip_vision", identity, dataset.pixel_key(item),
                                                         f"{width}x{height}")) for item in items]
    entries = [read_entry(path) for path in paths]
    missing = [index for index, entry in enumerate(entries) if entry is None or "features" not in entry]
    if missing:
        groups = dataset_pixels(dataset, width, height, [items[i] for i in missing])
        for index, features in zip(missing, embed_groups(groups, vae, model, clip_vision), strict=True):
            entry = {"features": torch.from_numpy(np.ascontiguousarray(features))}
            write_entry(paths[index], entry)
            entries[index] = entry
    trim(folder, encoding_cache.max_bytes(), keep=set(paths))
    print(f"[LoRA Lab] sweep: CLIP vision features of {len(items)} dataset images: {len(items) - len(missing)} "
          f"cached, {len(missing)} encoded", flush=True)
    return np.stack([entry["features"].numpy() for entry in entries if entry is not None])


def score_sweep(rows: list[list[np.ndarray]], row_loras: list[tuple[str, str]], strengths: list[float],
                trigger: str, dataset, vae, model, clip_vision, skipped: set[str],
                steps: dict[str, int] | None = None, clips: dict[tuple[int, int], np.ndarray] | None = None,
                ) -> Verdict:
    """Scores, recommendations and marks for a rendered sweep; ``row_loras[row]`` is (LoRA name, prompt),
    ``skipped`` the LoRAs whose cells are error tiles, ``steps`` each LoRA file's training steps (the
    checkpoint rule prefers the less trained of near-equal files), ``clips`` the clip cells' frames
    ``[F, H, W, 3]`` by (row, column) on a video model: a clip cell scores as the mean of its strip frames'
    features, against the dataset's clips scored the same way (``dataset_pixels``)."""
    verdict = Verdict()
    if dataset is None:
        return _unscored(verdict, "not scored: connect the dataset to score the cells and get a recommended strength")
    if 0.0 not in strengths:
        return _unscored(verdict, "not scored: the scores compare each cell with its row's strength-0 cell; turn "
                                  "include_baseline on")
    verdict.scorer = "CLIP vision" if clip_vision is not None else "VAE latent (model-free)"
    clips = clips or {}
    height, width = next(iter(clips.values())).shape[1:3] if clips else rows[0][0].shape[:2]
    reference = dataset_features(dataset, width, height, vae, model, clip_vision).mean(axis=0)
    if clip_vision is not None:
        reference = unit(reference)
    kept = [r for r, (name, _) in enumerate(row_loras) if name not in skipped]
    features = [embed_groups(cell_frames(rows, clips, r), vae, model, clip_vision) for r in kept]
    info = [(row_loras[r][0], has_trigger(row_loras[r][1], trigger)) for r in kept]
    scores = score_rows(features, reference, strengths.index(0.0), info)
    names = list(dict.fromkeys(name for name, _ in row_loras if name not in skipped))
    names.sort(key=lambda name: (steps or {}).get(name, 0))  # stable: files without a step count keep their order
    verdict.recommendations = [recommend_strength(name, strengths, [s for s in scores if s.checkpoint == name])
                               for name in names]
    if len(names) > 1:
        verdict.checkpoint = recommend_checkpoint(verdict.recommendations)
    for r, (name, _) in enumerate(row_loras):
        chosen = next((rec for rec in verdict.recommendations if rec.checkpoint == name), None)
        if chosen is not None and chosen.strength is not None:
            verdict.marked.append((r, strengths.index(chosen.strength)))
    verdict.lines = report_lines(verdict)
    verdict.info = {"scorer": verdict.scorer, "recommendations": [
        {"lora": rec.checkpoint, "strength": rec.strength, "concept": _rounded(rec.concept),
         "bleed": _rounded(rec.bleed), "reason": rec.reason} for rec in verdict.recommendations],
        "recommended_checkpoint": verdict.checkpoint.checkpoint if verdict.checkpoint else None}
    verdict.plot = sweep_scores_image(
        [(rec.checkpoint, strengths, rec.concept, rec.bleed, rec.strength) for rec in verdict.recommendations],
        f"concept score (solid) and bleed (dashed), {verdict.scorer}")
    return verdict


def _unscored(verdict: Verdict, reason: str) -> Verdict:
    verdict.lines = [reason]
    verdict.info = {"scorer": None, "recommendations": [], "recommended_checkpoint": None}
    verdict.plot = sweep_scores_image([], reason if len(reason) < 70 else "not scored (see the report)")
    return verdict


def _rounded(values: list[float]) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 4) for v in values]


def report_lines(verdict: Verdict) -> list[str]:
    """The recommendation block of the sweep's report (its own lines; other report lines come from elsewhere)."""
    lines = [f"scores: {verdict.scorer}; concept = share of the way from the baseline to the dataset (along that line), bleed = how "
             "far a row without the trigger word moved from its baseline (same unit)", rule_text()]
    for rec in verdict.recommendations:
        table = ", ".join(f"{s:g}: {_pair(c, b)}" for s, c, b in zip(rec.strengths, rec.concept, rec.bleed, strict=True))
        lines.append(f"{rec.checkpoint}: concept/bleed per strength {table}")
        if rec.strength is None:
            lines.append(f"{rec.checkpoint}: no recommended strength: {rec.reason}")
        else:
            lines.append(f"{rec.checkpoint}: recommended strength {rec.strength:g} (green frame): {rec.reason}")
    if verdict.checkpoint is not None:
        lines.append(f"recommended checkpoint: {verdict.checkpoint.checkpoint} at strength "
                     f"{verdict.checkpoint.strength:g} (highest concept score minus bleed within the bleed limit; "
                     "near-ties go to the file with fewer training steps)")
    return lines


def _pair(concept: float, bleed: float) -> str:
    return "/".join("-" if np.isnan(v) else f"{v:.2f}" for v in (concept, bleed))


def write_into_file(lora: LoRAWeights, name: str, verdict: Verdict) -> str:
    """Put the recommendation into the metadata of the file Save LoRA wrote for ``lora`` (rewritten
    atomically); the report line saying what happened, '' when the LoRA did not come from Save LoRA."""
    path = getattr(lora, "file", None)
    chosen = next((rec for rec in verdict.recommendations if rec.checkpoint == name), None)
    if path is None or not verdict.scorer:  # not from Save LoRA, or not scored (the report says why)
        return ""
    if chosen is None or chosen.strength is None:
        return f"{Path(path).name}: no recommendation to write into its metadata"
    keys = recommendation_metadata(chosen, verdict.scorer, verdict.checkpoint)
    try:
        rewrite_metadata(Path(path), getattr(lora, "written", None) or lora, keys)
    except (OSError, ValueError) as error:
        return f"{path}: the recommendation was not written into the file ({error}); the file is unchanged"
    return f"{Path(path).name}: lora_lab_recommended_strength = {chosen.strength:g} written into its metadata"


def mark_labels(row_labels: list[str], row_loras: list[tuple[str, str]], verdict: Verdict) -> list[str]:
    """Row labels with 'recommended checkpoint' before the rows of the recommended file."""
    if verdict.checkpoint is None:
        return row_labels
    return [f"[recommended checkpoint] {label}" if name == verdict.checkpoint.checkpoint else label
            for label, (name, _) in zip(row_labels, row_loras, strict=True)]


def header_lines(verdict: Verdict) -> list[str]:
    """The grid's header line with the recommendation (green frame = recommended strength)."""
    chosen = [rec for rec in verdict.recommendations if rec.strength is not None]
    if not verdict.scorer:
        return []
    if not chosen:
        return [f"no recommended strength ({verdict.scorer} scores): see the report"]
    best = verdict.checkpoint or chosen[0]
    return [f"recommended strength {best.strength:g} (green frame), scored by {verdict.scorer}"]


def plot_tensor(verdict: Verdict) -> torch.Tensor:
    """The scores plot as an IMAGE batch of one."""
    return torch.from_numpy(np.ascontiguousarray(verdict.plot))[None]

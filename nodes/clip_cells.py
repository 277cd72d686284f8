"""Grid cells that are clips (video models): a cell's clip is shown in the grid as a frame strip, and saved as
an animated WebP through ComfyUI's own animated-image saving (``comfy_api``'s ``ImageSaveHelper``, the code
``SaveAnimatedWEBP`` uses), listed in the node's UI beside the grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .latent_codec import is_video_model

STRIP_FRAMES = 4  # frames side by side in a cell: the first, the last and two evenly between
CLIP_FPS = 16.0  # Wan's frame rate; the preview's speed only
DEFAULT_FRAMES = 17  # 4k+1, as Wan's and HunyuanVideo's VAEs want; about a second at 16 fps


def clip_frames(model: Any, frames: int) -> int:
    """The frames a cell renders: ``frames`` on a video model, 1 (a still image) on any other."""
    return max(1, int(frames)) if is_video_model(model.model) else 1


def strip_count(frames: int) -> int:
    """How many frames a cell of a ``frames``-frame clip shows side by side (1 for a still image)."""
    return 1 if frames <= 1 else min(STRIP_FRAMES, frames)


def strip_picks(frames: int) -> list[int]:
    """The frame indices a cell's strip shows (and the sweep scores) of a ``frames``-frame clip: ``strip_count``
    evenly spaced, first and last included."""
    return [int(i) for i in np.linspace(0, frames - 1, strip_count(frames)).round()]


def frame_strip(clip: np.ndarray) -> np.ndarray:
    """``clip`` [F, H, W, 3] as its ``strip_picks`` frames side by side: [H, n * W, 3]."""
    return np.concatenate([clip[i] for i in strip_picks(clip.shape[0])], axis=1)


def save_clips(cls: Any, clips: list[np.ndarray], prefix: str, fps: float = CLIP_FPS) -> list[dict]:
    """Each clip [F, H, W, 3] saved in ComfyUI's output folder as an animated WebP, as ``SaveAnimatedWEBP``
    saves it (lossless, the workflow in its EXIF); the files' UI entries, in order."""
    from comfy_api.latest import io, ui

    saved = []
    for clip in clips:
        frames = torch.from_numpy(np.ascontiguousarray(clip)).float()
        saved.append(dict(ui.ImageSaveHelper.save_animated_webp(
            frames, filename_prefix=prefix, folder_type=io.FolderType.output, cls=cls, fps=fps, lossless=True,
            quality=80, method=4)))
    return saved


def save_cell_clips(cls: Any, clips: dict[tuple[int, int], np.ndarray], frames: int, prefix: str,
                    ) -> tuple[list[dict], list[str]]:
    """The grid's clips (by (row, column), from ``grid_render.render_cells``) saved row by row under ``prefix``:
    their UI entries and the report's note about them (nothing for a grid of still images)."""
    animated = save_clips(cls, [clips[key] for key in sorted(clips)], prefix)
    if not animated:
        return [], []
    note = (f"{len(animated)} clips of {frames} frames saved as animated WebP in the output folder "
            f"({animated[0]['subfolder']}), row by row; each grid cell shows {strip_count(frames)} of their frames")
    return animated, [note]

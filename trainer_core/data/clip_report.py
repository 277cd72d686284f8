"""What the dataset report says about clips: counts apart from images, each clip's length, rate and size,
the windows it trains, and the frame-count buckets; and the short label its contact-sheet strip carries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dataset import DatasetItem

MAX_CLIPS_LISTED = 20


def clip_summary(items: Sequence[DatasetItem], root: Path) -> tuple[str, ...]:
    """Report lines for the clips among ``items`` (none when there are no clips)."""
    windows: dict[Path, list[DatasetItem]] = {}
    for item in items:
        if item.clip is not None:
            windows.setdefault(item.image_path, []).append(item)
    if not windows:
        return ()
    images = sum(item.clip is None for item in items)
    window_count = sum(len(group) for group in windows.values())
    lines = [
        f"Clips: {len(windows)} clip(s) giving {window_count} training window(s), and {images} image(s) (each"
        " trained as a one-frame clip).",
    ]
    for path, group in list(windows.items())[:MAX_CLIPS_LISTED]:
        clip, first = group[0].clip, group[0]
        assert clip is not None
        spans = ", ".join(_span(item.clip.indices) for item in group if item.clip is not None)
        length = f"{clip.duration:.1f} s at {clip.fps:g} fps" if clip.fps else "no frame rate (a folder of frames)"
        short = " (shorter than frame_count: all it has, snapped to 4k+1)" if clip.shortened else ""
        lines.append(
            f"  {_relative(path, root)}: {clip.source_frames} frames, {length}, {first.size[0]}x{first.size[1]};"
            f" trains {len(group)} window(s) of {first.frames} frames{short}: {spans}"
        )
    if len(windows) > MAX_CLIPS_LISTED:
        lines.append(f"  ... and {len(windows) - MAX_CLIPS_LISTED} more clip(s).")
    buckets = Counter((item.bucket, item.frames) for item in items)
    shown = ", ".join(f"{w}x{h} x {frames}f: {count}" for ((w, h), frames), count in sorted(buckets.items()))
    lines.append(f"Buckets by size and frame count (width x height x frames: samples): {shown}.")
    return tuple(lines)


def clip_label(item: DatasetItem, compact: bool = False) -> str:
    """'2.1 s · 24 fps · 640x360' (the whole clip); compact: '2.1s 24fps 640x360'."""
    clip = item.clip
    if clip is None:
        return ""
    size = f"{item.size[0]}x{item.size[1]}"
    if not clip.fps:
        return f"{clip.source_frames}f {size}" if compact else f"{clip.source_frames} frames · {size}"
    if compact:
        return f"{clip.duration:.1f}s {clip.fps:g}fps {size}"
    return f"{clip.duration:.1f} s · {clip.fps:g} fps · {size}"


def _span(indices: tuple[int, ...]) -> str:
    steps = {b - a for a, b in zip(indices, indices[1:], strict=False)}
    every = "" if steps <= {1} else f" every {steps.pop()}" if len(steps) == 1 else " (retimed)"
    return f"frames {indices[0]}-{indices[-1]}{every}" if len(indices) > 1 else f"frame {indices[0]}"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)

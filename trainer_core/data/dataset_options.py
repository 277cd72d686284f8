"""Options of a dataset scan: sizes and buckets, bad files, and how clips are cut into frame windows.

``DatasetError`` is the error a person at the canvas fixes; every message names the field or file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .buckets import Size, make_buckets
from .image_files import Color

OnBadFile = Literal["error", "skip"]
ON_BAD_FILE_CHOICES: tuple[str, ...] = ("error", "skip")
FrameStart = Literal["head", "uniform", "random"]
FRAME_START_CHOICES: tuple[str, ...] = ("head", "uniform", "random")
ShortClips = Literal["as_bad_file", "shorten"]
SHORT_CLIP_CHOICES: tuple[str, ...] = ("as_bad_file", "shorten")
MAX_FRAME_COUNT = 1025


class DatasetError(ValueError):
    """A dataset problem a person has to fix; the message names the folder, file or field."""


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class DatasetOptions:
    """How images and clips are found, checked and sized for training, and which frames a clip trains."""

    resolution: int = _help(
        "Training resolution: buckets hold at most resolution² pixels (512 for SD1.5, 1024 for SDXL/Flux)."
        " A multiple of 8, and of bucket_step when bucketing.",
        512,
    )
    enable_bucketing: bool = _help(
        "Aspect-ratio bucketing: each image trains at the bucket size closest to its own shape. Off = every"
        " image is centre-cropped to a resolution x resolution square.",
        True,
    )
    bucket_step: int = _help("Bucket sides are multiples of this many pixels (64 is kohya's default).", 64)
    min_bucket_side: int = _help(
        "Shortest bucket side in pixels, a multiple of bucket_step. 0 = half the resolution.", 0
    )
    max_bucket_side: int = _help(
        "Longest bucket side in pixels, a multiple of bucket_step. 0 = twice the resolution.", 0
    )
    center_crop: bool = _help(
        "On: scale each image to cover its bucket and crop the overflow equally from both sides. Off: scale"
        " it to fit inside and fill the rest with the background colour (nothing is cut off).",
        True,
    )
    background: Color = _help(
        "Colour (R, G, B 0-255) that transparent pixels and padding are flattened onto.", (255, 255, 255)
    )
    on_bad_file: OnBadFile = _help(
        "What to do with unreadable images and clips (empty, truncated, not an image or a video PyAV can read, too"
        " large, a clip shorter than a window unless short_clips is 'shorten'): 'error' stops and"
        " names them all at once (the count and the first five; every one in the console); 'skip' leaves them"
        " out with a warning.",
        "error",
    )
    frame_count: int = _help(
        "Frames each clip trains (mp4/webm/mov, animated gif/webp, folders of numbered frames). Wan and"
        " HunyuanVideo want 4k+1 (17, 33, 49, 81): other counts are snapped down to 4k+1 and the report says so."
        " Images always train as one frame.",
        17,
    )
    frame_stride: int = _help(
        "Take every Nth source frame (1 = consecutive frames). With target_fps, applied after retiming.", 1
    )
    target_fps: float = _help(
        "Retime clips to this frame rate by skipping source frames (Wan 2.1: 16, HunyuanVideo: 24); 0 = use"
        " every frame at the clip's own rate. Folders of frames have no rate and are not retimed.",
        0.0,
    )
    frame_start: FrameStart = _help(
        "Where a clip's window starts: 'head' = its first frame; 'uniform' = clip_windows windows spread evenly"
        " from first to last frame (musubi-tuner's frame_extraction 'uniform'), each trained as its own sample;"
        " 'random' = one window at a random place, drawn once per scan from the clip's name (the same every"
        " scan, so cached latents stay valid).",
        "head",
    )
    clip_windows: int = _help("With frame_start 'uniform': how many windows each clip gives.", 1)
    short_clips: ShortClips = _help(
        "A clip with fewer frames than the window needs: 'as_bad_file' = treat it like an unreadable file"
        " (on_bad_file: stop or skip); 'shorten' = train the frames it has, snapped down to 4k+1.",
        "as_bad_file",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or self.resolution < 64 or self.resolution % 8:
            raise DatasetError(f"resolution must be a multiple of 8 and at least 64, got {self.resolution}")
        if self.resolution > 8192:
            raise DatasetError(f"resolution {self.resolution} is above 8192: use 512, 768 or 1024")
        if self.bucket_step < 8 or self.bucket_step > 256 or self.bucket_step % 8:
            raise DatasetError(f"bucket_step must be a multiple of 8 from 8 to 256, got {self.bucket_step}")
        if self.on_bad_file not in ON_BAD_FILE_CHOICES:
            raise DatasetError(f"on_bad_file must be 'error' or 'skip', got {self.on_bad_file!r}")
        if len(self.background) != 3 or not all(0 <= int(c) <= 255 for c in self.background):
            raise DatasetError(f"background must be three numbers 0-255 (R, G, B), got {self.background!r}")
        self._check_frames()
        if not self.enable_bucketing:
            return
        step = self.bucket_step
        if self.resolution % step:
            lower = max(step, self.resolution // step * step)
            raise DatasetError(
                f"resolution {self.resolution} is not a multiple of bucket_step {step}: "
                f"use {lower} or {lower + step}, or a smaller bucket_step"
            )
        for name in ("min_bucket_side", "max_bucket_side"):
            value = getattr(self, name)
            if value < 0 or value % step:
                raise DatasetError(
                    f"{name} must be 0 (automatic) or a multiple of bucket_step {step}, got {value}"
                )
        low, high = self.bucket_side_range
        if not low <= self.resolution <= high:
            raise DatasetError(
                f"min_bucket_side {low} .. max_bucket_side {high} must include the resolution {self.resolution}"
            )

    def _check_frames(self) -> None:
        if not isinstance(self.frame_count, int) or not 1 <= self.frame_count <= MAX_FRAME_COUNT:
            raise DatasetError(f"frame_count must be 1 to {MAX_FRAME_COUNT}, got {self.frame_count}: use 17, 33 or 81")
        if not isinstance(self.frame_stride, int) or not 1 <= self.frame_stride <= 100:
            raise DatasetError(f"frame_stride must be 1 to 100, got {self.frame_stride}")
        if not 0 <= self.target_fps <= 240:
            raise DatasetError(f"target_fps must be 0 (the clip's own rate) to 240, got {self.target_fps}")
        if self.frame_start not in FRAME_START_CHOICES:
            raise DatasetError(f"frame_start must be one of {', '.join(FRAME_START_CHOICES)}, got {self.frame_start!r}")
        if not isinstance(self.clip_windows, int) or not 1 <= self.clip_windows <= 64:
            raise DatasetError(f"clip_windows must be 1 to 64, got {self.clip_windows}")
        if self.short_clips not in SHORT_CLIP_CHOICES:
            raise DatasetError(f"short_clips must be one of {', '.join(SHORT_CLIP_CHOICES)}, got {self.short_clips!r}")

    @property
    def frames_per_clip(self) -> int:
        """``frame_count`` snapped down to 4k+1 (what Wan and HunyuanVideo's VAEs take)."""
        return snap_frames(self.frame_count)

    @property
    def bucket_side_range(self) -> tuple[int, int]:
        """(shortest, longest) bucket side, with the automatic values filled in."""
        step = self.bucket_step
        low = self.min_bucket_side or max(step, -(-self.resolution // 2 // step) * step)
        high = self.max_bucket_side or self.resolution * 2 // step * step
        return low, high

    def bucket_sizes(self) -> tuple[Size, ...]:
        """Every (width, height) an image can be trained at."""
        if not self.enable_bucketing:
            return ((self.resolution, self.resolution),)
        low, high = self.bucket_side_range
        return make_buckets(self.resolution, self.bucket_step, low, high)


def snap_frames(count: int) -> int:
    """The largest 4k+1 not above ``count`` (1, 5, 9, ..., 17, 33, 81); 1 for 1 to 4."""
    return max(1, (count - 1) // 4 * 4 + 1)

"""Reading clips safely: headers for the scan, frames only when asked, seeking to them.

Three kinds of clip, each read by one library:

- video files (``.mp4 .webm .mov .mkv .avi .m4v``) through PyAV (FFmpeg's decoders, which ComfyUI itself
  depends on). The scan opens the container and reads its stream header: frame count (counted from the
  demuxed packets, without decoding, when the container does not state it), frame rate and size.
  ``decode_frames`` gives frame i = the i-th frame shown. For a constant-rate stream (average rate = base
  rate) it seeks to the key frame before the first wanted frame and indexes frames by timestamp x rate;
  a variable-rate stream is decoded from its first frame, counting (exact, slower for late windows).
- animated ``.gif`` and ``.webp`` through Pillow (frame disposal and transparency as browsers show them);
  the rate comes from the first frame's duration (10 fps when it has none, as browsers do; for WebP,
  Pillow gives the duration once the first frame is read, so its scan reads that one frame).
- a folder of numbered frames (``dataset_folder.is_frame_folder``), read with the image reader; such a
  folder has no frame rate (``fps`` 0) and is never retimed.

Every error is an ``ImageFileError`` naming the file, why, and what to do: the dataset treats an unusable
clip exactly as an unusable image (``on_bad_file``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
from PIL import Image, ImageSequence

from .dataset_folder import VIDEO_EXTENSIONS, frame_files
from .image_files import (
    _DECODE_ERRORS,
    Color,
    ImageFileError,
    Size,
    decode_rgb,
    nonempty_size,
    read_header,
    to_rgb,
)

ClipKind = Literal["video", "animation", "frames"]
_VIDEO_FIX = (
    "Re-encode it (for example: ffmpeg -i in.mov -c:v libx264 -pix_fmt yuv420p out.mp4) or delete it; set"
    " on_bad_file to 'skip' to train without it."
)
_GIF_DEFAULT_FPS = 10.0


@dataclass(frozen=True)
class ClipHeader:
    """What the scan learns about a clip without decoding a frame."""

    kind: ClipKind
    frame_count: int
    fps: float  # frames per second; 0 = unknown (a folder of frames)
    size: Size  # (width, height)

    @property
    def duration(self) -> float:
        """Seconds (0 when the rate is unknown)."""
        return self.frame_count / self.fps if self.fps else 0.0


def clip_kind(path: Path) -> ClipKind | None:
    """The kind of clip ``path`` is, or None for a still image."""
    if path.is_dir():
        return "frames"
    extension = path.suffix.lower()
    if extension in VIDEO_EXTENSIONS:
        return "video"
    if extension in (".gif", ".webp") and _is_animated(path):
        return "animation"  # a still gif or webp is an image
    return None


def read_clip_header(path: Path, kind: ClipKind) -> ClipHeader:
    """Frame count, rate and size of a clip, decoding no frame. Raises ``ImageFileError``."""
    if kind == "frames":
        frames = frame_files(path)
        if not frames:
            raise ImageFileError(path, "holds no frames any more")
        header = read_header(frames[0])
        return ClipHeader("frames", len(frames), 0.0, header.size)
    nonempty_size(path)
    return _video_header(path) if kind == "video" else _animation_header(path)


def decode_frames(path: Path, kind: ClipKind, indices: Sequence[int], background: Color) -> list[Image.Image]:
    """The frames at ``indices`` (0-based source frame numbers, in the order given), as RGB images."""
    wanted = sorted(set(indices))
    if kind == "frames":
        files = frame_files(path)
        if wanted and wanted[-1] >= len(files):
            raise ImageFileError(path, f"has {len(files)} frames now, fewer than when it was scanned",
                                 "Run LoadDataset again.")
        found = {index: decode_rgb(files[index], background) for index in wanted}
    elif kind == "video":
        found = _video_frames(path, wanted)
    else:
        found = _animation_frames(path, wanted, background)
    missing = [index for index in wanted if index not in found]
    if missing:
        raise ImageFileError(
            path, f"ends before frame {missing[0]} (it decodes {len(found)} of the {len(wanted)} frames asked;"
            " truncated or damaged)", _VIDEO_FIX,
        )
    return [found[index] for index in indices]


def decoded_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator:
    """Every frame PyAV decodes from ``stream``, from the container's position (all decoding goes here)."""
    yield from container.decode(stream)


def _open_video(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as error:
        raise ImageFileError(path, f"is not a video PyAV can read ({error})", _VIDEO_FIX) from error


def _video_stream(path: Path, container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise ImageFileError(path, "has no video stream (audio only, or damaged)", _VIDEO_FIX)
    stream = container.streams.video[0]
    try:
        codec = stream.codec_context.codec
        if not codec.is_decoder:
            raise ValueError("no decoder")
    except (av.FFmpegError, AttributeError, ValueError) as error:
        raise ImageFileError(path, f"uses a codec PyAV cannot decode ({error})", _VIDEO_FIX) from error
    return stream


def _frame_rate(stream: av.video.stream.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(0)


def _video_header(path: Path) -> ClipHeader:
    container = _open_video(path)
    try:
        stream = _video_stream(path, container)
        width, height = stream.codec_context.width, stream.codec_context.height
        count = stream.frames
        if count <= 0:  # webm, some mkv/avi: count the packets (one per frame; nothing is decoded)
            count = sum(1 for packet in container.demux(stream) if packet.size > 0)
        fps = float(_frame_rate(stream))
    except av.FFmpegError as error:
        raise ImageFileError(path, f"cannot be read as a video ({error})", _VIDEO_FIX) from error
    finally:
        container.close()
    if count < 1 or width < 1 or height < 1:
        raise ImageFileError(path, f"holds no video frames ({count} frames of {width}x{height})", _VIDEO_FIX)
    return ClipHeader("video", count, fps, (width, height))


def _video_frames(path: Path, wanted: list[int]) -> dict[int, Image.Image]:
    """Decode from the key frame before ``wanted[0]`` up to ``wanted[-1]``; a frame's index is its time x rate."""
    container = _open_video(path)
    try:
        stream = _video_stream(path, container)
        rate, base, start = _frame_rate(stream), stream.time_base, stream.start_time or 0
        constant = stream.average_rate is not None and stream.average_rate == stream.base_rate
        seek = constant and bool(wanted) and wanted[0] > 0 and bool(rate) and base is not None
        if seek and base is not None:
            container.seek(start + int(wanted[0] / rate / base), stream=stream, backward=True, any_frame=False)
        found = _collect(container, stream, wanted, rate, base, start, seek)
        if found is None:  # the seek landed after the first wanted frame, or frames have no time: from the top
            container.seek(0)
            found = _collect(container, stream, wanted, rate, base, start, False) or {}
        return found
    except av.FFmpegError as error:
        raise ImageFileError(path, f"cannot be decoded ({error})", _VIDEO_FIX) from error
    finally:
        container.close()


def _collect(container, stream, wanted: list[int], rate, base, start: int, seeked: bool) -> dict | None:
    wanted_set, found, counted = set(wanted), {}, -1
    for frame in decoded_frames(container, stream):
        counted += 1
        if not seeked:
            index = counted  # from the top: the frames in the order shown
        elif frame.pts is None or not rate or base is None:
            return None
        else:
            index = round(float((frame.pts - start) * base * rate))
        if seeked and counted == 0 and index > wanted[0]:
            return None
        if index in wanted_set and index not in found:
            found[index] = frame.to_image()
        if index >= wanted[-1]:
            break
    return found


def _is_animated(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            return bool(getattr(image, "is_animated", False))
    except (*_DECODE_ERRORS, Image.DecompressionBombError):
        return False  # the image reader names what is wrong with it


def _animation_header(path: Path) -> ClipHeader:
    try:
        with Image.open(path) as image:
            count = int(getattr(image, "n_frames", 1))
            if "duration" not in image.info:
                image.load()  # Pillow's WebP reader gives a frame's duration once it is read (one frame)
            duration = float(image.info.get("duration") or 0)
            size = image.size
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as error:
        raise ImageFileError(path, f"is not an animation Pillow can read ({error})") from error
    fps = 1000.0 / duration if duration > 0 else _GIF_DEFAULT_FPS
    return ClipHeader("animation", count, fps, size)


def _animation_frames(path: Path, wanted: list[int], background: Color) -> dict[int, Image.Image]:
    wanted_set, found = set(wanted), {}
    try:
        with Image.open(path) as image:
            for index, frame in enumerate(ImageSequence.Iterator(image)):
                if index in wanted_set:
                    found[index] = to_rgb(frame.convert("RGBA"), background)
                if wanted and index >= wanted[-1]:
                    break
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as error:
        raise ImageFileError(path, f"is truncated or damaged and cannot be decoded ({error})") from error
    return found

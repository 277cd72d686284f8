"""Tiny clip files for dataset tests, whose frames say which source frame they are.

Frame ``i`` shows ``i`` in binary as ``BITS`` vertical black/white stripes (most significant bit on the
left), so a test reads back exactly which source frame a decoder returned (``frame_number``), even after
lossy coding and resizing. Videos are written with PyAV (libx264 mp4/mov, VP9 webm, MPEG-4 Part 2),
animations with Pillow (gif, webp), frame folders as numbered PNGs.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

BITS = 10  # frame numbers 0-1023
SIZE = (80, 48)  # width, height: 8-pixel stripes


def frame_picture(index: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """Frame ``index``: its number as BITS black (0) / white (1) stripes, left = most significant."""
    width, height = size
    bits = [(index >> (BITS - 1 - k)) & 1 for k in range(BITS)]
    columns = np.array([bits[min(BITS - 1, x * BITS // width)] for x in range(width)], dtype=np.uint8) * 255
    return Image.fromarray(np.repeat(np.tile(columns, (height, 1))[:, :, None], 3, axis=2))


def frame_number(frame: np.ndarray) -> int:
    """The number a frame shows (float [H, W, 3] in [0, 1] or uint8), read at each stripe's centre."""
    values = np.asarray(frame, dtype=np.float32)
    values = values / 255.0 if values.max() > 1.5 else values
    height, width = values.shape[:2]
    row = values[height // 2]
    bits = [int(row[int((k + 0.5) * width / BITS)].mean() > 0.5) for k in range(BITS)]
    return int("".join(map(str, bits)), 2)


def write_video(
    path: Path, count: int, fps: int = 24, codec: str = "libx264", size: tuple[int, int] = SIZE, gop: int = 12,
    faststart: bool = False, bframes: int = 0,
) -> Path:
    """A video of ``count`` numbered frames at ``fps`` (key frame every ``gop`` frames). ``faststart``: an mp4's
    index (frame count, timestamps) before its frames, so a truncated copy still has its header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": "8", "bf": str(bframes)}  # B-frames: decoded out of order, shown in order
        elif codec == "mpeg4":
            stream.options = {"qscale": "2"}
        for index in range(count):
            frame = av.VideoFrame.from_image(frame_picture(index, size))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_variable_rate_video(path: Path, count: int, durations_ms: tuple[int, ...] = (70, 20, 20)) -> Path:
    """An mp4 whose frames last ``durations_ms`` in turn (variable frame rate, as phones record)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    milliseconds = Fraction(1, 1000)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = stream.time_base = milliseconds
        stream.options = {"crf": "8", "bf": "0"}
        time = 0
        for index in range(count):
            frame = av.VideoFrame.from_image(frame_picture(index))
            frame.pts, frame.time_base = time, milliseconds
            time += durations_ms[index % len(durations_ms)]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_animation(path: Path, count: int, fps: float = 10.0, size: tuple[int, int] = SIZE) -> Path:
    """An animated gif or webp (by ``path``'s extension) of ``count`` numbered frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [frame_picture(index, size) for index in range(count)]
    options = {"lossless": True} if path.suffix.lower() == ".webp" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0, **options)
    return path


def write_frame_folder(folder: Path, count: int, size: tuple[int, int] = SIZE, digits: int = 4) -> Path:
    """A folder of ``count`` numbered PNG frames ``0001.png`` ... (numbered from 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        frame_picture(index, size).save(folder / f"{index + 1:0{digits}d}.png")
    return folder


def frame_numbers(frames: np.ndarray) -> list[int]:
    """The numbers of a [F, H, W, 3] stack of frames."""
    return [frame_number(frame) for frame in frames]


def write_captioned_clips(folder: Path, count: int = 2) -> Path:
    """``count`` mp4 clips of 12, 16, ... frames at 16 fps, 64x64, each with its caption file beside it."""
    for index in range(count):
        write_video(folder / f"clip{index}.mp4", 12 + 4 * index, fps=16, size=(64, 64))
        (folder / f"clip{index}.txt").write_text(f"sks, moving stripes {index}")
    return folder

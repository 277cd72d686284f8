"""The toy base model's world: 64×64 scenes of one coloured shape on a plain background, with captions.

The pretraining script draws its data set from here, and the tests judge sampled pictures with the
same palette and the same centre/border statistics, so "the model drew what the prompt said" means
one thing everywhere.

Shapes a LoRA should teach later (``ring``, ``cross``, ``star``) are deliberately left out of
:data:`TOY_SHAPES`; their colours come from :data:`TOY_COLOURS`, which the toy's VAE was trained on
(a VAE trained on flat colours can only give back the colours it has seen).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

try:
    from tools.synthetic_dataset import COLOURS, draw_shape
except ImportError:  # run as a script from tools/
    from synthetic_dataset import COLOURS, draw_shape  # type: ignore[no-redef]

TOY_SIZE = 64
TOY_COLOURS: dict[str, tuple[int, int, int]] = dict(COLOURS)
TOY_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# What a LoRA can teach the toy: shapes it has never drawn.
NEW_CONCEPT_SHAPES: tuple[str, ...] = ("ring", "cross", "star")
CAPTION_TEMPLATE = "a {colour} {shape} on a {background} background"

# Shapes stay clear of the outer BORDER_WIDTH pixels and always cover the central
# CENTRE_WIDTH × CENTRE_WIDTH patch, so "centre has the shape's colour, border the
# background's" holds for every training picture.
SIDE_RANGE = (26, 42)
MAX_CENTRE_OFFSET = 4
BORDER_WIDTH = 5
CENTRE_WIDTH = 8
COLOUR_JITTER = 10


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    side: int
    centre: tuple[int, int]

    @property
    def caption(self) -> str:
        return CAPTION_TEMPLATE.format(colour=self.colour, shape=self.shape, background=self.background)


def all_captions(shapes: tuple[str, ...] = TOY_SHAPES) -> list[str]:
    """Every caption the pretraining can draw, in a fixed order."""
    return [
        CAPTION_TEMPLATE.format(colour=colour, shape=shape, background=background)
        for shape in shapes
        for colour in TOY_COLOURS
        for background in TOY_COLOURS
        if colour != background
    ]


# Made-up leading words mixed into some pretraining captions ("qavo, a red circle on ..."), so the
# toy keeps drawing the rest of a prompt that starts with a word it does not know, as a LoRA's
# trigger word does. Drawn from syllables; a held-out word (HELD_OUT_PREFIX, the trigger the demo
# and tests use) is never among them, so the pretraining check measures generalisation.
PREFIX_SYLLABLES = ("ka", "zo", "ri", "mu", "te", "xa", "lo", "vi", "qu", "ne", "bo", "sh", "wy", "fe", "ug")
HELD_OUT_PREFIX = "sks"


def prefix_words(count: int, seed: int) -> list[str]:
    """``count`` distinct made-up words of 2-3 syllables (seeded), none equal to HELD_OUT_PREFIX."""
    rng = np.random.default_rng(seed)
    words: list[str] = []
    while len(words) < count:
        word = "".join(
            PREFIX_SYLLABLES[i] for i in rng.integers(len(PREFIX_SYLLABLES), size=int(rng.integers(2, 4)))
        )
        if word not in words and word != HELD_OUT_PREFIX:
            words.append(word)
    return words


def random_scene(rng: np.random.Generator, shapes: tuple[str, ...] = TOY_SHAPES) -> Scene:
    names = list(TOY_COLOURS)
    colour, background = (names[i] for i in rng.choice(len(names), size=2, replace=False))
    side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
    # Large shapes move less so they keep clear of the border band.
    room = min(MAX_CENTRE_OFFSET, TOY_SIZE // 2 - BORDER_WIDTH - (side + 1) // 2)
    centre = (
        TOY_SIZE // 2 + int(rng.integers(-room, room + 1)),
        TOY_SIZE // 2 + int(rng.integers(-room, room + 1)),
    )
    return Scene(shapes[int(rng.integers(len(shapes)))], colour, background, side, centre)


def draw_scene(scene: Scene, rng: np.random.Generator | None = None) -> np.ndarray:
    """The scene as an ``uint8`` array (64, 64, 3). With ``rng``, each colour is shifted a little
    (±COLOUR_JITTER per channel) so the VAE learns the neighbourhood of every palette colour."""

    def jitter(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
        if rng is None:
            return rgb
        shifted = np.clip(np.array(rgb) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3), 0, 255)
        return (int(shifted[0]), int(shifted[1]), int(shifted[2]))

    image = Image.new("RGB", (TOY_SIZE, TOY_SIZE), jitter(TOY_COLOURS[scene.background]))
    draw_shape_mask(ImageDraw.Draw(image), scene, jitter(TOY_COLOURS[scene.colour]))
    return np.asarray(image)


def draw_shape_mask(draw: ImageDraw.ImageDraw, scene: Scene, fill: tuple[int, int, int] | int) -> None:
    cx, cy = scene.centre
    half = scene.side // 2
    box = (cx - half, cy - half, cx - half + scene.side - 1, cy - half + scene.side - 1)
    if scene.shape == "diamond":
        draw.polygon([(cx, box[1]), (box[2], cy), (cx, box[3]), (box[0], cy)], fill=fill)
    elif scene.shape == "star":
        points = []
        for k in range(10):
            radius = half if k % 2 == 0 else half * 0.45
            angle = -np.pi / 2 + k * np.pi / 5
            points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
        draw.polygon(points, fill=fill)
    else:
        draw_shape(draw, scene.shape, box, fill)  # type: ignore[arg-type]


def shape_mask(scene: Scene) -> np.ndarray:
    """Boolean (64, 64) mask of the pixels the scene's shape covers."""
    mask = Image.new("L", (TOY_SIZE, TOY_SIZE), 0)
    draw_shape_mask(ImageDraw.Draw(mask), scene, 255)
    return np.asarray(mask) > 127


def nearest_colour(rgb: np.ndarray) -> str:
    """The palette colour closest (Euclidean, RGB) to one pixel value."""
    names = list(TOY_COLOURS)
    palette = np.array([TOY_COLOURS[name] for name in names], dtype=np.float64)
    return names[int(np.argmin(((palette - np.asarray(rgb, dtype=np.float64)) ** 2).sum(axis=1)))]


@dataclass(frozen=True)
class PictureColours:
    """What a picture shows where the toy's scenes put the shape (centre) and the background (border)."""

    centre: str
    border: str
    centre_rgb: tuple[float, float, float]
    border_rgb: tuple[float, float, float]


def picture_colours(image: np.ndarray) -> PictureColours:
    """Median colour of the central CENTRE_WIDTH² patch and of the outer BORDER_WIDTH-pixel band of
    an (H, W, 3) ``uint8`` picture, each named by its nearest palette colour. Medians, so a few
    stray pixels at the shape's edge do not decide."""
    height, width = image.shape[:2]
    top, left = (height - CENTRE_WIDTH) // 2, (width - CENTRE_WIDTH) // 2
    centre = image[top : top + CENTRE_WIDTH, left : left + CENTRE_WIDTH].reshape(-1, 3)
    band = np.ones((height, width), dtype=bool)
    band[BORDER_WIDTH:-BORDER_WIDTH, BORDER_WIDTH:-BORDER_WIDTH] = False
    border = image[band].reshape(-1, 3)
    centre_rgb = np.median(centre, axis=0)
    border_rgb = np.median(border, axis=0)
    return PictureColours(
        centre=nearest_colour(centre_rgb),
        border=nearest_colour(border_rgb),
        centre_rgb=tuple(float(v) for v in centre_rgb),  # type: ignore[arg-type]
        border_rgb=tuple(float(v) for v in border_rgb),  # type: ignore[arg-type]
    )


# The concept the demo and the shipped train_then_test workflow teach the toy: a ring (never drawn
# in pretraining), green on red (colours the toy's VAE gives back faithfully for thin shapes:
# green on red keeps 98% of a ring's pixels green; yellow on blue comes back red).
DEMO_CONCEPT = {"shape": "ring", "colour": "green", "background": "red", "trigger_word": "sks"}
DEMO_DATASET = "lora_lab_toy_rings"  # the folder in ComfyUI's input directory
DEMO_IMAGES = 12


def write_concept_dataset(
    folder: Path,
    shape: str = "ring",
    colour: str = "yellow",
    background: str = "blue",
    trigger_word: str = "sks",
    count: int = 12,
    seed: int = 0,
) -> Path:
    """A LoRA data set in the toy's own framing: ``count`` PNGs of ``shape`` (one the toy has never
    drawn, e.g. :data:`NEW_CONCEPT_SHAPES`) at the toy's sizes and places, each with a caption
    ``"<trigger>, a <colour> <shape> on a <background> background"``."""
    if colour not in TOY_COLOURS or background not in TOY_COLOURS:
        raise ValueError(f"pick colours the toy's VAE knows: {sorted(TOY_COLOURS)}")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        scene = replace(random_scene(rng, (shape,)), colour=colour, background=background)
        Image.fromarray(draw_scene(scene)).save(folder / f"{index:03d}.png")
        (folder / f"{index:03d}.txt").write_text(f"{trigger_word}, {scene.caption}", encoding="utf-8")
    return folder

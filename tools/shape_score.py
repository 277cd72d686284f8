"""How much of a shape a picture shows, whatever its colours: the concept score of benchmarks/efficacy.py.

The benchmark teaches the toy base a shape it has never drawn (a plus-shaped cross) and asks, per
sampled picture, "is that shape there?". Nothing is learned here and nothing is downloaded; the score
is geometry on the picture's silhouette:

1. **Silhouette.** The toy's scenes put a shape over the picture's centre and keep it clear of the
   border (``toy_scenes``). The background's colour is the median of the border band
   (``toy_scenes.picture_colours``); pixels farther than ``FOREGROUND_DISTANCE`` (RGB, Euclidean) from
   it are drawn, specks under 3×3 removed and holes filled (a shape with spots of another colour stays
   whole); the silhouette is the drawn regions that cover part of the central patch (a blotch of
   another colour off in the background is not the shape). A silhouette that covers more than
   ``MAX_BORDER_SHARE`` of the border band is no shape at all: it is then empty. So the colours do not
   matter, only the outline of what is drawn in the middle.
2. **Best fit of each template.** A template is a shape's filled mask at one size (``TEMPLATE_SIDES``).
   Its fit is the intersection over union (IoU) of the silhouette and the template at the best position
   (every shift, by correlation) and the best size: 1 when the silhouette is exactly that shape.
3. **Score = fit of the concept − best fit among the shapes the toy already draws** (circle, square,
   triangle, diamond: ``toy_scenes.TOY_SHAPES``). Above 0: the silhouette is more the concept than any
   known shape; below 0: it is one of the known shapes; 0 for an empty picture.

The benchmark subtracts, per seed, the score of the base model's own picture (strength 0), so a LoRA
that changes nothing scores 0. Measured on the toy: its own pictures score about -0.17, the concept's
training pictures +0.22 and their round trip through the toy's VAE +0.09, so a LoRA that turns the
base's blob into the concept as well as the toy can draw it scores about +0.26.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage, signal

from tools.toy_scenes import (
    BORDER_WIDTH,
    CENTRE_WIDTH,
    TOY_COLOURS,
    TOY_SHAPES,
    TOY_SIZE,
    Scene,
    draw_shape_mask,
    picture_colours,
)

CONCEPT_SHAPE = "plus"  # a cross whose arms are a third of its side: never among the toy's shapes
ARM_SHARE = 1 / 3
# Larger than the toy's own shapes (26-42 px): the toy's VAE gives a plus back as a rounded plus from
# about 46 px on; smaller ones come back as a blob (measured: a 36 px plus decoded from its own latent
# scores like a diamond).
CONCEPT_SIDES = (46, 54)
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background's colour beyond which a pixel is drawn
MAX_BORDER_SHARE = 0.25
TEMPLATE_SIDES: tuple[int, ...] = tuple(range(18, 59, 4))
MIN_FOREGROUND_PIXELS = 12  # fewer: nothing is drawn, every fit is 0


def draw_concept(draw: ImageDraw.ImageDraw, scene: Scene, fill: tuple[int, int, int] | int) -> None:
    """A scene's shape, with the concept ``plus`` drawn here (the toy's own shapes by toy_scenes)."""
    if scene.shape != CONCEPT_SHAPE:
        draw_shape_mask(draw, scene, fill)
        return
    cx, cy = scene.centre
    half = scene.side // 2
    arm = max(2, round(scene.side * ARM_SHARE)) // 2
    x0, y0 = cx - half, cy - half
    x1, y1 = x0 + scene.side - 1, y0 + scene.side - 1
    draw.rectangle((cx - arm, y0, cx + arm, y1), fill=fill)
    draw.rectangle((x0, cy - arm, x1, cy + arm), fill=fill)


def scene_mask(scene: Scene, size: int = 64) -> np.ndarray:
    mask = Image.new("L", (size, size), 0)
    draw_concept(ImageDraw.Draw(mask), scene, 255)
    return np.asarray(mask) > 127


def draw_picture(scene: Scene, size: int = 64) -> np.ndarray:
    """The scene as an ``uint8`` (size, size, 3) picture: the shape on a plain background."""
    image = Image.new("RGB", (size, size), TOY_COLOURS[scene.background])
    draw_concept(ImageDraw.Draw(image), scene, TOY_COLOURS[scene.colour])
    return np.asarray(image)


@cache
def _templates(shape: str) -> tuple[np.ndarray, ...]:
    """The shape's filled mask at every template side, cropped to its bounding box."""
    masks = []
    for side in TEMPLATE_SIDES:
        size = side + 8
        mask = scene_mask(Scene(shape, "white", "black", side, (size // 2, size // 2)), size)
        ys, xs = np.nonzero(mask)
        masks.append(mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float64))
    return tuple(masks)


def silhouette(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the shape drawn over the picture's centre (see the module docstring)."""
    background = np.asarray(picture_colours(image).border_rgb)
    far = np.sqrt(((image.astype(np.float64) - background) ** 2).sum(axis=-1)) > FOREGROUND_DISTANCE
    filled = ndimage.binary_fill_holes(ndimage.binary_opening(far, structure=np.ones((3, 3))))
    labels, _ = ndimage.label(filled)
    height, width = labels.shape
    top, left = (height - CENTRE_WIDTH) // 2, (width - CENTRE_WIDTH) // 2
    middle = np.unique(labels[top : top + CENTRE_WIDTH, left : left + CENTRE_WIDTH])
    mask = np.isin(labels, middle[middle > 0])
    band = np.ones_like(mask)
    band[BORDER_WIDTH:-BORDER_WIDTH, BORDER_WIDTH:-BORDER_WIDTH] = False
    if mask[band].mean() > MAX_BORDER_SHARE:
        return np.zeros_like(mask)
    return mask


def best_fit(mask: np.ndarray, shape: str) -> float:
    """Highest IoU of ``mask`` with the shape's template over every position and template side."""
    area = float(mask.sum())
    if area < MIN_FOREGROUND_PIXELS:
        return 0.0
    best = 0.0
    for template in _templates(shape):
        overlap = signal.fftconvolve(mask.astype(np.float64), template[::-1, ::-1], mode="full")
        iou = overlap / (area + template.sum() - overlap)
        best = max(best, float(iou.max()))
    return best


@dataclass(frozen=True)
class ShapeScore:
    concept_fit: float
    best_known: str  # the toy's shape that fits best
    known_fit: float

    @property
    def score(self) -> float:
        return self.concept_fit - self.known_fit


def shape_score(image: np.ndarray, concept: str = CONCEPT_SHAPE, known: tuple[str, ...] = TOY_SHAPES) -> ShapeScore:
    """The concept's fit, the best-fitting known shape and its fit, for an (H, W, 3) ``uint8`` picture."""
    mask = silhouette(image)
    fits = {shape: best_fit(mask, shape) for shape in known}
    best_known = max(fits, key=fits.__getitem__)
    return ShapeScore(best_fit(mask, concept), best_known, fits[best_known])


def concept_scene(rng: np.random.Generator, colour: str, background: str) -> Scene:
    """The concept at a size in ``CONCEPT_SIDES``, moved a little, clear of the border band."""
    side = int(rng.integers(CONCEPT_SIDES[0], CONCEPT_SIDES[1] + 1))
    room = max(0, min(3, TOY_SIZE // 2 - BORDER_WIDTH - (side + 1) // 2))
    centre = tuple(TOY_SIZE // 2 + int(rng.integers(-room, room + 1)) for _ in range(2))
    return Scene(CONCEPT_SHAPE, colour, background, side, centre)  # type: ignore[arg-type]


def write_concept_dataset(folder: Path, count: int, trigger_word: str, seed: int = 0) -> list[str]:
    """``count`` PNGs of the concept at the toy's sizes and places, each in its own colour on its own
    background (so only the shape is common to all), with captions ``"<trigger>, a <colour> plus on a
    <background> background"``. Returns the captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(TOY_COLOURS)
    pairs = [(c, b) for c in names for b in names if c != b]
    order = rng.permutation(len(pairs))
    captions = []
    for index in range(count):
        colour, background = pairs[order[index % len(pairs)]]
        scene = concept_scene(rng, colour, background)
        Image.fromarray(draw_picture(scene)).save(folder / f"{index:03d}.png")
        caption = f"{trigger_word}, {scene.caption}"
        (folder / f"{index:03d}.txt").write_text(caption, encoding="utf-8")
        captions.append(caption)
    return captions

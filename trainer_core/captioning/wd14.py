"""WD14-style taggers: an ONNX image classifier over booru tags, run with onnxruntime.

A tagger folder holds ``model.onnx`` and ``selected_tags.csv`` (columns ``tag_id,name,category,count``;
category 9 = rating, 4 = character, 0 = general), as SmilingWolf's wd-v1-4 / wd-v3 taggers ship.
Images are prepared as those taggers were trained: flattened onto white, padded to a white square,
resized (bicubic) to the model's input size read from the ONNX input shape, BGR channel order,
float32 0..255, NHWC. Rating tags are never output; character tags need their own (higher)
threshold and come first, then general tags, each group by confidence. Tag names are returned as
the CSV spells them (``red_hair``): caption processing turns underscores into spaces.

onnxruntime's CUDA provider breaks on many installs (missing cuDNN, CUDA version mismatch): a
session that fails to start or to run on the GPU is rebuilt on the CPU with a warning.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import CaptionerModelError

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING_CATEGORY = 9
CHARACTER_CATEGORY = 4
GENERAL_CATEGORY = 0
DEFAULT_INPUT_SIZE = 448  # wd-v1-4 and wd-v3 taggers; used when the ONNX shape leaves it open
_EXPECTED = (
    f"a WD14 tagger folder holds {MODEL_FILE} and {TAGS_FILE} (columns tag_id,name,category,count),"
    " e.g. the files of SmilingWolf/wd-vit-tagger-v3"
)


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class TaggerOptions:
    """Which of a tagger's tags make it into a caption."""

    general_threshold: float = _help(
        "A general tag is kept when the tagger is at least this sure of it (0-1). 0.35 is the usual"
        " default; higher = fewer, surer tags.",
        0.35,
    )
    character_threshold: float = _help(
        "A character tag (a named character) is kept when the tagger is at least this sure (0-1).", 0.85
    )
    max_tags: int = _help("At most this many tags per image, the surest first. 0 = no limit.", 30)

    def __post_init__(self) -> None:
        for name in ("general_threshold", "character_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise CaptionerModelError(f"{name} is a confidence between 0 and 1, got {value}")
        if self.max_tags < 0:
            raise CaptionerModelError(f"max_tags must be 0 (no limit) or more, got {self.max_tags}")


@dataclass(frozen=True)
class Tag:
    """One row of ``selected_tags.csv``."""

    name: str
    category: int


@dataclass(frozen=True)
class TagScore:
    """A tag and how sure the tagger is of it (0-1)."""

    name: str
    category: int
    score: float


def read_tags_csv(path: Path) -> list[Tag]:
    """The tags of a ``selected_tags.csv``, in model output order."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            if not {"name", "category"} <= columns:
                raise CaptionerModelError(
                    f"{path} has columns {sorted(columns)}, not name and category: {_EXPECTED}"
                )
            tags = []
            for line, row in enumerate(reader, start=2):
                try:
                    tags.append(Tag(name=row["name"].strip(), category=int(row["category"])))
                except (TypeError, ValueError) as error:
                    raise CaptionerModelError(
                        f"{path} line {line}: category {row.get('category')!r} is not a number ({error})"
                    ) from error
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise CaptionerModelError(f"cannot read {path} ({error}): {_EXPECTED}") from error
    if not tags:
        raise CaptionerModelError(f"{path} lists no tags: {_EXPECTED}")
    return tags


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """``image`` as WD taggers expect it: HxWx3 float32 BGR 0..255, padded to a white square."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    elif image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    side = max(width, height)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(square, dtype=np.float32)[:, :, ::-1])


def select_tags(scores: Sequence[float], tags: Sequence[Tag], options: TaggerOptions) -> list[TagScore]:
    """The tags to caption with: characters above their threshold, then the other non-rating tags
    above the general threshold, each group surest first, cut to ``max_tags``."""
    characters: list[TagScore] = []
    general: list[TagScore] = []
    for tag, score in zip(tags, scores, strict=True):
        if tag.category == RATING_CATEGORY:
            continue
        if tag.category == CHARACTER_CATEGORY:
            if score > options.character_threshold:
                characters.append(TagScore(tag.name, tag.category, float(score)))
        elif score > options.general_threshold:
            general.append(TagScore(tag.name, tag.category, float(score)))
    selected = sorted(characters, key=lambda t: -t.score) + sorted(general, key=lambda t: -t.score)
    return selected[: options.max_tags] if options.max_tags else selected


class WD14Tagger:
    """A loaded tagger. ``caption`` gives 'tag, tag, ...'; ``tag`` gives the scored tags."""

    def __init__(self, folder: Path, tags: list[Tag], options: TaggerOptions, device: str = "cpu") -> None:
        self.folder = folder
        self.tags = tags
        self.options = options
        self.model_path = folder / MODEL_FILE
        self._session: Any = create_session(self.model_path, device)
        model_input = self._session.get_inputs()[0]
        self._input_name: str = model_input.name
        self._channels_first, self.input_size, self._fixed_batch = _read_input_shape(
            model_input.shape, self.model_path
        )
        self._input_dtype = np.float16 if "float16" in str(model_input.type) else np.float32

    @property
    def providers(self) -> list[str]:
        """The onnxruntime providers the session runs on (CPUExecutionProvider last)."""
        return list(self._session.get_providers())

    def tag(self, images: Sequence[Image.Image]) -> list[list[TagScore]]:
        if not images:
            return []
        batch = np.stack([prepare_image(image, self.input_size) for image in images])
        if self._channels_first:
            batch = batch.transpose(0, 3, 1, 2)
        batch = np.ascontiguousarray(batch, dtype=self._input_dtype)
        if self._fixed_batch == 1 and len(batch) > 1:  # models exported for one image at a time
            scores = np.concatenate([self._run(batch[i : i + 1]) for i in range(len(batch))])
        else:
            scores = self._run(batch)
        if scores.ndim != 2 or scores.shape[1] != len(self.tags):
            raise CaptionerModelError(
                f"{self.model_path} gives {scores.shape[-1]} scores per image but {self.folder / TAGS_FILE}"
                f" lists {len(self.tags)} tags: the two files are not from the same tagger. Put the"
                " selected_tags.csv that came with this model.onnx next to it."
            )
        return [select_tags(row.tolist(), self.tags, self.options) for row in scores]

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        return [", ".join(tag.name for tag in tags) for tags in self.tag(images)]

    def close(self) -> None:
        self._session = None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise RuntimeError(f"the tagger {self.folder} was closed")
        try:
            return np.asarray(self._session.run(None, {self._input_name: batch})[0], dtype=np.float32)
        except Exception as error:  # onnxruntime's own exception types; a GPU failure is retried on CPU
            if "CUDAExecutionProvider" not in self.providers:
                raise CaptionerModelError(
                    f"{self.model_path} failed to run on the CPU ({error}). Is it a WD14 tagger with an"
                    f" image input? {_EXPECTED}"
                ) from error
            logger.warning(
                "WD14 tagger: the GPU run failed (%s); running %s on the CPU instead", error, self.model_path
            )
            self._session = create_session(self.model_path, "cpu")
            return np.asarray(self._session.run(None, {self._input_name: batch})[0], dtype=np.float32)


def create_session(model_path: Path, device: str = "cpu") -> Any:
    """An onnxruntime session on ``device`` ('cpu', 'cuda', 'cuda:1'), on the CPU if the GPU fails."""
    ort = import_onnxruntime()
    providers: list[Any] = []
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        device_id = int(device.split(":", 1)[1]) if ":" in device else 0
        providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
    providers.append("CPUExecutionProvider")
    try:
        session = ort.InferenceSession(str(model_path), providers=providers)
    except Exception as error:  # onnxruntime raises its own types (Fail, InvalidProtobuf, NoSuchFile, ...)
        if len(providers) == 1:
            raise CaptionerModelError(
                f"onnxruntime cannot load {model_path} ({error}). The file is damaged or not an ONNX model:"
                f" download it again. {_EXPECTED}"
            ) from error
        logger.warning("WD14 tagger: onnxruntime's CUDA provider failed (%s); using the CPU", error)
        return create_session(model_path, "cpu")
    if len(providers) > 1 and "CUDAExecutionProvider" not in session.get_providers():
        logger.warning(
            "WD14 tagger: onnxruntime could not start its CUDA provider; %s runs on the CPU", model_path
        )
    return session


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "WD14 taggers need onnxruntime: run `pip install onnxruntime` (or onnxruntime-gpu) in ComfyUI's"
            " Python environment"
        ) from error
    return onnxruntime


def load_wd14_tagger(folder: Path, options: TaggerOptions | None = None, device: str = "cpu") -> WD14Tagger:
    """The tagger in ``folder``; ``CaptionerModelError`` names what is missing or broken."""
    folder = Path(folder)
    missing = [name for name in (MODEL_FILE, TAGS_FILE) if not (folder / name).is_file()]
    if missing:
        raise CaptionerModelError(f"{folder} has no {' and no '.join(missing)}: {_EXPECTED}")
    return WD14Tagger(folder, read_tags_csv(folder / TAGS_FILE), options or TaggerOptions(), device)


def _read_input_shape(shape: Sequence[Any], model_path: Path) -> tuple[bool, int, int | None]:
    """(channels first?, square side, fixed batch size or None) from an ONNX image input shape."""
    if len(shape) != 4:
        raise CaptionerModelError(
            f"{model_path} takes an input of shape {list(shape)}, not a batch of images: {_EXPECTED}"
        )
    channels_first = shape[1] == 3 and shape[3] != 3
    side_dims = (shape[2], shape[3]) if channels_first else (shape[1], shape[2])
    known = [dim for dim in side_dims if isinstance(dim, int) and dim > 0]
    size = known[0] if known else DEFAULT_INPUT_SIZE
    fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return channels_first, size, fixed_batch

"""Caption processing shared by every node: what text the text encoder sees for an image.

Captions are comma-separated tags (``1girl, red hair, smiling``) or sentences; the options below
follow the guides and kohya's names: a trigger word always first, tag shuffling with kept leading
tokens, caption and tag dropout, a blacklist, prepended and appended tags, de-duplication,
underscores to spaces and a tag limit. ``process_caption`` with ``rng=None`` is deterministic (no
shuffle, no dropout): that is the text to show people and to cache embeddings for.
``read_caption_file`` reads a ``.txt`` caption whatever its encoding (BOM, UTF-16, Windows-1252).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Kaomoji tags from WD14-style taggers whose underscores are part of the face (SmilingWolf's list).
KAOMOJI_TAGS = frozenset(
    {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
     "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}
)  # fmt: skip

_SPLIT = re.compile(r"[,\n\r]+")


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


class CaptionError(ValueError):
    """A caption option a person has to fix; the message names the field."""


@dataclass(frozen=True)
class CaptionOptions:
    """How a stored caption becomes the text a training step uses."""

    trigger_word: str = _help(
        "Word that calls up the LoRA (e.g. 'ohwx person'). Put first in every caption, never shuffled or "
        "dropped; removed from the rest of the caption if it is already there. Empty = none.",
        "",
    )
    shuffle_tags: bool = _help(
        "Shuffle the comma-separated tags every step (except the trigger word and the first keep_tokens tags)"
        " so the LoRA does not learn the tag order. For tag-style captions; leave off for sentences.",
        False,
    )
    keep_tokens: int = _help(
        "How many tags after the trigger word stay in place when shuffling and are never dropped.", 1
    )
    caption_dropout_rate: float = _help(
        "Chance (0-1) that a step trains with no caption but the trigger word: helps the LoRA work without"
        " the exact captions. 0.05-0.1 is typical; 0 = off.",
        0.0,
    )
    tag_dropout_rate: float = _help(
        "Chance (0-1) that each movable tag is left out of a step's caption. 0.1 is typical; 0 = off.", 0.0
    )
    blacklist: tuple[str, ...] = _help(
        "Tags removed from every caption (compared ignoring case, and '_' equals ' ').", ()
    )
    prepend_tags: tuple[str, ...] = _help(
        "Tags added after the trigger word in every caption; they stay in place and are never dropped.", ()
    )
    append_tags: tuple[str, ...] = _help(
        "Tags added at the end of every caption; they stay in place and are never dropped.", ()
    )
    underscores_to_spaces: bool = _help(
        "Write tags like 'red_hair' as 'red hair' (what SD text encoders expect); kaomoji such as '^_^' are"
        " kept.",
        True,
    )
    max_tags: int = _help(
        "Keep at most this many of the caption's own tags (the first ones: taggers list the surest first)."
        " 0 = no limit.",
        0,
    )
    deduplicate: bool = _help("Remove repeated tags (ignoring case), keeping the first.", True)

    def __post_init__(self) -> None:
        if self.keep_tokens < 0:
            raise CaptionError(f"keep_tokens must be 0 or more, got {self.keep_tokens}")
        if self.max_tags < 0:
            raise CaptionError(f"max_tags must be 0 (no limit) or more, got {self.max_tags}")
        for name in ("caption_dropout_rate", "tag_dropout_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise CaptionError(f"{name} is a probability between 0 and 1, got {rate}")
        for name in ("blacklist", "prepend_tags", "append_tags"):
            if isinstance(getattr(self, name), str):
                raise CaptionError(f"{name} must be a tuple of tags; use split_tags('a, b') to build it")

    @property
    def is_random(self) -> bool:
        """True when the same caption can give different text per step (no embedding cache then)."""
        return self.shuffle_tags or self.caption_dropout_rate > 0 or self.tag_dropout_rate > 0


def split_tags(text: str) -> tuple[str, ...]:
    """The non-empty, stripped, comma- or newline-separated tags of ``text``."""
    return tuple(tag for tag in (part.strip() for part in _SPLIT.split(text)) if tag)


def normalize_tag(tag: str) -> str:
    """The form two tags are compared in: lower case, '_' as ' ', single spaces."""
    return " ".join(tag.replace("_", " ").lower().split())


def process_caption(caption: str, options: CaptionOptions, rng: random.Random | None = None) -> str:
    """The caption text for one training step.

    Order: split into tags; underscores to spaces; drop the trigger word, blacklisted tags and
    duplicates; cut to ``max_tags``; then (only with ``rng``) caption dropout, tag dropout and
    shuffle of the movable tags; finally ``trigger, prepend..., kept..., movable..., append...``.
    With ``rng=None`` nothing random happens.
    """
    trigger = options.trigger_word.strip()
    fixed_front = [_spell(tag, options) for tag in options.prepend_tags if tag.strip()]
    fixed_back = [_spell(tag, options) for tag in options.append_tags if tag.strip()]
    tags = _clean_tags(split_tags(caption), trigger, options)

    if rng is not None and options.caption_dropout_rate > 0 and rng.random() < options.caption_dropout_rate:
        return trigger
    kept, movable = tags[: options.keep_tokens], tags[options.keep_tokens :]
    if rng is not None and options.tag_dropout_rate > 0:
        movable = [tag for tag in movable if rng.random() >= options.tag_dropout_rate]
    if rng is not None and options.shuffle_tags:
        rng.shuffle(movable)

    parts = ([trigger] if trigger else []) + fixed_front + kept + movable + fixed_back
    if options.deduplicate:
        parts = _unique(parts)
    return ", ".join(parts)


def tag_frequencies(captions: Iterable[str]) -> dict[str, int]:
    """How many captions contain each tag (kohya's ``ss_tag_frequency``), most frequent first.

    A tag repeated within one caption counts once. Tags are stripped but otherwise kept as written.
    """
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(_unique(list(split_tags(caption))))
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def read_caption_file(path: Path) -> tuple[str, str | None]:
    """A caption file's text, stripped, and a warning if it was not UTF-8.

    A byte-order mark (UTF-8 or UTF-16) is honoured and removed. Text that is not UTF-8 is read as
    Windows-1252 (or Latin-1 if that fails too), with a warning that names the file.
    """
    data = Path(path).read_bytes()
    warning = None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            try:
                text, encoding = data.decode("cp1252"), "Windows-1252"
            except UnicodeDecodeError:
                text, encoding = data.decode("latin-1"), "Latin-1"
            warning = f"caption {path} is not UTF-8; read it as {encoding}. Save it as UTF-8 to be sure of its accents"
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").strip()
    return text, warning


def _clean_tags(tags: Iterable[str], trigger: str, options: CaptionOptions) -> list[str]:
    blocked = {normalize_tag(tag) for tag in options.blacklist}
    if trigger:
        blocked.add(normalize_tag(trigger))
    cleaned = [_spell(tag, options) for tag in tags if normalize_tag(tag) not in blocked]
    if options.deduplicate:
        cleaned = _unique(cleaned)
    if options.max_tags:
        cleaned = cleaned[: options.max_tags]
    return cleaned


def _spell(tag: str, options: CaptionOptions) -> str:
    tag = tag.strip()
    if options.underscores_to_spaces and tag not in KAOMOJI_TAGS:
        tag = " ".join(tag.replace("_", " ").split())
    return tag


def _unique(tags: list[str]) -> list[str]:
    seen: set[str] = set()
    unique = []
    for tag in tags:
        key = normalize_tag(tag) if tag not in KAOMOJI_TAGS else tag
        if key not in seen:
            seen.add(key)
            unique.append(tag)
    return unique

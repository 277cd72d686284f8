"""Caption processing: what the text encoder sees for each option a user can set."""

from __future__ import annotations

import random

import pytest

from trainer_core.data.captions import (
    CaptionError,
    CaptionOptions,
    process_caption,
    split_tags,
    tag_frequencies,
)

CAPTION = "1girl, red_hair, smiling, outdoors, blue sky, tree"


def test_defaults_only_tidy_the_caption() -> None:
    assert (
        process_caption(" 1girl ,red_hair,, smiling ", CaptionOptions(), None) == "1girl, red hair, smiling"
    )


def test_trigger_word_comes_first_and_is_not_repeated() -> None:
    options = CaptionOptions(trigger_word="ohwx")
    assert process_caption("smiling, ohwx, outdoors", options, None) == "ohwx, smiling, outdoors"
    assert process_caption("", options, None) == "ohwx"


def test_no_rng_means_no_randomness_even_with_shuffle_and_dropout() -> None:
    options = CaptionOptions(shuffle_tags=True, caption_dropout_rate=1.0, tag_dropout_rate=1.0)
    assert process_caption(CAPTION, options, None) == "1girl, red hair, smiling, outdoors, blue sky, tree"


def test_shuffle_keeps_trigger_and_keep_tokens_in_place() -> None:
    options = CaptionOptions(trigger_word="ohwx", shuffle_tags=True, keep_tokens=2)
    orders = set()
    for seed in range(30):
        tags = process_caption(CAPTION, options, random.Random(seed)).split(", ")
        assert tags[:3] == ["ohwx", "1girl", "red hair"]
        assert sorted(tags[3:]) == sorted(["smiling", "outdoors", "blue sky", "tree"])
        orders.add(tuple(tags))
    assert len(orders) > 5  # it does shuffle


def test_keep_tokens_zero_lets_every_tag_move_but_never_the_trigger() -> None:
    options = CaptionOptions(trigger_word="ohwx", shuffle_tags=True, keep_tokens=0)
    firsts = {process_caption(CAPTION, options, random.Random(seed)).split(", ")[1] for seed in range(40)}
    assert len(firsts) > 2
    assert all(process_caption(CAPTION, options, random.Random(s)).startswith("ohwx, ") for s in range(40))


def test_same_seed_same_caption() -> None:
    options = CaptionOptions(shuffle_tags=True, tag_dropout_rate=0.3, caption_dropout_rate=0.2)
    assert [process_caption(CAPTION, options, random.Random(7)) for _ in range(3)] == [
        process_caption(CAPTION, options, random.Random(7))
    ] * 3


def test_caption_dropout_leaves_only_the_trigger_word() -> None:
    always = CaptionOptions(trigger_word="ohwx", caption_dropout_rate=1.0, prepend_tags=("masterpiece",))
    assert process_caption(CAPTION, always, random.Random(0)) == "ohwx"
    assert process_caption(CAPTION, CaptionOptions(caption_dropout_rate=1.0), random.Random(0)) == ""
    sometimes = CaptionOptions(trigger_word="ohwx", caption_dropout_rate=0.25)
    rng = random.Random(1)
    dropped = sum(process_caption(CAPTION, sometimes, rng) == "ohwx" for _ in range(2000))
    assert 400 < dropped < 600


def test_tag_dropout_never_drops_fixed_tags() -> None:
    options = CaptionOptions(
        trigger_word="ohwx", keep_tokens=1, tag_dropout_rate=1.0, prepend_tags=("pre",), append_tags=("post",)
    )
    assert process_caption(CAPTION, options, random.Random(0)) == "ohwx, pre, 1girl, post"
    half = CaptionOptions(keep_tokens=0, tag_dropout_rate=0.5)
    rng = random.Random(3)
    kept = sum(len(split_tags(process_caption(CAPTION, half, rng))) for _ in range(1000))
    assert 2700 < kept < 3300  # about half of 6 tags per caption


def test_blacklist_ignores_case_and_underscores() -> None:
    options = CaptionOptions(blacklist=("Red Hair", "blue_sky"))
    assert process_caption(CAPTION, options, None) == "1girl, smiling, outdoors, tree"


def test_prepend_and_append_tags_frame_the_caption() -> None:
    options = CaptionOptions(trigger_word="ohwx", prepend_tags=("masterpiece",), append_tags=("photo",))
    assert process_caption("smiling, tree", options, None) == "ohwx, masterpiece, smiling, tree, photo"


def test_prepended_tags_stay_in_front_when_shuffling() -> None:
    options = CaptionOptions(prepend_tags=("masterpiece", "best quality"), shuffle_tags=True, keep_tokens=0)
    for seed in range(10):
        assert process_caption(CAPTION, options, random.Random(seed)).startswith(
            "masterpiece, best quality, "
        )


def test_underscores_to_spaces_spares_kaomoji() -> None:
    assert process_caption("red_hair, ^_^, >_<", CaptionOptions(), None) == "red hair, ^_^, >_<"
    assert process_caption("red_hair", CaptionOptions(underscores_to_spaces=False), None) == "red_hair"


def test_max_tags_keeps_the_first_caption_tags() -> None:
    options = CaptionOptions(trigger_word="ohwx", max_tags=2, append_tags=("photo",))
    assert process_caption(CAPTION, options, None) == "ohwx, 1girl, red hair, photo"


def test_deduplicate_removes_later_repeats() -> None:
    caption = "smiling, Smiling, red_hair, red hair, tree"
    assert process_caption(caption, CaptionOptions(), None) == "smiling, red hair, tree"
    assert process_caption(caption, CaptionOptions(deduplicate=False), None) == (
        "smiling, Smiling, red hair, red hair, tree"
    )


def test_newlines_separate_tags_like_commas() -> None:
    assert split_tags("a, b\nc\r\n\nd") == ("a", "b", "c", "d")


def test_tag_frequencies_count_captions_not_occurrences() -> None:
    frequencies = tag_frequencies(["cat, cute, cat", "cat, dog", "", "dog"])
    assert frequencies == {"cat": 2, "dog": 2, "cute": 1}
    assert list(frequencies) == ["cat", "dog", "cute"]  # most frequent first


def test_is_random_tells_when_embeddings_can_be_cached() -> None:
    assert not CaptionOptions(trigger_word="x", blacklist=("a",)).is_random
    assert CaptionOptions(shuffle_tags=True).is_random
    assert CaptionOptions(caption_dropout_rate=0.1).is_random
    assert CaptionOptions(tag_dropout_rate=0.1).is_random


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"keep_tokens": -1}, "keep_tokens"),
        ({"max_tags": -2}, "max_tags"),
        ({"caption_dropout_rate": 1.5}, "caption_dropout_rate"),
        ({"tag_dropout_rate": -0.1}, "tag_dropout_rate"),
        ({"blacklist": "a, b"}, "blacklist"),
    ],
)
def test_bad_options_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(CaptionError, match=field):
        CaptionOptions(**kwargs)

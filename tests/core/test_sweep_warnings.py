"""The sweep's warnings (#15 item 5) as pure functions: when each fires, when it stays silent, and that
it says the fix. The same warnings in a real server: tests/integration/test_sweep_warnings.py."""

from __future__ import annotations

import numpy as np

from trainer_core.pictures.sweep_warnings import (
    clip_skip_warning,
    stack_override_warnings,
    trigger_word_warning,
)

LORA = {"ss_trigger_word": "sks", "ss_clip_skip": "2", "ss_base_model_version": "sd_v1"}


def test_the_trigger_word_warning_fires_only_when_no_prompt_has_the_word():
    warning = trigger_word_warning(["a ring", "a square"], LORA)
    assert warning is not None and "'sks'" in warning and "check your trigger word" in warning.lower()
    assert trigger_word_warning(["a ring", "SKS, a square"], LORA) is None  # any prompt, any case
    assert trigger_word_warning(["a ring"], {"ss_trigger_word": ""}) is None  # no trigger word known: no claim


def test_the_clip_skip_warning_fires_on_a_mismatch_and_names_the_node_to_fix_it():
    warning = clip_skip_warning(LORA, 1)
    assert warning is not None and "clip skip 2" in warning and "stop_at_clip_layer = -2" in warning
    assert clip_skip_warning(LORA, 2) is None
    assert clip_skip_warning({**LORA, "ss_clip_skip": "None"}, 1) is None  # kohya's "None": unknown
    assert clip_skip_warning({**LORA, "ss_base_model_version": "sdxl_base_v1-0"}, 1) is None


def test_a_stack_equal_to_one_lora_alone_is_called_an_override_and_near_equal_is_not_enough_to_miss_it():
    rng = np.random.default_rng(0)
    base, strong, weak_other = (rng.random((8, 8, 3)) for _ in range(3))
    stack = strong + 0.5 / 255  # half a level from strong alone: the same picture
    row = [base, strong, weak_other, stack]
    (warning,) = stack_override_warnings([row], ["a ring"], 0, 3, {"new": 1, "style": 2})
    assert "same picture as new alone" in warning and "new overrides style" in warning
    different = [base, strong, weak_other, (strong + weak_other) / 2]
    assert stack_override_warnings([different], ["a ring"], 0, 3, {"new": 1, "style": 2}) == []
    # A LoRA that changes nothing alone is not said to override: the stack equals the base too.
    unchanged = [base, base, weak_other, base]
    assert stack_override_warnings([unchanged], ["a ring"], 0, 3, {"new": 1, "style": 2}) == []


def test_a_lora_trained_elsewhere_gets_its_trigger_word_from_the_tag_every_caption_had():
    kohya = {"ss_tag_frequency": '{"10_ohwx": {"ohwx": 12, "1girl": 11, "smile": 4}}',
             "ss_dataset_dirs": '{"10_ohwx": {"n_repeats": 10, "img_count": 12}}'}
    warning = trigger_word_warning(["a portrait"], kohya)
    assert warning is not None and "write 'ohwx' in the prompts" in warning  # {trigger} is only ss_trigger_word
    assert trigger_word_warning(["ohwx, a portrait"], kohya) is None
    no_common_tag = {**kohya, "ss_tag_frequency": '{"10_ohwx": {"ohwx": 11, "1girl": 11}}'}
    assert trigger_word_warning(["a portrait"], no_common_tag) is None  # no tag in every caption: no claim

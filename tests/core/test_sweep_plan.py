"""Planning a grid: strengths, prompts, LoRA lists and the size check, as the canvas sends them."""

from __future__ import annotations

import pytest

from trainer_core.pictures.sweep import (
    SweepError,
    parse_lora_lines,
    parse_prompts,
    parse_strengths,
    plan_grid,
    stack_strengths,
    strength_label,
)


def test_strengths_keep_order_add_a_baseline_and_allow_negative_and_above_one():
    assert parse_strengths("0.4, 0.5 1.2;-0.5", include_baseline=True) == [0.0, 0.4, 0.5, 1.2, -0.5]
    assert parse_strengths("0, 1, 1", include_baseline=True) == [0.0, 1.0]
    assert [strength_label(s) for s in (0.0, 1.0, 0.45)] == ["0.0 (base)", "1.0", "0.45"]


@pytest.mark.parametrize("text, words", [("a", ["'a'", "not a number"]), ("7", ["out of range"]), ("", ["at least one"])])
def test_bad_strengths_name_the_field(text, words):
    with pytest.raises(SweepError) as caught:
        parse_strengths(text, include_baseline=False)
    assert str(caught.value).startswith("strengths:") and all(w in str(caught.value) for w in words)


def test_prompts_are_lines_with_the_trigger_word_filled_in():
    assert parse_prompts("{trigger}, a cat\n\n  a dog  \n", "sks") == ["sks, a cat", "a dog"]
    assert parse_prompts("{trigger}, a cat", "") == ["a cat"]
    with pytest.raises(SweepError, match="prompts"):
        parse_prompts(" \n ", "sks")


def test_a_grid_too_large_for_memory_is_refused_with_its_size():
    assert plan_grid(["a"] * 4, [0.4, 0.5], 512, 512).cells == 8
    with pytest.raises(SweepError, match=r"GiB.*smaller"):
        plan_grid(["a"] * 10, [0.1] * 10, 4096, 4096)


def test_other_loras_and_the_guides_stack_reductions():
    assert parse_lora_lines("style.safetensors: 0.6\n# a comment\nchar.safetensors\n") == [
        ("style.safetensors", 0.6), ("char.safetensors", 1.0)]
    with pytest.raises(SweepError, match="line 1"):
        parse_lora_lines("style.safetensors: lots")
    assert stack_strengths("", 4) == [0.7, 0.5, 0.35, 0.35]
    assert stack_strengths("0.8, 0.4", 3) == [0.8, 0.4, 0.4]

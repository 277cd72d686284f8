"""The dataset report as text a person reads in the canvas or the log."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dataset_report import DatasetReport

_BAR_WIDTH = 24


def listing(files: Sequence[Path], limit: int = 5, root: Path | None = None) -> str:
    """``a.png, b/c.png, d.png and 12 more``: files relative to ``root`` when they are inside it."""
    names = [_relative(path, root) for path in files[:limit]]
    more = f" and {len(files) - limit} more" if len(files) > limit else ""
    return ", ".join(names) + more


def format_report(report: DatasetReport) -> str:
    """Counts, buckets, sizes, captions, tags and duplicates; then errors; then warnings."""
    lines = [
        f"Dataset {report.root}",
        f"{report.image_count} images, {report.sample_count} samples per epoch with repeats; "
        f"resolution {report.resolution}.",
        *(["", *report.clip_lines] if report.clip_lines else []),
        "",
        f"Buckets ({len(report.bucket_histogram)}), width x height: images",
    ]
    largest = max(report.bucket_histogram.values(), default=1)
    for (width, height), count in sorted(report.bucket_histogram.items(), key=lambda kv: (-kv[1], kv[0])):
        bar = "#" * max(1, round(count / largest * _BAR_WIDTH))
        lines.append(f"  {width:>5} x {height:<5} {count:>6}  {bar}")
    spread = report.size_spread
    lines += [
        "",
        f"Sizes: width {spread.width[0]}-{spread.width[2]} (median {spread.width[1]:g}), "
        f"height {spread.height[0]}-{spread.height[2]} (median {spread.height[1]:g}), "
        f"aspect {spread.aspect[0]:.2f}-{spread.aspect[1]:.2f}.",
        f"Below training size (upscaled): {len(report.below_resolution)}{_far_below(report)}.",
        _quality_line(report),
        f"Captions: {report.image_count - len(report.without_caption)} of {report.image_count} images have one.",
    ]
    if report.trigger_word:
        lines.append(
            f"Trigger word {report.trigger_word!r}: already in {report.with_trigger_word} of {report.image_count} "
            "captions; put first in every caption when training."
        )
    else:
        lines.append("No trigger word set: the LoRA is called up by the captions' own words.")
    masked = len(report.mask_files) + len(report.alpha_masks)
    if masked or report.bad_masks:
        lines.append(
            f"Masks: {masked} of {report.image_count} images have a loss mask ({len(report.mask_files)} <name>_mask "
            f"files, {len(report.alpha_masks)} alpha channels; {len(report.bad_masks)} mask files unusable); "
            "Train LoRA uses them when masked_loss is on (LoRA Lab Loss Settings)."
        )
    lines.append(
        f"Duplicates: {len(report.exact_duplicates)} group(s) of identical files, "
        f"{len(report.near_duplicates)} group(s) of near-identical pictures."
    )
    if report.top_tags:
        tags = ", ".join(f"{tag} ({count})" for tag, count in report.top_tags)
        lines.append(f"Most frequent tags: {tags}.")
    errors, warnings = report.errors, report.warnings
    lines.append("")
    if errors:
        lines.append(f"ERRORS ({len(errors)}): training would be wasted until these are fixed.")
        lines += [f"  - {problem.message}" for problem in errors]
    if warnings:
        lines.append(f"WARNINGS ({len(warnings)}):")
        lines += [f"  - {problem.message}" for problem in warnings]
    if not errors and not warnings:
        lines.append("No problems found.")
    return "\n".join(lines)


def _far_below(report: DatasetReport) -> str:
    far = sum(len(flag.files) for flag in report.quality_flags if flag.label == "small")
    return f", of which {far} far below it (listed under quality)" if far else ""


def _quality_line(report: DatasetReport) -> str:
    checked = "" if report.quality_checked else " (sharpness, exposure and JPEG quality not checked: quality_checks is off)"
    if not report.quality_flags:
        if not report.quality_checked:
            return "Quality: no picture far below the training resolution" + checked + "."
        return "Quality: no blurry, too dark or bright, heavily compressed or far too small pictures."
    counts = ", ".join(f"{flag.title} {len(flag.files)}" for flag in report.quality_flags)
    return f"Quality: {counts} (thresholds and files in the warnings; marked on the contact sheet){checked}."


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)

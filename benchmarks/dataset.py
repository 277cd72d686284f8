"""Load Dataset at scale: scan and report 1,000 and 5,000 images, time per image and peak memory.

    .venv/bin/python benchmarks/dataset.py [--sizes 1000 5000] [--repeats 5] [--workers 2] [--side 96] [--format png]

Small PNGs (or JPEGs, ``--format jpg``) with captions are generated into a temporary folder first (not timed). Each measurement runs in
a child process of its own, which does what Load Dataset does after its inputs are checked: the folder
fingerprint ComfyUI asks for, the scan (headers and captions), the report (every image read once for
duplicates and thumbnails), the report's text and the contact sheet. Timed: that work only (imports are
done before). Memory: the child's peak resident set (``getrusage`` maxrss), before the work and at the end.
Printed per size: median and min-max over the repeats of the time per image and the peak RSS, and the
time per image of the near-duplicate check (the one step that compares every image with every other,
timed again on its own after the rest); then the ratios of the largest size to the smallest (time per
image: 1.0 = linear; peak RSS: 1.0 = flat). Every measurement is made twice, with the quality flags'
measurements (``trainer_core.data.quality``) and without them (the reference: ``ReportOptions(quality_checks=False)``,
Load Dataset's ``quality_checks`` off: no measurement, JPEGs drafted for the thumbnail only), interleaved, and the ratio of the
two times is printed per size: the cost of the quality pass.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate(folder: Path, count: int, side: int, suffix: str = ".png") -> None:
    """``count`` different pictures (a few shapes in random colours), each with a caption."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(count)
    shapes = ("ellipse", "rectangle")
    for index in range(count):
        image = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = rng.randrange(side - 8), rng.randrange(side - 8)
            box = (x0, y0, rng.randrange(x0 + 4, side), rng.randrange(y0 + 4, side))
            getattr(draw, rng.choice(shapes))(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        image.save(folder / f"{index:05d}{suffix}")
        (folder / f"{index:05d}.txt").write_text(f"sks, shapes, picture {index}", encoding="utf-8")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def measure(folder: Path, workers: int, resolution: int, quality: bool = True) -> dict:
    """In the child: Load Dataset's work on ``folder``; without ``quality``, as before the quality flags."""
    from trainer_core.data.captions import CaptionOptions
    from trainer_core.data.dataset import DatasetOptions
    from trainer_core.data.dataset_folder import folder_fingerprint
    from trainer_core.data.dataset_report import ReportOptions, load_checked_dataset
    from trainer_core.data.image_fingerprints import near_duplicate_groups
    from trainer_core.pictures.contact_sheet import render_contact_sheet

    before = peak_rss_mib()
    started = time.perf_counter()
    folder_fingerprint(folder)
    dataset, report = load_checked_dataset(folder, DatasetOptions(resolution=resolution, bucket_step=32),
                                           CaptionOptions(), ReportOptions(workers=workers, quality_checks=quality))
    report.summary()
    render_contact_sheet(dataset, report)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    started = time.perf_counter()  # the one step that compares every image with every other, again on its own
    near_duplicate_groups(list(report.fingerprints.values()), ReportOptions().near_duplicate_distance)
    measured = sum(p.quality is not None for p in report.fingerprints.values())
    if measured != (len(report.fingerprints) if quality else 0):
        raise SystemExit(f"the quality pass measured {measured} of {len(report.fingerprints)} images (quality={quality})")
    return {"images": len(dataset.items), "seconds": seconds, "rss_before": before, "rss_peak": peak,
            "near_duplicates": time.perf_counter() - started}


def child(folder: Path, workers: int, resolution: int, quality: bool) -> dict:
    command = [sys.executable, __file__, "--measure", str(folder), "--workers", str(workers),
               "--resolution", str(resolution)] + ([] if quality else ["--no-quality"])
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not lines:
        raise SystemExit(f"the measurement of {folder} failed:\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def spread(values: list[float], unit: str, digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} {unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="threads that read images (the report's workers)")
    parser.add_argument("--side", type=int, default=96, help="side of the generated images in pixels")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--format", choices=("png", "jpg"), default="png", help="file format of the generated images")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-quality", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print("RESULT " + json.dumps(measure(args.measure, args.workers, args.resolution, not args.no_quality)))
        return 0
    results: dict[int, list[dict]] = {}
    references: dict[int, list[dict]] = {}  # the same work without the quality pass
    with tempfile.TemporaryDirectory(prefix="lora_lab_dataset_bench_") as temp:
        folders = {}
        for size in args.sizes:
            started = time.perf_counter()
            folders[size] = Path(temp) / f"images_{size}"
            generate(folders[size], size, args.side, f".{args.format}")
            print(f"generated {size} {args.format.upper()}s of {args.side} px in {time.perf_counter() - started:.1f} s (not timed)")
        for _ in range(args.repeats):  # sizes interleaved, so a busy moment of the machine hits both
            for size in args.sizes:
                results.setdefault(size, []).append(child(folders[size], args.workers, args.resolution, True))
                references.setdefault(size, []).append(child(folders[size], args.workers, args.resolution, False))
    print(f"Load Dataset's scan + report + contact sheet, {args.side} px {args.format.upper()}s with captions, resolution "
          f"{args.resolution}, {args.workers} reader threads, one child process per measurement, {args.repeats} repeats")
    print(f"{'images':>7} {'ms per image, median (min-max)':>32} {'of which near-dup.':>19} "
          f"{'peak RSS MiB (min-max)':>28} {'RSS before work':>16}")
    for size, runs in results.items():
        per_image = [1000 * run["seconds"] / run["images"] for run in runs]
        near = statistics.median([1000 * run["near_duplicates"] / run["images"] for run in runs])
        print(f"{size:7d} {spread(per_image, 'ms', 3):>32} {near:16.3f} ms {spread([r['rss_peak'] for r in runs], 'MiB', 1):>28} "
              f"{statistics.median([r['rss_before'] for r in runs]):12.1f} MiB")
    for size, runs in references.items():
        per_image = [1000 * run["seconds"] / run["images"] for run in runs]
        near = statistics.median([1000 * run["near_duplicates"] / run["images"] for run in runs])
        print(f"{size:7d} {spread(per_image, 'ms', 3):>32} {near:16.3f} ms {spread([r['rss_peak'] for r in runs], 'MiB', 1):>28} "
              f"{statistics.median([r['rss_before'] for r in runs]):12.1f} MiB  <- quality_checks off (reference)")
    for size in results:
        ratio = [a["seconds"] / b["seconds"] for a, b in zip(results[size], references[size], strict=True)]
        print(f"quality pass, {size} images: time with / without {spread(ratio, 'x')}")
    small, large = min(results), max(results)
    if small == large:
        return 0
    time_ratio = [(b["seconds"] / b["images"]) / (a["seconds"] / a["images"])
                  for a, b in zip(results[small], results[large], strict=True)]
    rss_ratio = [b["rss_peak"] / a["rss_peak"] for a, b in zip(results[small], results[large], strict=True)]
    growth = [(b["rss_peak"] - a["rss_peak"]) * 1024 / (large - small)
              for a, b in zip(results[small], results[large], strict=True)]
    print(f"time per image, {large} / {small}: {spread(time_ratio, 'x')}  (1.0 = linear)")
    print(f"peak RSS, {large} / {small}: {spread(rss_ratio, 'x')}  (1.0 = flat); "
          f"{spread(growth, 'KiB', 1)} more per extra image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

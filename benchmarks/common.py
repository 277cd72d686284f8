"""What every benchmark here measures the same way: arms in child processes, repeated and interleaved, on a
fixed number of threads, with median and min–max; peak memory over one window.

Each arm runs as ``script --variant NAME --threads N ...`` in its own child process (so one arm's peak
memory or warm caches do not leak into another's) and prints ``RESULT {json}``. Repeats interleave the arms
(A B C, A B C, ...) so that a machine getting busier or quieter during the run weighs on every arm alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fix_threads(threads: int) -> None:
    """Set torch's (and the BLAS libraries') thread counts in this process, before any work."""
    import torch

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class MemoryPeak:
    """Peak growth of this process's resident memory while the block runs (sampled every 2 ms)."""

    def __enter__(self) -> MemoryPeak:
        self.start = self.peak = self._rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, self._rss())


def seconds_per_step(stamps: Sequence[float], warmup: int) -> float:
    """Mean seconds per step from step-end time stamps, leaving out the first ``warmup`` steps."""
    timed = stamps[warmup:]
    return (timed[-1] - timed[0]) / (len(timed) - 1)


def run_child(script: str, name: str, arguments: Sequence[str]) -> dict | None:
    """One arm in a child process: its ``RESULT`` line, or None after printing why it failed."""
    command = [sys.executable, script, "--variant", name, *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        print(f"{name} failed:\n{completed.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def run_repeated(script: str, names: Iterable[str], repeats: int, arguments: Sequence[str]) -> dict[str, list[dict]] | None:
    """Every arm ``repeats`` times, interleaved; each arm's results in run order, or None when one failed."""
    names = list(names)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names:
            result = run_child(script, name, arguments)
            if result is None:
                return None
            results[name].append(result)
        print(f"  repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)
    return results


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``median (min–max)`` of ``values`` times ``scale``."""
    scaled = [v * scale for v in values]
    return f"{statistics.median(scaled):.{digits}f} ({min(scaled):.{digits}f}–{max(scaled):.{digits}f})"


def median(results: Sequence[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def child_arguments(argv: Sequence[str]) -> list[str]:
    """This run's command-line arguments for the child processes (without ``--repeats``)."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--repeats":
            skip = True
            continue
        if item.startswith("--repeats="):
            continue
        out.append(item)
    return out


def add_training_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The training run every arm of train.py and train_profile.py does: steps after warm-up, rank, batch,
    image size and count, target layers."""
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--target", default="attention", help="LoRA Lab / floor target layers")

"""Samples per second of data parallel training with 1 and 2 processes on this machine.

    .venv/bin/python benchmarks/parallel.py [--steps 20] [--repeats 3]

Every arm trains the same global batch of 2 images for the same steps on the tiny diffusers UNet of
tests/core (``tests/helpers/parallel_training.py``), so every arm does the same total work:
1 process x batch 2 (1 thread, and all threads), and 2 processes x batch 1 under
``accelerate launch`` (gloo, 1 thread each). The time counted is training's own (after the models
are built, latents encoded and the processes joined), the median of ``--repeats`` runs with min-max.
The ratio is against 1 process x 1 thread measured in the same run. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "helpers" / "parallel_training.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_arm(processes: int, threads: int, steps: int) -> float:
    """Training seconds of one run of the helper."""
    with tempfile.TemporaryDirectory() as tmp:
        helper = [str(HELPER), "--report", tmp, "--steps", str(steps), "--threads", str(threads),
                  "--batch-size", str(2 // processes)]
        if processes == 1:
            command = [sys.executable, *helper, "--single"]
        else:
            command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                       str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--num_cpu_threads_per_process", str(threads), "--main_process_port", str(free_port()), *helper]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            raise SystemExit(f"the {processes}-process arm failed:\n{done.stderr[-3000:]}")
        report = torch.load(Path(tmp) / "rank0.pt", weights_only=True)
        assert report["threads"] == threads and report["world_size"] == processes
        return float(report["training_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    arms = [(1, 1), (1, cores), (2, 1)]
    images = args.steps * 2
    print(f"{cores} CPU cores; every arm: {args.steps} steps x global batch 2 = {images} images trained")
    rates: dict[tuple[int, int], float] = {}
    for processes, threads in arms:
        seconds = [run_arm(processes, threads, args.steps) for _ in range(args.repeats)]
        per_second = sorted(images / s for s in seconds)
        rates[(processes, threads)] = statistics.median(per_second)
        print(f"{processes} process(es) x {threads} thread(s) each, batch {2 // processes} per process:"
              f" {rates[(processes, threads)]:.2f} samples/s (min {per_second[0]:.2f}, max {per_second[-1]:.2f};"
              f" {args.repeats} runs of {images} images)")
    base = rates[(1, 1)]
    for (processes, threads), rate in rates.items():
        print(f"ratio {processes} process(es) x {threads} thread(s) / 1 process x 1 thread: {rate / base:.2f}")


if __name__ == "__main__":
    main()

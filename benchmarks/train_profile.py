"""Where Train LoRA's time per step goes, next to the bare peft floor's: both arms of ``benchmarks/train.py``
in ONE process, interleaved, so a busy machine weighs on both alike.

    .venv/bin/python benchmarks/train_profile.py [--rounds 3] [--steps 60] [--threads 1] [--top 40]

Per round and arm: the milliseconds per step over the timed steps (no profiler running), and the ratio of
the medians. Then one more round of each arm under cProfile over the timed steps only: the share of a step
spent in the UNet's forward, in the backward pass, in the optimizer step and everywhere else (Python
bookkeeping, noise, loss, ComfyUI's model wrapper), the Python function calls per step, and the functions
Train LoRA's step calls that the floor's does not (or calls more often), with their calls per step and share
of the step. cProfile slows Python code more than native kernels, so its shares overstate Python overhead:
compare the two arms' shares with each other, and the ratios from the unprofiled rounds.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import train  # noqa: E402
from common import add_training_run_arguments, fix_threads, spread  # noqa: E402

ARMS = {"floor": train.run_peft_floor, "lora_lab": train.run_lora_lab}
# Where a step's time goes, by the function that holds it (cumulative): (label, file ending, function name).
PHASES = [
    ("UNet forward", "openaimodel.py", "forward"),
    ("backward", "~", "run_backward"),
    ("optimizer step", "optimizer.py", "wrapper"),
]


class OpProfiler:
    """torch.profiler over the window, with cProfile's ``enable``/``disable``: aten operators, not Python."""

    def __init__(self):
        import torch.profiler

        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def enable(self) -> None:
        self.profiler.__enter__()

    def disable(self) -> None:
        self.profiler.__exit__(None, None, None)


class Window:
    """Starts a profiler after the warm-up steps and stops it after the last: ``observe`` is the arm's hook."""

    def __init__(self, first: int, last: int, profile: bool | str):
        self.first, self.last = first, last
        self.profiler = (OpProfiler() if profile == "ops" else cProfile.Profile()) if profile else None
        self.started = self.ended = self.cpu = 0.0

    def observe(self, done: int) -> None:
        if done == self.first:
            self.started, self.cpu = time.perf_counter(), time.process_time()
            if self.profiler:
                self.profiler.enable()
        elif done == self.last:
            if self.profiler:
                self.profiler.disable()
            self.ended, self.cpu = time.perf_counter(), time.process_time() - self.cpu


def run_arm(name: str, args, profile: bool | str) -> Window:
    window = Window(args.warmup, args.warmup + args.steps, profile)
    ARMS[name](args, observe=window.observe)
    return window


def _stats(window: Window) -> dict[tuple[str, int, str], tuple[int, float, float]]:
    raw = pstats.Stats(window.profiler).stats  # type: ignore[attr-defined]
    return {key: (value[1], value[2], value[3]) for key, value in raw.items()}  # calls, tottime, cumtime


def _label(key: tuple[str, int, str]) -> str:
    file, line, function = key
    return f"{Path(file).name}:{line}({function})" if file != "~" else function


def _phase_seconds(stats: dict, ending: str, function: str) -> float:
    """The largest cumulative time of a function with that name (the outermost call, counted once)."""
    times = [cum for (file, _, name), (_, _, cum) in stats.items()
             if (name == function and file.endswith(ending)) or (file == ending == "~" and function in name)]
    return max(times, default=0.0)


def report_profile(windows: dict[str, Window], args) -> None:
    stats = {name: _stats(window) for name, window in windows.items()}
    print(f"\nprofiled round (cProfile on, {args.steps} steps): share of a step")
    print(f"{'arm':10} {'ms/step':>8} " + " ".join(f"{label:>15}" for label, _, _ in PHASES)
          + f" {'everything else':>16} {'py calls/step':>14}")
    for name, window in windows.items():
        total = window.ended - window.started
        phases = [_phase_seconds(stats[name], ending, function) for _, ending, function in PHASES]
        calls = sum(calls for calls, _, _ in stats[name].values())
        cells = " ".join(f"{100 * seconds / total:14.1f}%" for seconds in phases)
        rest = total - sum(phases)
        print(f"{name:10} {1000 * total / args.steps:8.2f} {cells} {100 * rest / total:11.1f}% "
              f"({1000 * rest / args.steps:.1f} ms) {calls / args.steps:10.0f}")
    lab, floor = stats["lora_lab"], stats["floor"]
    total = windows["lora_lab"].ended - windows["lora_lab"].started
    extra = []
    for key, (calls, own, cum) in lab.items():
        floor_calls = floor.get(key, (0, 0.0, 0.0))[0]
        if calls > floor_calls and cum / total >= 0.0005:
            extra.append((cum, key, calls, floor_calls, own))
    extra.sort(reverse=True)
    print(f"\nwhat Train LoRA's step calls more often than the floor's (cumulative share of its step >= 0.05%, top "
          f"{args.top}; nested functions count in their callers too)")
    print(f"{'calls/step lab':>15} {'floor':>6} {'cum % of step':>14} {'own ms/step':>12}  function")
    for cum, key, calls, floor_calls, own in extra[: args.top]:
        print(f"{calls / args.steps:15.1f} {floor_calls / args.steps:6.1f} {100 * cum / total:13.1f}% "
              f"{1000 * own / args.steps:12.3f}  {_label(key)}")


def report_ops(windows: dict[str, Window], args) -> None:
    """The aten operators whose count or self CPU time per step differ most between the arms."""
    tables = {}
    for name, window in windows.items():
        events = window.profiler.profiler.key_averages()  # type: ignore[union-attr]
        tables[name] = {event.key: (event.count, event.self_cpu_time_total) for event in events}
    print(f"\noperators (torch.profiler, {args.steps} steps): calls and self CPU ms per step, largest differences")
    print(f"{'calls lab':>10} {'floor':>7} {'self ms lab':>12} {'floor':>7}  operator")
    keys = set(tables["lora_lab"]) | set(tables["floor"])

    def per_step(name: str, key: str) -> tuple[float, float]:
        count, self_us = tables[name].get(key, (0, 0.0))
        return count / args.steps, self_us / 1000 / args.steps

    rows = sorted(keys, key=lambda k: -abs(per_step("lora_lab", k)[1] - per_step("floor", k)[1]))
    for key in rows[: args.top]:
        (lab_calls, lab_ms), (floor_calls, floor_ms) = per_step("lora_lab", key), per_step("floor", key)
        print(f"{lab_calls:10.1f} {floor_calls:7.1f} {lab_ms:12.3f} {floor_ms:7.3f}  {key}")
    for name in tables:
        calls = sum(count for count, _ in tables[name].values()) / args.steps
        print(f"{name}: {calls:.0f} operator calls per step, "
              f"{sum(t for _, t in tables[name].values()) / 1000 / args.steps:.1f} ms self CPU per step")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="unprofiled rounds per arm, interleaved")
    add_training_run_arguments(parser)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: CPU time is then the work done, not threads waiting)")
    parser.add_argument("--top", type=int, default=40, help="functions listed")
    parser.add_argument("--ops", action="store_true", help="also a round under torch.profiler (aten operators)")
    args = parser.parse_args()
    fix_threads(args.threads)
    train.prepare(args)
    train.import_training_libraries()
    run_arm("lora_lab", args, profile=False)  # warm-up: first-use costs of both arms' code paths
    run_arm("floor", args, profile=False)
    wall: dict[str, list[float]] = {name: [] for name in ARMS}
    cpu: dict[str, list[float]] = {name: [] for name in ARMS}
    for _ in range(args.rounds):
        for name in ARMS:
            window = run_arm(name, args, profile=False)
            wall[name].append((window.ended - window.started) / args.steps)
            cpu[name].append(window.cpu / args.steps)
    print(f"tiny SD1.5, {args.size}x{args.size}, rank {args.rank}, batch {args.batch}, fp32, {args.steps} timed steps, "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds in one process (median, min–max); CPU time is "
          "this process's, over the same steps (less sensitive to other processes than wall time)")
    for label, times in (("wall", wall), ("CPU", cpu)):
        for name, values in times.items():
            print(f"{name:10} {label:5} {spread(values, 1000):>22} ms/step")
        ratio = statistics.median(times["lora_lab"]) / statistics.median(times["floor"])
        rounds = ", ".join(f"{lab / floor:.2f}" for lab, floor in zip(times["lora_lab"], times["floor"], strict=True))
        print(f"lora_lab / floor, {label} time: {ratio:.2f}x (ratio of medians; per round {rounds})")
    report_profile({name: run_arm(name, args, profile=True) for name in ARMS}, args)
    if args.ops:
        report_ops({name: run_arm(name, args, profile="ops") for name in ARMS}, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

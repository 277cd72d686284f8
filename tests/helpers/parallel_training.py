"""One data parallel training run on the tiny diffusers UNet of tests/core, for ``accelerate launch``.

Every process builds the same tiny models and dataset (seeded), trains through ``train_lora`` with
``AcceleratedProcesses`` and saves what it learned as ``<report>/rank<r>.pt`` (the helper's own
report, not a training file). Training's checkpoints go to ``<checkpoints>/rank<r>/``: under data
parallel only the main process's folder may fill. ``--kill-rank R --kill-at S`` SIGKILLs process R
right after it finishes step S, as a crash would; ``--fail-rank R --fail-at S`` makes
process R raise there; ``--kill-in state|lora --kill-at S`` SIGKILLs the process as the checkpoint of step S
starts to write that file (its resume state, or its LoRA, written after the state).

    accelerate launch --multi_gpu --num_processes 2 ... tests/helpers/parallel_training.py --report R ...
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [path for path in (str(ROOT), str(ROOT / "tests" / "core")) if path not in sys.path]

from test_training_core import SyntheticData, tiny_models  # noqa: E402

from trainer_core.adapters.config import LoRAConfig  # noqa: E402
from trainer_core.models.diffusers_backend import DiffusersLatentCodec, DiffusersUNetDenoiser  # noqa: E402
from trainer_core.training.checkpoints import CheckpointPolicy  # noqa: E402
from trainer_core.training.config import TrainingConfig  # noqa: E402
from trainer_core.training.loop import StepReport, train_lora  # noqa: E402
from trainer_core.training.parallel import AcceleratedProcesses, SingleProcess  # noqa: E402

IMAGES = 5  # odd, so an epoch ends on a global batch of 2 that is short: one process gets nothing


class WordTextEncoder:
    """A fixed vector per word, one token per word (cycled to 8 tokens): unlike tests/core's averaged
    encoder, tokens differ, so cross-attention's query and key layers get real gradients. (With equal
    tokens theirs are zero up to rounding, and Adam turns rounding noise into full-size steps that no
    two summation orders share.)"""

    def encode(self, captions: list[str]) -> list[dict[str, torch.Tensor]]:
        out = []
        for caption in captions:
            vectors = []
            for word in caption.replace(",", " ").split():
                seed = sum(ord(c) * 31**i for i, c in enumerate(word)) % (2**31)
                vectors.append(torch.randn(32, generator=torch.Generator().manual_seed(seed)))
            out.append({"cross_attn": torch.stack([vectors[i % len(vectors)] for i in range(8)])[None]})
        return out


def kill_while_saving(which: str, step: int) -> None:
    """SIGKILL this process when the checkpoint of ``step`` starts to write ``which`` ("state" or "lora")."""
    from trainer_core.training import bookkeeping

    name = {"state": "save_training_state", "lora": "save_lora"}[which]
    write = getattr(bookkeeping, name)

    def killed_at_step(*args, **kwargs):
        saving = args[1]["step"] if which == "state" else int(args[0].metadata["ss_steps"])
        if saving == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return write(*args, **kwargs)

    setattr(bookkeeping, name, killed_at_step)


def run(args: argparse.Namespace, parallel: SingleProcess) -> dict[str, object]:
    if getattr(args, "kill_in", ""):
        kill_while_saving(args.kill_in, args.kill_at)
    unet, vae, alphas = tiny_models()
    training = TrainingConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=2e-3, seed=3,
                              noise_offset=0.05)
    policy = CheckpointPolicy(Path(args.checkpoints) / f"rank{parallel.rank}", "run", every=args.every)

    def on_step(report: StepReport) -> None:
        if args.step_seconds:
            time.sleep(args.step_seconds)  # gives a test time to act mid-run
        if parallel.rank == args.kill_rank and report.step == args.kill_at:
            Path(args.report).mkdir(parents=True, exist_ok=True)
            (Path(args.report) / "killed_at").write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        if parallel.rank == args.fail_rank and report.step == args.fail_at:
            raise RuntimeError("a simulated failure")

    result = train_lora(
        DiffusersUNetDenoiser(unet, alphas), WordTextEncoder(), DiffusersLatentCodec(vae, 1.0),
        SyntheticData(count=IMAGES), LoRAConfig(rank=4, alpha=4), training,
        checkpoints=policy if args.every else None,
        resume_from=Path(args.resume) if args.resume else None,
        on_step=on_step, parallel=parallel,
    )
    return {"losses": result.losses, "steps": result.steps, "total_steps": result.total_steps,
            "weights": dict(result.weights), "world_size": parallel.world_size,
            "training_seconds": result.seconds - result.encode_seconds, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", required=True)
    parser.add_argument("--checkpoints", default="")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--every", type=int, default=0)
    parser.add_argument("--resume", default="")
    parser.add_argument("--kill-rank", type=int, default=-1)
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.add_argument("--kill-in", choices=["state", "lora"], default="")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--fail-at", type=int, default=-1)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each process")
    parser.add_argument("--single", action="store_true", help="one process, without accelerate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parallel = SingleProcess() if args.single else AcceleratedProcesses(timeout_seconds=args.timeout, cpu=True)
    Path(args.report).mkdir(parents=True, exist_ok=True)
    try:
        report = run(args, parallel)
    except Exception as error:  # note when and how each process stopped, then stop as it would
        note = {"time": time.time(), "error": type(error).__name__, "message": str(error)}
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher stopping us must not cut the note
        torch.save(note, Path(args.report) / f"failed_rank{parallel.rank}.pt")
        raise
    torch.save(report, Path(args.report) / f"rank{parallel.rank}.pt")


if __name__ == "__main__":
    main()

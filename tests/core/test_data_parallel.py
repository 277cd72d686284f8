"""Data parallel training: real processes started by ``accelerate launch`` (gloo on the CPU, one thread
each) train the tiny diffusers UNet through ``train_lora(parallel=AcceleratedProcesses())``.

Tolerance: N processes sum their share-weighted gradients where one process sums over its whole batch,
so results agree up to float32 summation order; we allow 1e-5 absolute on LoRA tensors and 1e-5
relative on losses (seen here: 1.9e-6 on LoRA tensors after six AdamW steps, 1e-7 relative on losses).
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer_core.training.checkpoints import load_training_state
from trainer_core.training.parallel import SingleProcess

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "tests" / "helpers" / "parallel_training.py"
TOLERANCE = 1e-5
STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(tmp: Path, *args: str, processes: int = 2, timeout: float = 240) -> tuple[subprocess.CompletedProcess[str], float]:
    """``accelerate launch`` the helper with ``processes`` CPU processes of one thread; (result, seconds)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
        str(HELPER), "--report", str(tmp / "report"), "--checkpoints", str(tmp / "checkpoints"), *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return done, time.monotonic() - started


def helper_module():
    spec = importlib.util.spec_from_file_location("parallel_training", HELPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_process(tmp: Path, batch_size: int, steps: int = STEPS, every: int = 0, resume: str = "") -> dict:
    """The same run in this process, without accelerate (what the canvas does)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = Namespace(steps=steps, batch_size=batch_size, every=every, resume=resume, checkpoints=str(tmp),
                         kill_rank=-1, kill_at=-1, fail_rank=-1, fail_at=-1, step_seconds=0.0)
        return helper_module().run(args, SingleProcess())
    finally:
        torch.set_num_threads(threads)


def max_difference(a: dict, b: dict) -> float:
    assert a["weights"].keys() == b["weights"].keys()
    return max(float((a["weights"][k] - b["weights"][k]).abs().max()) for k in a["weights"])


def assert_same_training(got: dict, want: dict, label: str) -> None:
    difference = max_difference(got, want)
    print(f"{label}: max |LoRA difference| = {difference:.2e}, losses {got['losses']} vs {want['losses']}")
    assert got["steps"] == want["steps"] == STEPS
    assert difference < TOLERANCE
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(want["losses"]), rtol=TOLERANCE, atol=0)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One process at batch 2, six steps: the run every data parallel run below must equal."""
    return one_process(tmp_path_factory.mktemp("straight"), batch_size=2)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("two")
    done, _ = launch(tmp, "--steps", str(STEPS), "--batch-size", "1", "--every", "3")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp


def test_two_processes_at_batch_1_learn_what_one_process_learns_at_batch_2(two_processes, straight):
    ranks = [torch.load(two_processes / "report" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["total_steps"] == straight["total_steps"]
    assert max_difference(ranks[0], ranks[1]) == 0  # the processes hold one LoRA
    assert_same_training(ranks[0], straight, "2 processes x batch 1 vs 1 process x batch 2")


def test_only_the_main_process_writes_checkpoints(two_processes):
    written = sorted(p.relative_to(two_processes / "checkpoints").as_posix()
                     for p in (two_processes / "checkpoints").rglob("*") if p.is_file())
    assert written == ["rank0/run.lora_lab_state", "rank0/run_step000003.safetensors", "rank0/run_step000006.safetensors"]
    assert load_training_state(two_processes / "checkpoints" / "rank0" / "run.lora_lab_state")["step"] == STEPS


def test_a_killed_process_stops_the_others_promptly_and_one_process_resumes_the_run(tmp_path, straight):
    # A collective timeout of 5 minutes: stopping within seconds shows nobody waited for it.
    done, _ = launch(tmp_path, "--steps", str(STEPS), "--every", "3", "--kill-rank", "1", "--kill-at", "3",
                     "--timeout", "300")
    finished = time.monotonic()
    output = done.stdout + done.stderr
    stopped = time.time() - (time.monotonic() - finished)
    killed = float((tmp_path / "report" / "killed_at").read_text())
    ours = "another process of this run stopped" in output
    print(f"every process stopped {stopped - killed:.1f} s after rank 1 was killed (exit code {done.returncode});"
          f" our message on rank 0: {ours}")
    assert done.returncode != 0 and stopped - killed < 20
    # accelerate's launcher (torchrun) names the process that died; rank 0 says what happened, unless
    # the launcher's SIGTERM reached it before gloo's connection error did.
    assert "rank      : 1" in output and "SIGKILL" in output, output[-3000:]
    assert not list((tmp_path / "report").glob("rank*.pt"))  # nobody finished
    folder = tmp_path / "checkpoints" / "rank0"
    assert not (tmp_path / "checkpoints" / "rank1").exists()
    state = load_training_state(folder / "run.lora_lab_state")
    assert state["step"] == 3 and state["global_batch_size"] == 2
    assert load_file(folder / "run_step000003.safetensors").keys() == straight["weights"].keys()

    resumed = one_process(tmp_path / "resumed", batch_size=2, resume=str(folder / "run.lora_lab_state"))
    assert_same_training(resumed, straight, "2 processes to step 3 (one killed), 1 process to step 6")


def test_a_process_that_fails_stops_the_others_at_once_and_the_main_keeps_its_last_step(tmp_path, straight):
    done, _ = launch(tmp_path, "--steps", str(STEPS), "--every", "2", "--fail-rank", "1", "--fail-at", "3",
                     "--timeout", "300")
    assert done.returncode != 0
    failed = torch.load(tmp_path / "report" / "failed_rank1.pt", weights_only=True)
    stopped = torch.load(tmp_path / "report" / "failed_rank0.pt", weights_only=True)
    print(f"rank 0 stopped {stopped['time'] - failed['time']:.1f} s after rank 1 failed: {stopped['message']}")
    assert failed["message"] == "a simulated failure"
    assert stopped["error"] == "ProcessesStopped" and stopped["time"] - failed["time"] < 20
    # Two stops race, both the product's: the broken connection ("process 0 of 2 stopped ...") or the launcher's
    # SIGTERM ("process 0 of 2 was stopped by the launcher ..."); either names the state file to resume from.
    assert re.search(r"process 0 of 2 (was )?stopped", stopped["message"]), stopped["message"]
    assert ".lora_lab_state" in stopped["message"]
    # Rank 0 kept the last finished step (3), resumable, though its checkpoints fall on even steps.
    assert load_training_state(tmp_path / "checkpoints" / "rank0" / "run.lora_lab_state")["step"] == 3
    assert (tmp_path / "checkpoints" / "rank0" / "run_step000003.safetensors").is_file()
    # ... taken while step 4 was under way: it resumes from the streams at the start of step 4.
    resumed = one_process(tmp_path / "resumed", batch_size=2, resume=str(tmp_path / "checkpoints" / "rank0" / "run.lora_lab_state"))
    assert_same_training(resumed, straight, "2 processes to step 3 (one failed), 1 process to step 6")


def test_two_processes_resume_a_one_process_run(tmp_path, straight):
    first = one_process(tmp_path / "first", batch_size=2, steps=3, every=3)
    assert first["steps"] == 3
    state = tmp_path / "first" / "rank0" / "run.lora_lab_state"
    done, _ = launch(tmp_path, "--steps", str(STEPS), "--batch-size", "1", "--resume", str(state))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_same_training(torch.load(tmp_path / "report" / "rank0.pt", weights_only=True), straight,
                         "1 process to step 3, 2 processes to step 6")


def test_resuming_with_another_global_batch_is_refused_naming_the_batch_size(tmp_path):
    from trainer_core.training.results import TrainingError

    one_process(tmp_path / "first", batch_size=2, steps=2, every=2)
    with pytest.raises(TrainingError, match=r"2 images per step .* 1 x 1 = 1: set batch size"):
        one_process(tmp_path / "again", batch_size=1, steps=4, resume=str(tmp_path / "first" / "rank0" / "run.lora_lab_state"))


class Rank(SingleProcess):
    """A process's view of the group, without a group: enough to ask what its share is."""

    def __init__(self, rank: int, world_size: int):
        super().__init__()
        self.rank, self.world_size = rank, world_size


def test_within_an_epoch_every_image_is_trained_once_over_all_processes():
    from collections import Counter
    from dataclasses import dataclass

    from trainer_core.training.epochs import batches, samples_per_epoch

    @dataclass(frozen=True)
    class Item:
        repeats: int
        bucket: tuple[int, int]

    class Data:  # two buckets of 7 and 4 image-repeats: both end on a short global batch
        items = [Item(2, (64, 64)), Item(1, (64, 64)), Item(4, (64, 64)), Item(1, (32, 64)), Item(3, (32, 64))]

    world, per_process = 3, 2
    epoch: list[list[int]] = []
    stream = batches(Data(), per_process * world, seed=5)
    while sum(len(b) for b in epoch) < samples_per_epoch(Data()):
        epoch.append(next(stream))
    seen: Counter[int] = Counter()
    for global_batch in epoch:
        shares = [[global_batch[i] for i in Rank(r, world).share(global_batch)] for r in range(world)]
        assert all(len(share) <= per_process for share in shares)
        assert len({Data.items[i].bucket for i in global_batch}) == 1  # a batch stays in its bucket
        seen.update(i for share in shares for i in share)
    assert seen == Counter({0: 2, 1: 1, 2: 4, 3: 1, 4: 3})  # each image x its repeats, nothing twice


def test_steps_and_metadata_count_global_batches():
    from trainer_core.adapters.config import LoRAConfig
    from trainer_core.training.config import TrainingConfig
    from trainer_core.training.metadata import training_metadata

    training = TrainingConfig(epochs=2, batch_size=2, gradient_accumulation=2)
    assert training.resolved_steps(40) == 20 and training.resolved_steps(40, processes=4) == 5
    meta = training_metadata(
        LoRAConfig(), training, steps=5, total_steps=5, num_images=40, samples_per_epoch=40, resolution=64,
        trigger_word="", tag_frequency={}, dataset_dirs={}, base_model_version="sd_v1", base_model_hash="0" * 64,
        started_at=0.0, finished_at=1.0, mixed_precision="fp32", processes=4,
    )
    assert meta["ss_batch_size_per_device"] == "2" and meta["ss_total_batch_size"] == "16"
    assert meta["ss_epoch"] == "2" and meta["ss_num_batches_per_epoch"] == "5"

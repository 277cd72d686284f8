"""A run killed while it writes a checkpoint: the resume state is written before the step's LoRA, so a
LoRA on disk always has its resume state, and a state whose LoRA is missing resumes the run and writes
that LoRA again (with a note in the console).

The kill is real: the one-process run of tests/helpers/parallel_training.py (``--single``) SIGKILLs itself
as the checkpoint of step 4 starts to write its state, or its LoRA. Then the run resumes in this process
and must end where six steps straight end (the tolerance of tests/core/test_data_parallel.py). A disk too
full for the state (a small tmpfs; needs root, skips elsewhere) is named with the state's own size.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.core.test_data_parallel import HELPER, ROOT, STEPS, TOLERANCE, assert_same_training, one_process
from tests.integration.test_disk_faults import tmpfs
from trainer_core.training.checkpoints import load_training_state

EVERY, KILLED_AT = 2, 4


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """Six steps at batch 2 with checkpoints every 2 steps: the run and its checkpoint folder."""
    folder = tmp_path_factory.mktemp("straight")
    return one_process(folder, batch_size=2, every=EVERY), folder / "rank0"


def killed_while_saving(tmp: Path, which: str) -> Path:
    """Run the helper until the checkpoint of step 4 starts to write ``which``, SIGKILLed there; its folder."""
    command = [sys.executable, str(HELPER), "--single", "--report", str(tmp / "report"), "--checkpoints",
               str(tmp / "checkpoints"), "--steps", str(STEPS), "--batch-size", "2", "--every", str(EVERY),
               "--kill-in", which, "--kill-at", str(KILLED_AT)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == -signal.SIGKILL, done.stdout[-2000:] + done.stderr[-2000:]
    return tmp / "checkpoints" / "rank0"


def files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_killed_between_the_state_and_the_lora_resumes_from_that_step_and_writes_its_lora(
        tmp_path, straight, caplog):
    folder = killed_while_saving(tmp_path, "lora")
    assert files(folder) == ["run.lora_lab_state", "run_step000002.safetensors"]
    assert load_training_state(folder / "run.lora_lab_state")["step"] == KILLED_AT

    with caplog.at_level(logging.WARNING, logger="trainer_core.training.bookkeeping"):
        resumed = one_process(tmp_path / "checkpoints", batch_size=2, every=EVERY,
                              resume=str(folder / "run.lora_lab_state"))
    notes = [record.getMessage() for record in caplog.records if "resume" in record.getMessage()]
    assert len(notes) == 1 and "run_step000004.safetensors" in notes[0] and "is missing" in notes[0], notes
    assert files(folder) == ["run.lora_lab_state", "run_step000002.safetensors", "run_step000004.safetensors",
                             "run_step000006.safetensors"]
    assert_same_training(resumed, straight[0], "killed between state and LoRA of step 4, resumed to step 6")
    # The LoRA written on resume is the one the straight run wrote at step 4.
    again, want = load_file(str(folder / "run_step000004.safetensors")), load_file(
        str(straight[1] / "run_step000004.safetensors"))
    assert again.keys() == want.keys()
    assert max(float((again[key] - want[key]).abs().max()) for key in want) < TOLERANCE


def test_killed_as_the_state_is_written_leaves_every_lora_with_its_state_and_resumes_from_the_one_before(
        tmp_path, straight, caplog):
    folder = killed_while_saving(tmp_path, "state")
    assert files(folder) == ["run.lora_lab_state", "run_step000002.safetensors"]
    assert load_training_state(folder / "run.lora_lab_state")["step"] == KILLED_AT - EVERY

    with caplog.at_level(logging.WARNING, logger="trainer_core.training.bookkeeping"):
        resumed = one_process(tmp_path / "checkpoints", batch_size=2, every=EVERY,
                              resume=str(folder / "run.lora_lab_state"))
    assert not [record for record in caplog.records if "is missing" in record.getMessage()]
    assert files(folder) == ["run.lora_lab_state", "run_step000002.safetensors", "run_step000004.safetensors",
                             "run_step000006.safetensors"]
    assert_same_training(resumed, straight[0], "killed writing the state of step 4, resumed from step 2 to 6")


def test_a_lora_left_without_its_state_by_the_old_order_is_trained_again_and_replaced(tmp_path, straight):
    """Files of a run killed between the LoRA and the state in the former order (LoRA first): the LoRA of
    step 4 with the state of step 2. The run resumes from step 2 and step 4's LoRA is written again."""
    folder = killed_while_saving(tmp_path, "state")
    earlier = load_file(str(folder / "run_step000002.safetensors"))
    stale = {key: torch.zeros_like(tensor) for key, tensor in earlier.items()}
    save_file(stale, str(folder / "run_step000004.safetensors"))
    resumed = one_process(tmp_path / "checkpoints", batch_size=2, every=EVERY,
                          resume=str(folder / "run.lora_lab_state"))
    assert_same_training(resumed, straight[0], "LoRA of step 4 without its state, resumed from step 2 to 6")
    again, want = load_file(str(folder / "run_step000004.safetensors")), load_file(
        str(straight[1] / "run_step000004.safetensors"))
    assert max(float((again[key] - want[key]).abs().max()) for key in want) < TOLERANCE


def test_a_full_disk_at_the_resume_state_names_the_state_and_its_size_and_writes_no_lora(tmp_path):
    folder = tmp_path / "full" / "rank0"
    with tmpfs(folder, "size=16k"):
        with pytest.raises(OSError) as raised:
            one_process(tmp_path / "full", batch_size=2, every=EVERY)
        left = files(folder)
    message = str(raised.value)
    assert f"The disk holding {folder} is full: run.lora_lab_state needs" in message, message
    assert re.search(r"needs [\d.]+ (KiB|MiB) and [\d.]+ (KiB|MiB) is free", message), message
    assert left == [], f"written next to a state that did not fit: {left}"

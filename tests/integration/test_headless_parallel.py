"""The headless runner under ``accelerate launch`` on this machine's CPU (gloo), 2 processes: one LoRA and
one loss log are written, equal to one process training the same global batch; a 2-process run that is
stopped is finished by a single process resuming it.
"""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers.headless_runs import (
    RUNNER,
    accelerate_launcher,
    run_headless,
    runner_environment,
    toy_config,
)
from tests.helpers.toy import install_toy_workflow_inputs
from tools.comfy_server import ComfyServer

# Measured here: 2 processes at batch 1 vs 1 process at batch 2, 3 steps: largest LoRA difference 1.7e-7
# (the gradients are summed in another order).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def toy_server(comfy_server: ComfyServer) -> ComfyServer:
    install_toy_workflow_inputs(comfy_server)
    return comfy_server


def stop_launch(launch: subprocess.Popen) -> None:
    """Kill the launcher and the processes it started (torchrun starts each in a session of its own), as a
    lost machine would stop them."""
    import psutil

    try:
        processes = [psutil.Process(launch.pid), *psutil.Process(launch.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    for process in reversed(processes):  # the training processes first, so the launcher cannot restart them
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    launch.wait(timeout=60)


def losses(path: Path) -> list[float]:
    with path.open(newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def test_two_processes_write_one_lora_equal_to_one_process_at_the_global_batch(toy_server: ComfyServer,
                                                                               tmp_path: Path):
    out = tmp_path / "out"
    two = run_headless(toy_config(tmp_path / "two.toml", "ddp_two", "ddp/two", steps=3, batch_size=1),
                       toy_server, out, launcher=accelerate_launcher(2))
    assert two.returncode == 0, two.stderr[-4000:]
    one = run_headless(toy_config(tmp_path / "one.toml", "ddp_one", "ddp/one", steps=3, batch_size=2),
                       toy_server, out)
    assert one.returncode == 0, one.stderr[-4000:]

    assert sorted(path.name for path in (out / "loras" / "ddp").iterdir()) == ["one.safetensors", "two.safetensors"]
    assert [line.startswith("LoRA: ") for line in two.stdout.splitlines()].count(True) == 1  # the main process's
    assert two.stderr.count("tensorboard is not installed") <= 1
    parallel, single = load_file(str(out / "loras" / "ddp" / "two.safetensors")), load_file(
        str(out / "loras" / "ddp" / "one.safetensors"))
    assert sorted(parallel) == sorted(single)
    worst = max((parallel[key] - single[key]).abs().max().item() for key in single)
    assert worst <= TOLERANCE, f"2 processes x batch 1 differ from 1 process x batch 2 by {worst}"
    for name in ("two", "one"):  # the file says how it was trained: 1 image per device, 2 per step
        with safe_open(str(out / "loras" / "ddp" / f"{name}.safetensors"), framework="pt") as handle:
            metadata = handle.metadata()
        assert (metadata["ss_batch_size_per_device"], metadata["ss_total_batch_size"]) == (
            "1" if name == "two" else "2", "2")
    checkpoints = out / "loras" / "lora_lab_checkpoints"
    assert losses(checkpoints / "ddp_two_loss.csv") == pytest.approx(losses(checkpoints / "ddp_one_loss.csv"),
                                                                      rel=1e-5)


def test_a_stopped_two_process_run_is_finished_by_one_process(toy_server: ComfyServer, tmp_path: Path):
    out, steps = tmp_path / "out", 30
    checkpoints = out / "loras" / "lora_lab_checkpoints"
    first = toy_config(tmp_path / "first.toml", "ddp_resume", "ddp/resumed", steps=steps, batch_size=1,
                       save_every=2)
    command = [*accelerate_launcher(2), str(RUNNER), str(first), "--models", str(toy_server.models_dir),
               "--input", str(toy_server.input_dir), "--output", str(out)]
    launch = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                              env=runner_environment(toy_server.comfy_root), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # the resume state is written just before the checkpoint's LoRA file: wait for both before stopping
        while not ((checkpoints / "ddp_resume_step000002.safetensors").exists()
                   and (checkpoints / "ddp_resume.lora_lab_state").exists()):
            assert launch.poll() is None, "the 2-process run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
    finally:
        stop_launch(launch)
    assert not (out / "loras" / "ddp" / "resumed.safetensors").exists(), "the run finished before it was stopped"
    stopped_at = max(int(path.stem[-6:]) for path in checkpoints.glob("ddp_resume_step*.safetensors"))
    assert stopped_at < steps

    # Batch 1 on each of 2 processes = batch 2 on one: the same global batch, so the state fits.
    second = toy_config(tmp_path / "second.toml", "ddp_resume", "ddp/resumed", steps=steps, batch_size=2,
                        save_every=2, resume=True)
    done = run_headless(second, toy_server, out)
    assert done.returncode == 0, done.stderr[-4000:]
    first_shown = re.search(rf"Train LoRA:\s+\d+%\|[^|]*\|\s*(\d+)/{steps}", done.stderr)
    assert first_shown and int(first_shown.group(1)) >= stopped_at - 1, "the progress bar did not start where it stopped"
    with safe_open(str(out / "loras" / "ddp" / "resumed.safetensors"), framework="pt") as handle:
        assert handle.metadata()["ss_steps"] == str(steps)
    log = losses(checkpoints / "ddp_resume_loss.csv")
    assert len(log) == steps

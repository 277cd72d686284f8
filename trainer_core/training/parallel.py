"""The processes of one training run, as the loop sees them: who this process is, and the few
collective operations data parallel training needs.

``SingleProcess`` is the canvas: world size 1, every operation a no-op, so the single-process loop
runs exactly as before. ``AcceleratedProcesses`` is a run started with ``accelerate launch``: the
process group is Hugging Face accelerate's (``PartialState``: gloo on CPU, NCCL on CUDA) and every
operation calls accelerate or ``torch.distributed`` through it; there is no distribution code here.

How the loop uses them: every process draws the same global batch (``batch_size x world_size``
images) and its noise from the shared random streams, trains on ``share(global_batch)``, sums the
gradients (each process weighted its loss by its share of the batch) and the step loss, and only the
main process writes files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import TypeVar

import torch

from .results import TrainingError

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a collective waits for a process that stopped answering (gloo's own default is 30 minutes).
DEFAULT_TIMEOUT_SECONDS = 120.0


class ProcessesStopped(TrainingError):
    """Another process of a data parallel run stopped; this one stops too."""


class SingleProcess:
    """One process trains alone (the canvas, or a headless run without ``accelerate launch``)."""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(self, device: torch.device | None = None):
        self.device = device if device is not None else torch.device("cpu")

    def share(self, global_batch: Sequence[T]) -> list[int]:
        """Positions in ``global_batch`` this process trains on: every ``world_size``-th from its rank,
        so a short last batch spreads over the processes and no image is taken twice."""
        return list(range(self.rank, len(global_batch), self.world_size))

    def sum_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Every process's ``.grad`` becomes the sum over processes (a missing gradient counts as zeros)."""

    def sum(self, value: float) -> float:
        """The sum of ``value`` over processes."""
        return value

    def barrier(self) -> None:
        """Wait until every process is here."""

    def stop_everyone(self, reason: BaseException) -> None:
        """This process failed: make the others stop now instead of waiting for it."""

    def stopping_on_terminate(self) -> contextlib.AbstractContextManager[None]:
        """While training: the launcher's SIGTERM ends training like an error (one process: nothing changes)."""
        return contextlib.nullcontext()

    def uninterrupted(self) -> contextlib.AbstractContextManager[None]:
        """While the last checkpoint is written: the launcher's SIGTERM waits until it is on disk."""
        return contextlib.nullcontext()


class AcceleratedProcesses(SingleProcess):
    """The processes ``accelerate launch`` started, joined in accelerate's process group.

    ``timeout_seconds`` bounds how long a collective waits for a silent process, so a rank that dies
    without closing its connections cannot keep the others waiting for gloo's default 30 minutes.
    """

    def __init__(self, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, cpu: bool | None = None):
        try:
            from accelerate import PartialState
        except ImportError as error:  # pragma: no cover - accelerate is in requirements.txt
            raise ImportError("data parallel training needs Hugging Face accelerate: pip install accelerate") from error
        if cpu is None:  # without a GPU, accelerate joins processes only when told they run on the CPU
            cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
        self._state = PartialState(cpu=cpu, timeout=timedelta(seconds=timeout_seconds))
        self.rank = self._state.process_index
        self.world_size = self._state.num_processes
        self.is_main = self._state.is_main_process
        super().__init__(self._state.device)
        self.timeout_seconds = timeout_seconds

    def __repr__(self) -> str:
        return f"AcceleratedProcesses(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    def sum_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        if self.world_size == 1 or not parameters:
            return
        gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.detach().reshape(-1).float() for g in gradients])  # one collective, not one per tensor
        total = self._reduce(flat, "the gradients")
        offset = 0
        for parameter in parameters:
            count = parameter.numel()
            summed = total[offset : offset + count].view_as(parameter).to(parameter.dtype)
            offset += count
            if parameter.grad is None:
                parameter.grad = summed.clone()
            else:
                parameter.grad.copy_(summed)

    def sum(self, value: float) -> float:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        return float(self._reduce(tensor, "the step loss").item())

    def barrier(self) -> None:
        if self.world_size == 1:
            return
        try:
            self._state.wait_for_everyone()
        except RuntimeError as error:
            raise self._stopped("waiting for the main process to write a checkpoint", error) from error

    def stop_everyone(self, reason: BaseException) -> None:
        """Say which process failed first, and leave the process group. The others' pending collectives
        end with ``ProcessesStopped`` when this process exits and its connections close (within seconds
        on gloo; accelerate's launcher also stops every process once one exits with an error), so the
        caller must let the error end the process rather than linger in it."""
        if self.world_size == 1 or isinstance(reason, ProcessesStopped):
            return  # a process that learned of another's failure has nothing to tell
        log.error("process %d of %d failed (%s): stopping the others", self.rank, self.world_size, reason)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    @contextlib.contextmanager
    def stopping_on_terminate(self) -> Iterator[None]:
        # accelerate's launcher (torchrun) sends SIGTERM to every process when one fails; raising here
        # lets the main process write its last finished step before it goes.
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def terminate(signum: int, frame: object) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the checkpoint that follows must finish
            raise ProcessesStopped(
                f"data parallel training: process {self.rank} of {self.world_size} was stopped by the launcher"
                " (SIGTERM), usually because another process failed: read that process's error above, then"
                " resume from the main process's last checkpoint (its .lora_lab_state file)."
            )

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    @contextlib.contextmanager
    def uninterrupted(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _reduce(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        from accelerate.utils import reduce

        try:
            return reduce(tensor.to(self._collective_device()), reduction="sum").to(tensor.device)
        except RuntimeError as error:  # torch.distributed.DistBackendError is a RuntimeError
            raise self._stopped(f"summing {what}", error) from error

    def _collective_device(self) -> torch.device:
        return torch.device("cpu") if self._state.backend == "gloo" else self.device

    def _stopped(self, what: str, error: BaseException) -> ProcessesStopped:
        return ProcessesStopped(
            f"data parallel training: process {self.rank} of {self.world_size} stopped while {what}, because"
            f" another process of this run stopped or stopped answering ({error}). Every process stops here. Read"
            " the failed process's own error above; then resume from the main process's last checkpoint (its"
            " .lora_lab_state file), with this or any other number of processes."
        )

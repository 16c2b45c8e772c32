"""Preemption: SIGTERM, SIGUSR1 (SLURM's warning, ``--signal=USR1@90``) and SIGINT end a run at the
next optimiser step with a checkpoint of that step, then exit with :data:`EXIT_PREEMPTED`.

The signal handler only records the signal; the checkpoint is written at the end of the training
batch whose optimiser step completes next, so it holds a consistent state: weights, optimiser,
schedulers, RNG and the sampler position (:class:`stop_lightning.callbacks.SamplerPositionInCheckpoint`).
``RESUME=auto`` then continues at the next batch of the interrupted epoch. Under SLURM with
``trainer.requeue`` on, global rank 0 requeues the job (``scontrol requeue``) before exiting.
Lightning's own SIGTERM handler (which ends the run with exit 0) is replaced while training runs.
See docs/cluster.md.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; a scheduler must not read it as success
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name))


class Preempted(SystemExit):
    """Training stopped on a signal after saving ``checkpoint``; the process exits EXIT_PREEMPTED."""

    def __init__(self, signame: str, checkpoint: Path, step: int, requeued: bool) -> None:
        super().__init__(EXIT_PREEMPTED)
        self.checkpoint, self.step, self.requeued = checkpoint, step, requeued
        then = "job requeued" if requeued else "continue with RESUME=auto (or --resume auto)"
        self.message = f"{signame}: saved {checkpoint} at step {step}; {then}"


class PreemptionCheckpoint(Callback):
    def __init__(self, checkpoint: Path, requeue: bool = True) -> None:
        self.checkpoint = Path(checkpoint)
        self.requeue = requeue
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _record(self, signum, frame) -> None:
        if self.signum is None:
            log.warning(
                "received %s: saving a checkpoint at the next optimiser step", signal.Signals(signum).name
            )
        self.signum = signum

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning's connector installed its handlers: ours replace them for the fit.
        if threading_main():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _any_rank_signalled(self, trainer) -> bool:
        flag = self.signum is not None
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            t = torch.tensor([int(flag)], device=trainer.strategy.root_device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:  # only on an optimiser step: no half sums
            return
        if not self._any_rank_signalled(trainer):
            return
        signame = signal.Signals(self.signum).name if self.signum is not None else "signal on another rank"
        trainer.save_checkpoint(self.checkpoint)  # every rank calls it; rank 0 writes
        for logger in trainer.loggers:
            logger.save()
        requeued = trainer.is_global_zero and self.requeue and requeue_slurm_job(trainer)
        raise Preempted(signame, self.checkpoint, trainer.global_step, requeued)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def requeue_slurm_job(trainer) -> bool:
    """``scontrol requeue`` this job when Lightning's cluster environment is SLURM; True if done."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    env = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    if not isinstance(env, SLURMEnvironment):
        return False
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{array_task}" if array_job and array_task else os.environ.get("SLURM_JOB_ID", "")
    if not job:
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False).returncode
    except OSError as err:
        log.warning("could not requeue SLURM job %s: %s", job, err)
        return False
    if result != 0:
        log.warning("scontrol requeue %s failed with exit code %d", job, result)
    return result == 0

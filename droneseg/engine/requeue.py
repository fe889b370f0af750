"""Walltime: on the scheduler's warning signal, save and hand the job back to the queue.

Contract
--------
* :func:`listen` installs the handler as soon as the command starts (a signal during the cache build is not lost;
  its default action would kill the job). The handler only sets a flag: nothing is saved inside it.
* :class:`Requeue` checks the flag after every training batch. All ranks agree (one tiny all-reduce: the scheduler
  may signal only some processes), save ``checkpoints/last.ckpt`` at that step boundary, the run's one resume
  point, and leave ``fit`` at once (:class:`StopTraining`: no epoch-end hook logs or checkpoints the half epoch). Then SLURM: rank 0 runs ``scontrol requeue <job>``; OAR: the command exits with 99, which an
  ``idempotent`` job is resubmitted on. Either way the next start resumes the run folder.
* Lightning's own SLURM handler (an ``hpc_ckpt_N.ckpt`` written inside the signal handler) is switched off
  (:func:`slurm_plugin`), so two checkpoints never compete; :func:`resume_checkpoint` still takes the newer of
  ``last.ckpt`` and any ``hpc_ckpt_*.ckpt`` by global step, so neither silently wins.
* A signal during validation or the final evaluation is acted on at the next training batch, or not at all.
* Ctrl-C (SIGINT) during training goes the same way without the queue: :func:`interrupt_at_step` turns the first
  one into a flag, the ranks agree, ``last.ckpt`` is saved at the step boundary and the command ends with
  :class:`~droneseg.errors.Interrupted` (exit 130, ``--resume`` continues exactly). A second Ctrl-C aborts at once
  (Python's KeyboardInterrupt; the last epoch-end ``last.ckpt`` still resumes). Loader workers ignore SIGINT
  (:func:`droneseg.data.dataset.ignore_sigint`): the keyboard's signal reaches the whole process group.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import torch

from droneseg.cluster import ClusterEnv
from droneseg.engine.checkpoints import load_checkpoint_file

log = logging.getLogger(__name__)


class _Flag:
    """Set by the signal handler, read at step boundaries."""

    def __init__(self) -> None:
        self.received: int | None = None  # the scheduler's requeue signal
        self.interrupted = False  # Ctrl-C

    def __call__(self, signum: int, frame) -> None:
        self.received = signum

    def interrupt(self, signum: int, frame) -> None:
        self.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts now
        print("\nCtrl-C: saving at the end of this step, then stopping (Ctrl-C again aborts at once)", file=sys.stderr)


FLAG = _Flag()


@contextlib.contextmanager
def interrupt_at_step() -> Iterator[None]:
    """While training: the first Ctrl-C sets a flag that :class:`Requeue` acts on at the next step boundary
    (main thread only; elsewhere Ctrl-C keeps its default). The previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    FLAG.interrupted = False
    previous = signal.signal(signal.SIGINT, FLAG.interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def listen(env: ClusterEnv) -> signal.Signals | None:
    """Catch the job's requeue signal from now on (main thread only); -> the signal, or None outside a job."""
    if env.requeue_signal is None or threading.current_thread() is not threading.main_thread():
        return None
    FLAG.received = None
    signal.signal(env.requeue_signal, FLAG)
    return env.requeue_signal


def slurm_plugin(env: ClusterEnv) -> list:
    """Lightning's SLURM environment with its requeue handler off (ours saves at a step boundary instead)."""
    if env.scheduler != "slurm" or env.launcher != "srun":
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


class StopTraining(Exception):
    """Raised by :class:`Requeue` right after saving mid-epoch: leaving ``fit`` by an exception runs no epoch-end
    hooks, which would log a partial epoch and save an "epoch done" checkpoint over the mid-epoch one (what
    ``trainer.should_stop`` does). ``train`` catches it and reads the callback's flags."""


class Requeue(pl.Callback):
    """Save ``last.ckpt`` and stop once the job's warning signal or a Ctrl-C has arrived; requeue the job on the
    former (see the module contract)."""

    def __init__(self, env: ClusterEnv, last_checkpoint: Path) -> None:
        self.env, self.last_checkpoint = env, Path(last_checkpoint)
        self.requeued = False
        self.interrupted = False
        self.command: list[str] | None = None  # the requeue command run, for the log

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self.requeued or self.interrupted:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            # the epoch's last batch: Lightning restores a checkpoint saved here as a finished epoch and skips its
            # end (validation, log row); act after the next step instead, the epoch-end checkpoint written first
            return
        # one all-reduce of a code: 2 requeue signal, 1 Ctrl-C, 0 nothing; the largest on any rank wins
        code = 2 if FLAG.received is not None else 1 if FLAG.interrupted else 0
        if trainer.world_size > 1:
            code = int(trainer.strategy.reduce(torch.tensor(code, device=pl_module.device), reduce_op="max"))
        if not code:
            return
        trainer.save_checkpoint(self.last_checkpoint)  # every rank calls it; rank 0 writes (AtomicCheckpointIO)
        if code == 1:
            self.interrupted = True
            raise StopTraining
        self.requeued = True
        if trainer.is_global_zero:
            print(f"requeue signal: saved {self.last_checkpoint} at step {trainer.global_step}", file=sys.stderr)
            if self.env.scheduler == "slurm" and self.env.job_id:
                self.command = ["scontrol", "requeue", self.env.job_id]
                result = subprocess.run(self.command, capture_output=True, text=True)
                if result.returncode:
                    print(f"'{' '.join(self.command)}' failed ({result.returncode}): {result.stderr.strip()}",
                          file=sys.stderr)
        raise StopTraining


def _global_step(path: Path) -> int:
    return int(load_checkpoint_file(path, mmap=True).get("global_step", -1))


def resume_checkpoint(run: Path) -> Path | None:
    """The checkpoint a run resumes from: the one with the most optimiser steps among ``checkpoints/last.ckpt``
    and Lightning's ``hpc_ckpt_*.ckpt`` (ties go to ``last.ckpt``); None when there is none."""
    candidates = [p for p in [Path(run) / "checkpoints" / "last.ckpt", *sorted(Path(run).glob("hpc_ckpt_*.ckpt"))]
                  if p.is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (_global_step(p), p.name == "last.ckpt"))

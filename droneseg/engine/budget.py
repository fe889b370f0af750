"""A time budget for the whole ``droneseg train`` command, and a learning-rate schedule laid over the steps that fit.

Contract
--------
* :class:`StepPlan`: how many optimiser steps the schedule spans (``total``); the schedule reads it at every step
  through :func:`lr_factor`, so a new estimate reshapes the rest of the schedule without a restart.
* :class:`Budget` (a Lightning callback): given the absolute deadline of the command (``time.monotonic()``
  seconds; the budget counts from the command's start, so cache building is inside it), it times training steps
  (loading included, validation excluded) and validation passes, and
  1. re-plans ``StepPlan.total`` = steps done + steps that fit before the deadline, less one more validation,
     the final evaluation's reserve and a margin, each epoch's validation spread over its steps; never more than
     the steps ``max_epochs``/``max_steps`` allow (that limit, when it binds first, fixes the schedule);
  2. stops training (``trainer.should_stop``, so Lightning validates the last weights) when what remains is no
     longer than that reserve. Under DDP rank 0's numbers are broadcast, so every rank plans the same schedule.
* The final evaluation's reserve: before any validation is timed, the validation measured up front
  (:func:`measure_costs`), else a guess from the step time (a forward pass is about a third of a training step per
  pixel); after, ``EVAL_FACTOR`` x the last validation + ``EVAL_FIXED_S`` (evaluation reads native masks,
  upsamples, and writes figures and the report).
* :func:`measure_costs` times a training step and a forward pass of the model on this machine, now, before
  training starts; :meth:`Costs.needed` is what a budget must cover: the time already spent (the cache), MIN_STEPS
  optimiser steps, one validation and the final evaluation. ``train`` refuses a shorter budget up front, saying
  what it would take, instead of overrunning it or training two steps.

>>> round(lr_factor(0.0, "cosine", warmup=0.1), 3), round(lr_factor(0.1, "cosine", warmup=0.1), 3), lr_factor(1.0, "cosine", warmup=0.1)
(0.1, 1.0, 0.01)
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import lightning.pytorch as pl
import numpy as np
import torch

FINAL_LR = 0.01
"""Cosine schedules end at this fraction of the peak learning rate."""
WARMUP_START = 0.1
"""Warm-up starts at this fraction of the peak learning rate."""
EVAL_FACTOR = 2.5
"""The final evaluation is reserved this many validations (+ EVAL_FIXED_S): over the 13 recipe runs on the dev set
it took 2.05x a validation at the median, 2.79x at most (``final_eval_s`` / ``budget_detail.val_s`` in
benchmarks/results/recipes/*.json); 2.0 let the slowest overrun."""
EVAL_FIXED_S = 5.0
MIN_STEPS = 10
"""Optimiser steps a time budget must buy besides one validation and the final evaluation."""
MARGIN_S = 3.0
"""Seconds kept for writing the model, curves and summary."""
REPLAN_EVERY = 10
"""Steps between re-estimates (and at every epoch end)."""


def lr_factor(progress: float, schedule: str, warmup: float) -> float:
    """Learning rate as a fraction of the peak, at ``progress`` in [0, 1] of the planned steps.

    ``cosine``: linear warm-up from WARMUP_START over the first ``warmup`` share, then half a cosine down to
    FINAL_LR (Loshchilov & Hutter, SGDR, 2017). ``onecycle``: Smith's one-cycle shape as PyTorch's OneCycleLR
    (``anneal_strategy="cos"``): cosine up from 1/25 over the first ``warmup`` share, cosine down to 1/25/1e4.
    ``none``: 1.
    """
    p = min(max(progress, 0.0), 1.0)
    if schedule == "none":
        return 1.0
    if schedule == "onecycle":
        start, end = 1 / 25, 1 / 25 / 1e4
        if p < warmup:
            return start + (1 - start) * (1 - math.cos(math.pi * p / warmup)) / 2
        q = (p - warmup) / max(1e-12, 1 - warmup)
        return end + (1 - end) * (1 + math.cos(math.pi * q)) / 2
    if p < warmup:
        return WARMUP_START + (1 - WARMUP_START) * p / warmup
    q = (p - warmup) / max(1e-12, 1 - warmup)
    return FINAL_LR + (1 - FINAL_LR) * (1 + math.cos(math.pi * q)) / 2


@dataclass
class StepPlan:
    """The number of optimiser steps the schedule spans; re-estimated under a time budget."""

    total: int

    def progress(self, step: int) -> float:
        return step / max(1, self.total)


@dataclass(frozen=True)
class Costs:
    """What training costs on this machine, measured before training starts, in seconds."""

    spent_s: float  # the command so far: config, dataset, cache
    step_s: float  # one optimiser step (``accumulate`` batches, forward and backward)
    val_s: float  # one validation pass (a forward pass per working pixel of the val split)
    eval_s: float  # the final evaluation (0 without one)

    def needed(self) -> float:
        """Seconds a budget must hold: what is spent, MIN_STEPS steps, one validation, the evaluation, a margin."""
        return self.spent_s + MIN_STEPS * self.step_s + self.val_s + self.eval_s + MARGIN_S

    def as_dict(self) -> dict:
        return {k: round(v, 2) for k, v in asdict(self).items()} | {"needed_s": round(self.needed(), 1)}


def val_pixels(entries: list, world_size: int = 1) -> float:
    """Working-size pixels one rank validates: its shard of the val split's cache ``entries``, x1.3 for the tiles'
    overlap."""
    return 1.3 * sum(float(np.prod(e.load()[0].shape[:2])) for e in entries) / world_size


def measure_costs(net: torch.nn.Module, batch_size: int, crop: int, pixels: float, accumulate: int,
                  final_eval: bool, device: torch.device, channels_last: bool, spent_s: float,
                  eval_fixed_s: float = EVAL_FIXED_S) -> Costs:
    """Time one training batch (forward + backward, (batch_size, 3, crop, crop)) and one forward pass of a crop on
    ``device``; the validation is the forward time per pixel x ``pixels`` (:func:`val_pixels`). Measured on a copy of
    ``net`` with the random state restored after, so that the run trains exactly as it would unmeasured. Each pass
    runs twice and the second is timed: the first pays one-off set-up (kernel selection, allocations).
    ``eval_fixed_s``: what the final evaluation costs besides the network (a survey's re-planning: its seconds at
    set-up)."""
    probe = copy.deepcopy(net).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    probe.to(memory_format=layout)
    x = torch.zeros(batch_size, 3, crop, crop, device=device).contiguous(memory_format=layout)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        fn()
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe.train()
        step = timed(lambda: probe(x).float().mean().backward())
        probe.eval()
        with torch.no_grad():
            forward = timed(lambda: probe(x[:1]))
    val = forward / crop**2 * pixels
    return Costs(spent_s=spent_s, step_s=step * accumulate, val_s=val,
                 eval_s=EVAL_FACTOR * val + eval_fixed_s if final_eval else 0.0)


class Budget(pl.Callback):
    """Stops training in time for the final evaluation and keeps the schedule's plan fitted to the deadline."""

    def __init__(self, started: float, seconds: float, plan: StepPlan, accumulate: int, final_eval: bool,
                 crop_pixels: float, carry_spent: bool = True, eval_fixed_s: float = EVAL_FIXED_S) -> None:
        self.started, self.seconds, self.carry_spent = started, seconds, carry_spent
        self.deadline = started + seconds
        self.spent_before = 0.0  # seconds of earlier sessions of a resumed run
        self.plan, self.accumulate, self.final_eval = plan, accumulate, final_eval
        self.crop_pixels = crop_pixels
        self.eval_fixed_s = eval_fixed_s  # the final evaluation's cost besides the network (a survey's planning)
        self.val_pixels = 0.0  # working-size pixels of the val split, tile overlap included (set at train start)
        self.batch_size = 1
        self.step_s: float | None = None  # seconds per training batch, loading included
        self.val_s: float | None = None  # seconds of the last validation pass
        self.costs: Costs | None = None  # measured before training (single-process runs), for the first estimates
        self.stopped = False
        self._last: float | None = None
        self._batches: list[float] = []
        self._val_start = 0.0
        self.history: list[dict] = []  # (step, planned total) at each re-plan, for the summary

    # -- what is left ----------------------------------------------------------------------------------------
    def _val_estimate(self) -> float:
        if self.val_s is not None:
            return self.val_s
        if self.costs is not None:
            return self.costs.val_s
        if self.step_s is None:
            return 0.0
        return self.step_s / self.batch_size * self.val_pixels / self.crop_pixels / 3  # forward only

    def reserve(self) -> float:
        """Seconds to keep: one more validation, the final evaluation and the margin."""
        val = self._val_estimate()
        final = EVAL_FACTOR * val + self.eval_fixed_s if self.final_eval else 0.0
        return val + final + MARGIN_S

    def _replan(self, trainer: pl.Trainer) -> None:
        if self.step_s is None:
            return
        batches_per_epoch = max(1, trainer.num_training_batches)
        per_batch = self.step_s + (self._val_estimate() / batches_per_epoch)
        left = max(0.0, self.deadline - time.monotonic() - self.reserve())
        total = trainer.global_step + int(left / per_batch / self.accumulate)
        total = int(trainer.strategy.broadcast(max(total, trainer.global_step + 1), src=0))
        # the time fits more steps than max_epochs allows: the schedule spans max_epochs' steps, so it anneals
        # when training ends (and is the same from run to run, not a wall-clock guess)
        allowed = trainer.estimated_stepping_batches
        if math.isfinite(allowed):
            total = min(total, max(1, int(allowed)))
        if abs(total - self.plan.total) > 0.02 * max(1, self.plan.total):  # log the moves that matter
            self.history.append({"step": trainer.global_step, "planned": total})
        self.plan.total = total

    # -- hooks ------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.val_pixels = val_pixels(getattr(trainer.datamodule, "entries", {}).get("val", []), trainer.world_size)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = None  # the first batch of an epoch waits for the loader: its time is not a step's

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batch_size = batch[0].shape[0]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if self._last is not None:
            self._batches.append(now - self._last)
            recent = self._batches[-50:]
            self.step_s = sum(recent) / len(recent)
        self._last = now
        if len(self._batches) == 2 or trainer.global_step % REPLAN_EVERY == 0:
            self._replan(trainer)
        stop = now + self.reserve() >= self.deadline
        stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and not trainer.should_stop:
            self.stopped = True
            trainer.should_stop = True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_s = float(trainer.strategy.broadcast(time.monotonic() - self._val_start, src=0))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._replan(trainer)

    def state_dict(self) -> dict:
        spent = self.spent_before + time.monotonic() - self.started
        return {"planned": self.plan.total, "step_s": self.step_s, "val_s": self.val_s, "spent": spent}

    def load_state_dict(self, state: dict) -> None:
        """A resumed run has what its earlier sessions left of the budget."""
        self.plan.total = int(state.get("planned", self.plan.total))
        self.step_s, self.val_s = state.get("step_s"), state.get("val_s")
        self.spent_before = float(state.get("spent", 0.0)) if self.carry_spent else 0.0
        self.deadline = self.started + self.seconds - self.spent_before

    def summary(self, trainer: pl.Trainer) -> dict:
        """What ``train_summary.json`` records of the plan."""
        return {"budget_s": self.seconds, "spent_before_s": round(self.spent_before, 1),
                "reserve_s": round(self.reserve(), 1),
                "planned_steps": self.plan.total, "done_steps": trainer.global_step,
                "step_s": None if self.step_s is None else round(self.step_s, 4),
                "val_s": None if self.val_s is None else round(self.val_s, 2),
                "replans": self.history[-20:],
                **({"measured_before": self.costs.as_dict()} if self.costs is not None else {})}

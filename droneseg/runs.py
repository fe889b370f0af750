"""Run folders: new, a job's, resumed, extended (the model artefact in them: :mod:`droneseg.artifact`).

Contract
--------
* A run folder is created once and never reused: ``<out>/<name>-<YYYYMMDD-HHMMSS>`` (``-2``, ``-3``…
  on a clash). In a job (torchrun, SLURM, OAR: :mod:`droneseg.cluster`) every rank and node derives the
  same name from the job id, ``<name>-job<id>``; rank 0 creates it, the others wait for it, and a
  requeued job finds it again and resumes it.
* :func:`resolve_run` decides what ``train`` does with a folder: ``--resume`` continues a run exactly as
  configured (``--max-epochs``/``--max-time`` also extend a finished one, whose model and summary
  :func:`archive_finished` moves to ``previous/N/`` first: nothing is lost); ``--run-dir`` (or a job's folder)
  resumes an unfinished run configured the same, else starts a new run there. A run's ``config.yaml`` written
  before 0.2 is read as it was meant (its ``unet`` is the classic U-Net).
  Nothing here imports Lightning.

>>> differences({"train": {"lr": 0.1}, "environment": {}}, {"train": {"lr": 0.2}})
['train.lr']
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import yaml

from droneseg.cluster import ClusterEnv, detect
from droneseg.config import RunConfig, dump_config, validate
from droneseg.errors import DataError
from droneseg.models import legacy_model_dict

RUN_DIR_ENV = "DRONESEG_RUN_DIR"  # set by the process that created the run folder, for the ones it launches


def is_creator(env: ClusterEnv) -> bool:
    """Whether this process makes the run folder: rank 0 of node 0, not a process another one started."""
    return env.rank == 0 and env.local_rank == 0 and env.node_rank == 0


def finished(run: Path) -> bool:
    """Whether ``run`` holds a run that ended (its ``train_summary.json`` is written last)."""
    return (Path(run) / "train_summary.json").is_file()


def job_run_dir(out: Path, name: str, job_id: str) -> Path:
    """The folder of a job's run, the same on every rank and node and again after a requeue: ``<name>-job<id>``,
    or ``-2``, ``-3``… past folders holding finished runs (a job script that trains twice)."""
    base = Path(out) / f"{name}-job{job_id}"
    for i in range(1, 1000):
        run = base if i == 1 else base.with_name(f"{base.name}-{i}")
        if not finished(run):
            return run
    raise DataError(f"{out}: 999 finished runs named {base.name}; pass --run-dir")


def shared_run_dir(run: Path, env: ClusterEnv, wait_s: float = 300.0) -> Path:
    """``run``, made by the creating process (also when it exists: a requeued job that stopped before its first
    checkpoint starts again there) and waited for by the others. Raises DataError after ``wait_s``."""
    run = Path(run)
    if is_creator(env):
        run.mkdir(parents=True, exist_ok=True)
        return run
    deadline = time.monotonic() + wait_s
    while not run.is_dir():
        if time.monotonic() > deadline:
            raise DataError(f"{run}: rank 0 did not create the run folder within {wait_s:.0f} s")
        time.sleep(0.5)
    return run


def new_run_dir(out: Path, name: str, env: ClusterEnv | None = None, wait_s: float = 300.0) -> Path:
    """A fresh run folder, never an existing one; in a job, the job's folder (:func:`job_run_dir`), which the
    creating process makes and the others wait for. Processes a creator started get its folder (``RUN_DIR_ENV``).
    """
    env = env or detect()
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and not is_creator(env) and Path(inherited).is_dir():
        return Path(inherited)
    out = Path(out)
    if env.world_size > 1 and not env.names_run:
        raise DataError("multi-process training needs a job id to name its run folder alike on every rank "
                        "(torchrun --rdzv-id ID or --standalone, SLURM or OAR), or --run-dir")
    if env.names_run:
        return shared_run_dir(job_run_dir(out, name, env.job_id), env, wait_s)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        run = out / (f"{name}-{stamp}" if i == 1 else f"{name}-{stamp}-{i}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise DataError(f"{out}: cannot find a free run folder name for {name}-{stamp}")


EXTENDABLE = ("train.max_epochs", "train.max_time")
"""What ``--resume`` may change: a finished run continues for more epochs or more time."""


def saved_config(run: Path) -> dict:
    """A run's ``config.yaml`` as plain data (its ``environment`` section removed); one written before 0.2 names
    the classic U-Net ``unet``, read as ``classic-unet``. Raises DataError when there is none."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise DataError(f"{run}: no config.yaml; not a droneseg run folder")
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    saved.pop("environment", None)
    if isinstance(saved.get("model"), dict):
        saved["model"] = legacy_model_dict(saved["model"])
    return saved


def differences(saved: dict, now: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs as plain data (the ``environment`` aside)."""

    def walk(a: object, b: object, key: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b)) for d in walk(a.get(k), b.get(k), f"{key}.{k}" if key else k)]
        return [] if a == b or key in ignore else [key]

    return walk({k: v for k, v in saved.items() if k != "environment"},
                {k: v for k, v in now.items() if k != "environment"}, "")


def archive_finished(run: Path) -> Path:
    """Move a finished run's model and summary to ``previous/N/`` before it is extended: nothing is lost."""
    n = 1
    while (run / "previous" / str(n)).exists():
        n += 1
    dest = run / "previous" / str(n)
    dest.mkdir(parents=True)
    for name in ("train_summary.json", "model.safetensors", "model.json", "training_curves.png"):
        if (run / name).exists():
            os.replace(run / name, dest / name)
    return dest


def resolve_run(cfg: RunConfig | None, out: Path, resume: Path | None, run_dir: Path | None, extend: dict,
                env: ClusterEnv, checkpoint_of: Callable[[Path], Path | None]
                ) -> tuple[RunConfig, Path | None, Path | None, bool]:
    """-> (config, run folder or None for a new one, checkpoint to resume from, whether a finished run is extended).

    ``checkpoint_of(run)``: the checkpoint a run folder resumes from, or None (the training engine's
    ``resume_checkpoint``: reading a checkpoint is the engine's business).

    ``resume``: that run exactly as configured, save ``extend`` (``train.max_epochs``/``train.max_time`` values),
    which also continues a finished run. ``run_dir`` (or, in a job, the job's folder): resumed if it holds an
    unfinished run with a checkpoint and the same config (a requeued job), else a new run there. Raises DataError.
    """
    if resume is not None:
        run = Path(resume)
        saved = saved_config(run)
        for key, value in extend.items():
            section, name = key.split(".")
            saved[section][name] = value
        cfg = validate(saved, str(run / "config.yaml"))
        ckpt = checkpoint_of(run)
        if ckpt is None:
            raise DataError(f"{run}: no checkpoints/last.ckpt to resume from")
        if finished(run) and not extend:
            stopped = json.loads((run / "train_summary.json").read_text(encoding="utf-8")).get("stopped_by")
            raise DataError(f"{run}: this run finished (stopped by {stopped}); continue it with --resume {run} "
                            "--max-epochs N or --max-time T")
        return cfg, run, ckpt, finished(run)
    assert cfg is not None, "a new run needs its config"
    if run_dir is None and env.names_run:
        run_dir = job_run_dir(out, cfg.name, env.job_id)
    if run_dir is None or not (Path(run_dir) / "config.yaml").is_file():
        return cfg, run_dir, None, False
    run = Path(run_dir)
    if finished(run):
        raise DataError(f"{run}: holds a finished run; continue it with --resume {run} --max-epochs N or --max-time T")
    ckpt = checkpoint_of(run)
    if ckpt is None:
        return cfg, run, None, False  # stopped before its first checkpoint: start again in the same folder
    diff = differences(saved_config(run), yaml.safe_load(dump_config(cfg)))
    if diff:
        raise DataError(f"{run}: holds an unfinished run configured differently ({diff[0]}); resume it with "
                        f"--resume {run} or choose another --run-dir")
    return cfg, run, ckpt, False


def make_run_dir(run_dir: Path | None, out: Path, name: str, env: ClusterEnv) -> Path:
    """``run_dir`` (made by the creating process, waited for by the others), or a new run folder in ``out``."""
    if run_dir is None:
        return new_run_dir(out, name, env)
    return shared_run_dir(run_dir, env)


_STOPPED = {
    "max_time": "the time budget",
    "max_epochs": "max_epochs",
    "early_stopping": "early stopping (val mIoU stopped improving)",
    "interrupted": "an interruption",
}


def describe_training(summary: dict) -> str:
    """One line of what training did, from ``train_summary.json``'s fields (the final evaluation's may be absent):
    epochs, optimiser steps, seconds of training, why it stopped and the budget it had.

    >>> describe_training({"epochs": 1, "schedule": {"done_steps": 2}, "wall_time_s": 61.4, "stopped_by": "max_time",
    ...                    "budget": {"budget_s": 240.0}})
    'trained 1 epoch (2 optimiser steps) in 61 s, stopped by the time budget (240 s)'
    """
    n, steps = summary.get("epochs"), (summary.get("schedule") or {}).get("done_steps")
    line = f"trained {n} epoch{'' if n == 1 else 's'}"
    if steps is not None:
        line += f" ({steps} optimiser step{'' if steps == 1 else 's'})"
    if summary.get("wall_time_s") is not None:
        line += f" in {summary['wall_time_s']:.0f} s"
    stopped = summary.get("stopped_by")
    if stopped:
        line += f", stopped by {_STOPPED.get(stopped, stopped)}"
        budget = (summary.get("budget") or {}).get("budget_s")
        if stopped == "max_time" and budget:
            line += f" ({budget:.0f} s)"
    return line


def read_training(run: Path | None) -> dict | None:
    """A finished run's ``train_summary.json``, or None (no run folder, an unfinished or unreadable one)."""
    path = run / "train_summary.json" if run is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

"""``droneseg train``: a run folder, the Trainer, and everything written when training ends.

Setup → fit → finish: (1) a new run folder (or the one being resumed) with the resolved config and
the splits; (2) Lightning fit with best/last checkpoints, early stopping, a time budget and our logs;
(3) on rank 0: the best weights as ``model.safetensors`` + ``model.json``, ``training_curves.png``
and ``train_summary.json``. Interrupted runs continue with ``resume``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar, WeightAveraging
from torch.optim.swa_utils import get_ema_avg_fn

from droneseg import __version__
from droneseg.classes import DataError
from droneseg.config import RunConfig, dump_config, validate
from droneseg.data.datamodule import DroneDataModule
from droneseg.data.splits import save_splits
from droneseg.engine.budget import Budget
from droneseg.engine.callbacks import EpochLog, SampleFigures
from droneseg.engine.task import SegmentationTask, parse_duration
from droneseg.io import atomic_write_json, atomic_write_text
from droneseg.plots import read_metrics_csv, training_curves
from droneseg.runs import RUN_DIR_ENV, ModelInfo, global_rank, new_run_dir, save_model

MONITOR = "val/miou"


def _precision(cfg: RunConfig) -> str:
    if cfg.train.precision != "auto":
        return cfg.train.precision
    gpu = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def _budget(cfg: RunConfig, task: SegmentationTask, started: float) -> Budget | None:
    """The whole command's time budget (``max_time``), counted from ``started``."""
    if not cfg.train.max_time:
        return None
    return Budget(started, parse_duration(cfg.train.max_time).total_seconds(), task.plan, cfg.train.accumulate,
                  cfg.train.final_eval, cfg.data.crop**2)


def _trainer(cfg: RunConfig, run: Path, budget: Budget | None) -> pl.Trainer:
    t = cfg.train
    interactive = sys.stderr.isatty()
    callbacks = [
        ModelCheckpoint(dirpath=run / "checkpoints", filename="best", monitor=MONITOR, mode="max", save_top_k=1,
                        save_last=True, auto_insert_metric_name=False, enable_version_counter=False),
        EpochLog(run / "logs" / "metrics.csv", echo=not interactive),
        SampleFigures(run / "samples", t.sample_every, t.samples),
    ]
    if interactive:
        callbacks.append(TQDMProgressBar())
    if t.patience:
        callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", patience=t.patience))
    if budget is not None:
        callbacks.append(budget)
    if t.ema is not None:
        # Lightning's averaging: validation, checkpoints and so the saved model use the averaged weights
        callbacks.append(WeightAveraging(avg_fn=get_ema_avg_fn(t.ema)))
    return pl.Trainer(
        default_root_dir=run,
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        precision=_precision(cfg),
        accumulate_grad_batches=t.accumulate,
        deterministic=t.deterministic,
        callbacks=callbacks,
        logger=False,
        use_distributed_sampler=False,  # EpochSampler shards by rank itself
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        enable_model_summary=False,
        enable_progress_bar=interactive,
    )


def _peak_memory_mb() -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _stopped_by(trainer: pl.Trainer) -> str:
    if trainer.interrupted:
        return "interrupted"
    for cb in trainer.callbacks:
        if isinstance(cb, Budget) and cb.stopped:
            return "max_time"
        if isinstance(cb, EarlyStopping) and cb.stopped_epoch > 0:
            return "early_stopping"
    return "max_epochs"


def _finish(cfg: RunConfig, run: Path, trainer: pl.Trainer, task: SegmentationTask, dm: DroneDataModule,
            budget: Budget | None, started: float) -> None:
    """Best weights → model files, curves, summary. Rank 0 only."""
    ckpt = trainer.checkpoint_callback
    best = Path(ckpt.best_model_path) if ckpt and ckpt.best_model_path else None
    if best and best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        task.load_state_dict(state)
    dataset = {"root": str(Path(cfg.data.root).resolve()), "fingerprint": dm.layout.fingerprint(),
               "images": len(dm.layout.samples)}
    info = ModelInfo(model=cfg.model.model_dump(mode="json"), scheme=dm.scheme.to_dict(), long_side=cfg.data.long_side,
                     crop=cfg.data.crop, image_filter=cfg.data.image_filter,
                     inference=cfg.inference.model_dump(mode="json"), dataset=dataset,
                     extra={"run": run.name, "best_checkpoint": best.name if best else None})
    save_model(run, task.net, info)
    rows = read_metrics_csv(run / "logs" / "metrics.csv") if (run / "logs" / "metrics.csv").exists() else []
    if rows:
        training_curves(rows, run / "training_curves.png")
    rates = [r["images_per_s"] for r in rows if r.get("images_per_s")]
    summary = {
        "epochs": trainer.current_epoch,
        "stopped_by": _stopped_by(trainer),
        "best_epoch": next((int(r["epoch"]) for r in rows if r.get("val_miou") == ckpt.best_model_score), None)
        if ckpt and ckpt.best_model_score is not None else None,
        "best_val_miou_working_size": float(ckpt.best_model_score) if ckpt and ckpt.best_model_score is not None else None,
        "wall_time_s": rows[-1]["elapsed_s"] if rows else None,
        "images_per_s": sum(rates) / len(rates) if rates else None,
        "train_images": len(dm.splits["train"]),
        "val_images": len(dm.splits["val"]),
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
        "channels_last": task.memory_format is torch.channels_last,
        "ema": cfg.train.ema,
        "device": str(trainer.strategy.root_device),
        "class_weights": task.hparams.class_weights,
        "schedule": {"name": cfg.train.schedule, "planned_steps": task.plan.total, "done_steps": trainer.global_step,
                     "final_lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None},
        **({"budget": budget.summary(trainer)} if budget is not None else {}),
        **_peak_memory_mb(),
    }
    if cfg.train.final_eval:
        from droneseg.evaluate import evaluate  # the same code path as `droneseg evaluate`: one truth

        t_eval = time.monotonic()
        folder = evaluate(run, cfg.data.root, split="val", figures=2 * cfg.train.samples,
                          device=str(trainer.strategy.root_device), cache_dir=cfg.data.cache_dir,
                          progress=sys.stderr.isatty())
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        summary["val_miou_native"] = metrics["miou"]
        summary["eval_report"] = str((folder / "report.html").relative_to(run))
        summary["final_eval_s"] = round(time.monotonic() - t_eval, 1)
    summary["command_s"] = round(time.monotonic() - started, 1)  # this session, from the command's start
    atomic_write_json(run / "train_summary.json", summary)


def _environment() -> dict:
    return {"droneseg": __version__, "torch": str(torch.__version__), "lightning": str(pl.__version__),
            "python": sys.version.split()[0], "argv": sys.argv}


def train(cfg: RunConfig, out: Path | None = None, resume: Path | None = None, started: float | None = None) -> Path:
    """Train (or resume) a run; returns the run folder.

    ``started``: ``time.monotonic()`` when the command began (default: now); ``train.max_time`` counts from there
    and covers the cache, training and the final evaluation.
    """
    started = time.monotonic() if started is None else started
    if resume is not None:
        run = Path(resume)
        ckpt = run / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise DataError(f"{run}: no checkpoints/last.ckpt to resume from")
        if (run / "train_summary.json").is_file():
            stopped = json.loads((run / "train_summary.json").read_text(encoding="utf-8")).get("stopped_by")
            raise DataError(f"{run}: this run finished (stopped by {stopped}); resume continues interrupted runs only")
        saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        saved.pop("environment", None)
        cfg = validate(saved, str(run / "config.yaml"))
    if not cfg.data.root:
        raise DataError("no dataset: pass --data DIR (or set data.root)")
    # Lightning's start-up banners (accelerator, tips) are noise on the console; our own summary follows
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 on torch 2.14, not ours
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    on_gpu = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
    dm = DroneDataModule(cfg.data, Path(cfg.data.root), seed=cfg.train.seed, on_gpu=on_gpu)
    if not dm.splits["val"]:
        raise DataError(f"{cfg.data.root}: the val split is empty; training needs one for early stopping and the best model")
    if resume is None:
        run = new_run_dir(out or Path("runs"), cfg.name)
        os.environ[RUN_DIR_ENV] = str(run)  # processes Lightning starts for more devices reuse this folder
        if global_rank() == 0:
            atomic_write_text(run / "config.yaml", dump_config(cfg) + yaml.safe_dump({"environment": _environment()}))
            save_splits(dm.splits, run / "splits")
    task = SegmentationTask(cfg.model.model_dump(mode="json"), cfg.loss.model_dump(mode="json"),
                            cfg.train.model_dump(mode="json"), dm.scheme.to_dict(),
                            inference=cfg.inference.model_dump(mode="json"))
    budget = _budget(cfg, task, started)
    trainer = _trainer(cfg, run, budget)
    start = time.monotonic()
    trainer.fit(task, datamodule=dm, ckpt_path=str(run / "checkpoints" / "last.ckpt") if resume else None)
    if trainer.is_global_zero:
        _finish(cfg, run, trainer, task, dm, budget, started)
        print(f"trained {trainer.current_epoch} epochs in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return run

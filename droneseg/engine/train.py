"""``droneseg train``: a run folder, the Trainer, and everything written when training ends.

Setup → fit → finish: (1) a new run folder (or the one being resumed) with the resolved config and
the splits; (2) Lightning fit with best/last checkpoints, early stopping, a time budget and our logs;
(3) on rank 0: the best weights as ``model.safetensors`` + ``model.json``, ``training_curves.png``
and ``train_summary.json``. Interrupted runs continue with ``resume``.
"""

from __future__ import annotations

import json
import logging
import math
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
from lightning.pytorch.loggers import TensorBoardLogger
from torch.optim.swa_utils import get_ema_avg_fn

from droneseg import __version__
from droneseg.artifact import DatasetIdentity, ModelInfo, save_model
from droneseg.chance import near_chance
from droneseg.classes import DataError
from droneseg.cluster import ClusterEnv, cpu_threads, detect, prepare
from droneseg.config import RunConfig, dump_config, parse_duration, resolve_paths
from droneseg.data.datamodule import DroneDataModule
from droneseg.data.splits import save_splits
from droneseg.card import write_model_card
from droneseg.engine.budget import EVAL_FIXED_S, MIN_STEPS, Budget, Costs, measure_costs, val_pixels
from droneseg.engine.callbacks import EpochLog, SampleFigures
from droneseg.engine.checkpoints import AtomicCheckpointIO, load_checkpoint_file
from droneseg.engine.requeue import Requeue, StopTraining, interrupt_at_step, listen, resume_checkpoint, slurm_plugin
from droneseg.engine.task import SegmentationTask
from droneseg.errors import Diverged, Interrupted
from droneseg.files import atomic_write_json, atomic_write_text
from droneseg.images import photo_size, working_size
from droneseg.report.plots import read_metrics_csv, training_curves
from droneseg.runs import RUN_DIR_ENV, archive_finished, describe_training, is_creator, make_run_dir, resolve_run

MONITOR = "val/miou"


def _precision(cfg: RunConfig) -> str:
    if cfg.train.precision != "auto":
        return cfg.train.precision
    gpu = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def _budget(cfg: RunConfig, task: SegmentationTask, started: float, carry_spent: bool = True,
            eval_fixed_s: float = EVAL_FIXED_S) -> Budget | None:
    """The whole command's time budget (``max_time``), counted from ``started``; a resumed run has what its
    earlier sessions left of it (``carry_spent``), an extended one the whole of it. ``eval_fixed_s``: the final
    evaluation's cost besides the network."""
    if not cfg.train.max_time:
        return None
    return Budget(started, parse_duration(cfg.train.max_time).total_seconds(), task.plan, cfg.train.accumulate,
                  cfg.train.final_eval, cfg.data.crop**2, carry_spent=carry_spent, eval_fixed_s=eval_fixed_s)


def _check_budget(cfg: RunConfig, task: SegmentationTask, dm: DroneDataModule, env: ClusterEnv, started: float,
                  on_gpu: bool, eval_fixed_s: float = EVAL_FIXED_S) -> Costs | None:
    """A new single-process run with ``max_time``: build the cache, measure what training costs here
    (:func:`~droneseg.engine.budget.measure_costs`) and refuse a budget that cannot buy MIN_STEPS optimiser steps,
    one validation and the final evaluation, saying what it would take. Under several processes (DDP) each rank
    would measure its own machine: the Budget callback alone keeps the deadline there."""
    if not cfg.train.max_time or env.world_size > 1 or cfg.train.num_nodes > 1 or (
            on_gpu and torch.cuda.device_count() > 1 and cfg.train.devices not in (1, "1")):
        return None
    seconds = parse_duration(cfg.train.max_time).total_seconds()
    dm.prepare_data()  # the cache: part of the budget, kept for the next command whatever happens here
    dm.setup("fit")
    device = torch.device("cuda", env.local_rank) if on_gpu else torch.device("cpu")
    layout = cfg.train.channels_last if cfg.train.channels_last != "auto" else not on_gpu
    costs = measure_costs(task.net, cfg.data.batch_size, cfg.data.crop, val_pixels(dm.entries["val"]),
                          cfg.train.accumulate, cfg.train.final_eval, device, bool(layout),
                          spent_s=time.monotonic() - started, eval_fixed_s=eval_fixed_s)
    if costs.needed() > seconds:
        parts = [f"the dataset and cache {costs.spent_s:.0f} s", f"{MIN_STEPS} optimiser steps "
                 f"{MIN_STEPS * costs.step_s:.0f} s", f"one validation of {len(dm.entries['val'])} images "
                 f"{costs.val_s:.0f} s"] + ([f"the final evaluation {costs.eval_s:.0f} s"] if costs.eval_s else [])
        raise DataError(f"--max-time {cfg.train.max_time} (train.max_time): too short to train, validate once and evaluate on this "
                        f"machine now ({', '.join(parts)}, measured): give at least --max-time "
                        f"{math.ceil(costs.needed() / 60)}m, or a lighter preset (the cache is kept: the next run "
                        "starts faster)")
    return costs


def _trainer(cfg: RunConfig, run: Path, budget: Budget | None, requeue: Requeue, env: ClusterEnv) -> pl.Trainer:
    t = cfg.train
    interactive = sys.stderr.isatty()
    callbacks = [
        ModelCheckpoint(dirpath=run / "checkpoints", filename="best", monitor=MONITOR, mode="max", save_top_k=1,
                        save_last=False, auto_insert_metric_name=False, enable_version_counter=False),
        # last.ckpt at every epoch end: Lightning's save_last writes it only when a best checkpoint is written, so a
        # kill after epochs without improvement would lose all of them (trainer.checkpoint_callback stays "best")
        ModelCheckpoint(dirpath=run / "checkpoints", filename="last", monitor=None, save_top_k=1,
                        auto_insert_metric_name=False, enable_version_counter=False),
        EpochLog(run / "logs" / "metrics.csv", echo=not interactive),
        SampleFigures(run / "samples", t.sample_every, t.samples),
    ]
    if interactive:
        callbacks.append(TQDMProgressBar())
    if t.patience:
        callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", patience=t.patience))
    if budget is not None:
        callbacks.append(budget)
    callbacks.append(requeue)
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
        plugins=[AtomicCheckpointIO(), *slurm_plugin(env)],
        logger=TensorBoardLogger(run, name="logs", version="tensorboard", default_hp_metric=False),
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


def working_gsd(gsd: float | None, photos: list[Path], long_side: int | None) -> float | None:
    """Metres per working pixel: each photo's GSD (``gsd``, else its geotransform's when every photo is a
    georeferenced chip in a metric CRS) times its native long side over its working long side (photos smaller than
    ``long_side`` are not resized). None when the GSD is unknown. Raises DataError when the photos' working GSDs
    differ by more than 1 % (one GSD could not describe the scale the model sees), naming two of them; chips of
    different sizes that are not resized (the ragged edge chips of a tiled orthomosaic) agree."""
    natives = [gsd] * len(photos) if gsd is not None else _chip_gsds(photos)
    if natives is None or not photos:
        return None
    seen: dict[float, Path] = {}
    for photo, native in zip(photos, natives):
        size = photo_size(photo)
        seen.setdefault(native * max(size) / max(working_size(size, long_side)), photo)
    low, high = min(seen), max(seen)
    if high > 1.01 * low:
        raise DataError(f"data.gsd: the photos meet the network at different scales ({seen[low]}: {low:.4g} m/px, "
                        f"{seen[high]}: {high:.4g} m/px at long side {long_side}); train on photos of one size, set "
                        "data.long_side: null to keep every photo at its own size, or leave data.gsd unset")
    return sum(seen) / len(seen) if high > low else low


def _chip_gsds(photos: list[Path]) -> list[float] | None:
    """Metres per pixel of each photo from its geotransform, when every photo is a georeferenced chip in a metric
    projected CRS and the geo extra is installed; else None (the GSD is unknown)."""
    from droneseg.geo import is_ortho

    if not photos or not all(is_ortho(p) for p in photos):
        return None
    try:
        import rasterio
    except ImportError:
        return None
    from droneseg.geo.survey import is_metric

    out = []
    for p in photos:
        with rasterio.open(p) as ds:
            if ds.crs is None or not is_metric(ds.crs.to_wkt()):
                return None
            t = ds.transform
            out.append(abs(t.a * t.e - t.b * t.d) ** 0.5)  # metres: the CRS's unit is the metre
    return out


def _save_model(cfg: RunConfig, run: Path, trainer: pl.Trainer, task: SegmentationTask,
                dm: DroneDataModule) -> Path | None:
    """The best checkpoint's weights as ``model.safetensors`` + ``model.json``; -> the checkpoint. Rank 0 only."""
    ckpt = trainer.checkpoint_callback
    best = Path(ckpt.best_model_path) if ckpt and ckpt.best_model_path else None
    if best and best.is_file():
        state = load_checkpoint_file(best)["state_dict"]
        task.load_state_dict(state)
    dataset = DatasetIdentity(root=str(Path(dm.root).resolve()), fingerprint=dm.layout.fingerprint(),
                              images=len(dm.layout.samples))
    info = ModelInfo(model=cfg.model, scheme=dm.scheme, long_side=cfg.data.long_side, crop=cfg.data.crop,
                     image_filter=cfg.data.image_filter, inference=cfg.inference, dataset=dataset,
                     gsd=dm.layout.gsd if dm.layout.plan is not None else
                     working_gsd(cfg.data.gsd, [s.image for s in dm.layout.samples], cfg.data.long_side),
                     extra={"run": run.name, "best_checkpoint": best.name if best else None,
                            **({"init": init} if (init := _init_record(run)) else {}),
                            **({"survey_grid": dm.layout.plan.grid()} if dm.layout.plan is not None else {})})
    save_model(run, task.net, info)
    return best


def _final_eval(cfg: RunConfig, run: Path, trainer: pl.Trainer, training: dict) -> dict:
    """``droneseg evaluate`` of the saved model on val, each rank its shard (every rank calls it)."""
    from droneseg.evaluate import evaluate  # the same code path as `droneseg evaluate`: one truth

    t_eval = time.monotonic()
    folder = evaluate(run, cfg.data.source(), split="val", figures=2 * cfg.train.samples,
                      device=str(trainer.strategy.root_device), cache_dir=cfg.data.cache_dir,
                      progress=sys.stderr.isatty(), training=training)
    if not trainer.is_global_zero:
        return {}
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return {"val_miou_native": metrics["miou"], "chance_miou": metrics.get("chance_miou"),
            # the mean over val photos of each photo's mIoU (classes in its truth): what many papers report
            "val_per_image_miou": (metrics.get("per_image") or {}).get("per_image_miou"),
            "eval_report": str((folder / "report.html").relative_to(run)),
            "final_eval_s": round(time.monotonic() - t_eval, 1)}


def _summary(cfg: RunConfig, run: Path, trainer: pl.Trainer, task: SegmentationTask, dm: DroneDataModule,
             budget: Budget | None) -> dict:
    """``train_summary.json`` less the final evaluation; also draws the training curves. Rank 0 only."""
    ckpt = trainer.checkpoint_callback
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
    return summary


def _environment(init=None) -> dict:
    """``config.yaml``'s ``environment``: versions, the command line and, for a fine-tuned run, what it took from
    its parent (an :class:`~droneseg.engine.init.InitReport`: the parent's name and weights fingerprint)."""
    return {"droneseg": __version__, "torch": str(torch.__version__), "lightning": str(pl.__version__),
            "python": sys.version.split()[0], "argv": sys.argv, **({"init": init.as_dict()} if init else {})}


def _init_record(run: Path) -> dict | None:
    """What a fine-tuned run took from its parent, as its ``config.yaml`` recorded it at the run's start."""
    try:
        return (yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}).get(
            "environment", {}).get("init")
    except OSError:
        return None


def _say_how_it_ended(summary: dict) -> None:
    """One line on stderr of what training did (epochs, optimiser steps, why it stopped, the score) and a warning
    when the model is near chance: a run that stopped early must not look like a finished one."""
    line = describe_training(summary)
    if summary.get("val_miou_native") is not None:
        line += (f"; val mIoU {summary['val_miou_native']:.3f} at native resolution ({summary['val_images']} images"
                 + (f"; per-image mIoU {summary['val_per_image_miou']:.3f}"
                    if summary.get("val_per_image_miou") is not None else "") + ")")
    elif summary.get("best_val_miou_working_size") is not None:
        line += f"; best val mIoU {summary['best_val_miou_working_size']:.3f} at working size"
    print(line, file=sys.stderr)
    flag = near_chance({"miou": summary.get("val_miou_native"), "chance_miou": summary.get("chance_miou")})
    if flag:
        print(f"warning: {flag}", file=sys.stderr)


class Requeued(Exception):
    """Training stopped on the scheduler's walltime signal with ``last.ckpt`` saved; ``exit_code`` ends the command
    (99 on OAR, which resubmits an idempotent job on it; 0 on SLURM, which was asked to requeue)."""

    def __init__(self, run: Path, exit_code: int) -> None:
        super().__init__(f"{run}: saved at the walltime signal; the job resumes it when it starts again")
        self.run, self.exit_code = run, exit_code


def train(cfg: RunConfig | None, out: Path | None = None, resume: Path | None = None, started: float | None = None,
          run_dir: Path | None = None, extend: dict | None = None) -> Path:
    """Train, resume or extend a run; returns the run folder.

    ``started``: ``time.monotonic()`` when the command began (default: now); ``train.max_time`` counts from there
    and covers the cache, training and the final evaluation. ``resume``: an interrupted run (with ``extend``, e.g.
    ``{"train.max_epochs": 40}``, a finished one too). ``run_dir``: the run folder itself, resumed if it holds
    this run unfinished (how a requeued job finds its run). Raises :class:`Requeued` when the scheduler's
    walltime signal stopped training (``last.ckpt`` saved), :class:`~droneseg.errors.Interrupted` after Ctrl-C
    (``last.ckpt`` saved), DataError for unusable input.
    """
    started = time.monotonic() if started is None else started
    out = Path(out or "runs")
    env = detect()
    listen(env)  # from the first second: a walltime signal during the cache build is not lost
    extend = {k: v for k, v in (extend or {}).items() if v is not None}
    parent = None
    if cfg is not None:
        cfg = resolve_paths(cfg)  # config.yaml repeats the run from any folder
        if cfg.train.init:  # a run from a trained model: its network, not the preset's (weights: below)
            from droneseg.engine.init import Parent

            parent = Parent.open(cfg.train.init)
            if parent.info.model.in_channels != cfg.model.in_channels:
                raise DataError(f"--init {parent.folder}: its model takes {parent.info.model.in_channels} bands, "
                                f"this run's model {cfg.model.in_channels}")
            cfg = cfg.model_copy(update={"model": parent.info.model.model_copy(update={"weights": None})})
    cfg, run, ckpt, extending = resolve_run(cfg, out, resume, run_dir, extend, env, resume_checkpoint)
    if not cfg.data.root and not cfg.data.images:
        raise DataError("no dataset: pass --data DIR or --images DIR --masks DIR (or set data.root)")
    prepare(env, cfg.train.num_nodes)
    # Lightning's start-up banners (accelerator, tips) are noise on the console; our own summary follows
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 on torch 2.14, not ours
    # short epochs log at their end anyway (metrics.csv); the per-step TensorBoard points just come less often
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # a resume writes into its own run
    threads = cfg.train.threads or cpu_threads(env)
    if threads:
        torch.set_num_threads(threads)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    on_gpu = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
    # a resumed run keeps its own splits, whatever the dataset's folder says now
    own_splits = run / "splits" if ckpt is not None and (run / "splits" / "train.txt").is_file() else None
    t_layout = time.monotonic()
    dm = DroneDataModule(cfg.data, seed=cfg.train.seed, on_gpu=on_gpu, split_dir=own_splits,
                         min_buffer_px=max(cfg.data.crop, cfg.inference.tile))
    # the final evaluation finds the data again: a survey is re-planned (rasters opened, labels read), photos are
    # listed in no time
    eval_fixed_s = EVAL_FIXED_S + (time.monotonic() - t_layout if dm.layout.kind == "survey" else 0.0)
    if not dm.splits["val"]:
        raise DataError(f"{dm.root}: the val split is empty; training needs one for early stopping and the best model")
    if dm.layout.kind == "survey":  # blocks are cut at the survey's working GSD: no resizing after
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"long_side": None, "gsd": dm.layout.gsd})})
    else:
        working_gsd(cfg.data.gsd, [s.image for s in dm.layout.samples], cfg.data.long_side)  # refused now
    init_report = None
    task = SegmentationTask(cfg.model.model_dump(mode="json"), cfg.loss.model_dump(mode="json"),
                            cfg.train.model_dump(mode="json"), dm.scheme.to_dict(),
                            inference=cfg.inference.model_dump(mode="json"))
    if parent is not None and ckpt is None:
        from droneseg.engine.init import load_parent

        init_report = load_parent(task.net, dm.scheme, parent)
        print(init_report.line(), file=sys.stderr)
    # before any file is made
    costs = _check_budget(cfg, task, dm, env, started, on_gpu, eval_fixed_s) if ckpt is None else None
    if ckpt is None:
        run = make_run_dir(run, out, cfg.name, env)
        os.environ[RUN_DIR_ENV] = str(run)  # processes Lightning starts for more devices reuse this folder
        if is_creator(env):
            atomic_write_text(run / "config.yaml", dump_config(cfg) + yaml.safe_dump({"environment": _environment(
                init_report)}))
            save_splits(dm.splits, run / "splits")
            if dm.layout.plan is not None:
                from droneseg.geo.survey import block_map, write_split_layer

                write_split_layer(dm.layout.plan, run / "splits" / "blocks.gpkg")
                block_map(dm.layout.plan, run / "splits" / "blocks.png")
    else:
        os.environ[RUN_DIR_ENV] = str(run)
        if extending and is_creator(env):
            inherited = _init_record(run)  # an extended fine-tuned run still descends from its parent
            archive_finished(run)
            environment = {**_environment(), **({"init": inherited} if inherited else {})}
            atomic_write_text(run / "config.yaml", dump_config(cfg) + yaml.safe_dump({"environment": environment}))
    budget = _budget(cfg, task, started, carry_spent=not extending, eval_fixed_s=eval_fixed_s)
    if budget is not None:
        budget.costs = costs
    requeue = Requeue(env, run / "checkpoints" / "last.ckpt")  # the job's walltime signal and Ctrl-C
    trainer = _trainer(cfg, run, budget, requeue, env)
    with interrupt_at_step():
        try:
            trainer.fit(task, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
        except StopTraining:
            pass  # saved at a step boundary on the walltime signal or Ctrl-C: below
        except Diverged as exc:
            raise Diverged(f"{run}: {exc}") from None
    if requeue.requeued:
        raise Requeued(run, env.requeue_exit or 0)
    if requeue.interrupted:
        raise Interrupted(f"{run}: interrupted (Ctrl-C); saved checkpoints/last.ckpt at step {trainer.global_step}; "
                          f"continue with: droneseg train --resume {run}")
    best = _save_model(cfg, run, trainer, task, dm) if trainer.is_global_zero else None
    trainer.strategy.barrier("model saved")
    summary = _summary(cfg, run, trainer, task, dm, budget) if trainer.is_global_zero else {}
    if cfg.train.final_eval:
        summary.update(_final_eval(cfg, run, trainer, summary))
    if trainer.is_global_zero:
        summary["best_checkpoint"] = best.name if best else None
        summary["command_s"] = round(time.monotonic() - started, 1)  # this session, from the command's start
        atomic_write_json(run / "train_summary.json", summary)  # its presence marks the run finished
        write_model_card(run)  # from the files just written: model.json, the summary, the final evaluation
        _say_how_it_ended(summary)
    return run

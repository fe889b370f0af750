"""Callbacks that write the run folder's logs and figures (rank 0 only).

* :class:`EpochLog` appends one row per epoch to ``logs/metrics.csv`` (resume-safe: rows of epochs
  that are trained again are dropped first) and shows images/s in the progress bar.
* :class:`SampleFigures` writes ``samples/epoch_NNN.png`` every N epochs: val photos, ground truth, prediction.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np

from droneseg.files import atomic_write_text
from droneseg.report.plots import prediction_panels

# images_per_s counts training steps only; epoch_s includes validation
COLUMNS = ("epoch", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "val_images", "lr", "epoch_s",
           "images_per_s", "elapsed_s")


def _or_blank(value: float | None) -> float | str:
    return "" if value is None else value


class EpochLog(pl.Callback):
    def __init__(self, path: Path, echo: bool = False) -> None:
        self.path = Path(path)
        self.echo = echo  # one line per epoch on stderr, for logs without a progress bar
        self.elapsed_before = 0.0  # wall time of earlier sessions of this run (resume)
        self._fit_start = self._epoch_start = self._train_end = 0.0
        self._images = 0
        self._lr = 0.0

    def state_dict(self) -> dict:
        return {"elapsed": self.elapsed_before + (time.monotonic() - self._fit_start if self._fit_start else 0.0)}

    def load_state_dict(self, state: dict) -> None:
        self.elapsed_before = float(state.get("elapsed", 0.0))

    def _rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as fh:
            return list(csv.DictReader(fh))

    def _write(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.monotonic()

    def _confusions(self, trainer: pl.Trainer, last_val: dict) -> None:
        """``logs/val_confusion.json``: each epoch's pooled val confusion matrix (rows truth, columns prediction,
        working size) and the number of images it counts, summed over every rank."""
        path = self.path.with_name("val_confusion.json")
        epochs = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        epochs = {k: v for k, v in epochs.items() if int(k) < trainer.current_epoch}  # a resume trains again
        if last_val.get("epoch") == trainer.current_epoch:
            epochs[str(trainer.current_epoch)] = {"images": last_val["images"], "confusion": last_val["confusion"]}
        atomic_write_text(path, json.dumps(epochs, separators=(",", ":")) + "\n")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After a resume's state is restored: rows of epochs about to be trained again are dropped."""
        if trainer.is_global_zero:
            rows = [r for r in self._rows() if int(r["epoch"]) < trainer.current_epoch]
            self._write(rows)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._train_end = time.monotonic()
        self._images = 0
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]  # the rate this epoch trains with

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._images += batch[0].shape[0] * trainer.world_size
        self._train_end = time.monotonic()
        rate = self._images / max(self._train_end - self._epoch_start, 1e-9)
        pl_module.log("img/s", rate, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        m = trainer.callback_metrics  # every rank: computing the epoch's metrics may reduce them across ranks
        if not trainer.is_global_zero:
            return
        seconds = time.monotonic() - self._epoch_start
        validated = pl_module.last_val.get("epoch") == trainer.current_epoch

        def get(key: str) -> float | str:
            return float(m[key]) if key in m else ""

        row = {
            "epoch": trainer.current_epoch,
            "train_loss": _or_blank(pl_module.epoch_train_loss()) if hasattr(pl_module, "epoch_train_loss")
            else get("train/loss_epoch"),
            "val_loss": get("val/loss"),
            "val_miou": get("val/miou"),
            "val_pixel_accuracy": get("val/pixel_accuracy"),
            "val_images": pl_module.last_val["images"] if validated else "",
            "lr": self._lr,
            "epoch_s": round(seconds, 3),
            "images_per_s": round(self._images / max(self._train_end - self._epoch_start, 1e-9), 3),
            "elapsed_s": round(self.state_dict()["elapsed"], 3),
        }
        self._write(self._rows() + [row])
        self._confusions(trainer, pl_module.last_val)
        if self.echo:
            def f(key: str, fmt: str) -> str:
                return "-" if row[key] == "" else format(row[key], fmt)

            print(f"epoch {row['epoch'] + 1}/{trainer.max_epochs}  train_loss {f('train_loss', '.3f')}  "
                  f"val_loss {f('val_loss', '.3f')}  val_mIoU {f('val_miou', '.3f')}  "
                  f"{row['images_per_s']:.1f} img/s  {seconds:.1f} s", file=sys.stderr, flush=True)


class SampleFigures(pl.Callback):
    def __init__(self, folder: Path, every: int, count: int) -> None:
        self.folder, self.every, self.count = Path(folder), every, count

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = epoch + 1 >= (trainer.max_epochs or 0)
        if not trainer.is_global_zero or self.every <= 0 or trainer.sanity_checking:
            return
        if (epoch + 1) % self.every and not last:
            return
        dm = trainer.datamodule
        rows = []
        tiler = pl_module.tiler()  # the path validation, evaluate and predict take
        for entry in dm.entries["val"][: self.count]:
            image, mask = entry.load()
            target = dm.scheme.encode(mask)
            luma = pl_module.inference_cfg.luma_threshold if dm.scheme.is_luma else None
            pred = tiler.labels(image, target.shape, luma=luma)
            rows.append((entry.id, np.asarray(image), target, pred))
        if rows:
            prediction_panels(rows, dm.scheme, self.folder / f"epoch_{epoch:03d}.png", title=f"epoch {epoch}")

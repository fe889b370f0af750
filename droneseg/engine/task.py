"""The LightningModule: a thin system around a plain ``nn.Module`` net, a loss and metrics.

Contract
--------
Batches are ``(image uint8 (B, 3, h, w), target int64 (B, h, w))``; the net sees ``image / 255``.
Training steps run the net on crops; validation runs it through :class:`~droneseg.tiler.Tiler` with the run's
inference settings, the path ``evaluate`` and ``predict`` take, over whole working-size images.
Logged per epoch: ``train/loss`` (and each loss term), ``val/loss`` (each band of tiled logits' loss,
averaged with its valid pixels as weights: exact for CE and focal, close for Dice and Lovász), ``val/miou``
(pooled over the val split at working size), ``val/pixel_accuracy``, ``lr``. Everything in ``hparams`` is
plain data (the model, loss, train and inference configs and the scheme as dicts, rebuilt into their typed
objects here), so checkpoints load with ``weights_only=True``, without unpickling our classes.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.accelerators import CPUAccelerator

from droneseg.config import TrainConfig
from droneseg.engine.budget import StepPlan, lr_factor
from droneseg.errors import Diverged
from droneseg.losses import LossConfig, build_loss, class_weights_from_counts
from droneseg.metrics import SegmentationMetrics, image_confusion
from droneseg.models import ModelConfig, build_model
from droneseg.schemes import LabelScheme
from droneseg.session import net_session
from droneseg.tiler import InferenceConfig, Tiler


class SegmentationTask(pl.LightningModule):
    def __init__(self, model: dict, loss: dict, train: dict, scheme: dict, class_weights: list[float] | None = None,
                 inference: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = ModelConfig.model_validate(model)
        self.loss_cfg = LossConfig.model_validate(loss)
        self.train_cfg = TrainConfig.model_validate(train)
        self.inference_cfg = InferenceConfig.model_validate(inference or {})
        self.scheme = LabelScheme.from_dict(scheme)
        self.plan = StepPlan(total=0)  # the optimiser steps the schedule spans; a Budget re-plans it
        self.memory_format = torch.contiguous_format  # set_memory_format changes it
        self.configure_models()
        self.configure_losses(class_weights)
        self.configure_metrics()

    def configure_models(self) -> None:
        self.net = build_model(self.model_cfg, self.scheme.num_classes)

    def configure_losses(self, class_weights: list[float] | None) -> None:
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.criterion = build_loss(self.loss_cfg, self.scheme.ignore_index, weights)

    def configure_metrics(self) -> None:
        self.val_metrics = SegmentationMetrics.from_scheme(self.scheme)
        # weighted means whose sums torchmetrics adds up across ranks: exact however the val split is sharded
        names = ["loss", *(f"loss_{n}" for n in self.loss_cfg.terms if len(self.loss_cfg.terms) > 1)]
        self.val_losses = torchmetrics.MetricCollection({n: torchmetrics.MeanMetric() for n in names})
        self.val_images = torchmetrics.SumMetric()
        self.last_val: dict = {}  # the latest validation's pooled confusion matrix and image count (for the log)
        # this rank's epoch train loss as (weighted sum, weight), saved in checkpoints: an epoch resumed mid-way
        # (requeue, Ctrl-C) reports the mean over all its batches, as if never interrupted
        self._train_sum, self._train_n, self._train_epoch = 0.0, 0.0, -1
        self._restored_epoch: int | None = None
        self._release_step: int | None = None  # with train.freeze: the step the encoder is released at

    def setup(self, stage: str) -> None:
        """Class weights need the cached training masks, which exist only once the DataModule is set up; the memory
        layout needs the trainer's accelerator. Both come before the optimiser exists."""
        self.set_memory_format(self.channels_last())
        if self.train_cfg.compile and not getattr(self, "_compiled", False):
            self.net.compile()  # nn.Module.compile: the state_dict keeps its names
            self._compiled = True
        dm = getattr(self.trainer, "datamodule", None)
        if self.hparams.class_weights is None and self.loss_cfg.class_weights != "none" and dm is not None:
            weights = class_weights_from_counts(dm.train_class_counts(), self.loss_cfg.class_weights)
            self.hparams.class_weights = [float(w) for w in weights]
            self.configure_losses(self.hparams.class_weights)

    def set_memory_format(self, channels_last: bool) -> None:
        """Weights and inputs in NHWC (``channels_last``) or NCHW layout; the values are the same either way."""
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)

    def channels_last(self) -> bool:
        """Whether training runs the net in NHWC layout (``train.channels_last``; auto: on CPU only)."""
        setting = self.train_cfg.channels_last
        if setting != "auto":
            return bool(setting)
        return self._trainer is not None and isinstance(self._trainer.accelerator, CPUAccelerator)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 or [0, 1] float -> (B, K, H, W) logits (in the net's memory layout)."""
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image
        if self.memory_format is torch.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def tiler(self) -> Tiler:
        """The tiler every whole photo goes through (validation, sample figures), on this module's device: the
        model session's, as in evaluate and predict."""
        return net_session(self.net, self.scheme, self.inference_cfg, self.device).tiler()

    def _shared_step(self, logits: torch.Tensor, target: torch.Tensor, stage: str, weight: float,
                     metrics: bool = True) -> torch.Tensor:
        """Loss of (B, K, h, w) logits against (B, h, w) targets; logged with ``weight`` (images or pixels)."""
        loss, parts = self.criterion(logits, target)
        values = {"loss": loss.detach(), **({f"loss_{n}": v for n, v in parts.items()} if len(parts) > 1 else {})}
        if stage == "val":
            for name, value in values.items():
                self.val_losses[name].update(value, weight)
                self.log(f"val/{name}", self.val_losses[name], on_step=False, on_epoch=True, prog_bar=name == "loss")
            if metrics:
                self.val_metrics.update(logits.detach(), target)
            return loss
        # training: the total also per step, so never synced (a collective per step); the terms once per epoch
        self._train_sum = self._train_sum + values["loss"].double() * weight  # a device tensor: no sync per step
        self._train_n += weight
        for name, value in values.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", on_step=name == "loss", on_epoch=True,
                     batch_size=weight, sync_dist=name != "loss")
        return loss

    def frozen(self) -> bool:
        """Whether ``train.freeze`` holds the encoder fixed at this step: the first ``freeze_share`` of the optimiser
        steps planned when training starts (fixed then: the budget's later re-plans never freeze it again)."""
        if self.train_cfg.freeze != "encoder":
            return False
        if self._release_step is None:
            total = self.plan.total or int(self.trainer.estimated_stepping_batches)
            self._release_step = math.ceil(self.train_cfg.freeze_share * max(1, total))
        return self.global_step < self._release_step

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """A frozen encoder runs in eval mode: its BatchNorm statistics stay the parent's (or ImageNet's), which a
        few photos' batches would otherwise drag about. Lightning sets train mode at every epoch and after each
        validation, so this is said at every batch."""
        if self.train_cfg.freeze == "encoder":
            self.net.encoder.train(not self.frozen())

    def on_before_optimizer_step(self, optimizer) -> None:
        """A frozen encoder's gradients are dropped before the step, so that AdamW moves neither its weights nor
        their moments (nor decays them). Unlike ``requires_grad``, this keeps every rank's DDP buckets as built."""
        if self.frozen():
            for p in self.net.encoder.parameters():
                p.grad = None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        image, target = batch
        loss = self._shared_step(self(image), target, "train", image.shape[0])
        self._stop_if_diverged(loss, batch_idx)
        return loss

    def _stop_if_diverged(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Raise :class:`Diverged` before a NaN or infinite loss reaches the weights (every rank agrees first, so
        none waits in an all-reduce that the others left)."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="max")
        if bool(bad):
            raise Diverged(f"the training loss became {float(loss.detach()):g} at epoch {self.current_epoch}, step "
                           f"{self.trainer.global_step} (batch {batch_idx} of the epoch); stopped before it reached "
                           "the weights, checkpoints/last.ckpt holds the last epoch end: lower train.lr, use "
                           "train.precision=32, or check the data")

    def validation_step(self, batch, batch_idx: int) -> None:
        """Whole working-size images through the tiler; loss and metrics band by band (bounded memory).

        Each band's loss is weighted by what its mean is taken over: its valid pixels, or with class weights the
        sum of their weights, so CE and focal average exactly as over the whole image. The luma scheme is scored
        on the labels the tiler thresholds at each map's own statistic, as evaluate and predict label it.
        """
        image, target = batch
        tiler = self.tiler()
        weights = self.criterion.class_weights
        luma = self.scheme.is_luma
        self.val_images.update(image.shape[0])
        for b in range(image.shape[0]):
            pixels = image[b].permute(1, 2, 0)  # (h, w, 3)
            for y0, band in tiler.bands(pixels):  # (n, w, K)
                rows = target[b : b + 1, y0 : y0 + band.shape[0]]  # (1, n, w)
                keep = rows != self.scheme.ignore_index
                if not keep.any():
                    continue
                weight = float(weights[rows[keep]].sum()) if weights is not None else int(keep.sum())
                self._shared_step(band.permute(2, 0, 1)[None], rows, "val", weight, metrics=not luma)
            if luma:
                labels = tiler.labels(pixels, tuple(pixels.shape[:2]), luma=self.inference_cfg.luma_threshold)
                truth = target[b].to(torch.uint8).cpu().numpy()
                self.val_metrics.update_confusion(image_confusion(truth, labels, 2, self.scheme.ignore_index))

    def on_validation_epoch_end(self) -> None:
        result = self.val_metrics.compute()  # synchronised across ranks by torchmetrics
        self.last_val = {"epoch": self.current_epoch, "images": int(self.val_images.compute()),
                         "confusion": self.val_metrics.pooled_confusion().tolist()}
        self.val_metrics.reset()
        self.val_images.reset()
        miou = result["miou"] if result["miou"] is not None else 0.0
        # identical on every rank already; sync_dist only averages equal values
        self.log("val/miou", miou, prog_bar=True, sync_dist=True)
        self.log("val/pixel_accuracy", result["pixel_accuracy"] or 0.0, sync_dist=True)

    def configure_optimizers(self):
        cfg = self.train_cfg
        params = [p for p in self.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
        if cfg.schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch", "monitor": "val/miou"}}
        if not self.plan.total:  # no budget (or none restored): the steps max_epochs allows
            self.plan.total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = cfg.warmup if cfg.warmup is not None else (0.3 if cfg.schedule == "onecycle" else 0.05)
        plan, schedule = self.plan, cfg.schedule
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(plan.progress(step), schedule, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        if self._restored_epoch != self.current_epoch:  # a new epoch (an epoch-end checkpoint's sums are done)
            self._train_sum, self._train_n = 0.0, 0.0
        self._restored_epoch = None
        self._train_epoch = self.current_epoch

    def epoch_train_loss(self) -> float | None:
        """This rank's mean training loss over the current epoch's batches (weighted by batch size)."""
        return float(self._train_sum / self._train_n) if self._train_n else None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Global RNG states, so a resumed run draws what an uninterrupted one would have; the epoch's loss sums."""
        checkpoint["droneseg_rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        checkpoint["droneseg_train_loss"] = {"epoch": self._train_epoch, "sum": float(self._train_sum),
                                             "n": float(self._train_n)}
        if self._release_step is not None:
            checkpoint["droneseg_freeze_release"] = self._release_step

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._release_step = checkpoint.get("droneseg_freeze_release", self._release_step)
        loss = checkpoint.get("droneseg_train_loss")
        if loss:
            self._restored_epoch = int(loss["epoch"])
            self._train_sum = torch.tensor(loss["sum"], dtype=torch.float64)
            self._train_n = float(loss["n"])
        rng = checkpoint.get("droneseg_rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

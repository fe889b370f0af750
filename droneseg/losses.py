"""Segmentation losses with one ignore convention, and class weights from label frequencies.

Contract
--------
* ``logits`` (B, K, H, W) float, ``target`` (B, H, W) int64 in 0..K-1 or ``ignore_index``.
* The ignore mask is made once, in :func:`valid_labels`: every loss gets the dense logits, labels with ignored
  pixels set to class 0, and the (B, H, W) bool ``valid`` mask, and weighs each pixel by it, so no loss can forget
  the mask. The losses stay in the network's (B, K, H, W) layout: gathering the valid pixels into a (P, K) copy
  and back cost the step 30% on CPU (benchmarks/training.py); only Lovász, which sorts pixels, flattens.
* A batch with no valid pixel gives a zero loss that still back-propagates (no NaN).

>>> loss = build_loss(LossConfig(terms={"ce": 1.0}), ignore_index=255)
>>> round(float(loss(torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 255]]]))[0]), 4)  # log(2)
0.6931
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from droneseg.errors import DataError

LossFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None", "LossConfig"], Tensor]


class LossConfig(BaseModel):
    """``terms`` maps loss names (see :data:`LOSSES`) to weights; the loss is their weighted sum."""

    model_config = ConfigDict(extra="forbid")
    terms: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0})
    class_weights: Literal["none", "inverse", "median", "sqrt"] = Field(
        default="none", description="from training pixel frequencies f: inverse 1/f, median median(f)/f, sqrt 1/sqrt(f)")
    focal_gamma: float = Field(default=2.0, ge=0.0)
    ohem_keep: float = Field(default=0.25, gt=0.0, le=1.0, description="share of the hardest valid pixels ohem keeps")
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0, description="ce only: the target puts this share of "
                                   "its mass evenly on all classes (Szegedy et al. 2016), as F.cross_entropy's")

    @field_validator("terms")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(LOSSES))
        if unknown:
            raise DataError(f"unknown loss {unknown[0]!r}; choose from {sorted(LOSSES)}")
        if not v or all(w == 0 for w in v.values()):
            raise DataError("give at least one loss with a non-zero weight")
        return v


def valid_labels(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(B, H, W) int64 -> labels with ignored pixels set to 0 (so they index safely) and the (B, H, W) bool mask."""
    valid = target != ignore_index
    return torch.where(valid, target, 0), valid


def _pixel_weights(labels: Tensor, valid: Tensor, weight: Tensor | None) -> Tensor:
    """(B, H, W) float weight of each pixel: its class weight (1 without), 0 where ignored."""
    return valid.to(torch.float32) if weight is None else weight[labels] * valid


def _label_logp(logits: Tensor, labels: Tensor) -> Tensor:
    """(B, H, W) log-probability of each pixel's label."""
    return F.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]


def cross_entropy(logits: Tensor, labels: Tensor, valid: Tensor, weight: Tensor | None, cfg: LossConfig) -> Tensor:
    """Mean (class-weighted) negative log-likelihood over valid pixels: sum w_y (-log p_y) / sum w_y, as
    ``F.cross_entropy(weight=..., ignore_index=...)``. With label smoothing e (Szegedy et al. 2016, "Rethinking the
    Inception architecture"): (1 - e) times that, plus e/K sum_k w_k (-log p_k) summed over valid pixels and divided
    by the same sum w_y, which is ``F.cross_entropy(..., label_smoothing=e)``'s definition."""
    w = _pixel_weights(labels, valid, weight)
    total = w.sum().clamp_min(1e-12)
    e = cfg.label_smoothing
    if not e:
        return -(w * _label_logp(logits, labels)).sum() / total
    logp = F.log_softmax(logits, dim=1)  # (B, K, H, W)
    nll = -(w * logp.gather(1, labels[:, None])[:, 0]).sum()
    k = logits.shape[1]
    per_class = logp if weight is None else logp * weight.view(1, k, 1, 1)
    smooth = -(per_class.sum(dim=1) * valid).sum() / k
    return ((1.0 - e) * nll + e * smooth) / total


def ohem(logits: Tensor, labels: Tensor, valid: Tensor, weight: Tensor | None, cfg: LossConfig) -> Tensor:
    """Online hard example mining (Shrivastava et al. 2016; the pixel form of Wu et al. 2016, "Bridging category-level
    and instance-level semantic image segmentation"): the (class-weighted) cross-entropy of the ``ohem_keep`` share
    of valid pixels with the highest loss, averaged over them; easy pixels contribute nothing."""
    w = _pixel_weights(labels, valid, weight).flatten()
    nll = -(w * _label_logp(logits, labels).flatten())
    n_valid = int(valid.sum())
    k = max(1, math.ceil(cfg.ohem_keep * n_valid))
    hard = torch.where(valid.flatten(), nll, -1.0).topk(k).indices  # ignored pixels rank last
    return nll[hard].sum() / w[hard].sum().clamp_min(1e-12)


def focal(logits: Tensor, labels: Tensor, valid: Tensor, weight: Tensor | None, cfg: LossConfig) -> Tensor:
    """Softmax focal loss, weighted mean over pixels of -w_y (1 - p_y)^gamma log p_y (Lin et al. 2017)."""
    logp = _label_logp(logits, labels)
    w = _pixel_weights(labels, valid, weight)
    return -(w * (1.0 - logp.exp()) ** cfg.focal_gamma * logp).sum() / w.sum().clamp_min(1e-12)


def dice(logits: Tensor, labels: Tensor, valid: Tensor, weight: Tensor | None, cfg: LossConfig) -> Tensor:
    """1 - mean soft Dice 2 sum(p_k y_k) / (sum p_k + sum y_k) over the classes present in the labels (absent ones
    would reward nothing; Milletari et al. 2016). Sums over valid pixels; the one-hot labels are never built:
    sum p_k y_k is p_y added up per label."""
    k = logits.shape[1]
    probs = logits.softmax(dim=1)  # (B, K, H, W)
    mask = valid.to(probs.dtype)
    p_label = probs.gather(1, labels[:, None])[:, 0] * mask  # (B, H, W)
    inter = probs.new_zeros(k).index_add(0, labels.flatten(), p_label.flatten())
    count = probs.new_zeros(k).index_add(0, labels.flatten(), mask.flatten())
    denom = (probs * mask[:, None]).sum((0, 2, 3)) + count
    score = (2.0 * inter / denom.clamp_min(1e-12))[count > 0]
    return 1.0 - score.mean()


def _lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors (Berman et al. 2018)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz(logits: Tensor, labels: Tensor, valid: Tensor, weight: Tensor | None, cfg: LossConfig) -> Tensor:
    """Lovász-softmax: a convex surrogate of 1 - IoU, averaged over classes present in the labels (Berman et al.
    2018). It sorts the valid pixels' errors, so it works on their (P, K) probabilities."""
    probs = logits.softmax(dim=1).permute(0, 2, 3, 1)[valid]  # (P, K)
    labels = labels[valid]
    losses = []
    for c in labels.unique():
        fg = (labels == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[order])))
    return torch.stack(losses).mean()


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "dice": dice, "focal": focal, "lovasz": lovasz, "ohem": ohem}


class CombinedLoss(nn.Module):
    """Weighted sum of :data:`LOSSES` terms; returns (total, {name: value}) for logging."""

    def __init__(self, cfg: LossConfig, ignore_index: int, class_weights: Tensor | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.terms = {k: w for k, w in cfg.terms.items() if w != 0}
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        labels, valid = valid_labels(target, self.ignore_index)
        if not valid.any():
            zero = logits.sum() * 0.0
            return zero, {name: zero.detach() for name in self.terms}
        # float32 in the (B, K, H, W) layout: a channels-last network's logits would make softmax 40% slower
        dense = logits.float().contiguous()
        parts = {name: LOSSES[name](dense, labels, valid, self.class_weights, self.cfg) for name in self.terms}
        total = sum(w * parts[name] for name, w in self.terms.items())
        return total, {name: v.detach() for name, v in parts.items()}


def build_loss(cfg: LossConfig, ignore_index: int, class_weights: Tensor | None = None) -> CombinedLoss:
    return CombinedLoss(cfg, ignore_index, class_weights)


def class_weights_from_counts(counts: np.ndarray, how: Literal["none", "inverse", "median", "sqrt"]) -> np.ndarray | None:
    """Per-class loss weights from (K,) training pixel counts; classes never seen get weight 0.

    inverse: w_k = N / (K_seen * n_k), so a uniform distribution gives 1 everywhere.
    median: w_k = median(f) / f_k over the seen classes (Eigen & Fergus 2015).
    sqrt: w_k = f_k^-1/2 / sum_j f_j^1/2, the gentle re-weighting (the mean weight per pixel is 1; full inverse
    weights are known to make rare classes over-predicted, Mahajan et al. 2018 use the square root for sampling).
    """
    if how == "none":
        return None
    counts = np.asarray(counts, dtype=np.float64)
    seen = counts > 0
    if not seen.any():
        raise DataError("no labelled training pixels to derive class weights from")
    w = np.zeros_like(counts)
    if how == "inverse":
        w[seen] = counts.sum() / (seen.sum() * counts[seen])
    elif how == "sqrt":
        freq = counts[seen] / counts.sum()
        w[seen] = freq**-0.5 / np.sum(freq**0.5)
    else:
        freq = counts[seen] / counts.sum()
        w[seen] = np.median(freq) / freq
    return w.astype(np.float32)

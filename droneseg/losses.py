"""Segmentation losses with one ignore convention, and class weights from label frequencies.

Contract
--------
* ``logits`` (B, K, H, W) float, ``target`` (B, H, W) int64 in 0..K-1 or ``ignore_index``.
* Ignored pixels are removed once, in :func:`valid_pixels`; every loss then works on the
  (P, K) logits and (P,) labels of the P valid pixels, so no loss can forget the mask.
* A batch with no valid pixel gives a zero loss that still back-propagates (no NaN).

>>> loss = build_loss(LossConfig(terms={"ce": 1.0}), ignore_index=255)
>>> round(float(loss(torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 255]]]))[0]), 4)  # log(2)
0.6931
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor, Tensor | None, float], Tensor]


class LossConfig(BaseModel):
    """``terms`` maps loss names (see :data:`LOSSES`) to weights; the loss is their weighted sum."""

    model_config = ConfigDict(extra="forbid")
    terms: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0})
    class_weights: Literal["none", "inverse", "median", "sqrt"] = Field(
        default="none", description="from training pixel frequencies f: inverse 1/f, median median(f)/f, sqrt 1/sqrt(f)")
    focal_gamma: float = Field(default=2.0, ge=0.0)

    @field_validator("terms")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(LOSSES))
        if unknown:
            raise ValueError(f"unknown loss {unknown[0]!r}; choose from {sorted(LOSSES)}")
        if not v or all(w == 0 for w in v.values()):
            raise ValueError("give at least one loss with a non-zero weight")
        return v


def valid_pixels(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(B, K, H, W), (B, H, W) -> (P, K) logits and (P,) labels of the non-ignored pixels."""
    k = logits.shape[1]
    flat = logits.permute(0, 2, 3, 1).reshape(-1, k)  # (B*H*W, K)
    labels = target.reshape(-1)
    keep = labels != ignore_index
    return flat[keep], labels[keep]


def cross_entropy(logits: Tensor, labels: Tensor, weight: Tensor | None, gamma: float) -> Tensor:
    """Mean (class-weighted) negative log-likelihood over valid pixels."""
    return F.cross_entropy(logits, labels, weight=weight)


def focal(logits: Tensor, labels: Tensor, weight: Tensor | None, gamma: float) -> Tensor:
    """Softmax focal loss, mean over pixels of -w_y (1 - p_y)^gamma log p_y (Lin et al. 2017)."""
    logp = F.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]  # (P,)
    loss = -((1.0 - logp.exp()) ** gamma) * logp
    if weight is not None:
        w = weight[labels]
        return (loss * w).sum() / w.sum().clamp_min(1e-12)
    return loss.mean()


def dice(logits: Tensor, labels: Tensor, weight: Tensor | None, gamma: float) -> Tensor:
    """1 - mean soft Dice over the classes present in the labels (absent ones would reward nothing)."""
    probs = logits.softmax(dim=1)  # (P, K)
    onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)  # (P, K)
    inter = (probs * onehot).sum(0)
    denom = probs.sum(0) + onehot.sum(0)
    present = onehot.sum(0) > 0
    score = (2.0 * inter / denom.clamp_min(1e-12))[present]
    return 1.0 - score.mean()


def _lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors (Berman et al. 2018)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz(logits: Tensor, labels: Tensor, weight: Tensor | None, gamma: float) -> Tensor:
    """Lovász-softmax: a convex surrogate of 1 - IoU, averaged over classes present in the labels."""
    probs = logits.softmax(dim=1)
    losses = []
    for c in labels.unique():
        fg = (labels == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[order])))
    return torch.stack(losses).mean()


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "dice": dice, "focal": focal, "lovasz": lovasz}


class CombinedLoss(nn.Module):
    """Weighted sum of :data:`LOSSES` terms; returns (total, {name: value}) for logging."""

    def __init__(self, terms: dict[str, float], ignore_index: int, class_weights: Tensor | None, gamma: float) -> None:
        super().__init__()
        self.terms = {k: w for k, w in terms.items() if w != 0}
        self.ignore_index = ignore_index
        self.gamma = gamma
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        flat, labels = valid_pixels(logits.float(), target, self.ignore_index)
        if labels.numel() == 0:
            zero = logits.sum() * 0.0
            return zero, {name: zero.detach() for name in self.terms}
        parts = {name: LOSSES[name](flat, labels, self.class_weights, self.gamma) for name in self.terms}
        total = sum(w * parts[name] for name, w in self.terms.items())
        return total, {name: v.detach() for name, v in parts.items()}


def build_loss(cfg: LossConfig, ignore_index: int, class_weights: Tensor | None = None) -> CombinedLoss:
    return CombinedLoss(cfg.terms, ignore_index, class_weights, cfg.focal_gamma)


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
        raise ValueError("no labelled training pixels to derive class weights from")
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

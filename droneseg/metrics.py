"""Segmentation metrics: one pooled confusion matrix, binned PR/ROC curves, per-image mIoU.

Contract
--------
* Scores: ``(B, K, H, W)`` float logits (default) or probabilities; targets: ``(B, H, W)`` integers in
  0..K-1, or ``ignore_index`` (255) for pixels that count nowhere. Any device; states sync under DDP
  through torchmetrics (all are summed or concatenated counts).
* Confusion matrix: ``(K, K)`` counts, rows = ground truth, columns = prediction (argmax).
* Results are JSON-ready dicts of Python floats/ints; an undefined ratio (0/0) is ``None``, never NaN.
  All ratios are float64.
* Curves are *binned*: a pixel of class k counts as predicted k at threshold t when its softmax score
  for k is >= t, for ``thresholds`` evenly spaced in [0, 1] (as torchmetrics' binned mode). State is
  a (K, T+1, 2) histogram, so memory stays O(K*T) whatever the split size.
* AP is sklearn's ``average_precision_score`` convention: sum over thresholds of
  (R_n - R_{n+1}) * P_n, no interpolation. The binned AP equals that exact AP computed on scores
  rounded *down* to the threshold grid: it only differs where a positive and a negative share a bin
  (they count as tied). AUC is the trapezoid area of the ROC curve from (0, 0) to (1, 1).

* Large images: :func:`image_confusion` counts one image's (K, K) matrix from its labels in bounded memory;
  ``SegmentationMetrics.update_confusion`` and ``PerImageIoU.update_confusion`` take such matrices (their sum is
  the pooled matrix), and ``SegmentationMetrics.update_scores`` takes sampled (N, K) scores for the curves.

>>> r = confusion_to_metrics(np.array([[0, 2], [0, 2]]), ["a", "b"])  # pred [1,1,1,1], gt [1,1,0,0]
>>> [c["iou"] for c in r["per_class"]], r["miou"]
([0.0, 0.5], 0.25)
>>> image_confusion(np.array([[1, 1, 0, 0, 255]], np.uint8), np.array([[1, 1, 1, 1, 0]], np.uint8), 2).tolist()
[[0, 2], [0, 2]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_confusion_matrix
from torchmetrics.utilities import dim_zero_cat

from droneseg.chance import chance_miou
from droneseg.classes import IGNORE_INDEX

if TYPE_CHECKING:
    from droneseg.schemes import LabelScheme

TABLE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Thresholds of the positive-class table reported for two-class schemes."""

_CHUNK = 1 << 22  # scores per chunk in the curve update: bounds its int64 temporaries to 32 MiB


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    """Elementwise num/den in float64, None where den == 0."""
    return [float(n / d) if d > 0 else None for n, d in zip(num.tolist(), den.tolist())]


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def confusion_to_metrics(cm: np.ndarray | torch.Tensor, names: Sequence[str]) -> dict:
    """Per-class and summary metrics of a (K, K) confusion matrix (rows gt, columns prediction).

    Means (``miou``, ``mean_f1``, ``mean_class_accuracy``) run over classes *present* in the ground
    truth (support > 0); the others are listed in ``absent_classes``. A class that is absent but was
    predicted (false positives only) gets IoU and F1 0 and precision 0, yet stays out of the means:
    with no ground truth there is nothing to recall, and counting it would make mIoU depend on which
    classes a split happens to contain. ``fw_iou`` weights each class's IoU by its support.
    """
    counts = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    k = len(names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {counts.shape}, expected ({k}, {k}) for {k} names")
    if (counts < 0).any():
        raise ValueError("confusion matrix has negative counts")
    counts = counts.astype(np.float64)
    tp = np.diag(counts)
    support, predicted = counts.sum(1), counts.sum(0)
    total = counts.sum()
    present = support > 0
    iou = _ratio(tp, support + predicted - tp)
    f1 = _ratio(2 * tp, support + predicted)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    per_class = [
        {
            "name": names[i],
            "iou": iou[i],
            "f1": f1[i],
            "precision": precision[i],
            "recall": recall[i],
            "support": int(support[i]),
            "predicted": int(predicted[i]),
            "present": bool(present[i]),
        }
        for i in range(k)
    ]
    fw = sum(support[i] / total * iou[i] for i in range(k) if present[i]) if total > 0 else None
    return {
        "per_class": per_class,
        "miou": _mean([iou[i] for i in range(k) if present[i]]),
        "mean_f1": _mean([f1[i] for i in range(k) if present[i]]),
        "mean_class_accuracy": _mean([recall[i] for i in range(k) if present[i]]),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else None,
        "chance_miou": chance_miou(support),
        "fw_iou": None if fw is None else float(fw),
        "absent_classes": [names[i] for i in range(k) if not present[i]],
        "pixels": int(total),
        "confusion_matrix": counts.astype(np.int64).tolist(),
    }


_CONFUSION_BAND = 1 << 22  # pixels per step of image_confusion: bounds its int64 temporaries to 32 MiB


def image_confusion(target: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """One image's (K, K) int64 confusion matrix (rows ground truth, columns prediction) from uint8 label maps.

    target: (H, W) uint8 in 0..K-1 or ``ignore_index`` (not counted); pred: (H, W) uint8 in 0..K-1. Counted in
    bands of rows, so a 6000x4000 image never needs a full-size int64 copy. Raises ValueError for a value outside
    those ranges (a bincount would misfile it silently).
    """
    if target.shape != pred.shape or target.dtype != np.uint8 or pred.dtype != np.uint8:
        raise ValueError(f"target {target.dtype} {target.shape} and pred {pred.dtype} {pred.shape} must be equal-shaped uint8")
    k = num_classes
    counts = np.zeros(256 * k, np.int64)  # rows 0..255 of target values: ignored and bad values land past K*K
    rows = max(1, _CONFUSION_BAND // max(1, target.shape[-1]))
    for y in range(0, target.shape[0], rows):
        t, p = target[y : y + rows].ravel(), pred[y : y + rows].ravel()
        if p.size and int(p.max()) >= k:
            raise ValueError(f"pred holds label {int(p.max())}, outside 0..{k - 1}")
        counts += np.bincount(t.astype(np.intp) * k + p, minlength=256 * k)
    stray = counts[k * k :].reshape(256 - k, k).sum(1)  # pixels per target value k..255
    if k <= ignore_index < 256:
        stray[ignore_index - k] = 0
    if stray.any():
        raise ValueError(f"target value {k + int(np.flatnonzero(stray)[0])} is outside 0..{k - 1} and not {ignore_index}")
    return counts[: k * k].reshape(k, k)


def _counted(metric: Metric) -> None:
    """What torchmetrics does around ``update``, for our other update methods: drop a cached ``compute`` result
    and count the update (kept out of ``__init__`` wrapping, which would break pickling and ``clone``)."""
    metric._computed = None
    metric._update_count += 1


def _check_target(target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """int64 target; raises if a kept value is outside 0..K-1 (bincount would misfile it silently)."""
    if target.is_floating_point() or target.is_complex():
        raise TypeError(f"target must be an integer tensor, got {target.dtype}")
    target = target.long()
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"target value {int(target[bad][0])} is outside 0..{num_classes - 1} and not {ignore_index}")
    return target


def _binned_counts(scores: torch.Tensor, positive: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(N, C) scores and (N, C) bool truth -> (C, T+1, 2) int64 counts [negative, positive] per bin.

    Bin b holds scores with exactly b thresholds <= score, so "predicted at threshold j" is bins > j.
    """
    n_classes, n_bins = scores.shape[1], len(thresholds) + 1
    bins = torch.bucketize(scores.contiguous(), thresholds, right=True)  # (N, C) in 0..T
    offset = torch.arange(n_classes, device=scores.device) * n_bins
    index = (offset + bins) * 2 + positive.long()
    return torch.bincount(index.flatten(), minlength=n_classes * n_bins * 2).view(n_classes, n_bins, 2)


def _tp_fp(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(C, T+1, 2) histogram -> tp, fp (C, T) per threshold, and positives, negatives (C,)."""
    above = np.flip(np.cumsum(np.flip(hist, 1), 1), 1)  # above[:, b] = counts in bins >= b
    return above[:, 1:, 1], above[:, 1:, 0], above[:, 0, 1], above[:, 0, 0]


def _curves(hist: np.ndarray, thresholds: np.ndarray, names: Sequence[str]) -> tuple[dict, list, list]:
    """Per-class PR/ROC arrays, AP and AUC for classes with positives; None elsewhere."""
    tp, fp, pos, neg = _tp_fp(hist.astype(np.float64))
    curves, ap, auc = {}, [], []
    for k, name in enumerate(names):
        if pos[k] == 0:
            ap.append(None)
            auc.append(None)
            continue
        # 1. precision where nothing is predicted is 1, as at sklearn's curve end (recall 0 there)
        precision = np.divide(tp[k], tp[k] + fp[k], out=np.ones_like(tp[k]), where=tp[k] + fp[k] > 0)
        recall = tp[k] / pos[k]
        fpr = fp[k] / neg[k] if neg[k] > 0 else np.zeros_like(recall)
        # 2. thresholds ascend, so recall descends; the curve ends at recall 0
        ap.append(float(np.sum((recall - np.append(recall[1:], 0.0)) * precision)))
        # 3. ROC from (0, 0) with thresholds descending; undefined without negatives
        x, y = np.r_[0.0, fpr[::-1]], np.r_[0.0, recall[::-1]]
        auc.append(float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)) if neg[k] > 0 else None)
        curves[name] = {
            "thresholds": thresholds.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "fpr": fpr.tolist(),
            "tpr": recall.tolist(),
        }
    return curves, ap, auc


def _threshold_table(hist: np.ndarray) -> list[dict]:
    """Rows of precision, recall, F1, IoU of one class at :data:`TABLE_THRESHOLDS`."""
    tp, fp, pos, _ = _tp_fp(hist[None].astype(np.float64))
    tp, fp = tp[0], fp[0]
    fn = pos[0] - tp
    cols = {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
    }
    return [{"threshold": t, **{c: v[j] for c, v in cols.items()}} for j, t in enumerate(TABLE_THRESHOLDS)]


class SegmentationMetrics(Metric):
    """Pooled confusion matrix (and optionally binned PR/ROC curves) over every update.

    ``compute()`` returns :func:`confusion_to_metrics` output; with ``curves`` each class entry gains
    ``ap`` and ``auc`` (None for classes absent from the ground truth), plus ``mean_ap``,
    ``mean_auc`` over present classes and ``curves`` {name: arrays over ``thresholds``} for
    plotting. For K == 2 it adds ``threshold_table``: class 1 predicted where its score >= t.
    Call ``update``/``compute``; ``forward`` would compute a whole report per batch.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        names: Sequence[str],
        ignore_index: int = IGNORE_INDEX,
        curves: bool = False,
        thresholds: int = 101,
        from_logits: bool = True,
        sync_on_compute: bool = True,
    ) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        if len(names) < 2:
            raise ValueError(f"need at least 2 classes, got {list(names)}")
        if thresholds < 2:
            raise ValueError(f"thresholds must be >= 2, got {thresholds}")
        self.names = tuple(names)
        self.num_classes = len(names)
        self.ignore_index = ignore_index
        self.curves = curves
        self.thresholds = thresholds
        self.from_logits = from_logits
        k = self.num_classes
        self.add_state("confmat", default=torch.zeros(k, k, dtype=torch.long), dist_reduce_fx="sum")
        if curves:
            self.add_state("hist", default=torch.zeros(k, thresholds + 1, 2, dtype=torch.long), dist_reduce_fx="sum")
        if k == 2:
            n = len(TABLE_THRESHOLDS) + 1
            self.add_state("table_hist", default=torch.zeros(n, 2, dtype=torch.long), dist_reduce_fx="sum")

    @classmethod
    def from_scheme(
        cls, scheme: LabelScheme, curves: bool = False, thresholds: int = 101, from_logits: bool = True,
        sync_on_compute: bool = True,
    ) -> SegmentationMetrics:
        return cls(scheme.names, scheme.ignore_index, curves, thresholds, from_logits, sync_on_compute)

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: scores (B, K, H, W) logits or probabilities, target (B, H, W) integers."""
        k = self.num_classes
        if scores.ndim != 4 or scores.shape[1] != k or scores.shape[:1] + scores.shape[2:] != target.shape:
            shapes = f"scores {tuple(scores.shape)} and target {tuple(target.shape)}"
            raise ValueError(f"{shapes} are not (B, {k}, H, W) and (B, H, W)")
        target = _check_target(target, k, self.ignore_index)
        labels = scores.argmax(1)
        self.confmat += multiclass_confusion_matrix(labels, target, k, ignore_index=self.ignore_index,
                                                    validate_args=False)
        if self.curves or k == 2:
            self._add_scores(scores.movedim(1, -1).reshape(-1, k), target.reshape(-1))

    def update_confusion(self, confusion: torch.Tensor | np.ndarray) -> None:
        """Add counted (K, K) confusion matrices, e.g. one image's from :func:`image_confusion`."""
        cm = torch.as_tensor(np.asarray(confusion) if not isinstance(confusion, torch.Tensor) else confusion)
        if cm.shape != (self.num_classes, self.num_classes):
            raise ValueError(f"confusion matrix {tuple(cm.shape)} is not ({self.num_classes}, {self.num_classes})")
        if cm.is_floating_point() or bool((cm < 0).any()):
            raise ValueError("a confusion matrix holds non-negative integer counts")
        _counted(self)
        self.confmat += cm.to(self.confmat)

    def update_scores(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """Add pixels to the curves (and the two-class threshold table) only: scores (N, K), target (N,).

        For evaluation at full size, where the confusion matrix is counted from labels and the curves from a
        regular sample of pixels.
        """
        if scores.ndim != 2 or scores.shape[1] != self.num_classes or scores.shape[:1] != target.shape:
            raise ValueError(f"scores {tuple(scores.shape)} and target {tuple(target.shape)} are not (N, "
                             f"{self.num_classes}) and (N,)")
        _counted(self)
        self._add_scores(scores, _check_target(target, self.num_classes, self.ignore_index))

    def _add_scores(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """(N, K) scores, (N,) int64 target -> the binned histograms, in chunks (bounded temporaries)."""
        k = self.num_classes
        if not self.curves and k != 2:
            return
        grid = torch.linspace(0, 1, self.thresholds, device=scores.device)
        table = torch.tensor(TABLE_THRESHOLDS, device=scores.device)
        step = max(1, _CHUNK // k)
        for s, t in zip(scores.split(step), target.split(step)):
            keep = t != self.ignore_index
            p = s[keep].float()
            p = p.softmax(1) if self.from_logits else p  # (N, K)
            positive = t[keep][:, None] == torch.arange(k, device=t.device)  # (N, K)
            if self.curves:
                self.hist += _binned_counts(p, positive, grid)
            if k == 2:
                self.table_hist += _binned_counts(p[:, 1:], positive[:, 1:], table)[0]

    def pooled_confusion(self) -> np.ndarray:
        """(K, K) int64 confusion matrix (rows truth, columns prediction) summed over all ranks when the metric
        syncs; every rank must call it, as :meth:`compute`."""
        with self.sync_context(should_sync=self.sync_on_compute):
            return self.confmat.cpu().numpy().copy()

    def compute(self) -> dict:
        out = confusion_to_metrics(self.confmat, self.names)
        if self.curves:
            grid = torch.linspace(0, 1, self.thresholds).double().numpy()
            curves, ap, auc = _curves(self.hist.cpu().numpy(), grid, self.names)
            for entry, a, u in zip(out["per_class"], ap, auc):
                entry["ap"], entry["auc"] = a, u
            out["mean_ap"], out["mean_auc"] = _mean(ap), _mean(auc)
            out["curves"] = curves
        if self.num_classes == 2:
            out["threshold_table"] = _threshold_table(self.table_hist.cpu().numpy())
        return out


class PerImageIoU(Metric):
    """Per-image mIoU: for each image, the mean IoU over classes present in *its* ground truth.

    This is the number notebooks usually print (IoU averaged image by image), not the pooled mIoU of
    :class:`SegmentationMetrics`: small images and rare classes weigh more here. Images whose pixels
    are all ignored have no present class; they are skipped and counted in ``skipped_all_ignored``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, sync_on_compute: bool = True) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("counts", default=[], dist_reduce_fx="cat")  # (images, 3, K): inter, union, support

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add images: predicted labels and targets, both (H, W) or (B, H, W) integers."""
        if pred.shape != target.shape or pred.ndim not in (2, 3):
            shapes = f"pred {tuple(pred.shape)} and target {tuple(target.shape)}"
            raise ValueError(f"{shapes} must both be (H, W) or (B, H, W)")
        k = self.num_classes
        target = _check_target(target, k, self.ignore_index).reshape(-1, *target.shape[-2:])
        pred = pred.long().reshape(target.shape)
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= k):
            raise ValueError(f"pred holds labels outside 0..{k - 1}: {int(pred.min())}..{int(pred.max())}")
        batch = torch.arange(target.shape[0], device=target.device)[:, None, None].expand_as(target)
        keep = target != self.ignore_index
        index = (batch[keep] * k + target[keep]) * k + pred[keep]
        self._add(torch.bincount(index, minlength=target.shape[0] * k * k).view(-1, k, k))

    def update_confusion(self, confusion: torch.Tensor | np.ndarray) -> None:
        """Add images by their confusion matrices: (K, K) for one image or (B, K, K)."""
        _counted(self)
        self._add(confusion)

    def _add(self, confusion: torch.Tensor | np.ndarray) -> None:
        cm = confusion if isinstance(confusion, torch.Tensor) else torch.from_numpy(np.asarray(confusion))
        k = self.num_classes
        cm = cm.reshape(-1, k, k) if cm.shape[-2:] == (k, k) else None
        if cm is None:
            raise ValueError(f"confusion matrices must be (K, K) or (B, K, K) with K = {k}, got {tuple(confusion.shape)}")
        tp = cm.diagonal(dim1=1, dim2=2)
        support, predicted = cm.sum(2), cm.sum(1)
        self.counts.append(torch.stack([tp, support + predicted - tp, support], 1))

    def compute(self) -> dict:
        counts = dim_zero_cat(self.counts).cpu().numpy() if len(self.counts) else np.zeros((0, 3, self.num_classes))
        inter, union, support = counts.astype(np.float64).transpose(1, 0, 2)
        present = support > 0
        kept = present.any(1)
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=present)
        values = (iou.sum(1)[kept] / present.sum(1)[kept]).tolist()
        return {
            "per_image_miou": _mean(values),
            "images": len(values),
            "skipped_all_ignored": int((~kept).sum()),
            "values": values,
        }

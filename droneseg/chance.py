"""What a model that learned nothing would score, and the flag for a model near it (report, train, predict).

numpy only: predict asks too, and must not pay for the metrics or the report's imports.
"""

from __future__ import annotations

import numpy as np

NEAR_CHANCE = 1.5
"""A model whose mIoU is below this multiple of :func:`chance_miou` is flagged as near chance (report, train, predict)."""


def chance_miou(support: np.ndarray) -> float | None:
    """The mIoU a model that learned nothing would get on ground truth with ``support`` (K,) pixels per class: the
    best of three labellings that ignore the photo (every pixel the most frequent class; classes drawn uniformly;
    classes drawn with their frequencies), over the classes present. None without pixels.

    IoU of class c with share p and a labelling that says c with probability q independently of the truth:
    p·q / (p + q - p·q); the constant labelling has q = 1 for the most frequent class, 0 for the others.

    >>> round(chance_miou(np.array([50, 50])), 4), round(chance_miou(np.array([90, 10, 0])), 4)
    (0.3333, 0.45)
    """
    p = np.asarray(support, np.float64)
    if p.sum() <= 0:
        return None
    p = p[p > 0] / p.sum()
    iou = lambda q: p * q / (p + q - p * q)  # noqa: E731
    constant = float(p.max()) / len(p)
    uniform = float(iou(np.full_like(p, 1 / len(p))).mean())
    prior = float(iou(p).mean())
    return max(constant, uniform, prior)


def near_chance(metrics: dict) -> str | None:
    """A sentence flagging a model whose pooled mIoU is below ``NEAR_CHANCE`` times the mIoU of a labelling that
    ignores the photos (:func:`droneseg.metrics.chance_miou`), else None.

    >>> near_chance({"miou": 0.01, "chance_miou": 0.02}).startswith("Near chance")
    True
    """
    miou, chance = metrics.get("miou"), metrics.get("chance_miou")
    if miou is None or chance is None or miou >= NEAR_CHANCE * chance:
        return None
    return (f"Near chance: pooled mIoU {miou:.3f} is below {NEAR_CHANCE:g} x the {chance:.3f} a labelling that "
            "ignores the photos would score; this model has not learned yet (train longer, or check the data)")

"""What every evaluation file shares: how numbers are written, what the headline metrics mean, and the
per-image record. ``report`` (files, figures) and ``report_html`` (the page) both import it; it imports neither.

Undefined ratios (None) show as an em dash.

>>> fmt(None), fmt(0.12345), pct(0.5)
('—', '0.123', '50.0%')
>>> class_order({"per_class": [{"present": True, "iou": 0.2}, {"present": False}, {"present": True, "iou": 0.9}]})
[2, 0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

POOLED_DEFINITION = (
    "miou: pooled mean IoU, from one confusion matrix summed over every pixel of the split, "
    "averaged over the classes present in its ground truth"
)
PER_IMAGE_DEFINITION = (
    "per_image_miou: mean over images of the per-image mean IoU over classes present in that image; "
    "NOT the pooled mIoU"
)
DASH = "—"


def fmt(value: float | None, digits: int = 3) -> str:
    """A ratio with ``digits`` decimals, or a dash where it is undefined."""
    return DASH if value is None else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    """A ratio as a percentage with one decimal, or a dash where it is undefined."""
    return DASH if value is None else f"{100 * value:.1f}%"


def class_order(metrics: dict) -> list[int]:
    """Class indices as reports list them: present classes by IoU (best first), then absent ones."""
    per_class = metrics["per_class"]
    present = sorted((i for i, c in enumerate(per_class) if c["present"]), key=lambda i: -per_class[i]["iou"])
    return present + [i for i, c in enumerate(per_class) if not c["present"]]


@dataclass(frozen=True)
class ImageResult:
    """One evaluated image: its per-image scores and the panel PNG the evaluate loop wrote (if any)."""

    id: str
    miou: float | None
    pixel_accuracy: float | None
    panel: Path | None


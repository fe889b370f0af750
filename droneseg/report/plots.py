"""Figures of a run: training curves, and photo / ground truth / prediction panels.

Contract
--------
Every function writes one PNG atomically and closes its figure (no global pyplot state survives);
masks are target indices (0..K-1, ignore shown black) coloured by the scheme's palette.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from droneseg.files import atomic_save  # noqa: E402
from droneseg.schemes import LabelScheme  # noqa: E402


def save_figure(fig: plt.Figure, path: Path, dpi: int = 110) -> None:
    atomic_save(Path(path), lambda fh: fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)


def read_metrics_csv(path: Path) -> list[dict[str, float | None]]:
    with Path(path).open(newline="") as fh:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(fh)]


def training_curves(rows: list[dict[str, float | None]], path: Path) -> None:
    """Loss (train, val), val mIoU with the best epoch marked, and the learning rate, per epoch."""
    epochs = [int(r["epoch"]) for r in rows]

    def col(name: str) -> list[float]:
        return [np.nan if r.get(name) is None else r[name] for r in rows]

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    ax = axes[0]
    ax.plot(epochs, col("train_loss"), "o-", ms=3, label="train")
    ax.plot(epochs, col("val_loss"), "o-", ms=3, label="val")
    ax.set(title="Loss", xlabel="epoch")
    ax.legend()
    ax = axes[1]
    miou = col("val_miou")
    ax.plot(epochs, miou, "o-", ms=3, color="tab:green")
    if not np.all(np.isnan(miou)):
        best = int(np.nanargmax(miou))
        ax.plot(epochs[best], miou[best], "*", ms=14, color="tab:red", label=f"best {miou[best]:.3f} (epoch {epochs[best]})")
        ax.legend(loc="lower right")
    ax.set(title="Val mIoU (working size)", xlabel="epoch", ylim=(0, 1))
    ax = axes[2]
    ax.plot(epochs, col("lr"), "o-", ms=3, color="tab:purple")
    ax.set(title="Learning rate", xlabel="epoch", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    save_figure(fig, path)


def legend_handles(scheme: LabelScheme, present: np.ndarray | None = None) -> list[Patch]:
    """One coloured patch per class (only those in ``present`` when given)."""
    keep = range(scheme.num_classes) if present is None else sorted(int(k) for k in present if k < scheme.num_classes)
    return [Patch(facecolor=scheme.colors[k] / 255.0, edgecolor="0.4", label=scheme.names[k]) for k in keep]


def prediction_panels(
    rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    scheme: LabelScheme,
    path: Path,
    title: str = "",
    error_map: bool = True,
) -> None:
    """One row per image: photo, ground truth, prediction (and where they differ), plus a legend.

    ``rows`` holds (label, image (H, W, 3) uint8, target (H, W), prediction (H, W)).
    """
    ncols = 4 if error_map else 3
    h, w = rows[0][2].shape
    panel_h = 3.4 * h / w + 0.35  # inches per row, title included
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.6 * ncols, panel_h * len(rows) + 0.6), squeeze=False)
    present: set[int] = set()
    for r, (label, image, target, pred) in enumerate(rows):
        present |= set(np.unique(target).tolist()) | set(np.unique(pred).tolist())
        panels = [(image, f"{label}"), (scheme.colorize(target), "ground truth"), (scheme.colorize(pred), "prediction")]
        if error_map:
            valid = target != scheme.ignore_index
            err = np.full(target.shape + (3,), 40, np.uint8)  # ignored: dark grey
            err[valid & (pred == target)] = (235, 235, 235)
            err[valid & (pred != target)] = (220, 30, 30)
            acc = float((pred == target)[valid].mean()) if valid.any() else float("nan")
            panels.append((err, f"errors (pixel acc. {acc:.1%})"))
        for c, (img, name) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    handles = legend_handles(scheme, np.array(sorted(present)))
    ncol = min(len(handles), 8)
    legend_h = 0.22 * -(-len(handles) // ncol) + 0.1  # inches
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0))
    save_figure(fig, path)

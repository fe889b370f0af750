"""The picture of docs/labelling.md: a synthetic photo, the model's classes and its uncertainty map, side by side.

    droneseg demo                      # or any run trained on synthetic scenes
    droneseg predict RUN PHOTO --out /tmp/u --uncertainty
    python scripts/docs_uncertainty.py /tmp/u PHOTO docs/images/uncertainty.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def main(pred: Path, photo: Path, out: Path) -> None:
    stem = photo.stem
    image = np.asarray(Image.open(photo).convert("RGB"))
    colour = np.asarray(Image.open(pred / f"{stem}_color.png").convert("RGB"))
    unc = np.asarray(Image.open(pred / f"{stem}_uncertainty.png")) / 255.0
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3), constrained_layout=True)
    for ax, img, title in zip(axes, (image, colour), ("photo", "predicted classes")):
        ax.imshow(img)
        ax.set_title(title)
    shown = axes[2].imshow(unc, cmap="magma", vmin=0, vmax=1)
    axes[2].set_title(f"uncertainty (1 - margin); {100 * (unc >= 128 / 255).mean():.0f} % uncertain")
    fig.colorbar(shown, ax=axes[2], shrink=0.85, label="0 sure · 1 two classes even")
    for ax in axes:
        ax.axis("off")
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))

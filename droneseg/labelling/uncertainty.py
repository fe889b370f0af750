"""What to label next: per-pixel uncertainty of a prediction and the ranking of photos (or orthomosaic cells) by it.

Contract
--------
* The map: ``round(255 · (1 - margin))`` per output pixel, uint8, the margin being the blended top class probability
  less the second (:func:`droneseg.tiler.pixel_maps`; margin sampling, Scheffer et al. 2001). 0 = sure, 255 = two
  classes even. Written as ``<stem>_uncertainty.png`` beside a photo's mask (nodata pixels 0).
* Uncertain: a pixel whose margin is under one half (value >= :data:`UNCERTAIN`), i.e. its second class has at
  least a third of the probability mass left to the first two; a photo's uncertain share is over its valid pixels.
* ``label_next.csv``: one row per photo, most uncertain share first (rank, photo, uncertain_share, uncertain_px,
  valid_px, mean_uncertainty in [0, 1], uncertain_m2 when the GSD is known): label from the top, import, fine-tune.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from droneseg.files import atomic_write_text

UNCERTAIN = 128
"""Map values from here on are uncertain pixels: margin < 0.5 (255 · (1 - 0.5) = 127.5)."""

COLUMNS = ["rank", "photo", "uncertain_share", "uncertain_px", "valid_px", "mean_uncertainty", "uncertain_m2"]


def photo_row(photo: str, uncertainty: np.ndarray, valid: np.ndarray | None, pixel_m2: float | None) -> dict:
    """One photo's line of ``label_next.csv`` from its (H, W) uint8 map and validity mask (None: all valid);
    ``pixel_m2``: ground area of one map pixel, or None."""
    values = uncertainty if valid is None else uncertainty[valid]
    n = int(values.size)
    hit = int((values >= UNCERTAIN).sum())
    return {"photo": photo, "uncertain_share": hit / n if n else 0.0, "uncertain_px": hit, "valid_px": n,
            "mean_uncertainty": float(values.mean()) / 255 if n else 0.0,
            "uncertain_m2": hit * pixel_m2 if pixel_m2 is not None else None}


def write_ranking(path: Path, rows: list[dict]) -> list[dict]:
    """``label_next.csv`` (atomically): ``rows`` ranked by uncertain share, then uncertain pixels; -> the ranked rows."""
    ranked = sorted(rows, key=lambda r: (-r["uncertain_share"], -r["uncertain_px"], r["photo"]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for i, r in enumerate(ranked, start=1):
        writer.writerow({**r, "rank": i, "uncertain_share": f"{r['uncertain_share']:.6f}",
                         "mean_uncertainty": f"{r['mean_uncertainty']:.6f}",
                         "uncertain_m2": "" if r["uncertain_m2"] is None else f"{r['uncertain_m2']:.2f}"})
    atomic_write_text(path, buf.getvalue())
    return [{**r, "rank": i} for i, r in enumerate(ranked, start=1)]


def spearman(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's r of the ranks, ties given their average rank (as
    ``scipy.stats.spearmanr``).

    >>> round(spearman([1, 2, 3, 4], [10, 20, 20, 40]), 4)
    0.9487
    """
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x), float)
        r[order] = np.arange(1, len(x) + 1)
        for v in np.unique(x):  # ties: their mean rank
            tie = x == v
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / den) if den else 0.0

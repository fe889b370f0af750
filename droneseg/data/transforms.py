"""Mask-aware augmentation for training samples (numpy, in loader workers).

Contract
--------
Every function takes an (H, W, 3) uint8 image, an (H, W) uint8 target (0..K-1, ``ignore`` elsewhere)
and a ``numpy.random.Generator``, and returns new arrays of the same dtypes. Geometry moves image
and target together; the target is only ever resampled with nearest neighbour; colour changes
touch the image alone. Pixels brought in from outside the photo are ``ignore`` in the target.

>>> rng = np.random.default_rng(0)
>>> img, tgt = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint8)
>>> [a.shape for a in scaled_crop(img, tgt, 4, (1.0, 1.0), 255, rng)]
[(4, 4, 3), (4, 4)]
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator


class AugmentConfig(BaseModel):
    """Training-only augmentation; validation and test images are never augmented."""

    model_config = ConfigDict(extra="forbid")
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    scale: tuple[float, float] = Field(default=(0.75, 1.33), description="zoom range of a crop (log-uniform)")
    color_jitter: float = Field(default=0.2, ge=0.0, le=0.9, description="max relative change of brightness/contrast/saturation")

    @field_validator("scale")
    @classmethod
    def _zoom_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"must be (low, high) with 0 < low <= high, got {list(v)}")
        return v


POSITIONS_PER_CLASS = 1024
"""Pixels remembered per class and image for class-centred crops (a sample; all of them for smaller classes)."""


def class_positions(target: np.ndarray, ignore: int, seed: int = 0, cap: int = POSITIONS_PER_CLASS) -> dict[int, np.ndarray]:
    """Class -> flat indices of up to ``cap`` of its pixels (a seeded sample), for every class present.

    Computed once per image (one sort of its labels), so a class-centred crop costs a lookup instead of a pass
    over the whole image. ~90 KB per image for 22 classes.
    """
    flat = target.ravel()
    order = np.argsort(flat, kind="stable")
    values, starts = np.unique(flat[order], return_index=True)
    ends = np.append(starts[1:], flat.size)
    rng = np.random.default_rng(seed)
    out = {}
    for v, a, b in zip(values.tolist(), starts.tolist(), ends.tolist()):
        if v != ignore:
            idx = order[a:b]
            out[v] = idx if b - a <= cap else rng.choice(idx, cap, replace=False)
    return out


def scaled_crop(
    image: np.ndarray,
    target: np.ndarray,
    crop: int,
    scale: tuple[float, float],
    ignore: int,
    rng: np.random.Generator,
    centre_on: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A crop x crop sample of a window of crop/s source pixels, s log-uniform in ``scale``.

    The window is placed uniformly, or centred on one of the pixels ``centre_on`` (flat indices into the
    target, e.g. one class's entry of :func:`class_positions`) drawn uniformly: a class-centred crop.
    """
    h, w = target.shape
    s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    win = max(1, round(crop / s))
    center = None
    if centre_on is not None and len(centre_on):
        center = divmod(int(centre_on[int(rng.integers(len(centre_on)))]), w)
    if center is None:
        top = int(rng.integers(0, max(h - win, 0) + 1))
        left = int(rng.integers(0, max(w - win, 0) + 1))
    else:
        top = int(np.clip(center[0] - win // 2, min(0, h - win), max(h - win, 0)))
        left = int(np.clip(center[1] - win // 2, min(0, w - win), max(w - win, 0)))
    # 1. cut the window, padding where it leaves the photo (image black, target ignored)
    img_win = np.zeros((win, win, 3), np.uint8)
    tgt_win = np.full((win, win), ignore, np.uint8)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + win, h), min(left + win, w)
    img_win[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    tgt_win[y0 - top : y1 - top, x0 - left : x1 - left] = target[y0:y1, x0:x1]
    if win == crop:
        return img_win, tgt_win
    # 2. resample to crop x crop: bilinear for the photo, nearest for the labels
    img_out = np.asarray(Image.fromarray(img_win).resize((crop, crop), Image.Resampling.BILINEAR))
    tgt_out = np.asarray(Image.fromarray(tgt_win).resize((crop, crop), Image.Resampling.NEAREST))
    return img_out, tgt_out


def flip_rotate(
    image: np.ndarray, target: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and quarter turns (a nadir photo has no 'up'); square inputs keep their shape."""
    if cfg.hflip and rng.random() < 0.5:
        image, target = image[:, ::-1], target[:, ::-1]
    if cfg.vflip and rng.random() < 0.5:
        image, target = image[::-1], target[::-1]
    if cfg.rot90 and image.shape[0] == image.shape[1]:
        k = int(rng.integers(4))
        image, target = np.rot90(image, k), np.rot90(target, k)
    return np.ascontiguousarray(image), np.ascontiguousarray(target)


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [1 - strength, 1 + strength]."""
    if strength <= 0:
        return image
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    x = image.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - grey[..., None]) * s + grey[..., None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def augment(
    image: np.ndarray,
    target: np.ndarray,
    crop: int,
    cfg: AugmentConfig,
    ignore: int,
    rng: np.random.Generator,
    centre_on: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole training transform: scaled crop (class-centred when ``centre_on`` is given), flips and turns,
    colour jitter."""
    image, target = scaled_crop(image, target, crop, cfg.scale, ignore, rng, centre_on)
    image, target = flip_rotate(image, target, cfg, rng)
    return color_jitter(image, cfg.color_jitter, rng), target

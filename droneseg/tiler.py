"""Sliding-window inference in bounded memory: the only way a network meets a photo or an orthomosaic.

Validation during training, ``evaluate`` and ``predict`` (photos and orthomosaics) all call :meth:`Tiler.labels` (or, for validation's loss,
:meth:`Tiler.bands`) with the settings of :class:`InferenceConfig`, which ``model.json`` records and the command line
may override; so the same photo gives the same labels everywhere.

Contract
--------
* ``run``: float32 (B, 3, th, tw) in [0, 1] -> float logits (B, K, th, tw) (a torch net or an ONNX session).
* ``Tiler.bands(image)``: (h, w, 3) uint8 -> yields ``(y0, (n, w, K) float32)`` for working rows y0..y0+n, top to
  bottom, each row once (channels last: what the upsampler reads). A pixel's logits are the weighted mean over the
  tiles covering it; the window (cosine or Gaussian) is positive everywhere and flat on the sides that touch the
  image border, so every pixel has positive total weight and border pixels are not left to a window's faint tail.
* ``Tiler.labels(image, (H, W))``: (H, W) uint8 target indices: the argmax of the blended logits upsampled
  bilinearly (``align_corners=False``, as ``F.interpolate``), band by band: rows are interpolated at working
  width, columns only where two neighbouring source pixels disagree (:func:`upsampled_argmax`). This is the one
  upsampler of the package. ``luma="mean"|"median"`` marks pixels whose bright-class probability exceeds that
  statistic of the image's own map (the original 1-class mode); it needs the whole map, so luma keeps one (H, W)
  float32 map (96 MB for 6000x4000), never K of them. ``on_samples`` receives the upsampled K logits of every
  ``sample_stride``-th output row and column (for evaluation's PR/ROC histograms), never a full (K, H, W) map.
* ``Tiler.iter_labels(image, (H, W), region=, window_of=, maps=, skip=)``: the same loop as ``labels`` (one
  generator serves both), yielding the labels of a window of the output band by band, from an image that may be a
  window of the working image read on demand (an orthomosaic strip); the pixels are exactly those ``labels`` gives
  from the whole image when the window holds the tiles that cover them. Tiles ``skip`` names are not inferred.
* Memory: only the rows the next band of tiles overlaps are kept; the largest float buffer is about
  max(K·tile·w, batch·K·tile², BAND_ELEMS), never K·H·W. ``peak_buffer_elems`` records it (the network's own
  activations are not counted: they scale with batch·tile²).

>>> tiler = Tiler(lambda x: x[:, :2], num_classes=2, tile=4, overlap=0.5)
>>> [(y0, tuple(b.shape)) for y0, b in tiler.bands(np.zeros((6, 5, 3), np.uint8))]
[(0, (2, 5, 2)), (2, (4, 5, 2))]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from droneseg.errors import DataError

BAND_ELEMS = 1 << 22
"""Output rows per upsampling step are chosen so that K x rows x W (the most logits that step may interpolate)
stays within this many floats: 16 MB, whatever the photo size."""


def cosine_window(n: int) -> Tensor:
    """Hann window sampled at pixel centres: (n,) in (0, 1], never zero."""
    return torch.sin(math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n).pow(2).float()


def gaussian_window(n: int) -> Tensor:
    """Gaussian with sigma = n / 8 (nnU-Net's choice), peak 1: (n,), exp(-8) at the edges."""
    d = (torch.arange(n, dtype=torch.float64) + 0.5 - n / 2) / (n / 8)
    return torch.exp(-0.5 * d * d).float()


WINDOWS: dict[str, Callable[[int], Tensor]] = {"cosine": cosine_window, "gaussian": gaussian_window}
LumaThreshold = Literal["mean", "median"]
TileSkip = Callable[[int, int, int, int], bool]
"""``skip(y, x, th, tw)``: whether the tile at working row y, column x, of th x tw pixels holds no data."""


class WorkingImage(Protocol):
    """What the tiler reads tiles from: an (h, w, 3) uint8 array, or anything sliced like one."""

    shape: tuple[int, ...]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray: ...


SampleSink = Callable[[Tensor, Tensor], None]
"""``on_samples(ys, logits)``: output rows ``ys`` (m,) int64 and their upsampled logits (m, ceil(W / stride), K) at
columns 0, stride, 2·stride…"""


class InferenceConfig(BaseModel):
    """How a network meets a photo; saved in ``model.json``, overridable by ``evaluate`` and ``predict`` options."""

    model_config = ConfigDict(extra="forbid")
    tile: int = Field(default=512, ge=32, description="tile side at working scale, pixels (>= 32: smaller tiles "
                      "are mostly border and no network's receptive field fits)")
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0, description="share of a tile shared with its neighbour")
    batch: int = Field(default=4, ge=1, description="tiles per forward pass")
    blend: Literal["gaussian", "cosine"] = Field(default="gaussian", description="window weighting overlapping tiles")
    tta: bool = Field(default=False, description="average over horizontal, vertical and both flips")
    luma_threshold: LumaThreshold = Field(default="mean", description="luma scheme: split each map at its mean/median")

    def override(self, **values: object) -> InferenceConfig:
        """A copy with the values that are not None replaced; raises ValueError naming the option and the problem."""
        try:
            return InferenceConfig.model_validate({**self.model_dump(), **{k: v for k, v in values.items() if v is not None}})
        except ValidationError as exc:
            err = exc.errors()[0]
            key = str(err["loc"][0]) if err["loc"] else ""
            where = f"--{key.replace('_', '-')}" if values.get(key) is not None else f"inference.{key} in model.json"
            raise DataError(f"{where}: {err['msg']} (got {err.get('input')!r})") from None


class InferenceOverrides(BaseModel):
    """The command line's changes to a model's :class:`InferenceConfig` (``--tile``, ``--overlap``, ``--batch``,
    ``--blend``, ``--tta``, ``--luma-threshold``): None keeps the model's value. One object from the CLI down.

    >>> InferenceOverrides(tile=256).apply(InferenceConfig()).tile
    256
    """

    model_config = ConfigDict(extra="forbid")
    tile: int | None = None
    overlap: float | None = None
    batch: int | None = None
    blend: str | None = None
    tta: bool | None = None
    luma_threshold: str | None = None

    def apply(self, base: InferenceConfig) -> InferenceConfig:
        """``base`` with these values; raises DataError naming the option and the problem."""
        return base.override(**self.model_dump())


_LUMA_STATS = {
    "mean": lambda x: x.mean(-1),
    "median": lambda x: x.median(-1).values,  # lower median; torch.quantile refuses > 2**24 elements
}


def luma_threshold(prob: Tensor, how: LumaThreshold = "mean") -> Tensor:
    """Bright-class probability map (…, H, W) -> uint8 0/1 mask, 1 where prob > that map's own mean or median.

    The original project's 1-class mode: each image is split at its own statistic, not at 0.5.
    """
    if how not in _LUMA_STATS:
        raise DataError(f"unknown luma threshold {how!r}; choose from {sorted(_LUMA_STATS)}")
    if prob.ndim < 2 or not prob.is_floating_point():
        raise ValueError(f"prob must be a float (…, H, W) map, got {prob.dtype} of shape {tuple(prob.shape)}")
    level = _LUMA_STATS[how](prob.flatten(-2))  # (…,)
    return (prob > level[..., None, None]).to(torch.uint8)


def tile_origins(n: int, t: int, stride: int) -> list[int]:
    """Start offsets of tiles of length ``t`` covering 0..n with the given stride, the last one flush with the end."""
    if t >= n:
        return [0]
    return [*range(0, n - t, stride), n - t]


def axis_weights(origins: list[int], t: int, n: int, window: Tensor) -> list[Tensor]:
    """One (t,) weight per tile along an axis: the window, made flat (1) on a side that lies on the image border."""
    out = []
    for o in origins:
        w = window.clone()
        if o == 0:
            w[: t // 2] = 1.0
        if o + t >= n:
            w[t // 2 :] = 1.0
        out.append(w)
    return out


def flip_average(run: Callable[[Tensor], Tensor], x: Tensor, tta: bool) -> Tensor:
    """``run(x)``, or with ``tta`` its mean over no, horizontal, vertical and both flips (each flipped back)."""
    out = run(x)
    if tta:
        for dims in ((3,), (2,), (2, 3)):
            out = out + run(x.flip(dims)).flip(dims)
        out = out / 4
    return out


def source_index(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear source indices and weight of each output position (PyTorch's rule, ``align_corners=False``).

    -> (lo, hi, frac): output i = in[lo] * (1 - frac) + in[hi] * frac; (n_out,) int64, int64, float32.
    """
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    lo = src.floor().long().clamp_max(n_in - 1)
    return lo, (lo + 1).clamp_max(n_in - 1), (src - lo).float()


@dataclass(frozen=True)
class Columns:
    """How W output columns sample w source columns (bilinear, PyTorch's rule), grouped by source column pair."""

    left: Tensor  # (W,) int64: left source column of each output column
    right: Tensor  # (W,) int64: right source column (= left on the last column)
    fx: Tensor  # (W,) float32: weight of the right one
    start: Tensor  # (w - 1,) int64: first output column strictly between source columns j and j + 1 (fx > 0)
    count: Tensor  # (w - 1,) int64: how many output columns lie there
    span: int  # max(count)

    @classmethod
    def between(cls, w: int, W: int, device: torch.device, x0: int = 0, x1: int | None = None,
                source: tuple[int, int] | None = None) -> Columns:
        """Output columns ``x0..x1`` (default all W) of the w -> W mapping, numbered from 0. ``source`` = (offset,
        width): the w source columns held are columns offset..offset+width of a wider source; they must hold every
        column the output columns read. A window of the output then samples exactly as the whole output would."""
        left, right, fx = (v[x0:x1] for v in source_index(w, W))
        if source is not None:
            offset, w = source
            left, right = left - offset, right - offset
            if len(left) and (int(left.min()) < 0 or int(right.max()) >= w):
                raise ValueError(f"output columns {x0}..{x1} read source columns {int(left.min()) + offset}.."
                                 f"{int(right.max()) + offset}, outside the {offset}..{offset + w} held")
        key = 2 * left + (fx > 0).long()  # non-decreasing: fx grows within a pair; fx == 0 copies the left pixel
        pair = 2 * torch.arange(w - 1) + 1
        start = torch.searchsorted(key, pair)
        count = torch.searchsorted(key, pair, right=True) - start
        span = int(count.max()) if w > 1 and len(key) else 0
        return cls(left.to(device), right.to(device), fx.to(device), start.to(device), count.to(device), span)

    def interpolate(self, rows: Tensor, index: Tensor | None = None) -> Tensor:
        """(n, w, …) source columns -> (n, W', …) at the output columns ``index`` (default all W): exact bilinear."""
        left, right, fx = (self.left, self.right, self.fx) if index is None else (
            self.left[index], self.right[index], self.fx[index])
        fx = fx.view(1, -1, *([1] * (rows.ndim - 2)))
        return torch.lerp(rows.index_select(1, left), rows.index_select(1, right), fx)


PixelMap = Literal["confidence", "uncertainty"]
"""Per-pixel maps of the blended class probabilities that :meth:`Tiler.iter_labels` can add (:func:`pixel_maps`)."""


def pixel_maps(logits: Tensor, names: tuple[PixelMap, ...]) -> Tensor:
    """(…, K) blended logits -> (…, M) maps in [0, 1], one per name: ``confidence`` the top softmax probability;
    ``uncertainty`` 1 - margin, the margin being the top probability less the second (margin sampling for active
    learning: Scheffer, Decomain and Wrobel, "Active Hidden Markov Models for Information Extraction", IDA 2001).
    A pixel two classes share evenly is 1; one the model is sure of is 0. With one class the margin is 1.

    >>> pixel_maps(torch.tensor([[2.0, 2.0, -9.0], [9.0, -9.0, -9.0]]), ("uncertainty", "confidence")).round(decimals=3)
    tensor([[1.0000, 0.5000],
            [0.0000, 1.0000]])
    """
    prob = logits.float().softmax(-1)
    top = prob.topk(min(2, prob.shape[-1]), dim=-1).values
    second = top[..., 1] if top.shape[-1] > 1 else torch.zeros_like(top[..., 0])
    out = {"confidence": top[..., 0], "uncertainty": 1.0 - (top[..., 0] - second)}
    return torch.stack([out[n] for n in names], dim=-1)


def upsampled_argmax(
    rows: Tensor, cols: Columns, track: Callable[[Tensor], None] = lambda t: None
) -> tuple[Tensor, int]:
    """Argmax over K of logit rows upsampled bilinearly along x: (n, w, K) -> ((n, W) uint8, pixels interpolated).

    Where two neighbouring source pixels share a class, so does every mix of their logits: output pixels take
    their left source pixel's class, and only those between source pixels of different classes get K logits
    interpolated, in one (pairs, span, K) broadcast. Exact; on smooth label maps ~10x faster than upsampling
    all K channels, and no slower on noise.
    """
    n, w, k = rows.shape
    width = cols.left.numel()
    labels = rows.argmax(-1).to(torch.uint8)  # (n, w)
    out = torch.empty(n * width + 1, dtype=torch.uint8, device=rows.device)  # + 1: a slot for padding writes
    out[:-1].view(n, width).copy_(labels.index_select(1, cols.left))
    py, pj = (labels[:, :-1] != labels[:, 1:]).nonzero(as_tuple=True)  # (P,) neighbours of different classes
    if not py.numel() or not cols.span:
        return out[:-1].view(n, width), 0
    offsets = torch.arange(cols.span, device=rows.device)
    xs = cols.start[pj, None] + offsets  # (P, S) output columns, valid where offset < count
    valid = offsets < cols.count[pj, None]
    target = torch.where(valid, py[:, None] * width + xs, n * width)
    flat = rows.view(n * w, k)
    a = flat.index_select(0, py * w + pj)[:, None]  # (P, 1, K)
    b = flat.index_select(0, py * w + pj + 1)[:, None]
    mix = torch.lerp(a, b, cols.fx.take(xs.clamp_max(width - 1))[..., None])  # (P, S, K)
    track(mix)
    out.index_copy_(0, target.view(-1), mix.argmax(-1).to(torch.uint8).view(-1))
    return out[:-1].view(n, width), int(valid.sum())


@dataclass
class Tiler:
    """Tiled, blended inference with ``run`` over photos of any size (see the module contract)."""

    run: Callable[[Tensor], Tensor]
    num_classes: int
    tile: int = 512
    overlap: float = 0.25
    batch: int = 4
    tta: bool = False
    blend: str = "gaussian"
    device: torch.device = torch.device("cpu")
    peak_buffer_elems: int = 0  # largest float buffer so far, in elements
    tiles_run: int = 0  # tiles inferred so far
    tiles_skipped: int = 0  # tiles a skip predicate spared
    interpolated_pixels: int = 0  # output pixels whose K logits were interpolated (the rest took a shared class)

    def __post_init__(self) -> None:
        if self.tile < 1:
            raise DataError(f"tile must be >= 1 pixel, got {self.tile}")
        if not 0.0 <= self.overlap < 1.0:
            raise DataError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch < 1:
            raise DataError(f"batch must be >= 1, got {self.batch}")
        if self.blend not in WINDOWS:
            raise DataError(f"unknown blend {self.blend!r}; choose from {sorted(WINDOWS)}")

    @classmethod
    def from_config(cls, run: Callable[[Tensor], Tensor], num_classes: int, cfg: InferenceConfig,
                    device: torch.device | str = "cpu") -> Tiler:
        return cls(run, num_classes, cfg.tile, cfg.overlap, cfg.batch, cfg.tta, cfg.blend, torch.device(device))

    def stride(self, tile: int | None = None) -> int:
        """Pixels between the origins of neighbouring tiles of side ``tile`` (default: the configured one)."""
        return max(1, round((tile or self.tile) * (1 - self.overlap)))

    def _track(self, *buffers: Tensor) -> None:
        """Record the largest float buffer."""
        self.peak_buffer_elems = max(self.peak_buffer_elems, *(b.numel() for b in buffers))

    def _infer(self, x: Tensor) -> Tensor:
        """(B, 3, th, tw) -> (B, K, th, tw) float32, averaged over horizontal, vertical and both flips with ``tta``."""
        out = flip_average(self.run, x, self.tta).float()  # float32 also under autocast
        self._track(out)
        return out

    @torch.inference_mode()
    def bands(self, image: np.ndarray | Tensor) -> Iterator[tuple[int, Tensor]]:
        """(h, w, 3) uint8 -> (y0, (n, w, K) blended logits) per finished band of working rows (fresh tensors)."""
        for y0, band in self._bands(image):
            yield y0, band.clone()

    def _bands(self, image: np.ndarray | Tensor, skip: TileSkip | None = None) -> Iterator[tuple[int, Tensor]]:
        """As :meth:`bands`, but each band is a view of the accumulator, valid until the next one is asked for;
        tiles ``skip`` is true for are not inferred."""
        # 1. setup: tile grid, per-tile axis weights, the accumulator of one tile row's height (channels last)
        h, w = image.shape[:2]
        th, tw = min(self.tile, h), min(self.tile, w)
        ys = tile_origins(h, th, self.stride(th))
        xs = tile_origins(w, tw, self.stride(tw))
        make = WINDOWS[self.blend]
        wys = [v.to(self.device) for v in axis_weights(ys, th, h, make(th))]
        wxs = [v.to(self.device) for v in axis_weights(xs, tw, w, make(tw))]
        acc = torch.zeros((th, w, self.num_classes), device=self.device)  # rows y..y+th of the working image
        wsum = torch.zeros((th, w, 1), device=self.device)
        self._track(acc)
        # 2. loop: one row of tiles at a time, in batches along the row
        for r, y in enumerate(ys):
            row = [(c, x) for c, x in enumerate(xs) if skip is None or not skip(y, x, th, tw)]
            self.tiles_skipped += len(xs) - len(row)
            for c0 in range(0, len(row), self.batch):
                cols = [x for _, x in row[c0 : c0 + self.batch]]
                self.tiles_run += len(cols)
                if isinstance(image, Tensor):
                    crops = torch.stack([image[y : y + th, x : x + tw] for x in cols]).to(self.device)
                else:  # copies of the tiles only: the photo may be a read-only memory map of 72 MB
                    crops = torch.from_numpy(np.stack([image[y : y + th, x : x + tw] for x in cols])).to(self.device)
                logits = self._infer(crops.permute(0, 3, 1, 2).float().div_(255.0))  # (B, K, th, tw)
                for b, (c, x) in enumerate(row[c0 : c0 + self.batch]):
                    weight = (wys[r][:, None] * wxs[c][None, :])[..., None]  # (th, tw, 1)
                    acc[:, x : x + tw].addcmul_(logits[b].permute(1, 2, 0), weight)
                    wsum[:, x : x + tw] += weight
                del logits
            # 3. rows above the next tile row are final: emit them, then shift the rest up in place
            n = (ys[r + 1] if r + 1 < len(ys) else h) - y
            if skip is not None:  # pixels under skipped tiles only: logits 0, not 0 / 0
                wsum[:n].clamp_(min=torch.finfo(torch.float32).tiny)
            yield y, acc[:n].div_(wsum[:n])  # (n, w, K)
            for i in range(0, th - n, n):  # chunks of n rows never overlap their source: no full-size temporary
                m = min(n, th - n - i)
                acc[i : i + m].copy_(acc[i + n : i + n + m])
                wsum[i : i + m].copy_(wsum[i + n : i + n + m])
            acc[th - n :].zero_()
            wsum[th - n :].zero_()

    @torch.inference_mode()
    def labels(
        self,
        image: np.ndarray | Tensor,
        size: tuple[int, int],
        luma: LumaThreshold | None = None,
        on_samples: SampleSink | None = None,
        sample_stride: int = 1,
    ) -> np.ndarray:
        """(h, w, 3) uint8 working-size photo -> (H, W) uint8 targets at ``size`` = (H, W) (see the contract)."""
        H, W = size
        out = np.empty((H, W), np.float32 if luma else np.uint8)
        for o0, values, _ in self._rows(image, size, luma is not None, on_samples, sample_stride):
            out[o0 : o0 + len(values)] = values
        if luma:
            return luma_threshold(torch.from_numpy(out), luma).numpy()
        return out

    @torch.inference_mode()
    def iter_labels(
        self,
        image: np.ndarray | WorkingImage,
        size: tuple[int, int],
        region: tuple[int, int, int, int] | None = None,
        window_of: tuple[int, int, int, int] | None = None,
        maps: tuple[PixelMap, ...] = (),
        skip: TileSkip | None = None,
    ) -> Iterator[tuple[int, np.ndarray, dict[str, np.ndarray]]]:
        """Labels of a window of the (H, W) output, in bands of rows, top to bottom: yields (first row, (n, w')
        uint8 targets, {map name: (n, w') uint8} for ``maps``), rows counted from the window's top.

        ``region`` = (y0, y1, x0, x1): that window of the output (default all of it), exactly as :meth:`labels`
        would give those pixels. ``window_of`` = (row, col, hg, wg): ``image`` is the window at (row, col) of a
        working image of hg x wg, the one the output is upsampled from (an orthomosaic strip read with context);
        it must hold the working pixels the region reads (else ValueError). ``image`` may be any object with
        ``shape`` and numpy slicing (read on demand: :class:`droneseg.geo.raster.WorkingWindow`). ``maps``: per-pixel
        maps of the blended class probabilities (:func:`pixel_maps`), taken at working resolution and upsampled
        bilinearly (a K-channel softmax at output size would cost K times the memory). ``skip(y, x, th, tw)``: tiles it is
        true for are not inferred (no data under them); pixels no tile covers get logits 0.
        """
        yield from self._rows(image, size, False, None, 1, region, window_of, maps, skip)

    def _rows(self, image, size: tuple[int, int], prob: bool, on_samples: SampleSink | None, sample_stride: int,
              region: tuple[int, int, int, int] | None = None, window_of: tuple[int, int, int, int] | None = None,
              maps: tuple[PixelMap, ...] = (), skip: TileSkip | None = None
              ) -> Iterator[tuple[int, np.ndarray, dict[str, np.ndarray]]]:
        """The one upsampling loop behind :meth:`labels` and :meth:`iter_labels`: yields (first row of the window,
        labels (n, w') uint8 or, with ``prob``, the bright-class probability (n, w') float32, {map: (n, w')})."""
        # 1. setup: PyTorch's bilinear source rows and columns of every output row and column
        h, w = image.shape[:2]
        H, W = size
        ry0, ry1, rx0, rx1 = region or (0, H, 0, W)
        if not (0 <= ry0 < ry1 <= H and 0 <= rx0 < rx1 <= W):
            raise ValueError(f"region {region} is not a window of the {H}x{W} output")
        if on_samples is not None and (region is not None or window_of is not None):
            raise ValueError("on_samples needs the whole output, not a region")
        oy, ox, hg, wg = window_of or (0, 0, h, w)
        top, bottom, fy = source_index(hg, H)
        top, bottom = top - oy, bottom - oy  # rows of the window held
        if int(top[ry0]) < 0 or int(bottom[ry1 - 1]) >= h:
            raise ValueError(f"output rows {ry0}..{ry1} read working rows {int(top[ry0]) + oy}..{int(bottom[ry1 - 1]) + oy}"
                             f", outside the {oy}..{oy + h} held")
        fy = fy.to(self.device)
        cols = Columns.between(wg, W, self.device, rx0, rx1, source=(ox, w))
        sampled_cols = torch.arange(0, W, sample_stride, device=self.device)
        rows_per_band = max(1, BAND_ELEMS // (self.num_classes * max(w, rx1 - rx0)))
        held, held_y0, Y = None, 0, ry0  # finished working rows held_y0.. as (m, w, K); the next output row
        held_maps = None  # with maps: (m, w, M) per-pixel maps of the held rows, in [0, 1]
        # 2. loop: as working rows finish, upsample every output row whose two source rows are ready
        for y0, band in self._bands(image, skip):
            if maps:
                band_maps = pixel_maps(band, maps)
                held_maps = band_maps if held_maps is None or not len(held_maps) else torch.cat([held_maps, band_maps])
            held = band if held is None or not len(held) else torch.cat([held, band])
            ready = y0 + band.shape[0]
            Y_end = min(ry1, int(torch.searchsorted(bottom, ready)))  # rows whose lower source row has arrived
            for Y0 in range(Y, Y_end, rows_per_band):
                Y1 = min(Y_end, Y0 + rows_per_band)
                t, b = (top[Y0:Y1] - held_y0).to(self.device), (bottom[Y0:Y1] - held_y0).to(self.device)
                rows = torch.lerp(held[t], held[b], fy[Y0:Y1, None, None])  # (n, w, K): output rows, source columns
                self._track(rows)
                if on_samples is not None:  # every stride-th output row and column, all K logits
                    first = -Y0 % sample_stride
                    if first < Y1 - Y0:
                        picked = torch.arange(first, Y1 - Y0, sample_stride, device=self.device)
                        on_samples(picked + Y0, cols.interpolate(rows.index_select(0, picked), sampled_cols))
                if prob:  # bright-minus-dark logit: softmax[1] is its sigmoid; it upsamples like logits
                    values = torch.sigmoid(cols.interpolate(rows[..., 1] - rows[..., 0])).cpu().numpy()
                else:
                    labels, mixed = upsampled_argmax(rows, cols, self._track)
                    values = labels.cpu().numpy()
                    self.interpolated_pixels += mixed
                extra = {}
                if maps:
                    mixed_maps = torch.lerp(held_maps[t], held_maps[b], fy[Y0:Y1, None, None])  # (n, w, M)
                    for m, name in enumerate(maps):
                        extra[name] = (cols.interpolate(mixed_maps[..., m]).mul_(255).round_().to(torch.uint8)
                                       .cpu().numpy())
                yield Y0 - ry0, values, extra
            Y = max(Y, Y_end)  # bands above the region end before its first row
            self._track(held)
            if Y == ry1:  # every output row is written: the remaining tiles cannot change any
                break
            # 3. keep only the working rows later output rows read (a copy: the band is a view); when the next
            # output row reads beyond what has arrived, nothing is kept and the next band starts where it starts
            keep_from = min(int(top[Y]) - held_y0, held.shape[0])
            held, held_y0 = held[keep_from:].clone(), held_y0 + keep_from
            if held_maps is not None:
                held_maps = held_maps[keep_from:].clone()

"""``droneseg evaluate``: honest numbers over a whole split, at each mask's native resolution.

Setup → loop → finish. For every image of the split (never a sample of it): the model runs at its
working size (optionally with flip TTA), its logits are upsampled bilinearly to the mask's native
size band by band (a 6000x4000 mask never needs its full (K, H, W) float map), and each band feeds
one pooled confusion matrix and the binned PR/ROC histograms. Then :func:`droneseg.report.write_evaluation`
writes ``eval/<split>/``. Imports no Lightning.

>>> upsample_rows(torch.arange(4.).view(1, 2, 2), (4, 4), 0, 4).shape
torch.Size([1, 4, 4])
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from droneseg.classes import DataError
from droneseg.data.cache import build_cache
from droneseg.data.layout import Sample, find_layout, read_split_file
from droneseg.io import read_mask, save_png
from droneseg.metrics import PerImageIoU, SegmentationMetrics, confusion_to_metrics, luma_threshold
from droneseg.plots import prediction_panels
from droneseg.report import ImageResult, best_and_worst, write_evaluation
from droneseg.runs import load_model, resolve_model_path
from droneseg.schemes import LabelScheme
from droneseg.tiler import flip_average, source_index

BAND_PIXELS = 1 << 21  # output pixels per band: bounds the (K, rows, W) float temporaries


def upsample_rows(logits: torch.Tensor, size: tuple[int, int], y0: int, y1: int) -> torch.Tensor:
    """Rows y0..y1 of ``F.interpolate(logits, size, mode="bilinear", align_corners=False)``.

    (K, h, w) -> (K, y1 - y0, W). Bilinear is separable: rows are blended here with PyTorch's own
    source-index rule, columns by ``F.interpolate`` on the band, so bands tile the full result exactly.
    """
    h = logits.shape[1]
    H, W = size
    top, bottom, frac = source_index(h, H)
    top, bottom, frac = top[y0:y1], bottom[y0:y1], frac[y0:y1].to(logits)[None, :, None]  # frac (1, n, 1)
    rows = logits[:, top] * (1 - frac) + logits[:, bottom] * frac  # (K, n, w)
    return F.interpolate(rows[None], size=(y1 - y0, W), mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def infer_logits(net: torch.nn.Module, image: np.ndarray, device: torch.device, tta: bool) -> torch.Tensor:
    """(h, w, 3) uint8 at working size -> (K, h, w) float logits, averaged over flips with ``tta``."""
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].to(device).float() / 255.0
    return flip_average(net, x, tta)[0]


def split_ids(split: str, model_dir: Path, data_root: Path) -> tuple[list[str], str]:
    """Ids of ``split``: the run's own split file, else the dataset's, else a file path. -> (ids, name)."""
    if split in ("train", "val", "test"):
        for folder in (model_dir / "splits", data_root / "splits"):
            path = folder / f"{split}.txt"
            if path.is_file() and read_split_file(path):  # a run writes an empty test.txt when it has none
                return read_split_file(path), split
        raise DataError(f"no {split}.txt in {model_dir / 'splits'} or {data_root / 'splits'}")
    path = Path(split)
    if not path.is_file():
        raise DataError(f"--split {split!r}: not train/val/test or a file of ids")
    return read_split_file(path), path.stem


def _select(samples: list[Sample], ids: list[str], where: str) -> list[Sample]:
    by_id = {s.id: s for s in samples}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DataError(f"{where}: {len(missing)} ids have no image/mask pair in the data, e.g. {missing[0]!r}")
    if not ids:
        raise DataError(f"{where}: the split is empty")
    return [by_id[i] for i in ids]


def _output_folder(out: Path | None, model_dir: Path, split_name: str) -> Path:
    """``out`` if new or empty; else ``<run>/eval/<split>``, then ``-2``, ``-3``…: an evaluation is never overwritten."""
    if out is not None:
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise DataError(f"{out}: exists and is not empty; evaluate never overwrites earlier results")
        return out
    base = model_dir / "eval" / split_name
    folder, i = base, 1
    while folder.exists() and any(folder.iterdir()):
        i += 1
        folder = base.with_name(f"{split_name}-{i}")
    return folder


def _downsample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour (H, W) -> shape, for figures."""
    ys = (np.arange(shape[0]) * mask.shape[0] // shape[0])[:, None]
    xs = (np.arange(shape[1]) * mask.shape[1] // shape[1])[None, :]
    return mask[ys, xs]


def evaluate(
    model: str | Path,
    data: str | Path,
    split: str = "val",
    tta: bool = False,
    save_masks: bool = False,
    figures: int | None = None,
    out: Path | None = None,
    luma: str = "mean",
    device: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Path:
    """Evaluate ``model`` on ``split`` of ``data``; returns the folder written (``<run>/eval/<split>``).

    Photos are resized to the model's working size with the filter it was trained with (``model.json``).
    """
    t_start = time.time()
    # 1. setup: model, scheme, the split's samples, cached working-size images
    model_dir = resolve_model_path(model)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net, info = load_model(model_dir, dev)
    scheme: LabelScheme = info.label_scheme()
    layout = find_layout(data)
    if layout.table != scheme.table:
        raise DataError(f"{data}: its class table differs from the one {model_dir / 'model.json'} was trained with")
    ids, split_name = split_ids(split, model_dir, Path(data))
    samples = _select(layout.samples, ids, split)
    folder = _output_folder(out, model_dir, split_name)
    entries = build_cache(samples, layout.table, info.long_side, cache_dir,
                          image_filter=info.extra.get("image_filter", "area"), progress=progress)
    # one process scores the whole split, also when called on rank 0 at the end of DDP training: no sync
    metrics = SegmentationMetrics.from_scheme(scheme, curves=True, sync_on_compute=False).to(dev)
    per_image = PerImageIoU(scheme.num_classes, scheme.ignore_index, sync_on_compute=False).to(dev)
    pred_cm = np.zeros((scheme.num_classes, scheme.num_classes), np.int64)  # of the labels written (luma: thresholded)
    results: list[ImageResult] = []
    small: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # id -> target, prediction at working size, for figures
    n_fig = len(samples) if figures is None else min(figures, len(samples))

    # 2. loop: one image at a time, its native mask in row bands
    for sample, entry in tqdm(list(zip(samples, entries)), desc=f"evaluate {split_name}", unit="img",
                              disable=not progress):
        image, _ = entry.load()
        target_np = scheme.encode(read_mask(sample.mask, sample.mask_kind, layout.table))  # (H, W) native
        H, W = target_np.shape
        logits = infer_logits(net, image, dev, tta)  # (K, h, w)
        target = torch.from_numpy(target_np).to(dev)
        pred = torch.empty((H, W), dtype=torch.uint8, device=dev)
        prob1 = torch.empty((H, W), dtype=torch.float32, device=dev) if scheme.is_luma else None
        rows = max(1, BAND_PIXELS // W)
        for y0 in range(0, H, rows):
            y1 = min(H, y0 + rows)
            band = upsample_rows(logits, (H, W), y0, y1)  # (K, n, W)
            metrics.update(band[None], target[None, y0:y1].long())
            pred[y0:y1] = band.argmax(0)
            if prob1 is not None:
                prob1[y0:y1] = band.softmax(0)[1]
        if prob1 is not None:  # the original's 1-class mode: threshold at the image's own mean/median
            pred = luma_threshold(prob1, luma)
        per_image.update(pred, target)
        pred_np = pred.cpu().numpy()
        valid = target_np != scheme.ignore_index
        cm_img = np.bincount(target_np[valid].astype(np.int64) * scheme.num_classes + pred_np[valid],
                             minlength=scheme.num_classes**2).reshape(scheme.num_classes, -1)
        pred_cm += cm_img
        img_metrics = confusion_to_metrics(cm_img, scheme.names)
        small[sample.id] = (_downsample(target_np, image.shape[:2]), _downsample(pred_np, image.shape[:2]))
        if save_masks:
            out_mask = pred_np if scheme.is_luma else scheme.decode(pred_np)
            save_png(folder / "masks" / f"{sample.id}.png", out_mask)
        results.append(ImageResult(sample.id, img_metrics["miou"], img_metrics["pixel_accuracy"], None))

    # 3. finish: figures (the first N images, and the report's best and worst), pooled numbers, files, report
    best, worst = best_and_worst(results)
    wanted = {r.id for r in results[:n_fig]} | {r.id for r in best + worst}
    for k, (sample, entry) in enumerate(zip(samples, entries)):
        if sample.id in wanted:
            panel = folder / "predictions" / f"{sample.id}.png"
            prediction_panels([(sample.id, np.asarray(entry.load()[0]), *small[sample.id])], scheme, panel)
            results[k] = replace(results[k], panel=panel)
    result = metrics.compute()
    confusion = metrics.confmat.cpu().numpy()
    if scheme.is_luma:
        confusion = pred_cm
        curves = {k: result[k] for k in ("curves", "mean_ap", "mean_auc", "threshold_table") if k in result}
        ap_auc = {e["name"]: (e.get("ap"), e.get("auc")) for e in result["per_class"]}
        result = {**confusion_to_metrics(confusion, scheme.names), **curves, "luma_threshold": luma}
        for e in result["per_class"]:
            e["ap"], e["auc"] = ap_auc[e["name"]]
    context = {
        "model": str(model_dir),
        "data": str(Path(data).resolve()),
        "split": split_name,
        "images": len(samples),
        "tta": tta,
        "resolution": "native mask resolution (logits upsampled bilinearly, then argmax)",
        "working_long_side": info.long_side,
        "device": str(dev),
        "seconds": round(time.time() - t_start, 2),
        "time": datetime.now().strftime("%Y-%m-%d %H:%M"),
    }
    curves_png = model_dir / "training_curves.png"
    write_evaluation(folder, scheme, result, confusion, per_image.compute(), results, context,
                     training_curves=curves_png if curves_png.is_file() else None)
    return folder


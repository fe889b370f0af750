"""``droneseg evaluate``: honest numbers over a whole split, at each mask's native resolution.

Setup → loop → finish. For every image of the split (never a sample of it) the network meets the working-size
photo through the :class:`~droneseg.session.ModelSession`'s :class:`~droneseg.tiler.Tiler`, exactly as in
validation and ``predict`` (tile, overlap, window and TTA from ``model.json``, overridable; a run folder or an
exported ``.onnx``, on the torch or ONNX Runtime backend); its labels come out at the mask's native size band by band, so a 6000x4000
photo never needs a (K, H, W) float map. Per image:

* one (K, K) confusion matrix (:func:`~droneseg.metrics.image_confusion`): summed, it is the pooled matrix of every
  headline number; alone, it gives the image's mIoU (per-image table, figure choice);
* PR/ROC histograms from the upsampled logits of every s-th native row and column, s the smallest stride that keeps
  at most :data:`CURVE_PIXELS` per image (s = 1, every pixel, up to 4.2 MP; 3 for a 6000x4000 photo);
* a small copy of target and prediction on disk (a temporary folder), for the figures drawn at the end: the
  ``figures`` images spread from best to worst. Memory does not grow with the number of images.

Then :func:`droneseg.report.write_evaluation` writes ``eval/<split>/``. Imports no Lightning.
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from droneseg.artifact import ModelInfo
from droneseg.classes import DataError
from droneseg.cluster import broadcast_object, detect, gather_objects, process_group
from droneseg.data.cache import build_cache
from droneseg.data.layout import DataSource, Layout, SurveyOptions
from droneseg.data.splits import assigned_splits, named_split, read_split_file, select
from droneseg.files import atomic_write_text, save_png
from droneseg.images import read_mask
from droneseg.metrics import PerImageIoU, SegmentationMetrics, confusion_to_metrics, image_confusion
from droneseg.report import ImageResult, spread, write_evaluation
from droneseg.report.plots import prediction_panels
from droneseg.runs import read_training
from droneseg.schemes import Numbering
from droneseg.session import ModelSession, open_session
from droneseg.tiler import InferenceOverrides

CURVE_PIXELS = 1 << 22
"""Most native pixels per image that feed the PR/ROC histograms; larger images are sampled on a regular grid."""
FIGURE_SIDE = 768
"""Long side of the copies of target and prediction kept for figures."""
DEFAULT_FIGURES = 6


def curve_stride(height: int, width: int) -> int:
    """Smallest s such that every s-th row and column of an (height, width) image hold at most CURVE_PIXELS.

    >>> curve_stride(1000, 1500), curve_stride(4000, 6000)
    (1, 3)
    """
    s = max(1, math.ceil(math.sqrt(height * width / CURVE_PIXELS)))
    while math.ceil(height / s) * math.ceil(width / s) > CURVE_PIXELS:
        s += 1
    return s


def trained_on(info: ModelInfo, layout: Layout, model_dir: Path | None) -> bool:
    """Whether ``layout`` is the dataset the model was trained on: the same content fingerprint, wherever it lies.

    Models written before fingerprints were recorded count as trained on any dataset holding every id of their
    run's split files (the rule they were evaluated by), with a warning.
    """
    if info.dataset:
        return info.dataset.fingerprint == layout.fingerprint()
    if model_dir is None:  # an exported file outside its run folder: no run splits to use
        return False
    ids = {s.id for s in layout.samples}
    files = sorted((model_dir / "splits").glob("*.txt"))
    if not files:  # a model folder without a run around it: only the dataset's splits can apply
        return False
    same = all(set(read_split_file(f)) <= ids for f in files)
    warnings.warn(f"{model_dir / 'model.json'} records no training dataset; "
                  f"{'using' if same else 'not using'} the run's split files", stacklevel=2)
    return same


def find_split(data: DataSource, info: ModelInfo, model_dir: Path | None, split: str
          ) -> tuple[Layout, bool, list[str], str, Path]:
    """The layout to score, whether the model was trained on it, and the split's (ids, name, file).

    A survey is cut into blocks as the run cut it (its GSD, block and buffer in ``model.json``) and, when it is the
    survey the model was trained on, split as the run split it (its ``splits/``); another survey's blocks are
    drawn with the default shares."""
    survey = data.is_survey()
    options = SurveyOptions(image_filter=info.image_filter, grid=info.extra.get("survey_grid")) if survey else None
    layout = data.find(options)
    if layout.table != info.scheme.table:
        raise DataError(f"{data}: its class table differs from the one the model was trained with")
    same = trained_on(info, layout, model_dir)
    if survey:
        run_splits = model_dir / "splits" if same and model_dir is not None else None
        if run_splits is not None and (run_splits / "train.txt").is_file():  # the run's split; no geometry again
            from droneseg.data.layout import survey_layout

            layout = survey_layout(layout.plan.reassigned(assigned_splits(run_splits)))
        if split in layout.splits:
            if not layout.splits[split]:
                raise DataError(f"{data}: no block of the survey is in the {split} split")
            where = run_splits / f"{split}.txt" if run_splits is not None else Path(str(data.root))
            return layout, same, sorted(layout.splits[split]), split, where
    ids, split_name, split_file = named_split(split, model_dir / "splits" if same else None, data.splits_root())
    return layout, same, ids, split_name, split_file


def _survey_map(layout: Layout, results: list[ImageResult], folder: Path) -> tuple[Path, str]:
    """A survey's scored blocks: ``per_block.csv`` (id, split, raster, bounds in its CRS, mIoU, pixel accuracy) and
    ``blocks_map.png`` (every block by split, the scored ones filled by their mIoU) -> (the map, its caption)."""
    from droneseg.geo.survey import block_map

    folder.mkdir(parents=True, exist_ok=True)
    blocks = layout.plan.blocks
    rows = ["block,split,raster,left,bottom,right,top,miou,pixel_accuracy\n"]
    for r in results:
        b = blocks[r.id]
        cells = [r.id, b.split, Path(b.raster).name, *(f"{v:.3f}" for v in b.bounds),
                 "" if r.miou is None else f"{r.miou:.6f}", "" if r.pixel_accuracy is None else f"{r.pixel_accuracy:.6f}"]
        rows.append(",".join(f'"{c}"' if "," in c else c for c in cells) + "\n")
    atomic_write_text(folder / "per_block.csv", "".join(rows))
    path = block_map(layout.plan, folder / "blocks_map.png", {r.id: r.miou for r in results})
    return path, (f"{len(results)} scored blocks filled by their mIoU (per_block.csv) over a preview of the "
                  "orthomosaic; outlines: every block by split; hatched: the buffers between splits, out of every "
                  "loss and score.")


def _output_folder(out: Path | None, model_dir: Path | None, split_name: str) -> Path:
    """``out`` if new or empty; else ``<run>/eval/<split>``, then ``-2``, ``-3``…: an evaluation is never overwritten."""
    if out is not None:
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise DataError(f"{out}: exists and is not empty; evaluate never overwrites earlier results")
        return out
    if model_dir is None:
        raise DataError("an exported model outside its run folder has no run to write into: pass --out DIR")
    base = model_dir / "eval" / split_name
    folder, i = base, 1
    while folder.exists() and any(folder.iterdir()):
        i += 1
        folder = base.with_name(f"{split_name}-{i}")
    return folder


def _downsample(mask: np.ndarray, long_side: int) -> np.ndarray:
    """Nearest-neighbour (H, W) -> long side at most ``long_side``, for figures."""
    H, W = mask.shape[:2]
    s = min(1.0, long_side / max(H, W))
    ys = (np.arange(max(1, round(H * s))) * H // max(1, round(H * s)))[:, None]
    xs = (np.arange(max(1, round(W * s))) * W // max(1, round(W * s)))[None, :]
    return mask[ys, xs]


def evaluate(
    model: str | Path,
    data: DataSource | str | Path,
    split: str = "val",
    inference: InferenceOverrides | None = None,
    backend: str | None = None,
    save_masks: bool = False,
    numbering: Numbering = "auto",
    figures: int = DEFAULT_FIGURES,
    out: Path | None = None,
    device: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    training: dict | None = None,
) -> Path:
    """Evaluate ``model`` (a run folder, its model.json, or an exported .onnx) on ``split`` of ``data`` with the
    ``backend`` (:data:`droneseg.session.BACKENDS`); returns the folder written (``<run>/eval/<split>``).

    ``inference``: changes to the model's inference settings. Photos are resized to the model's working size with
    the filter it was trained with. ``training``: what training did (``train_summary.json``'s fields; default: the
    run's own file where it has one), shown in the report. Raises DataError for a dataset, split or output folder
    that cannot be used.
    """
    env = detect()
    with process_group(env) as (rank, world):
        session = open_session(model, backend, device, env.local_rank)
        training = training if training is not None else read_training(session.folder)
        return _evaluate(session, DataSource.of(data), split, inference, save_masks, numbering, figures, out,
                         cache_dir, progress, rank, world, training)


def _evaluate(session: ModelSession, data: DataSource, split: str, inference: InferenceOverrides | None,
              save_masks: bool, numbering: Numbering, figures: int, out: Path | None, cache_dir: Path | None,
              progress: bool, rank: int, world: int, training: dict | None = None) -> Path:
    """:func:`evaluate` as rank ``rank`` of ``world`` (each scores every world-th image; rank 0 writes)."""
    t_start = time.time()
    # 1. setup: model, scheme, the split's samples, cached working-size images, the tiler
    info, model_dir, dev = session.info, session.folder, session.device
    scheme = session.scheme
    written = scheme.written(numbering)  # checked also when no mask is saved: a wrong option is an error
    settings = session.settings(inference)
    layout, same, ids, split_name, split_file = find_split(data, info, model_dir, split)
    all_samples = select(layout.samples, ids, split_file)
    # under DDP (the end of training, torchrun, srun) each rank scores its shard
    folder = _output_folder(out, model_dir, split_name) if rank == 0 else None
    folder = broadcast_object(folder, world)
    samples = all_samples[rank::world]
    entries = build_cache(samples, layout.table, info.long_side, cache_dir, image_filter=info.image_filter,
                          progress=progress and rank == 0)
    tiler = session.tiler(settings)
    k, ignore = scheme.num_classes, scheme.ignore_index
    # the confusion matrices and curve histograms are sums: torchmetrics adds them up across ranks
    metrics = SegmentationMetrics.from_scheme(scheme, curves=True, sync_on_compute=world > 1).to(dev)
    per_image = PerImageIoU(k, ignore, sync_on_compute=world > 1)
    results: list[ImageResult] = []
    strides: set[int] = set()
    small = tempfile.TemporaryDirectory(prefix="droneseg-eval-")  # figure copies: disk, not memory

    # 2. loop: one image at a time; labels at the mask's native size, band by band inside the tiler
    for n, (sample, entry) in enumerate(tqdm(list(zip(samples, entries)), desc=f"evaluate {split_name}",
                                             unit="img", disable=not progress or rank > 0)):
        image, cached_mask = entry.load()  # (h, w, 3) uint8, memory-mapped
        # (H, W) uint8 at the mask's native size; a survey block's labels are rasterised at its working GSD
        native = np.asarray(cached_mask) if sample.block is not None else \
            read_mask(sample.mask, sample.mask_kind, layout.table)
        target = scheme.encode(native)
        H, W = target.shape
        stride = curve_stride(H, W)
        strides.add(stride)
        columns = np.arange(0, W, stride)

        def sample_scores(ys: torch.Tensor, logits: torch.Tensor) -> None:  # (m,), (m, len(columns), K)
            t = torch.from_numpy(target[ys.cpu().numpy()][:, columns]).to(logits.device)
            metrics.update_scores(logits.reshape(-1, k), t.reshape(-1))

        pred = tiler.labels(image, (H, W), luma=settings.luma_threshold if scheme.is_luma else None,
                            on_samples=sample_scores, sample_stride=stride)  # (H, W) uint8
        cm = image_confusion(target, pred, k, ignore)
        metrics.update_confusion(cm)
        per_image.update_confusion(cm)
        scores = confusion_to_metrics(cm, scheme.names)
        results.append(ImageResult(sample.id, scores["miou"], scores["pixel_accuracy"], None))
        np.savez_compressed(Path(small.name) / f"{n}.npz", target=_downsample(target, FIGURE_SIDE),
                            pred=_downsample(pred, FIGURE_SIDE))
        if save_masks:
            save_png(folder / "masks" / f"{sample.id}.png", written.apply(pred))
        del target, pred

    # 3. finish: figures of the chosen images (drawn by rank 0 from the owners' small copies), pooled numbers
    index = {r.id: n for n, r in enumerate(results)}  # this rank's images
    order = {s.id: i for i, s in enumerate(all_samples)}
    results = sorted((r for part in gather_objects(results, world) for r in part), key=lambda r: order[r.id])
    mine = {}
    for chosen in spread(results, figures):
        if chosen.id in index:
            n = index[chosen.id]
            copies = np.load(Path(small.name) / f"{n}.npz")
            photo = np.asarray(entries[n].load()[0])
            photo = np.asarray(Image.fromarray(photo).resize(copies["target"].shape[::-1], Image.Resampling.BOX))
            mine[chosen.id] = (photo, copies["target"], copies["pred"])
    small.cleanup()
    panels = {}
    for part in gather_objects(mine, world):
        panels.update(part)
    results = [replace(r, panel=folder / "predictions" / f"{r.id}.png") if r.id in panels else r for r in results]
    if rank == 0:
        for image_id, (photo, target, pred) in panels.items():
            prediction_panels([(image_id, photo, target, pred)], scheme, folder / "predictions" / f"{image_id}.png")
        if save_masks:
            atomic_write_text(folder / "masks" / "class_dict.csv", written.to_csv())
    result = metrics.compute()  # synchronised: every rank calls it
    per_image_scores = per_image.compute()
    confmat = metrics.pooled_confusion()
    if rank > 0:
        return folder
    if scheme.is_luma:
        result["luma_threshold"] = settings.luma_threshold
    context = {
        "model": str(model_dir) if model_dir is not None else None,
        "backend": session.backend,
        "data": str(data.root.resolve()) if data.root is not None else str(data),
        "dataset_fingerprint": layout.fingerprint(),
        "trained_on_this_dataset": same,
        "split": split_name,
        "split_file": str(Path(split_file).resolve()),
        "images": len(all_samples),
        "ranks": world,
        "tta": settings.tta,
        "inference": settings.model_dump(),
        "resolution": "native mask resolution (tiled logits upsampled bilinearly, then argmax)",
        "curves": "every pixel" if strides == {1} else
                  f"a regular grid of native pixels, rows and columns {max(strides)} apart in the largest images",
        "working_long_side": info.long_side,
        "masks": f"masks/ in {written.numbering} numbering (masks/class_dict.csv)" if save_masks else None,
        "device": str(dev),
        "seconds": round(time.time() - t_start, 2),
        "time": datetime.now().strftime("%Y-%m-%d %H:%M"),
    }
    curves_png = model_dir / "training_curves.png" if model_dir is not None else None
    map_figure = _survey_map(layout, results, folder) if layout.plan is not None else None
    write_evaluation(folder, scheme, result, confmat, per_image_scores, results, context,
                     training_curves=curves_png if curves_png is not None and curves_png.is_file() else None,
                     training=training, map_figure=map_figure)
    return folder

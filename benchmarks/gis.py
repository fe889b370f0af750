"""Does GeoDeep (WebODM's AI library) give what ``droneseg predict`` gives, with the ``export --format qgis`` file,
on real imagery? Each val photo of a dataset becomes a GeoTIFF at the model's working size and GSD (so neither
tool resamples); GeoDeep and ``droneseg predict`` segment it; the result: the share of pixels where their classes
agree, and each one's pooled mIoU against the photos' masks.

    python benchmarks/gis.py --model RUN --data ../shared/data/semantic-drone-dev --gsd 0.15625 [--out JSON]

``--gsd``: metres per working pixel, for a model trained without one (the dev photos have no stated GSD; 0.15625 is
the survey benchmark's 8 cm photos at the ``full`` preset's 768-px working size). The GeoTIFFs are derived from the
dataset: they live in a temporary folder and are never committed. GeoDeep (AGPL-3.0) is in the ``test`` extra.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import droneseg

ROOT = Path(__file__).resolve().parents[1]


def confusion(pred: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """(k, k) pixel counts, rows the truth; pixels whose truth is outside 0..k-1 (ignored) left out."""
    keep = truth < k
    return np.bincount(truth[keep].astype(np.int64) * k + pred[keep], minlength=k * k).reshape(k, k)


def miou(matrix: np.ndarray) -> float:
    """Mean IoU over the classes present in the truth (pooled over every photo)."""
    tp = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - tp
    present = matrix.sum(1) > 0
    return float((tp[present] / union[present]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a run folder")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--gsd", type=float, help="metres per working pixel (default: model.json's)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gis.json")
    args = ap.parse_args()
    import geodeep
    import rasterio
    from rasterio.transform import from_origin

    from droneseg.artifact import load_model
    from droneseg.data.layout import find_layout
    from droneseg.data.splits import read_split_file
    from droneseg.export import export
    from droneseg.images import read_mask, read_working_image

    _, info = load_model(args.model, "cpu")
    gsd = args.gsd or info.gsd
    scheme, k = info.scheme, info.scheme.num_classes
    to_index = np.full(256, 255, np.uint8)  # predict's written values -> class indices
    to_index[scheme.written().values] = np.arange(k)
    ids = read_split_file(args.data / "splits" / f"{args.split}.txt")
    samples = {s.id: s for s in find_layout(args.data).samples}
    with tempfile.TemporaryDirectory(prefix="droneseg-geodeep-") as tmp:
        onnx = export(args.model, Path(tmp) / "model-qgis.onnx", format="qgis", gsd=gsd).path
        truths = {}
        for i in ids:
            image = read_working_image(samples[i].image, info.long_side, info.image_filter)
            h, w = image.shape[:2]
            truths[i] = scheme.encode(read_mask(samples[i].mask, samples[i].mask_kind, scheme.table, size=(w, h)))
            with rasterio.open(Path(tmp) / f"{i}.tif", "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                               crs="EPSG:32633", transform=from_origin(500000, 5000000, gsd, gsd), tiled=True,
                               photometric="RGB") as ds:
                ds.write(image.transpose(2, 0, 1))
        predict_s = droneseg("predict", args.model, *[Path(tmp) / f"{i}.tif" for i in ids], "--out", f"{tmp}/pred",
                             "--vector", "none")
        agree = total = 0
        ours_m, theirs_m = np.zeros((k, k), np.int64), np.zeros((k, k), np.int64)
        t0 = time.monotonic()
        theirs = {i: geodeep.segment(str(Path(tmp) / f"{i}.tif"), str(onnx), output_type="raw") for i in ids}
        geodeep_s = time.monotonic() - t0
        for i in ids:
            with rasterio.open(Path(tmp) / "pred" / f"{i}_classes.tif") as ds:
                ours = to_index[ds.read(1)]
            agree += int((ours == theirs[i]).sum())
            total += ours.size
            ours_m += confusion(ours, truths[i], k)
            theirs_m += confusion(theirs[i], truths[i], k)
    result = {"command": " ".join(["python benchmarks/gis.py", *sys.argv[1:]]), "model": str(args.model),
              "geodeep": importlib.metadata.version("geodeep"), "gsd_m": gsd,
              "split": args.split, "photos": len(ids), "working_size": list(next(iter(truths.values())).shape[::-1]),
              "agreement": agree / total, "miou_predict": miou(ours_m), "miou_geodeep": miou(theirs_m),
              "predict_s": round(predict_s, 1), "geodeep_s": round(geodeep_s, 1)}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

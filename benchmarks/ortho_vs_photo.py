"""The orthomosaic path against the photo path on real photos: each dev val photo is georeferenced as a GeoTIFF
(RGB, UTM 33N, an arbitrary 1 cm/px) and segmented with ``--model-gsd`` set so that it meets the network at the
photo path's working size; both label maps are scored against the masks (pooled confusion, mIoU over the classes
present) and compared pixel by pixel. They differ only in the resampler (GDAL's average vs Pillow's box filter).
The GeoTIFF copies live in a temporary folder and are deleted (the dataset's licence forbids keeping them).

    python benchmarks/ortho_vs_photo.py --model RUN --data ../shared/data/semantic-drone-dev [--n 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ortho_vs_photo.json")
    args = ap.parse_args()
    import rasterio
    from affine import Affine
    from PIL import Image

    from droneseg.artifact import load_model
    from droneseg.data.layout import find_layout
    from droneseg.geo.options import OrthoOptions
    from droneseg.images import photo_size, read_image, read_mask, working_size
    from droneseg.predict import predict

    _, info = load_model(args.model)
    scheme = info.scheme
    layout = find_layout(args.data)
    val = set((args.data / "splits" / "val.txt").read_text().split())
    samples = [s for s in layout.samples if s.id in val][: args.n]
    written = scheme.written("auto")
    to_target = np.full(256, 255, np.uint8)
    to_target[written.values] = np.arange(scheme.num_classes)
    k = scheme.num_classes
    conf = {"photo": np.zeros((k, k), np.int64), "ortho": np.zeros((k, k), np.int64)}
    agreement = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gsd = 0.01
        for s in samples:
            rgb = read_image(s.image)
            h, w = rgb.shape[:2]
            with rasterio.open(tmp / f"{s.id}.tif", "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                               crs="EPSG:32633", photometric="RGB",
                               transform=Affine.translation(500_000, 5_200_000) @ Affine.scale(gsd, -gsd)) as dst:
                dst.write(rgb.transpose(2, 0, 1))
        size = photo_size(samples[0].image)
        model_gsd = gsd * max(size) / max(working_size(size, info.long_side))
        predict(args.model, [s.image for s in samples], tmp / "photo", progress=False)
        predict(args.model, [tmp / f"{s.id}.tif" for s in samples], tmp / "ortho", progress=False,
                ortho=OrthoOptions(model_gsd=model_gsd, vector=None))
        table = layout.table
        for s in samples:
            truth = scheme.lut[read_mask(s.mask, s.mask_kind, table)]
            photo = to_target[np.asarray(Image.open(tmp / "photo" / f"{s.image.stem}.png"))]
            with rasterio.open(tmp / "ortho" / f"{s.id}_classes.tif") as ds:
                ortho = to_target[ds.read(1)]
            agreement.append(float((photo == ortho).mean()))
            valid = truth != 255
            for name, pred in (("photo", photo), ("ortho", ortho)):
                conf[name] += np.bincount(truth[valid].astype(np.int64) * k + pred[valid],
                                          minlength=k * k).reshape(k, k)
    scores = {}
    for name, c in conf.items():
        inter = np.diag(c)
        union = c.sum(0) + c.sum(1) - inter
        present = c.sum(1) > 0
        scores[name] = {"miou": round(float((inter[present] / np.maximum(union[present], 1)).mean()), 4),
                        "pixel_accuracy": round(float(inter.sum() / c.sum()), 4)}
    report = {"benchmark": "ortho_vs_photo", "command": " ".join(["python", *sys.argv]), "model": str(args.model),
              "photos": len(samples), "model_gsd_m": model_gsd, "scores": scores,
              "agreement": {"mean": round(float(np.mean(agreement)), 4), "min": round(float(np.min(agreement)), 4)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

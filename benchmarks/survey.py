"""The survey path against the photo path on real imagery, same code, same budget.

The dev set is turned into a survey: each of its photos is written as a GeoTIFF at its own place (a 200 m grid in
UTM 33N) at ``--gsd`` metres per photo pixel; its mask is polygonised into one GeoPackage (field ``class``, the
dataset's class names); the extent is the photos' footprints with a ``split`` attribute carrying the dev split
files. The survey's working GSD is set so that each photo meets the network at the photo path's working size
(the preset's ``long_side``). Then ``droneseg train -c PRESET --max-time T`` runs on the survey and on the photo
folder, one after the other, and both val mIoUs (on the 50 val photos) go to the results JSON.

The derived data lives in a temporary folder (or ``--keep DIR`` outside the repository) and is never committed:
the dataset's licence forbids redistributing it in any form.

    python benchmarks/survey.py --data ../shared/data/semantic-drone-dev --max-time 30m [--preset full]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_survey(data: Path, out: Path, gsd: float, working_gsd: float) -> Path:
    """Write the dev set as a survey into ``out``; -> its YAML."""
    import pyogrio.raw
    import rasterio
    import shapely
    import yaml
    from affine import Affine
    from rasterio.features import shapes

    from droneseg.data.layout import find_layout
    from droneseg.data.splits import read_split_file
    from droneseg.images import read_image, read_mask

    layout = find_layout(data)
    split_of = {i: s for s in ("train", "val", "test") if (data / "splits" / f"{s}.txt").is_file()
                for i in read_split_file(data / "splits" / f"{s}.txt")}
    samples = [s for s in layout.samples if s.id in split_of]
    (out / "photos").mkdir(parents=True, exist_ok=True)
    crs = rasterio.crs.CRS.from_epsg(32633).to_wkt()
    labels = out / "labels.gpkg"
    footprints, splits = [], []
    t0 = time.monotonic()
    for n, s in enumerate(samples):
        rgb = read_image(s.image)
        mask = read_mask(s.mask, s.mask_kind, layout.table)
        h, w = mask.shape
        x0, y0 = 500_000 + 200.0 * (n % 20), 5_200_000 - 200.0 * (n // 20)
        transform = Affine.translation(x0, y0) @ Affine.scale(gsd, -gsd)
        with rasterio.open(out / "photos" / f"{s.id}.tif", "w", driver="GTiff", width=w, height=h, count=3,
                           dtype="uint8", crs=crs, transform=transform, photometric="RGB", compress="deflate",
                           tiled=True) as dst:
            dst.write(rgb.transpose(2, 0, 1))
        geoms, names = [], []
        for geom, value in shapes(mask, transform=transform, connectivity=4):
            geoms.append(shapely.geometry.shape(geom))
            names.append(layout.table.names[int(value)])
        pyogrio.raw.write(labels, geometry=shapely.to_wkb(np.array(geoms, dtype=object)),
                          field_data=[np.array(names, dtype=object)], fields=["class"], layer="labels",
                          driver="GPKG", geometry_type="Polygon", crs=crs, append=n > 0)
        footprints.append(shapely.box(x0, y0 - h * gsd, x0 + w * gsd, y0))
        splits.append(split_of[s.id])
    pyogrio.raw.write(out / "extent.gpkg", geometry=shapely.to_wkb(np.array(footprints, dtype=object)),
                      field_data=[np.array(splits, dtype=object)], fields=["split"], layer="extent", driver="GPKG",
                      geometry_type="Polygon", crs=crs)
    (out / "classes.csv").write_text("name,r,g,b\n" + "".join(
        f"{n},{r},{g},{b}\n" for n, (r, g, b) in zip(layout.table.names, layout.table.colors.tolist())))
    survey = out / "survey.yaml"
    survey.write_text(yaml.safe_dump({
        "rasters": ["photos/*.tif"], "labels": "labels.gpkg", "class_field": "class", "classes": "classes.csv",
        "extent": "extent.gpkg", "split_field": "split", "gsd": working_gsd}, sort_keys=False))
    print(f"survey of {len(samples)} photos written in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return survey


def train(data: Path, preset: str, max_time: str, out: Path, extra: list[str]) -> dict:
    """One ``droneseg train`` -> its train_summary.json, with the run folder and wall seconds."""
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "droneseg", "train", "-c", preset, "--data", str(data),
                           "--max-time", max_time, "--out", str(out), *extra], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"train on {data} failed:\n{done.stderr[-3000:]}")
    run = Path(done.stdout.strip().splitlines()[-1])
    summary = json.loads((run / "train_summary.json").read_text())
    return {"run": str(run), "wall_s": round(time.monotonic() - t0, 1), **{k: summary.get(k) for k in (
        "val_miou_native", "epochs", "stopped_by", "val_images", "train_images", "command_s", "final_eval_s")},
        "steps": summary["schedule"]["done_steps"],
        # the budget's own averages (seconds per optimiser step, per validation): where a gap in steps comes from
        **{k: (summary.get("budget") or {}).get(k) for k in ("step_s", "val_s", "reserve_s")},
        "images_per_s": summary.get("images_per_s"),
        # seconds of each epoch (training and its validation), from the run's metrics.csv
        "epoch_s": [round(float(row["epoch_s"]), 1) for row in csv.DictReader((run / "logs" / "metrics.csv").open())
                    if row.get("epoch_s")]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--preset", default="full")
    ap.add_argument("--max-time", default="30m")
    ap.add_argument("--gsd", type=float, default=0.08, help="metres per photo pixel of the GeoTIFF copies")
    ap.add_argument("--keep", type=Path, help="write the survey here (outside the repository) and keep it")
    ap.add_argument("--only", choices=["survey", "photos"], help="run one path only")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from droneseg.config import load_config
    from droneseg.images import photo_size, working_size

    cfg = load_config(args.preset, [], {})
    size = photo_size(next((args.data / "original_images").iterdir()))
    working_gsd = args.gsd * max(size) / max(working_size(size, cfg.data.long_side))
    out = args.out or ROOT / "benchmarks" / "results" / f"survey-vs-photos-{args.preset}-{args.max_time}.json"
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.update({"command": " ".join(["python benchmarks/survey.py", *sys.argv[1:]]), "preset": args.preset,
                   "max_time": args.max_time, "photo_gsd_m": args.gsd, "survey_working_gsd_m": working_gsd,
                   "photo_size": list(size)})
    with tempfile.TemporaryDirectory(prefix="droneseg-survey-") as tmp:
        folder = args.keep or Path(tmp)
        survey = folder / "survey.yaml" if (folder / "survey.yaml").is_file() else \
            make_survey(args.data, folder, args.gsd, working_gsd)
        runs = Path(tmp) / "runs"
        if args.only in (None, "survey"):
            result["survey"] = train(survey, args.preset, args.max_time, runs, [])
            out.write_text(json.dumps(result, indent=1) + "\n")
        if args.only in (None, "photos"):
            result["photos"] = train(args.data, args.preset, args.max_time, runs, [])
    if "survey" in result and "photos" in result:
        result["difference"] = result["survey"]["val_miou_native"] - result["photos"]["val_miou_native"]
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

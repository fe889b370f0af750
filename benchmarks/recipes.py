"""Recipe search: train named recipes on the dev set under a wall-clock budget, one after the other, and record
each as JSON under ``benchmarks/results/recipes/`` (config, val mIoU at native resolution, per-class IoU,
images/s, epochs, wall time, the working-size validation after each epoch). Never uses any photo outside the
dataset given.

    python benchmarks/recipes.py --data ../shared/data/semantic-drone-dev --budget 10m NAME [NAME ...]

A recipe is a preset and ``--set`` overrides, named in :data:`RECIPES`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import machine

RECIPES: dict[str, tuple[str, list[str]]] = {
    # the full preset before this step's search: smp Unet + EfficientNet-Lite0, 768, 384² crops, CE + 0.5 Dice
    "unet-lite0": ("full", []),
    "fpn-lite0": ("full", ["model.arch=FPN", "data.samples_per_epoch=500"]),
    "fpn-lite0-sqrt-lr2e-3": ("full", ["model.arch=FPN", "data.samples_per_epoch=500", "loss.class_weights=sqrt",
                                       "train.lr=0.002"]),
    "linknet-lite0-sqrt-lr2e-3": ("full", ["model.arch=Linknet", "data.samples_per_epoch=500",
                                           "loss.class_weights=sqrt", "train.lr=0.002"]),
    "fpn-lite0-sqrt-lr2e-3-ce": ("full", ["model.arch=FPN", "data.samples_per_epoch=500", "loss.class_weights=sqrt",
                                          "train.lr=0.002", "loss.terms={ce: 1.0}"]),
    "fpn-lite0-sqrt-lr2e-3-640": ("full", ["model.arch=FPN", "data.samples_per_epoch=500", "loss.class_weights=sqrt",
                                           "train.lr=0.002", "data.long_side=640", "data.crop=320",
                                           "data.batch_size=6"]),
    # after the step got 1.3x faster (dense losses, channels-last on CPU): one change each against `full`
    "full-ema": ("full", ["train.ema=0.99"]),
    "full-ohem": ("full", ["loss.terms={ohem: 1.0, dice: 0.5}"]),
    "full-lovasz": ("full", ["loss.terms={ce: 1.0, lovasz: 0.5}"]),
    "full-rare0.8": ("full", ["data.rare_crop=0.8"]),
    "full-1024": ("full", ["data.long_side=1024"]),
    "full-1024-crop512": ("full", ["data.long_side=1024", "data.crop=512", "data.batch_size=2"]),
    "full-crop256-b8": ("full", ["data.crop=256", "data.batch_size=8"]),
    # step 15, against `full` as shipped (FPN-Lite0, 768, 256² x 8, EMA, rare crops 0.5), one change each
    "step15-full": ("full", []),
    "step15-epoch1000": ("full", ["data.samples_per_epoch=1000"]),  # half the validations
    "step15-crop192-b14": ("full", ["data.crop=192", "data.batch_size=14"]),  # same pixels per step
    "step15-lite1": ("full", ["model.weights=lite1"]),
    "step15-lite2": ("full", ["model.weights=lite2"]),
    "step15-smooth0.1": ("full", ["loss.label_smoothing=0.1"]),
    # the shipped presets, as they are
    "full": ("full", []),
    "full-long": ("full-long", []),
    "six": ("six", []),
    "paved": ("paved", []),
}


def val_curve(run: Path) -> list[dict]:
    """The run's validation after each epoch, from its ``logs/metrics.csv``: ``epoch``, ``elapsed_s`` (seconds
    since training started) and ``val_miou`` (pooled, at the working size: what early stopping watches, not the
    final native-resolution figure)."""
    from droneseg.report.plots import read_metrics_csv

    return [{"epoch": int(row["epoch"]), "elapsed_s": round(row["elapsed_s"], 1), "val_miou": round(row["val_miou"], 4)}
            for row in read_metrics_csv(run / "logs" / "metrics.csv") if row.get("val_miou") is not None]


def run_recipe(name: str, data: Path, budget: str, out: Path, runs: Path) -> dict:
    preset, overrides = RECIPES[name]
    cmd = [sys.executable, "-m", "droneseg", "train", "-c", preset, "--data", str(data), "--max-time", budget,
           "--out", str(runs), *[a for o in overrides for a in ("--set", o)]]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    run = Path(proc.stdout.strip().splitlines()[-1])
    summary = json.loads((run / "train_summary.json").read_text())
    metrics = json.loads((run / summary["eval_report"]).with_name("metrics.json").read_text())
    record = {
        "name": name, "preset": preset, "overrides": overrides, "budget": budget, "run": str(run),
        "val_miou_native": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
        "per_image_miou": metrics["per_image"]["per_image_miou"],
        "per_class_iou": {c["name"]: c["iou"] for c in metrics["per_class"] if c["present"]},
        "classes_below_0.01": sum(1 for c in metrics["per_class"] if c["present"] and (c["iou"] or 0) < 0.01),
        "images_per_s": summary["images_per_s"], "epochs": summary["epochs"], "stopped_by": summary["stopped_by"],
        "schedule": summary["schedule"], "budget_detail": summary.get("budget"),
        "val_curve": val_curve(run), "final_eval_s": summary.get("final_eval_s"), "wall_s": round(wall, 1),
        "command_s": summary["command_s"],
        "peak_rss_mb": summary["peak_rss_mb"], "config": (run / "config.yaml").read_text(), "machine": machine(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}-{budget}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"{name:32s} {budget:>4s}: val mIoU {metrics['miou']:.3f}, {summary['images_per_s']:.2f} img/s, "
          f"{summary['epochs']} epochs, {wall:.0f} s wall", flush=True)
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", choices=sorted(RECIPES))
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--budget", default="30m")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recipes")
    ap.add_argument("--runs", type=Path, default=Path("runs") / "recipes")
    args = ap.parse_args()
    for name in args.names:
        run_recipe(name, args.data.resolve(), args.budget, args.out, args.runs)


if __name__ == "__main__":
    main()

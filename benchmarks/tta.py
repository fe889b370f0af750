"""Flip test-time augmentation as a lever: each model evaluated on the dev val split with and without ``--tta``
(the mean of the logits of the photo and its horizontal, vertical and double flips), one after the other, each in
its own process: pooled and per-image mIoU, seconds, peak RSS.

    python benchmarks/tta.py --data ../shared/data/semantic-drone-dev --model NAME=RUN [--model NAME=RUN ...]
        [--backend onnx] [--out benchmarks/results/tta.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import in_child, machine, peak_rss_mb


def child(config: dict) -> dict:
    """One evaluation in this process."""
    from droneseg.evaluate import evaluate
    from droneseg.tiler import InferenceOverrides

    t0 = time.perf_counter()
    folder = evaluate(config["model"], Path(config["data"]), backend=config["backend"], figures=0,
                      inference=InferenceOverrides(tta=config["tta"]), out=Path(config["out"]), progress=False)
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"tta": config["tta"], "miou": metrics["miou"], "per_image_miou": metrics["per_image"]["per_image_miou"],
            "pixel_accuracy": metrics["pixel_accuracy"], "images": metrics["context"]["images"],
            "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak_rss_mb())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--model", action="append", default=[], help="NAME=RUN_FOLDER")
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tta.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    report = {"benchmark": "tta", "command": " ".join(["python", *sys.argv]), "machine": machine(),
              "backend": args.backend, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in (m.split("=", 1) for m in args.model):
            rows = []
            for tta in (False, True):
                rows.append(in_child(__file__, {"model": run, "data": str(args.data), "backend": args.backend,
                                                "tta": tta, "out": f"{tmp}/{name}-{tta}"}, timeout=7200))
                print(name, json.dumps(rows[-1]), flush=True)
            plain, flipped = rows
            report["models"][name] = {"run": run, "plain": plain, "tta": flipped,
                                      "miou_gain": round(flipped["miou"] - plain["miou"], 4),
                                      "per_image_gain": round(flipped["per_image_miou"] - plain["per_image_miou"], 4),
                                      "time_ratio": round(flipped["seconds"] / plain["seconds"], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: {x: v[x] for x in ("miou_gain", "per_image_gain", "time_ratio")}
                      for k, v in report["models"].items()}))


if __name__ == "__main__":
    main()

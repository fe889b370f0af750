"""GPU smoke benchmark: training in fp32 and bf16-mixed, evaluation and prediction on CUDA.

One short script for a lent GPU machine (a few minutes in all): synthesises scenes, trains the smp
Unet + EfficientNet-Lite0 recipe for a fixed number of epochs at each precision, evaluates on CUDA,
and predicts one synthetic 6000x4000 photo. Writes JSON (default ``benchmarks/results/gpu.json``).

    python benchmarks/gpu.py [--out FILE] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from droneseg.config import load_config
from droneseg.data.synthetic import write_synthetic
from droneseg.engine.train import train
from droneseg.predict import predict
from droneseg.tiler import InferenceOverrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu.json")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": str(torch.__version__), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        data = write_synthetic(tmp / "data", n=64, size=(1024, 683), seed=0)
        report["synth_s"] = time.perf_counter() - t0
        for precision in ("32", "bf16-mixed"):
            cfg = load_config("full", [
                f"data.root={data}", "data.long_side=1024", "data.crop=512", "data.batch_size=16",
                "data.samples_per_epoch=256", "data.workers=8", f"train.precision={precision}",
                f"train.max_epochs={args.epochs}", "train.patience=null", "train.sample_every=0",
            ])
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            run = train(cfg, out=tmp / "runs")
            summary = json.loads((run / "train_summary.json").read_text())
            summary["total_s"] = time.perf_counter() - t0
            report["runs"][precision] = summary
            print(precision, json.dumps(summary), flush=True)
        photo = write_synthetic(tmp / "big", n=1, size=(6000, 4000), seed=3) / "original_images" / "000.jpg"
        for backend in ("torch",):
            t0 = time.perf_counter()
            s = predict(run, [photo], tmp / f"pred-{backend}", backend=backend, progress=False,
                        inference=InferenceOverrides(tile=768, batch=8))
            report[f"predict_6000x4000_{backend}_s"] = time.perf_counter() - t0
            report[f"predict_timings_{backend}"] = s.timings
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

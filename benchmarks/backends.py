"""The inference backends side by side with one trained model: seconds and peak RSS per 6000x4000 photo of
``droneseg predict``, and (with ``--data``) the val mIoU and seconds of ``droneseg evaluate``, for ``torch``,
``onnx`` (ONNX Runtime) and ``openvino``. Each backend runs in its own process (its peak RSS is its own).

    python benchmarks/backends.py --model RUN [--data ../shared/data/semantic-drone-dev] [--photos 2]
        [--backend torch --backend onnx ...] [--out benchmarks/results/backends.json]

The photo is a synthetic scene rendered at 1500x1000 and enlarged to 6000x4000 JPEG (as in predict.py); the first
of ``--photos`` copies includes each backend's warm-up.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import PHOTO, in_child, machine, peak_rss_mb

BACKENDS = ("torch", "onnx", "openvino")


def child(config: dict) -> dict:
    """One backend, in this process: predict the photos, then evaluate when a dataset is given."""
    from droneseg.evaluate import evaluate
    from droneseg.predict import predict

    t0 = time.perf_counter()
    s = predict(config["model"], [Path(config["photos"])], Path(config["out"]) / "pred", backend=config["backend"],
                progress=False)
    n = len(s.photos)
    row = {"backend": config["backend"], "seconds_per_photo": round((time.perf_counter() - t0) / n, 3),
           **{f"{k}_s": round(v / n, 3) for k, v in s.timings.items()}, "predict_peak_rss_mb": round(peak_rss_mb())}
    if config.get("data"):
        t0 = time.perf_counter()
        folder = evaluate(config["model"], Path(config["data"]), backend=config["backend"], figures=0,
                          out=Path(config["out"]) / "eval", progress=False)
        metrics = json.loads((folder / "metrics.json").read_text())
        row.update({"val_miou": metrics["miou"], "val_images": metrics["context"]["images"],
                    "evaluate_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak_rss_mb())})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a trained run folder (required)")
    ap.add_argument("--data", type=Path, help="a dataset with a val split, for each backend's mIoU")
    ap.add_argument("--photos", type=int, default=2)
    ap.add_argument("--backend", action="append", choices=BACKENDS)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backends.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.model is None:
        ap.error("--model RUN is required")
    import numpy as np
    from PIL import Image

    from droneseg.data.synthetic import render_scene
    from droneseg.export import export

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        photo = Image.fromarray(render_scene(1500, 1000, np.random.default_rng(0))[0]).resize(
            PHOTO, Image.Resampling.BICUBIC)
        for i in range(args.photos):
            photo.save(photos / f"photo{i}.jpg", quality=92)
        exported = export(args.model)  # RUN/model.onnx, which onnx and openvino both run
        results = []
        for backend in args.backend or BACKENDS:
            cfg = {"model": str(args.model), "photos": str(photos), "out": f"{tmp}/{backend}", "backend": backend,
                   "data": str(args.data) if args.data else None}
            row = in_child(__file__, cfg, timeout=1800)
            results.append(row)
            print(json.dumps(row), flush=True)
    import onnxruntime
    import openvino

    report = {"what": __doc__.splitlines()[0], "command": "python benchmarks/backends.py " + " ".join(
        a for a in __import__("sys").argv[1:]), "machine": {**machine(), "onnxruntime": onnxruntime.__version__,
                                                              "openvino": openvino.__version__},
              "model": str(args.model), "photo_size": list(PHOTO), "photos_per_backend": args.photos,
              "onnx_parity_max_abs_diff": exported.max_abs_diff, "results": results,
              "total_seconds": round(time.perf_counter() - t_start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

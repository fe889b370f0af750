"""The inference backends side by side with one trained model: seconds and peak RSS per 6000x4000 photo of
``droneseg predict``, and (with ``--data``) the val mIoU and seconds of ``droneseg evaluate``, for ``torch``,
``onnx`` (ONNX Runtime), ``onnx-int8`` (ONNX Runtime on the int8 export, written first with ``--data`` when the run
has none) and ``openvino``. Each backend runs in its own process (its peak RSS is its own).

    python benchmarks/backends.py --model RUN [--data ../shared/data/semantic-drone-dev] [--photos 2]
        [--backend torch --backend onnx ...] [--out benchmarks/results/backends.json]

The photo is a synthetic scene rendered at 1500x1000 and enlarged to 6000x4000 JPEG (as in predict.py); the first
of ``--photos`` copies includes each backend's warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import PHOTO, in_child, machine, peak_rss_mb

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")


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


def _int8_file(model: Path, data: Path | None) -> Path:
    """RUN/model-int8.onnx, written (and timed) first when missing."""
    from droneseg.quantize import INT8_FILE, quantize

    path = model / INT8_FILE
    if not path.is_file():
        if data is None:
            raise SystemExit(f"{path} is missing: give --data to write it, or leave out --backend onnx-int8")
        result = quantize(model, data)
        print(f"{result} in {result.seconds:.0f} s", flush=True)
    return path


def compare(model: Path, data: Path | None, photos: int = 2, backends: tuple[str, ...] = BACKENDS) -> dict:
    """Every backend of ``backends`` on ``model``, each in its own process -> the report (see the module doc)."""
    import numpy as np
    import onnxruntime
    import openvino
    from PIL import Image

    from droneseg.data.synthetic import render_scene
    from droneseg.export import export

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        photo = Image.fromarray(render_scene(1500, 1000, np.random.default_rng(0))[0]).resize(
            PHOTO, Image.Resampling.BICUBIC)
        for i in range(photos):
            photo.save(folder / f"photo{i}.jpg", quality=92)
        exported = export(model)  # RUN/model.onnx, which onnx and openvino both run
        int8 = None
        if "onnx-int8" in backends:
            import onnx

            from droneseg.errors import DataError

            try:
                meta = {p.key: p.value for p in onnx.load(str(_int8_file(model, data))).metadata_props}
                int8 = json.loads(meta["quantization"])
            except DataError as exc:  # refused by its parity check: measured as refused, not run
                int8 = {"refused": str(exc)}
                backends = tuple(b for b in backends if b != "onnx-int8")
                print(f"onnx-int8 refused: {exc}", flush=True)
        results = []
        for backend in backends:
            cfg = {"model": str(model), "photos": str(folder), "out": f"{tmp}/{backend}", "backend": backend,
                   "data": str(data) if data else None}
            row = in_child(__file__, cfg, timeout=1800)
            results.append(row)
            print(json.dumps(row), flush=True)
    return {"what": __doc__.splitlines()[0], "machine": {**machine(), "onnxruntime": onnxruntime.__version__,
                                                          "openvino": openvino.__version__},
            "model": str(model), "photo_size": list(PHOTO), "photos_per_backend": photos,
            "onnx_parity_max_abs_diff": exported.max_abs_diff, "int8": int8, "results": results,
            "total_seconds": round(time.perf_counter() - t_start, 1)}


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
    report = {"command": "python benchmarks/backends.py " + " ".join(sys.argv[1:]),
              **compare(args.model, args.data, args.photos, tuple(args.backend or BACKENDS))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

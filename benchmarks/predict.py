"""Seconds and peak memory per 6000x4000 photo of ``droneseg predict``, per backend, tile size and preview scale.

The model is the default CPU one: classic U-Net [16, 32, 64, 128], the 22-class ``full`` scheme, working long
side 768, random weights (timing only) with the conv weights doubled, so that its labels vary across a photo
as a trained model's do (a default-initialised net paints one class everywhere, which flatters the upsampling).
The photo is a synthetic scene rendered at 1500x1000 and enlarged to 6000x4000 JPEG. Each configuration runs in
its own process, so the peak RSS (VmHWM) is that configuration's alone; it includes the ~0.7 GB that importing
torch maps on this build (``rss_after_imports_mb``). Seconds per photo are the mean over ``--photos`` copies
(the first includes warm-up).

    python benchmarks/predict.py [--out benchmarks/results/predict.json] [--photos 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import PHOTO, in_child, machine, peak_rss_mb, timing_model

TILES = (256, 512, 768)
SCALES = (0.5, 0.25)


def child(config: dict) -> dict:
    """One configuration, in this process: predict the photos, report time and peak memory."""
    t0 = time.perf_counter()
    from droneseg.predict import predict
    from droneseg.tiler import InferenceOverrides

    baseline = peak_rss_mb()
    t1 = time.perf_counter()
    s = predict(config["model"], [Path(config["photos"])], Path(config["out"]),
                backend=config["backend"], scale=config["scale"], progress=False,
                inference=InferenceOverrides(tile=config["tile"]))
    n = len(s.photos)
    return {
        "backend": config["backend"], "tile": config["tile"], "scale": config["scale"],
        "seconds_per_photo": round((time.perf_counter() - t1) / n, 3),
        **{f"{k}_s": round(v / n, 3) for k, v in s.timings.items()},
        "peak_rss_mb": round(peak_rss_mb()),
        "rss_after_imports_mb": round(baseline),
        "import_s": round(t1 - t0, 2),
    }  # fmt: skip


def make_inputs(root: Path, n_photos: int) -> tuple[Path, Path, dict]:
    """The model folder (with model.onnx) and a folder of identical synthetic 6000x4000 JPEGs."""
    import numpy as np
    from PIL import Image

    from droneseg.data.synthetic import render_scene
    from droneseg.export import export

    model, desc = timing_model(root / "model", long_side=768)
    exported = export(model)
    image, _ = render_scene(1500, 1000, np.random.default_rng(0))
    photo = Image.fromarray(image).resize(PHOTO, Image.Resampling.BICUBIC)
    (root / "photos").mkdir()
    for i in range(n_photos):
        photo.save(root / "photos" / f"photo{i}.jpg", quality=92)
    info = {"model": desc, "onnx_parity_max_abs_diff": exported.max_abs_diff}
    return root / "model", root / "photos", info


def label_stats(mask_path: Path) -> dict:
    """How varied the written mask is: classes present, share of pixels unlike their right neighbour."""
    import numpy as np
    from PIL import Image

    m = np.asarray(Image.open(mask_path))
    boundary = float((m[:, 1:] != m[:, :-1]).mean())
    return {"classes_in_mask": int(len(np.unique(m))), "boundary_share": round(boundary, 4)}


def versions() -> dict:
    import onnxruntime

    return {**machine(), "onnxruntime": onnxruntime.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "predict.json")
    ap.add_argument("--photos", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, photos, info = make_inputs(Path(tmp), args.photos)
        configs = [(b, t, 1.0) for b in ("torch", "onnx") for t in TILES]
        configs += [(b, 512, s) for b in ("torch", "onnx") for s in SCALES]
        results = []
        for backend, tile, scale in configs:
            out = Path(tmp) / f"out-{backend}-{tile}-{scale}"
            cfg = {"model": str(model), "photos": str(photos), "out": str(out), "backend": backend, "tile": tile,
                   "scale": scale}
            row = {**in_child(__file__, cfg, timeout=600), **label_stats(out / "photo0.png")}
            results.append(row)
            print(f"{backend:5s} tile {tile:3d} scale {scale:4.2f}: {row['seconds_per_photo']:6.2f} s/photo "
                  f"(read {row['read_s']:.2f}, infer {row['infer_s']:.2f}, write {row['write_s']:.2f}), "
                  f"peak RSS {row['peak_rss_mb']} MB", flush=True)
    report = {
        "what": "droneseg predict on a 6000x4000 JPEG, seconds and peak RSS per photo, one process per config",
        "machine": versions(),
        "photo_size": list(PHOTO),
        "photos_per_config": args.photos,
        **info,
        "results": results,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Seconds and peak memory of ``droneseg predict`` on a large synthetic orthomosaic, per model.

The orthomosaic is written once by :func:`droneseg.geo.scene.write_synthetic_ortho` (RGBA GeoTIFF, UTM 33N, an
elliptic valid area leaving a transparent collar, ground drawn at ``--render-gsd`` and brought to ``--gsd``) into
the cache folder, outside the repository. Each model runs in its own process (peak RSS = VmHWM of that process
alone, ~0.7 GB of it importing torch), through the public :func:`droneseg.predict.predict` with the model read at
``--model-gsd``: inference in strips, the class COG with overviews, polygons in a GeoPackage, class areas, the
preview. Models: ``NAME=RUN_FOLDER`` (repeatable); none given: the random timing U-Net of ``common.py``.

    python benchmarks/ortho.py --model demo=runs/demo-… --model full=runs/full-… [--size 20000] [--gsd 0.02]
        [--backend onnx]  (model.onnx beside model.json, or a temporary export)
        [--tile 1024 --overlap 0.125 --batch 1]  (tile geometry, tiles per forward pass; default: the model's
        inference settings in model.json)
        [--profile]  (under cProfile: the seconds of the stages in PROFILED, inside the steps' own timings; the
        profiler's overhead makes the run itself about a tenth slower)
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

from common import in_child, machine, peak_rss_mb, timing_model

CACHE = Path(os.environ.get("DRONESEG_CACHE", Path.home() / ".cache/droneseg"))
PROFILED = {  # stage -> (file, function) whose cumulative seconds it is, with --profile
    "network": ("droneseg/tiler.py", "_infer"),  # every backend's forward passes of the tiles
    "read_working_scale": ("droneseg/geo/raster.py", "read_working"),  # GDAL: read and average to the working grid
    "upsample_argmax": ("droneseg/tiler.py", "upsampled_argmax"),  # working logits -> full-resolution labels
    "preview": ("droneseg/geo/outputs.py", "write_preview"),
    "polygons": ("droneseg/geo/outputs.py", "write_polygons"),
}


def child(config: dict) -> dict:
    t0 = time.perf_counter()
    from droneseg.artifact import read_info
    from droneseg.geo.options import OrthoOptions
    from droneseg.predict import predict
    from droneseg.tiler import InferenceOverrides

    baseline = peak_rss_mb()
    t1 = time.perf_counter()
    geometry = InferenceOverrides(tile=config.get("tile"), overlap=config.get("overlap"), batch=config.get("batch"))
    used = geometry.apply(read_info(Path(config["model"])).inference).model_dump(include={"tile", "overlap", "batch"})
    profiler = cProfile.Profile() if config.get("profile") else None
    if profiler is not None:
        profiler.enable()
    s = predict(config["model"], [Path(config["ortho"])], Path(config["out"]), progress=False,
                backend=config.get("backend", "torch"), inference=geometry,
                ortho=OrthoOptions(model_gsd=config["model_gsd"], vector="gpkg", strip=config["strip"]))
    profile = {}
    if profiler is not None:
        profiler.disable()
        stats = pstats.Stats(profiler).stats  # (file, line, function) -> (calls, calls, own s, cumulative s, callers)
        profile = {"profile_s": {stage: round(sum(v[3] for (f, _, fn), v in stats.items()
                                                  if f.endswith(file) and fn == function), 1)
                                 for stage, (file, function) in PROFILED.items()}}
    (result,) = s.orthos.values()
    files = result["files"]
    return {"seconds": round(time.perf_counter() - t1, 1), "stages_s": result["seconds"],
            "tiles": result["tiles"], "tiles_skipped": result["tiles_skipped"], "polygons": result["polygons"],
            "working_scale": result["working_scale"], **used,
            "peak_rss_mb": round(peak_rss_mb()),
            "rss_after_imports_mb": round(baseline), "import_s": round(t1 - t0, 2),
            "class_cog_mb": round(os.path.getsize(files["classes"]) / 2**20, 1),
            "polygons_mb": round(os.path.getsize(files["polygons"]) / 2**20, 1), **profile}


def bench(models: dict[str, str], size: int = 20000, gsd: float = 0.02, render_gsd: float = 0.05,
          model_gsd: float = 0.05, strip: int = 4096, backend: str = "torch", cache: Path = CACHE,
          tile: int | None = None, overlap: float | None = None, batch: int | None = None,
          profile: bool = False) -> dict:
    """``predict`` of each model (NAME -> run folder; none: the random timing U-Net) on the synthetic orthomosaic of
    ``size``² pixels at ``gsd``, in its own process -> the report (see the module doc). ``tile``, ``overlap``,
    ``batch``: the tile geometry and tiles per forward pass (None: the model's). ``profile``: under cProfile, with
    the seconds of the stages in :data:`PROFILED`."""
    from droneseg.geo.scene import write_synthetic_ortho

    ortho = cache / f"bench-ortho-{size}-{gsd:g}-{render_gsd:g}.tif"
    made_s = None
    if not ortho.is_file():
        ortho.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        write_synthetic_ortho(ortho, (size, size), gsd=gsd, render_gsd=render_gsd, seed=0)
        made_s = round(time.perf_counter() - t, 1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not models:
            models = {"unet-random": str(timing_model(Path(tmp) / "model", long_side=None)[0])}
        for name, run in models.items():
            print(f"{name}: predicting {ortho.name} on {backend}", file=sys.stderr, flush=True)
            results[name] = {"run": run, **in_child(__file__, {"model": run, "ortho": str(ortho), "strip": strip,
                                                               "backend": backend, "model_gsd": model_gsd,
                                                               "tile": tile, "overlap": overlap, "batch": batch,
                                                               "profile": profile,
                                                               "out": f"{tmp}/{name}"}, timeout=7200)}
            print(json.dumps(results[name]), file=sys.stderr, flush=True)
    return {"benchmark": "ortho", "machine": machine(),
            "ortho": {"size": [size, size], "gsd_m": gsd, "render_gsd_m": render_gsd,
                      "file_mb": round(ortho.stat().st_size / 2**20), "written_in_s": made_s},
            "model_gsd_m": model_gsd, "strip": strip, "backend": backend,
            "inference_overrides": {"tile": tile, "overlap": overlap, "batch": batch}, "profiled": profile,
            "results": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child")
    ap.add_argument("--model", action="append", default=[], help="NAME=RUN_FOLDER")
    ap.add_argument("--size", type=int, default=20000, help="side of the square orthomosaic, pixels")
    ap.add_argument("--gsd", type=float, default=0.02, help="metres per pixel of the orthomosaic")
    ap.add_argument("--render-gsd", type=float, default=0.05, help="metres per pixel the ground is drawn at")
    ap.add_argument("--model-gsd", type=float, default=0.05, help="metres per working pixel of the models")
    ap.add_argument("--strip", type=int, default=4096)
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8", "openvino"])
    ap.add_argument("--tile", type=int, help="tile side at working scale (default: the model's)")
    ap.add_argument("--overlap", type=float, help="tile overlap share (default: the model's)")
    ap.add_argument("--batch", type=int, help="tiles per forward pass (default: the model's)")
    ap.add_argument("--profile", action="store_true", help="under cProfile: the seconds of the main stages")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ortho.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    report = bench(dict(m.split("=", 1) for m in args.model), args.size, args.gsd, args.render_gsd, args.model_gsd,
                   args.strip, args.backend, args.cache, args.tile, args.overlap, args.batch, args.profile)
    report = {"benchmark": "ortho", "command": " ".join(["python", *sys.argv]), **report}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Seconds and peak memory per 6000x4000 photo of ``droneseg evaluate``, against ``droneseg predict`` on the same
photos, at the usual working size (long side 768) and at native size (``long_side: null``, every tile at full
resolution: the case that used to run out of memory).

The photos are synthetic scenes rendered at 6000x4000 with exact masks (:func:`droneseg.data.synthetic.write_synthetic`),
the model the timing U-Net of ``common.timing_model``. Each configuration runs in its own process, so its peak RSS
(VmHWM) is its own; it includes the ~0.7 GB that importing torch maps here. Evaluate's time includes building the
working-size cache (a first evaluation) and the default figures; predict's includes writing three full-size files
per photo. Peak RSS is measured with 1 photo and with all of them: it must not grow with the number of photos.

    python benchmarks/evaluate.py [--out benchmarks/results/evaluate.json] [--photos 3] [--native-photos 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import PHOTO, in_child, machine, peak_rss_mb, timing_model


def child(config: dict) -> dict:
    """One configuration, in this process."""
    t0 = time.perf_counter()
    if config["job"] == "evaluate":
        from droneseg.evaluate import evaluate

        baseline = peak_rss_mb()
        t1 = time.perf_counter()
        folder = evaluate(config["model"], config["data"], split=config["split"], out=Path(config["out"]),
                          cache_dir=Path(config["cache"]), progress=False)
        extra = {"miou": json.loads((folder / "metrics.json").read_text())["miou"]}
    else:
        from droneseg.predict import predict

        baseline = peak_rss_mb()
        t1 = time.perf_counter()
        s = predict(config["model"], [Path(p) for p in config["photos"]], Path(config["out"]), progress=False)
        extra = {f"{k}_s": round(v / len(s.photos), 3) for k, v in s.timings.items()}
    n = len(config["ids"])
    return {
        "job": config["job"], "long_side": config["long_side"], "photos": n,
        "seconds_per_photo": round((time.perf_counter() - t1) / n, 3),
        "peak_rss_mb": round(peak_rss_mb()), "rss_after_imports_mb": round(baseline), "import_s": round(t1 - t0, 2),
        **extra,
    }  # fmt: skip


def run(config: dict) -> dict:
    row = in_child(__file__, config)
    print(f"{row['job']:8s} long side {str(row['long_side']):>4s}, {row['photos']} photos: "
          f"{row['seconds_per_photo']:6.2f} s/photo, peak RSS {row['peak_rss_mb']} MB", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "evaluate.json")
    ap.add_argument("--photos", type=int, default=3)
    ap.add_argument("--native-photos", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from droneseg.data.synthetic import write_synthetic

    t_start = time.perf_counter()
    results, models = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_synthetic(root / "data", n=max(args.photos, args.native_photos), size=PHOTO, seed=0)
        ids = sorted(p.stem for p in (data / "original_images").iterdir())
        for long_side, counts in ((768, (1, args.photos)), (None, (1, args.native_photos))):
            model, models[str(long_side)] = timing_model(root / f"model-{long_side}", long_side=long_side)
            for n in sorted(set(counts)):
                chosen = ids[:n]
                split = root / f"ids-{n}.txt"
                split.write_text("\n".join(chosen) + "\n")
                tag = f"{long_side}-{n}"
                base = {"model": str(model), "long_side": long_side, "ids": chosen}
                results.append(run({**base, "job": "evaluate", "data": str(data), "split": str(split),
                                    "out": str(root / f"eval-{tag}"), "cache": str(root / f"cache-{tag}")}))
                if n == max(counts):
                    photos = [str(data / "original_images" / f"{i}.jpg") for i in chosen]
                    results.append(run({**base, "job": "predict", "photos": photos, "out": str(root / f"pred-{tag}")}))
    summary = {}
    for long_side in ("768", "None"):
        rows = [r for r in results if str(r["long_side"]) == long_side]
        evals = sorted((r for r in rows if r["job"] == "evaluate"), key=lambda r: r["photos"])
        ev, pr = evals[-1], next(r for r in rows if r["job"] == "predict")
        # per extra photo, without the fixed cost of the report (matrices, curves, page: ~3 s whatever the split)
        one, many = evals[0], evals[-1]
        marginal = ((many["seconds_per_photo"] * many["photos"] - one["seconds_per_photo"]) / (many["photos"] - 1)
                    if many["photos"] > 1 else None)
        summary[f"long_side_{long_side}"] = {
            "photos": ev["photos"],
            "evaluate_s_per_photo": ev["seconds_per_photo"], "predict_s_per_photo": pr["seconds_per_photo"],
            "evaluate_over_predict": round(ev["seconds_per_photo"] / pr["seconds_per_photo"], 2),
            "evaluate_marginal_s_per_photo": None if marginal is None else round(marginal, 3),
            "evaluate_marginal_over_predict": None if marginal is None else round(marginal / pr["seconds_per_photo"], 2),
            "evaluate_peak_rss_mb_by_photos": {r["photos"]: r["peak_rss_mb"] for r in rows if r["job"] == "evaluate"},
        }
    report = {
        "what": "droneseg evaluate vs predict on synthetic 6000x4000 photos with masks; one process per config",
        "goals": "evaluate peak RSS < 2048 MB whatever the number of photos; evaluate <= 1.5x predict per photo",
        "machine": machine(),
        "photo_size": list(PHOTO),
        "models": models,
        "summary": summary,
        "results": results,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The benchmark suite: one command, one JSON (``benchmarks/results/run.json``; ``run-quick.json`` with ``--quick``).

Every figure names the machine (CPU model, cores, torch) and is set against this machine's fp32 peak, measured in
the same run with a large matrix product:

* training: for the default models (the ``full`` and ``demo`` presets) the bare step's images/s and achieved
  GFLOP/s (FLOPs of forward + backward counted by ``torch.utils.flop_counter``) as a share of that peak; the whole
  pipeline (``droneseg train``) as a share of the bare step; and, side by side, the common notebook baseline (the
  same model and step, fed by a Dataset that decodes and resizes every photo with PIL at every access,
  ``num_workers=0``) on the dev set (1500x1000) when present and on synthetic 6000x4000 JPEGs: our speed over it;
* the loader: augmented crops per second one loader process makes for the ``full-gpu`` preset (512² crops of
  1500 px photos), what each worker of a GPU node adds;
* the cache: build and read cost per photo;
* ``evaluate`` and ``predict``: seconds per 6000x4000 photo and peak RSS, with the ``full`` preset's network;
* with ``--model RUN`` (a trained model, e.g. of the ``full`` preset): every inference backend side by side
  (``backends.py``: seconds and peak RSS per 6000x4000 photo; with the dev set, each backend's val mIoU and
  ``evaluate`` seconds) and the 20,000² orthomosaic benchmark (``ortho.py``) per backend.

    python benchmarks/run.py [--quick] [--model RUN [--backend NAME ...]]
        # --quick: fewer steps and photos, under 5 minutes on 2 cores (the backends on 1 photo without the
        # evaluation, the orthomosaic at 4000²)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import backends as backends_bench
import evaluate as evaluate_bench
import ortho as ortho_bench
import training
from common import PHOTO, fp32_peak_gflops, in_child, machine

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "semantic-drone-dev"
PRESETS = ("full", "demo")


def _splits(folder: Path, train: list[str], val: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "val.txt").write_text("\n".join(val) + "\n")
    return folder


def bench_training(preset: str, data: dict[str, Path], root: Path, steps: int, n_train: int, peak: float,
                   baseline_sets: tuple[str, ...]) -> dict:
    """Bare step, pipeline and notebook baseline (on ``baseline_sets`` of ``data``) of one preset; ratios."""
    out: dict = {}
    ids = {name: sorted(p.stem for p in (d / "original_images").iterdir()) for name, d in data.items()}
    pipeline_set = "dev_1500x1000" if "dev_1500x1000" in data else "synthetic_6000x4000"
    train_ids = ids[pipeline_set][:n_train]
    splits = _splits(root / f"splits-{preset}", train_ids[:-2] or train_ids, train_ids[-2:])
    m = training.measure(preset, [], str(data[pipeline_set]), steps, str(splits))
    bare = m["bare_step"]
    out["bare_step"] = {**bare, "share_of_fp32_peak": round(bare["achieved_gflops"] / peak, 3)}
    out["pipeline"] = {**m["pipeline"], "on": pipeline_set}
    out["pipeline_over_bare"] = m["pipeline_over_bare"]
    out["notebook_baseline"] = {}
    for name, folder in data.items():
        if name not in baseline_sets:
            continue
        base = training.baseline(preset, [], str(folder), ids[name][:n_train], steps)
        out["notebook_baseline"][name] = {**base, "ours_over_baseline": round(m["pipeline"]["images_per_s"] /
                                                                             base["images_per_s"], 2)}
    print(f"[{preset}] bare {bare['images_per_s']} img/s ({bare['achieved_gflops']} GFLOP/s), pipeline "
          f"{m['pipeline']['images_per_s']} ({m['pipeline_over_bare']:.2f} of bare), baseline "
          + ", ".join(f"{k} {v['images_per_s']} (x{v['ours_over_baseline']})" for k, v in out["notebook_baseline"].items()),
          flush=True)
    return out


def bench_cache(data: dict[str, Path], n: int) -> dict:
    import cache as cache_bench

    from droneseg.data.layout import find_layout

    out = {}
    for name, folder in data.items():
        layout = find_layout(folder)
        out[name] = cache_bench.bench(layout.samples[:n], layout.table, 768, 384, name)
    return out


def bench_inference(large: Path, root: Path, photos: int) -> dict:
    """evaluate and predict on 6000x4000 photos with the ``full`` preset's network (pretrained encoder, random
    decoder: the timing does not depend on training)."""
    from droneseg.artifact import ModelInfo, save_model
    from droneseg.config import load_config
    from droneseg.models import build_model, model_summary
    from droneseg.schemes import get_scheme

    cfg = load_config("full")
    scheme = get_scheme(cfg.data.scheme)
    net = build_model(cfg.model, scheme.num_classes).eval()
    info = ModelInfo(model=cfg.model.model_dump(mode="json"), scheme=scheme.to_dict(), long_side=cfg.data.long_side,
                     inference=cfg.inference.model_dump(mode="json"))
    model = root / "full-model"
    save_model(model, net, info)
    ids = sorted(p.stem for p in (large / "original_images").iterdir())[:photos]
    split = root / "inference-ids.txt"
    split.write_text("\n".join(ids) + "\n")
    base = {"model": str(model), "long_side": cfg.data.long_side, "ids": ids}
    rows = [
        in_child(evaluate_bench.__file__, {**base, "job": "evaluate", "data": str(large), "split": str(split),
                                           "out": str(root / "eval"), "cache": str(root / "eval-cache")}),
        in_child(evaluate_bench.__file__, {**base, "job": "predict", "out": str(root / "pred"),
                                           "photos": [str(large / "original_images" / f"{i}.jpg") for i in ids]}),
    ]
    print(f"[inference] evaluate {rows[0]['seconds_per_photo']} s/photo ({rows[0]['peak_rss_mb']} MB), predict "
          f"{rows[1]['seconds_per_photo']} s/photo ({rows[1]['peak_rss_mb']} MB)", flush=True)
    return {"network": model_summary(net), "photo_size": list(PHOTO), "evaluate": rows[0], "predict": rows[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and photos: under 5 minutes on 2 cores")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--model", type=Path, help="a trained run: every backend side by side, and the orthomosaic per backend")
    ap.add_argument("--backend", action="append", choices=backends_bench.BACKENDS)
    args = ap.parse_args()
    out = args.out or Path(__file__).parent / "results" / ("run-quick.json" if args.quick else "run.json")
    steps, n_train, photos = (3, 12, 1) if args.quick else (12, 60, 2)
    t_start = time.perf_counter()
    peak = fp32_peak_gflops()
    print(f"fp32 peak {peak:.0f} GFLOP/s", flush=True)
    from droneseg.data.synthetic import write_synthetic

    report: dict = {"machine": {**machine(), "fp32_peak_gflops": round(peak, 1)}, "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        large = write_synthetic(root / "large", n=max(photos, 3), size=PHOTO, seed=1)
        data = {"dev_1500x1000": DEV} if (DEV / "original_images").is_dir() else {}
        data["synthetic_6000x4000"] = large
        report["training"] = {p: bench_training(p, data, root, steps, n_train, peak, tuple(data)) for p in PRESETS}
        loader_set = data.get("dev_1500x1000", large)
        loader_ids = sorted(p.stem for p in (loader_set / "original_images").iterdir())[: 4 if args.quick else 20]
        report["loader"] = in_child(training.__file__, {"job": "loader", "config": "full-gpu", "data": str(loader_set),
                                                        "ids": loader_ids, "n": 60 if args.quick else 300})
        print(f"[loader] {report['loader']['crops_per_s']} augmented {report['loader']['crop']}² crops/s per process",
              flush=True)
        report["cache"] = bench_cache(data, 3 if args.quick else 10)
        report["inference"] = bench_inference(large, root, photos)
    if args.model is not None:
        chosen = tuple(args.backend or backends_bench.BACKENDS)
        dev = DEV if (DEV / "original_images").is_dir() and not args.quick else None  # --quick: no mIoU
        report["backends"] = backends_bench.compare(args.model, dev, 1 if args.quick else 2, chosen)
        ran = [r["backend"] for r in report["backends"]["results"]]  # an int8 export its check refused is not run
        report["ortho_backends"] = {
            b: ortho_bench.bench({"full": str(args.model)}, 4000 if args.quick else 20000, backend=b) if b in ran
            else {"refused": report["backends"]["int8"]["refused"]} for b in chosen}
        print("[backends] " + ", ".join(f"{r['backend']}: {r['seconds_per_photo']} s/photo"
                                        for r in report["backends"]["results"]) + "; orthomosaic " + ", ".join(
            f"{b}: {o['results']['full']['seconds']} s" for b, o in report["ortho_backends"].items() if "results" in o),
            flush=True)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} in {report['seconds']} s")


if __name__ == "__main__":
    main()

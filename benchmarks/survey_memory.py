"""Memory of the survey path on a large orthomosaic: a synthetic 20,000 x 20,000 px survey at 2 cm/px, read at 5 cm
(8,000 x 8,000 working pixels). Three commands in turn, each in its own process whose peak RSS is read from the
kernel (``os.wait4``'s rusage of that process): the cache build (``check-data`` would read the same
blocks; here the DataModule's own ``prepare_data``), ``train -c demo --max-time 5m`` (cache hits), and
``evaluate`` of the run. The target: every peak under 3 GB.

    python benchmarks/survey_memory.py [--size 20000] [--max-time 5m]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CACHE = """
import sys, time
from droneseg.config import load_config
from droneseg.data.datamodule import DroneDataModule
cfg = load_config("demo", [], {"data.root": sys.argv[1], "data.cache_dir": sys.argv[2]})
t = time.monotonic()
dm = DroneDataModule(cfg.data, seed=0, min_buffer_px=max(cfg.data.crop, cfg.inference.tile))
dm.prepare_data()
print(len(dm.layout.samples), time.monotonic() - t)
"""


def child(argv: list[str], folder: Path) -> tuple[str, float, float]:
    """Run ``argv``; -> (its stdout, wall seconds, its own peak RSS in MB, from ``os.wait4``'s rusage of that
    process and the children it waited for)."""
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    t = time.monotonic()
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen(argv, stdout=fo, stderr=fe)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}… failed:\n{err.read_text()[-3000:]}")
    return out.read_text(), time.monotonic() - t, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--max-time", default="5m")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "survey-memory.json")
    args = ap.parse_args()
    import yaml

    from droneseg.geo.scene import write_synthetic_ortho, write_synthetic_survey

    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="droneseg-bigsurvey-") as tmp:
        tmp = Path(tmp)
        t = time.monotonic()
        write_synthetic_ortho(tmp / "big.tif", (args.size, args.size), gsd=0.02, render_gsd=0.05, seed=11)
        survey = write_synthetic_survey(tmp / "big.tif", block_px=2048)["survey"]
        raw = yaml.safe_load(survey.read_text())
        raw.update({"gsd": 0.05, "block": 2048 * 0.05})  # read at 5 cm: 8,000 x 8,000 working pixels, 2048-px blocks
        survey.write_text(yaml.safe_dump(raw, sort_keys=False))
        written_s = time.monotonic() - t
        done, cache_wall, cache_mb = child([py, "-c", CACHE, str(survey), str(tmp / "cache")], tmp)
        blocks, cache_s = done.split()
        env = ["--set", f"data.cache_dir={tmp / 'cache'}"]
        done, train_wall, train_mb = child([py, "-m", "droneseg", "train", "-c", "demo", "--data", str(survey),
                                            "--max-time", args.max_time, "--out", str(tmp / "runs"),
                                            "--set", "train.final_eval=false", *env], tmp)
        run = Path(done.strip().splitlines()[-1])
        _, eval_wall, eval_mb = child([py, "-m", "droneseg", "evaluate", str(run), "--data", str(survey),
                                       "--out", str(tmp / "eval"), "--figures", "2"], tmp)
        metrics = json.loads((tmp / "eval" / "metrics.json").read_text())
    result = {"command": "python benchmarks/survey_memory.py " + " ".join(sys.argv[1:]),
              "ortho_px": [args.size, args.size], "ortho_gsd_m": 0.02, "working_gsd_m": 0.05,
              "blocks": int(blocks), "survey_written_s": round(written_s, 1),
              "cache_build_s": round(float(cache_s), 1), "cache_peak_rss_mb": round(cache_mb),
              "train_wall_s": round(train_wall, 1), "train_peak_rss_mb": round(train_mb),
              "evaluate_wall_s": round(eval_wall, 1), "evaluate_peak_rss_mb": round(eval_mb),
              "val_miou": metrics["miou"], "target_mb": 3072,
              "under_target": max(cache_mb, train_mb, eval_mb) < 3072}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""The demo as a user runs it, timed, and its model scored by both backends: ``benchmarks/results/demo.json``.

    python benchmarks/demo.py [--out benchmarks/results/demo.json]

Runs ``droneseg demo --out TMP`` in a child process (wall time from start to printed paths, the child's peak
memory), reads the run's ``train_summary.json``, then ``droneseg export`` and ``droneseg evaluate RUN --backend
onnx`` on the demo's synthetic val split: the exported model scored by the same code as torch's, mIoU side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine


def droneseg(*args: str) -> str:
    """Run a droneseg command to completion; its stdout."""
    return subprocess.run([sys.executable, "-m", "droneseg", *args], check=True, capture_output=True,
                          text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = droneseg("demo", "--out", tmp)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the demo is the only child so far
        run = Path(next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("run folder")))
        summary = json.loads((run / "train_summary.json").read_text())
        data = Path(tmp) / "demo-data"
        droneseg("export", str(run))
        onnx = droneseg("evaluate", str(run), "--data", str(data), "--backend", "onnx", "--figures", "0",
                        "--out", str(Path(tmp) / "onnx")).strip().splitlines()[-1]
        torch_metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
        onnx_metrics = json.loads((Path(onnx).parent / "metrics.json").read_text())
    result = {
        "command": "python benchmarks/demo.py",
        "machine": machine(),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_mb),
        "epochs": summary["epochs"],
        "images_per_s": round(summary["images_per_s"], 1),
        "val_images": summary["val_images"],
        "val_miou_native": summary["val_miou_native"],
        "val_miou_onnx": onnx_metrics["miou"],
        "onnx_minus_torch_miou": onnx_metrics["miou"] - torch_metrics["miou"],
        "pixel_accuracy": torch_metrics["pixel_accuracy"],
        "pixel_accuracy_onnx": onnx_metrics["pixel_accuracy"],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Write the tiny run folder that tests/test_compat.py loads: a run of an earlier droneseg release.

Run once, with the release whose run folders must stay loadable, from the repo root:

    .venv/bin/python tests/compat/make_legacy_run.py tests/compat/run-0.1.0

It trains the classic U-Net [8, 16] for 2 epochs on the synthetic scenes that ``synthetic_data`` below writes
(deterministic: the test writes them again and points the run at them), and keeps what a later release must read:
``config.yaml``, ``splits/``, ``checkpoints/last.ckpt`` (resume), ``model.safetensors`` + ``model.json`` (evaluate,
predict, export), ``train_summary.json`` and ``logs/metrics.csv``. Figures, reports and TensorBoard logs are
dropped (they are outputs, not inputs). The run's data root is written as ``@DATA@``: the test substitutes the
folder it generated.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

KEEP = ("config.yaml", "splits", "checkpoints/last.ckpt", "model.safetensors", "model.json", "train_summary.json",
        "logs/metrics.csv")
RECIPE = ["-c", "demo", "--max-epochs", "2", "--set", "model.channels=[8,16]", "--set", "data.crop=48",
          "--set", "data.batch_size=2", "--set", "data.samples_per_epoch=4", "--set", "data.workers=0",
          "--set", "data.long_side=null", "--set", "train.sample_every=0", "--set", "train.final_eval=false"]


def synthetic_data(folder: Path) -> Path:
    """The run's dataset: 12 scenes of 96x64 (seed 7), the same on every machine."""
    from droneseg.data.synthetic import write_synthetic

    return write_synthetic(folder, n=12, size=(96, 64), seed=7)


def main(dest: Path) -> None:
    import tempfile

    if dest.exists():
        sys.exit(f"{dest} exists")
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_data(Path(tmp) / "data")
        out = subprocess.run([sys.executable, "-m", "droneseg", "train", "--data", str(data), "--out",
                              str(Path(tmp) / "runs"), *RECIPE], check=True, capture_output=True, text=True).stdout
        run = Path(out.strip().splitlines()[-1])
        for rel in KEEP:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (run / rel).is_dir() else shutil.copy2)(run / rel, target)
        for name in ("config.yaml", "model.json"):
            path = dest / name
            path.write_text(path.read_text(encoding="utf-8").replace(str(data.resolve()), "@DATA@"), encoding="utf-8")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Training speed: the bare step (a batch already in memory) against the whole pipeline (``droneseg train``:
loader, augmentation, Lightning loop), in images per second, for a preset on a dataset.

The bare step is the LightningModule's own ``training_step`` + backward + optimiser step on one fixed batch of
crops, so the two differ only by what the pipeline adds. The pipeline's rate is the ``images_per_s`` that
``droneseg train`` logs (training steps only, validation excluded), from its second epoch on (the first pays the
warm-up). Each measurement runs in its own process.

    python benchmarks/training.py --data DATA [--config full] [--set key=value ...] [--steps 12]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from common import in_child, machine


def bare_step(config: str, overrides: list[str], steps: int) -> dict:
    """Images/s of ``steps`` optimiser steps on one in-memory batch (after 2 warm-up steps)."""
    import torch

    from droneseg.config import load_config
    from droneseg.engine.task import SegmentationTask
    from droneseg.schemes import get_scheme

    cfg = load_config(config, overrides)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    scheme = get_scheme(cfg.data.scheme)
    task = SegmentationTask(cfg.model.model_dump(mode="json"), cfg.loss.model_dump(mode="json"),
                            cfg.train.model_dump(mode="json"), scheme.to_dict()).train()
    params = [p for p in task.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr)
    b, c = cfg.data.batch_size, cfg.data.crop
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (b, 3, c, c), dtype=torch.uint8, generator=gen)
    target = torch.randint(0, scheme.num_classes, (b, c, c), generator=gen)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss, _ = task.criterion(task(image), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return {"images_per_s": round(b * len(times) / sum(times), 3), "batch": b, "crop": c, "steps": len(times),
            "threads": torch.get_num_threads()}


def pipeline(config: str, overrides: list[str], data: str, steps: int) -> dict:
    """Images/s that ``droneseg train`` logs over two epochs of ``steps`` steps (the second is reported)."""
    from droneseg.config import load_config
    from droneseg.engine.train import train

    cfg = load_config(config, overrides)
    b = cfg.data.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [*overrides, f"data.root={data}", f"data.samples_per_epoch={b * steps}",
                                   "train.max_epochs=2", "train.max_time=null", "train.final_eval=false",
                                   "train.sample_every=0", "train.patience=null", "data.splits=auto"])
        t0 = time.perf_counter()
        run = train(cfg, out=Path(tmp))
        with (run / "logs" / "metrics.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        return {"images_per_s": round(float(rows[-1]["images_per_s"]), 3), "steps": steps, "batch": b,
                "workers": cfg.data.workers, "seconds": round(time.perf_counter() - t0, 1)}


def measure(config: str, overrides: list[str], data: str, steps: int) -> dict:
    """Both, each in its own process; -> rates and their ratio."""
    bare = in_child(__file__, {"job": "bare", "config": config, "overrides": overrides, "steps": steps})
    pipe = in_child(__file__, {"job": "pipeline", "config": config, "overrides": overrides, "steps": steps,
                               "data": data})
    return {"config": config, "overrides": overrides, "bare_step": bare, "pipeline": pipe,
            "pipeline_over_bare": round(pipe["images_per_s"] / bare["images_per_s"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=str)
    ap.add_argument("--config", default="full")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        c = json.loads(args.child)
        if c["job"] == "bare":
            print(json.dumps(bare_step(c["config"], c["overrides"], c["steps"])))
        else:
            print(json.dumps(pipeline(c["config"], c["overrides"], c["data"], c["steps"])))
        return
    result = {"machine": machine(), **measure(args.config, args.overrides, str(Path(args.data).resolve()), args.steps)}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

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


def _task(config: str, overrides: list[str]):
    """The preset's LightningModule (loss and net) and an AdamW optimiser over it, in training mode."""
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
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=cfg.train.lr)
    return cfg, scheme, task, opt


def _timed_steps(task, opt, batches, steps: int, warmup: int = 1) -> tuple[float, int]:
    """Seconds per step (loading the batch included) over ``steps`` steps after ``warmup``; -> (s, batch size)."""
    times, size = [], 0
    t0 = time.perf_counter()
    for i, (image, target) in enumerate(batches):
        loss, _ = task.criterion(task(image), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        now = time.perf_counter()
        if i >= warmup:
            times.append(now - t0)
            size = image.shape[0]
        t0 = now
        if len(times) == steps:
            break
    return sum(times) / len(times), size


def bare_step(config: str, overrides: list[str], steps: int) -> dict:
    """Images/s of ``steps`` optimiser steps on one in-memory batch (after a warm-up step), and its FLOPs."""
    import itertools

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cfg, scheme, task, opt = _task(config, overrides)
    task.set_memory_format(cfg.train.channels_last is not False)  # as `droneseg train` on a CPU ("auto": NHWC)
    b, c = cfg.data.batch_size, cfg.data.crop
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (b, 3, c, c), dtype=torch.uint8, generator=gen)
    target = torch.randint(0, scheme.num_classes, (b, c, c), generator=gen)
    with FlopCounterMode(display=False) as counter:  # forward + backward of one batch
        task.criterion(task(image), target)[0].backward()
    opt.zero_grad(set_to_none=True)
    seconds, _ = _timed_steps(task, opt, itertools.repeat((image, target)), steps)
    rate = b / seconds
    gflop_per_image = counter.get_total_flops() / b / 1e9
    return {"images_per_s": round(rate, 3), "gflop_per_image": round(gflop_per_image, 2),
            "achieved_gflops": round(rate * gflop_per_image, 1), "batch": b, "crop": c, "steps": steps,
            "threads": torch.get_num_threads(), "channels_last": task.memory_format is torch.channels_last}


def notebook_baseline(config: str, overrides: list[str], data: str, ids: list[str], steps: int) -> dict:
    """The common notebook pipeline with the same model, loss and step: a Dataset that opens, decodes and resizes
    every photo and mask with PIL at every access (no cache, no reduced-size decoding), a random crop and flip,
    ``num_workers=0``."""
    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from droneseg.data.layout import find_layout
    from droneseg.images import working_size

    cfg, scheme, task, opt = _task(config, overrides)
    by_id = find_layout(data).by_id()
    samples = [by_id[i] for i in ids]
    crop = cfg.data.crop

    class Notebook(Dataset):
        def __len__(self) -> int:
            return 10**6

        def __getitem__(self, i: int):
            s = samples[i % len(samples)]
            rng = np.random.default_rng(i)
            photo = Image.open(s.image).convert("RGB")
            size = working_size(photo.size, cfg.data.long_side)
            image = np.asarray(photo.resize(size, Image.Resampling.BILINEAR))
            mask = np.asarray(Image.open(s.mask).resize(size, Image.Resampling.NEAREST))
            y = int(rng.integers(0, image.shape[0] - crop + 1))
            x = int(rng.integers(0, image.shape[1] - crop + 1))
            image, mask = image[y : y + crop, x : x + crop], scheme.encode(mask[y : y + crop, x : x + crop])
            if rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
            return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                    torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)))

    loader = DataLoader(Notebook(), batch_size=cfg.data.batch_size, shuffle=True, num_workers=0)
    seconds, b = _timed_steps(task, opt, loader, steps)
    return {"images_per_s": round(b / seconds, 3), "steps": steps, "batch": b, "photos": len(samples)}


def pipeline(config: str, overrides: list[str], data: str, steps: int, splits: str = "auto") -> dict:
    """Images/s that ``droneseg train`` logs over two epochs of ``steps`` steps (the second is reported).

    ``splits``: a folder of split files (a small val split keeps the validation passes short), or ``auto``.
    """
    from droneseg.config import load_config
    from droneseg.data.datamodule import loader_workers
    from droneseg.engine.train import train

    cfg = load_config(config, overrides)
    b = cfg.data.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [*overrides, f"data.root={data}", f"data.samples_per_epoch={b * steps}",
                                   "train.max_epochs=2", "train.max_time=null", "train.final_eval=false",
                                   "train.sample_every=0", "train.patience=null", f"data.splits={splits}",
                                   f"data.cache_dir={tmp}/cache"])
        t0 = time.perf_counter()
        run = train(cfg, out=Path(tmp))
        with (run / "logs" / "metrics.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        return {"images_per_s": round(float(rows[-1]["images_per_s"]), 3), "steps": steps, "batch": b,
                "workers": loader_workers(cfg.data.workers, on_gpu=False), "seconds": round(time.perf_counter() - t0, 1)}


def loader_rate(config: str, data: str, ids: list[str], n: int) -> dict:
    """Augmented crops per second that one loader process makes from the cache (what a GPU's workers each add):
    the preset's crop size, augmentation and class-centred crop rate, after the cache is built."""
    import numpy as np

    from droneseg.config import load_config
    from droneseg.data.cache import build_cache
    from droneseg.data.dataset import CropDataset, EpochSampler, class_counts, images_per_class
    from droneseg.data.layout import find_layout
    from droneseg.schemes import get_scheme

    cfg = load_config(config)
    layout = find_layout(data)
    by_id = layout.by_id()
    with tempfile.TemporaryDirectory() as tmp:
        entries = build_cache([by_id[i] for i in ids], layout.table, cfg.data.long_side, Path(tmp), progress=False)
        scheme = get_scheme(cfg.data.scheme, layout.table)
        ds = CropDataset(entries, scheme, cfg.data.crop, cfg.data.augment, seed=0)
        counts = class_counts(entries, scheme)
        sampler = EpochSampler(len(entries), n, 0, rank=0, world_size=1, class_images=images_per_class(counts),
                               class_share=cfg.data.rare_crop)
        for i in range(len(entries)):  # open every image and find its class pixels once, as a worker's first epoch does
            ds[(0, i, i, int(np.argmax(counts[i])))]
        sampler.set_epoch(1)
        keys = list(sampler)  # the preset's mix of uniform and class-centred crops
        t0 = time.perf_counter()
        for key in keys:
            ds[key]
        rate = n / (time.perf_counter() - t0)
    return {"crops_per_s": round(rate, 1), "crop": cfg.data.crop, "long_side": cfg.data.long_side,
            "rare_crop": cfg.data.rare_crop, "photos": len(ids), "crops": n}


def measure(config: str, overrides: list[str], data: str, steps: int, splits: str = "auto") -> dict:
    """Bare step and pipeline, each in its own process; -> rates and their ratio."""
    bare = in_child(__file__, {"job": "bare", "config": config, "overrides": overrides, "steps": steps})
    pipe = in_child(__file__, {"job": "pipeline", "config": config, "overrides": overrides, "steps": steps,
                               "data": data, "splits": splits})
    return {"config": config, "overrides": overrides, "bare_step": bare, "pipeline": pipe,
            "pipeline_over_bare": round(pipe["images_per_s"] / bare["images_per_s"], 3)}


def baseline(config: str, overrides: list[str], data: str, ids: list[str], steps: int) -> dict:
    """:func:`notebook_baseline` in its own process."""
    return in_child(__file__, {"job": "notebook", "config": config, "overrides": overrides, "data": data,
                               "ids": ids, "steps": steps})


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
        elif c["job"] == "loader":
            print(json.dumps(loader_rate(c["config"], c["data"], c["ids"], c["n"])))
        elif c["job"] == "notebook":
            print(json.dumps(notebook_baseline(c["config"], c["overrides"], c["data"], c["ids"], c["steps"])))
        else:
            print(json.dumps(pipeline(c["config"], c["overrides"], c["data"], c["steps"], c.get("splits", "auto"))))
        return
    result = {"machine": machine(), **measure(args.config, args.overrides, str(Path(args.data).resolve()), args.steps)}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""What the benchmarks share: peak memory of this process, the timing model, the machine's description."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

PHOTO = (6000, 4000)
"""The Semantic Drone Dataset's photo size, (W, H)."""


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a
    child started from a big parent would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)


def timing_model(folder: Path, long_side: int | None, tile: int = 512) -> tuple[Path, dict]:
    """The default CPU model for timings: classic U-Net [16, 32, 64, 128], scheme ``full`` (22 classes), random
    weights with the conv weights doubled, so that its labels vary across a photo as a trained model's do (a
    default-initialised net paints one class everywhere, which flatters the upsampling). -> (folder, description)."""
    import torch

    from droneseg.artifact import ModelInfo, save_model
    from droneseg.models import ModelConfig, build_model, model_summary
    from droneseg.schemes import get_scheme

    scheme, cfg = get_scheme("full"), ModelConfig(channels=[16, 32, 64, 128])
    torch.manual_seed(0)
    net = build_model(cfg, scheme.num_classes).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.weight.mul_(2.0)
    info = ModelInfo(model=cfg.model_dump(mode="json"), scheme=scheme.to_dict(), long_side=long_side,
                     inference={"tile": tile})
    save_model(folder, net, info)
    return folder, {**cfg.model_dump(mode="json"), **model_summary(net), "long_side": long_side, "tile": tile,
                    "scheme": "full"}


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                 if x.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def in_child(script: str, config: dict, timeout: float = 1800) -> dict:
    """Run ``python SCRIPT --child CONFIG`` in a fresh process, so that its peak RSS is its own; -> the JSON object
    it prints last. Raises SystemExit with the end of its stderr when it fails."""
    proc = subprocess.run([sys.executable, script, "--child", json.dumps(config)], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode:
        raise SystemExit(f"{Path(script).name} --child {config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fp32_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matrix-multiply rate (GFLOP/s), from the best of ``repeats`` n x n products: the peak
    that training throughput is compared with."""
    import time

    import torch

    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def droneseg(*args: str | Path) -> float:
    """Run ``python -m droneseg ARGS`` -> its wall seconds; raises SystemExit with the end of its stderr on failure."""
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "droneseg", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"droneseg {' '.join(map(str, args[:2]))} failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - t0

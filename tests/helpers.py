"""Small builders shared by test modules (pytest puts this folder on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from droneseg import cli
from droneseg.artifact import ModelInfo, save_model
from droneseg.data.synthetic import render_scene
from droneseg.models import ModelConfig, build_model
from droneseg.schemes import get_scheme


def exit_code(*argv: str | Path) -> int:
    """The real entry point (``droneseg ARGV``), in this process -> its exit code."""
    with pytest.raises(SystemExit) as stop:
        cli.main([str(a) for a in argv])
    code = stop.value.code
    return code if isinstance(code, int) else (0 if code is None else 1)


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(capsys, *argv: str | Path) -> Result:
    """The real entry point, in this process: exit code, stdout, stderr (what it printed, read through ``capsys``)."""
    capsys.readouterr()
    code = exit_code(*argv)
    out, err = capsys.readouterr()
    return Result(code, out, err)


TINY_TRAIN = ["--set", "model.channels=[8,16]", "--set", "data.crop=48", "--set", "data.batch_size=2",
              "--set", "data.samples_per_epoch=4", "--set", "data.workers=0", "--set", "data.long_side=null",
              "--set", "train.sample_every=0"]
"""The tiny training recipe end-to-end tests share, after ``-c demo`` (add ``--max-epochs``, and ``--set`` what a
test is about; a later ``--set`` of a key wins): the demo preset's classic U-Net at [8, 16], 2 crops of 48 px per step, 4 crops per
epoch, at the photos' own size, no loader processes, no sample figures."""


def tiny_net(num_classes: int, seed: int = 0) -> torch.nn.Module:
    """A 2-level U-Net whose random conv weights are doubled, so that its labels vary across a photo."""
    torch.manual_seed(seed)
    net = build_model(ModelConfig(channels=[8, 16]), num_classes).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.weight.mul_(2.0)
    return net


def save_tiny_model(folder: Path, scheme: str = "full", long_side: int | None = 100, inference: dict | None = None,
                    dataset: dict | None = None, gsd: float | None = None) -> Path:
    """``tiny_net`` saved as a run's model.safetensors + model.json in ``folder``."""
    s, cfg = get_scheme(scheme), ModelConfig(channels=[8, 16])
    info = ModelInfo(model=cfg, scheme=s, long_side=long_side, inference=inference or {}, dataset=dataset, gsd=gsd)
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_model(folder, tiny_net(s.num_classes), info)
    return Path(folder)


class ShapeRecorder(torch.nn.Module):
    """Wraps a net and records the (h, w) of every input it is given."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.shapes = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape[-2:]))
        return self.net(x)


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A synthetic aerial photo, (H, W, 3) uint8."""
    return render_scene(width, height, np.random.default_rng(seed))[0]


def gdal_attribute_table(path: Path) -> list[dict[str, str]]:
    """The raster attribute table of band 1 of ``path`` as GDAL itself reads it (its C API, through the libgdal that
    rasterio loads: GDAL's Python bindings are not on PyPI as wheels); [] when it has none."""
    import ctypes
    import ctypes.util
    import glob
    import os

    import rasterio

    bundled = glob.glob(os.path.join(os.path.dirname(rasterio.__file__), "..", "rasterio.libs", "libgdal*.so*"))
    lib = ctypes.CDLL(bundled[0] if bundled else ctypes.util.find_library("gdal"))
    p, i = ctypes.c_void_p, ctypes.c_int
    for name, res, args in [("GDALOpen", p, [ctypes.c_char_p, i]), ("GDALGetRasterBand", p, [p, i]),
                            ("GDALGetDefaultRAT", p, [p]), ("GDALRATGetRowCount", i, [p]),
                            ("GDALRATGetColumnCount", i, [p]), ("GDALRATGetNameOfCol", ctypes.c_char_p, [p, i]),
                            ("GDALRATGetValueAsString", ctypes.c_char_p, [p, i, i]), ("GDALClose", None, [p])]:
        getattr(lib, name).restype, getattr(lib, name).argtypes = res, args
    lib.GDALAllRegister()
    ds = lib.GDALOpen(str(path).encode(), 0)
    assert ds, f"GDAL cannot open {path}"
    try:
        rat = lib.GDALGetDefaultRAT(lib.GDALGetRasterBand(ds, 1))
        if not rat:
            return []
        cols = [lib.GDALRATGetNameOfCol(rat, c).decode() for c in range(lib.GDALRATGetColumnCount(rat))]
        return [{col: lib.GDALRATGetValueAsString(rat, r, c).decode() for c, col in enumerate(cols)}
                for r in range(lib.GDALRATGetRowCount(rat))]
    finally:
        lib.GDALClose(ds)

"""What int8 would buy on this CPU: the parity of ``droneseg export --format int8`` under other quantisation choices,
and the speed of an int8 network against the float one.

For a trained run and its dataset, each variant runs the export's own code (:func:`droneseg.quantize.quantize`:
calibration on training tiles, labels of the first val photos compared with the float model's) with one choice
changed, and records the pixel agreement and the worst judged class whether the export passed or refused. Then
the float ONNX model and its int8 model (the export's settings, calibrated on random tiles: speed does not depend
on the ranges) label the same batch of inference tiles in ONNX Runtime, three times after a warm-up.

    python benchmarks/int8.py --model RUN --data ../shared/data/semantic-drone-dev [--out benchmarks/results/int8.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import machine

VARIANTS = {  # name -> (convolutions kept float, ONNX Runtime calibration method)
    "every convolution int8": ("none", "MinMax"),
    "first and last convolution float (the export's choice)": ("ends", "MinMax"),
    "the same, ranges from the 99.999th percentile": ("ends", "Percentile"),
    "the first three and the last convolution float": ("ends3", "MinMax"),
}


def keep(names: list[str], which: str) -> list[str]:
    """The convolutions of a variant kept float, from all of them in graph order."""
    return {"none": [], "ends": names[:1] + names[-1:], "ends3": names[:3] + names[-1:]}[which]


def parity(model: Path, data: Path, which: str, method: str) -> dict:
    """The export's parity check under one variant: pixel agreement, the worst judged class and its IoU, passed."""
    import onnxruntime.quantization as oq

    from droneseg import quantize as q
    from droneseg.errors import DataError

    seen: list[tuple] = []
    agreement, quantize_static, float_ends = q.agreement, oq.quantize_static, q.float_ends

    def record(*a, **k):
        seen.append(agreement(*a, **k))
        return seen[-1]

    def static(*a, **k):
        k["calibrate_method"] = getattr(oq.CalibrationMethod, method)
        if method == "Percentile":
            k["extra_options"] = {"CalibPercentile": 99.999}
        return quantize_static(*a, **k)

    q.agreement, oq.quantize_static = record, static
    q.float_ends = lambda m: keep([n.name for n in m.graph.node if n.op_type in q.QUANTIZED_OPS], which)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                q.quantize(model, data, out=Path(tmp) / "int8.onnx")
                passed = True
            except DataError:
                passed = False
    finally:
        q.agreement, oq.quantize_static, q.float_ends = agreement, quantize_static, float_ends
    pixels, classes, _ = seen[-1]
    worst = min(classes, key=classes.get)
    return {"kept_float": which, "calibration": method, "pixel_agreement": round(pixels, 4), "worst_class": worst,
            "worst_class_iou": round(classes[worst], 3), "passed": passed,
            "seconds": round(time.perf_counter() - t0, 1)}


def speed(model: Path, tile: int, batch: int, repeats: int = 3) -> dict:
    """Seconds per batch of ``batch`` tiles of ``tile``² for the float and the int8 ONNX model, each in the
    ONNX Runtime session droneseg opens for it."""
    import torch

    from droneseg.export import export
    from droneseg.quantize import write_int8
    from droneseg.session import open_session

    x = torch.rand((batch, 3, tile, tile), generator=torch.Generator().manual_seed(0))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        f, q8 = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        export(model, f)
        write_int8(f, q8, [x[:1].numpy()] * 4)  # the export's settings; ranges from random tiles
        for name, path in (("float", f), ("int8", q8)):
            run = open_session(path, "onnx").run
            run(x)
            t = time.perf_counter()
            for _ in range(repeats):
                run(x)
            out[f"{name}_s_per_batch"] = round((time.perf_counter() - t) / repeats, 3)
    out["int8_speedup"] = round(out["float_s_per_batch"] / out["int8_s_per_batch"], 2)
    return {"tile": tile, "batch": batch, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "int8.json")
    args = ap.parse_args()
    import onnxruntime

    from droneseg.artifact import read_info, resolve_model_path

    info = read_info(resolve_model_path(args.model))
    report = {"benchmark": "int8", "command": " ".join(["python", *sys.argv]),
              "machine": {**machine(), "onnxruntime": onnxruntime.__version__}, "model": str(args.model),
              "variants": {}}
    for name, (which, method) in VARIANTS.items():
        report["variants"][name] = parity(args.model, args.data, which, method)
        print(name, json.dumps(report["variants"][name]), flush=True)
    report["speed"] = speed(args.model, info.inference.tile, info.inference.batch)
    print(json.dumps(report["speed"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""The README and docs/ say what the code and the results JSON say.

* Every measured number listed in :data:`NUMBERS` is read from its JSON under ``benchmarks/results/`` (or from the
  JSON of an earlier run, ``git show COMMIT:PATH``), formatted as the text formats it, and looked for in the one
  paragraph or table row of the page that holds it: a number changed on either side fails here.
* Links between the pages resolve, with their anchors; the README stays a landing page under 10,000 characters
  that opens with the two commands; ``mkdocs build --strict`` passes.
* ``scripts/devset/build.py`` builds the dev subset from a fake Kaggle or TU Graz download.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
BUILD = ROOT / "scripts" / "devset" / "build.py"


# ---------------------------------------------------------------------------------------------------------------
# numbers: text against JSON


def r(value: float, digits: int = 0) -> str:
    """``value`` rounded half up to ``digits`` decimals, as a person rounds the JSON's shortest repr."""
    q = Decimal(1).scaleb(-digits)
    return str(Decimal(repr(float(value))).quantize(q, rounding=ROUND_HALF_UP))


def pct(share: float, digits: int = 1) -> str:
    """0.8424 -> '84.2' (percent of a share)."""
    return r(float(Decimal(repr(float(share))) * 100), digits)


def gb(mb: float) -> str:
    """Peak RSS in MB (10^6 bytes, as the benchmarks record it) -> '1.55 GB'."""
    return f"{r(mb / 1000, 2)} GB"


def gib(mb: float) -> str:
    """CUDA memory in MiB -> '11.7 GiB'."""
    return f"{r(mb / 1024, 1)} GiB"


def iou(v: float) -> str:
    """Per-class IoU as the text writes it: 2 decimals, 3 below 0.1 (so that 0.046 is not shown as 0.05)."""
    return r(v, 2 if v >= 0.1 else 3)


def results_row(d: dict) -> list[str]:
    """What the results table says of one 30-minute recipe JSON, whatever the scheme."""
    return [f"**{r(d['val_miou_native'], 3)}** | {r(d['per_image_miou'], 3)} |", f"pixel accuracy {pct(d['pixel_accuracy'])} %",
            f"{r(d['wall_s'])} s wall, {d['epochs']} epochs at {r(d['images_per_s'], 1)} img/s"]


def full_row(d: dict) -> list[str]:
    ious = d["per_class_iou"].values()
    above_zero = "every class above zero: " if min(ious) > 0 else ""
    return [*results_row(d), f"{above_zero}{sum(v > 0.1 for v in ious)} of {len(ious)} above 0.1 IoU",
            f"`door` {iou(d['per_class_iou']['door'])}"]


def six_row(d: dict) -> list[str]:
    ranked = sorted(d["per_class_iou"].items(), key=lambda kv: -kv[1])
    return [*results_row(d), ", ".join(f"{name} {r(v, 2)}" for name, v in ranked)]


def paved_row(d: dict) -> list[str]:
    c = d["per_class_iou"]
    return [*results_row(d), f"paved-area IoU {r(c['paved-area'], 3)}, other {r(c['other'], 3)}"]


def per_class(d: dict) -> list[str]:
    ranked = sorted(d["per_class_iou"].items(), key=lambda kv: -kv[1])
    return [", ".join(f"{name} {iou(v)}" for name, v in ranked)]


def recipe_row(d: dict) -> list[str]:
    """A row of the 8-minute ranking: mIoU (plain or bold) and img/s."""
    return [r(d["val_miou_native"], 3), f"| {r(d['images_per_s'], 2)}"]


def predict_row(d: dict) -> list[str]:
    def pick(backend: str, scale: float) -> dict:
        return next(x for x in d["results"] if x["backend"] == backend and x["tile"] == 512 and x["scale"] == scale)

    torch, onnx, preview = pick("torch", 1.0), pick("onnx", 1.0), pick("torch", 0.25)
    return [f"{r(torch['seconds_per_photo'], 1)} s, peak RSS {gb(torch['peak_rss_mb'])}",
            f"(ONNX Runtime {r(onnx['seconds_per_photo'], 1)} s, {gb(onnx['peak_rss_mb'])})",
            f"`--scale 0.25` {r(preview['seconds_per_photo'], 2)} s"]


def evaluate_row(d: dict) -> list[str]:
    s = d["summary"]["long_side_768"]
    rss = s["evaluate_peak_rss_mb_by_photos"]
    return [f"{r(s['evaluate_s_per_photo'], 1)} s per photo over {s['photos']} photos",
            f"({r(s['evaluate_marginal_s_per_photo'], 1)} s per extra photo; predict {r(s['predict_s_per_photo'], 1)} s: "
            f"{r(s['evaluate_over_predict'], 1)}x)",
            f"peak RSS {gb(rss['1'])} with 1 photo, {gb(rss[str(s['photos'])])} with {s['photos']}"]


def evaluate_native_row(d: dict) -> list[str]:
    s = d["summary"]["long_side_None"]
    rss = s["evaluate_peak_rss_mb_by_photos"]
    return [f"{r(s['evaluate_s_per_photo'])} s per photo (predict {r(s['predict_s_per_photo'])} s: "
            f"{r(s['evaluate_over_predict'], 2)}x)",
            f"peak RSS {gb(rss['1'])} with 1 photo, {gb(rss[str(s['photos'])])} with {s['photos']}"]


def quick_suite(d: dict) -> list[str]:
    full, demo = d["training"]["full"], d["training"]["demo"]
    base_f, base_d = full["notebook_baseline"], demo["notebook_baseline"]
    inf = d["inference"]
    return [f"{r(d['seconds'])} s;",
            f"bare step {r(full['bare_step']['images_per_s'], 2)} img/s ({r(full['bare_step']['achieved_gflops'])} GFLOP/s",
            f"the {r(d['machine']['fp32_peak_gflops'])} GFLOP/s",
            f"pipeline {r(full['pipeline_over_bare'], 2)} of it",
            f"demo {r(demo['bare_step']['images_per_s'], 1)} img/s, pipeline {r(demo['pipeline_over_bare'], 2)} of it",
            f"{r(base_f['dev_1500x1000']['ours_over_baseline'], 2)}x slower than ours on 1500x1000 photos and "
            f"{r(base_f['synthetic_6000x4000']['ours_over_baseline'], 2)}x on 6000x4000",
            f"{r(base_d['dev_1500x1000']['ours_over_baseline'], 2)}x and "
            f"{r(base_d['synthetic_6000x4000']['ours_over_baseline'], 1)}x for the demo",
            f"makes {r(d['loader']['crops_per_s'], 1)} augmented {d['loader']['crop']}² crops/s",
            f"model {r(inf['predict']['seconds_per_photo'], 1)} s, `evaluate` {r(inf['evaluate']['seconds_per_photo'], 1)} s"]


def ortho_row(model: str) -> Callable[[dict], list[str]]:
    def expect(d: dict) -> list[str]:
        x = d["results"][model]
        st = x["stages_s"]
        return [f"| {r(x['seconds'])} | {r(st['infer'])} s | {r(st['sieve_count'])} s | {r(st['polygons'])} s "
                f"({x['polygons']:,} polygons) | {r(st['cog'])} s | {gb(x['peak_rss_mb'])} |"]
    return expect


def ortho_scene(d: dict) -> list[str]:
    x = d["results"]["demo"]
    grid = r(d["ortho"]["size"][0] * x["working_scale"][0])
    return [f"a {d['ortho']['size'][0]:,} x {d['ortho']['size'][1]:,} synthetic orthomosaic at {r(d['ortho']['gsd_m'] * 100)} cm/px",
            f"read at {r(d['model_gsd_m'] * 100)} cm/px: an {grid} x {grid} working grid",
            f"{x['tiles'] + x['tiles_skipped']} tiles of 512² of which {x['tiles_skipped']} over the collar"]


def ortho_headline(d: dict) -> list[str]:
    demo, full = d["results"]["demo"], d["results"]["full"]
    return [f"demo U-Net {r(demo['seconds'])} s, peak RSS {gb(demo['peak_rss_mb'])}",
            f"`full` FPN-Lite0 {r(full['seconds'])} s, {gb(full['peak_rss_mb'])}"]


def ortho_onnx(d: dict) -> list[str]:
    demo, full = d["results"]["demo"], d["results"]["full"]
    return [f"demo {r(demo['seconds'])} s in all ({r(demo['stages_s']['infer'])} s inference, {gb(demo['peak_rss_mb'])})",
            f"`full` {r(full['seconds'])} s ({r(full['stages_s']['infer'])} s inference) but at {gb(full['peak_rss_mb'])} peak"]


def ortho_vs_photo(d: dict) -> list[str]:
    o, p, a = d["scores"]["ortho"], d["scores"]["photo"], d["agreement"]
    return [f"each of the {d['photos']} dev val photos",
            f"scores mIoU {r(o['miou'], 3)} and pixel accuracy {r(o['pixel_accuracy'], 3)}",
            f"the photo path scores {r(p['miou'], 3)} and {r(p['pixel_accuracy'], 3)}",
            f"agree on {pct(a['mean'])}% of pixels on average ({pct(a['min'])}% on the worst photo)"]


def gpu_train(d: dict) -> list[str]:
    f32, bf16 = d["runs"]["32"], d["runs"]["bf16-mixed"]
    return [f"{r(f32['images_per_s'])} img/s fp32 ({gib(f32['peak_cuda_mb'])}), "
            f"{r(bf16['images_per_s'])} img/s bf16-mixed ({gib(bf16['peak_cuda_mb'])})"]


def gpu_predict(d: dict) -> list[str]:
    return [f"{r(d['predict_6000x4000_torch_s'], 1)} s ({r(d['predict_timings_torch']['infer'], 1)} s inference)"]


def demo_page(d: dict) -> list[str]:
    return [f"**{r(d['wall_s'])} s** from start to", f"{gb(d['peak_rss_mb'])} peak memory",
            f"{d['epochs']} epochs of", f"at {r(d['images_per_s'], 1)} images/s",
            f"**synthetic val mIoU of {r(d['val_miou_native'], 3)}** (native resolution, {d['val_images']} images",
            f"`droneseg evaluate RUN --backend onnx` gives {r(d['val_miou_onnx'], 3)} too (a difference of "
            f"{r(abs(d['onnx_minus_torch_miou']), 1)})"]


def demo_row(d: dict) -> list[str]:
    return [f"| {r(d['wall_s'])} s, synthetic val mIoU {r(d['val_miou_native'], 3)} (six classes;",
            f"`evaluate --backend onnx`: {r(d['val_miou_onnx'], 3)})"]


def survey_row(key: str):
    def expect(d: dict) -> list[str]:
        run = d[key]
        return [f"| {r(run['val_miou_native'], 3)} |", f"| {run['epochs']}, {run['steps']} |",
                f"| {r(run['command_s'])} | {r(run['final_eval_s'])} |"]

    return expect


def backend_row(key: str):
    def expect(d: dict) -> list[str]:
        b = next(x for x in d["results"] if x["backend"] == key)
        return [f"| {r(b['seconds_per_photo'], 2)} ({r(b['read_s'], 2)}, {r(b['infer_s'], 2)}, {r(b['write_s'], 2)}) |",
                f"| {r(b['evaluate_s'])} s |", f"| {r(b['val_miou'], 4)} |", f"| {b['peak_rss_mb']} MB |"]

    return expect


def ratio(d: dict, key: str) -> float:
    """A backend's network seconds per photo over torch's."""
    infer = {x["backend"]: x["infer_s"] for x in d["results"]}
    return infer[key] / infer["torch"]


def photo_ratio(d: dict, key: str) -> float:
    """A backend's seconds per photo over torch's."""
    seconds = {x["backend"]: x["seconds_per_photo"] for x in d["results"]}
    return seconds[key] / seconds["torch"]


@dataclass(frozen=True)
class Numbers:
    """The paragraph or table row of ``page`` that contains ``where`` holds every string ``expect`` makes of the
    JSON ``source`` (a path under benchmarks/results/, or ``COMMIT:benchmarks/results/...`` for an earlier run)."""

    page: str
    where: str
    source: str
    expect: Callable[[dict], list[str]]

    @property
    def id(self) -> str:
        return f"{self.page}:" + re.sub(r"\W+", "-", self.where).strip("-")[:40]


RESULTS_TABLE = [
    ("| `full` (22 classes) |", "recipes/full-30m.json", full_row),
    ("| `full-long` (22 classes, 2 hours) |", "recipes/full-long-2h.json", full_row),
    ("| `six` |", "recipes/six-30m.json", six_row),
    ("| `paved` |", "recipes/paved-30m.json", paved_row),
]
RECIPE_ROWS = ["unet-lite0", "fpn-lite0", "fpn-lite0-sqrt-lr2e-3", "full", "full-ema", "full-crop256-b8",
               "full-rare0.8", "full-ohem", "full-1024", "full-lovasz"]
STEP15_ROWS = ["step15-full", "step15-epoch1000", "step15-crop192-b14", "step15-lite2", "step15-smooth0.1",
               "step15-lite1"]
OLD = "benchmarks/results/recipes"


def step15_row(d: dict) -> list[str]:
    """A row of step 15's ranking: pooled and per-image mIoU, optimiser steps, img/s."""
    return [f"| {r(d['val_miou_native'], 3)} | {r(d['per_image_miou'], 3)} | {d['budget_detail']['done_steps']} | "
            f"{r(d['images_per_s'], 2)} |"]

def suite_row(key: str):
    """A row of the whole suite's backends table: photo seconds (read, network, write), evaluate seconds, mIoU,
    evaluate's peak RSS, the orthomosaic's seconds (inferring strips) and peak RSS."""
    def expect(d: dict) -> list[str]:
        b = next(x for x in d["backends"]["results"] if x["backend"] == key)
        o = d["ortho_backends"][key]["results"]["full"]
        return [f"| {r(b['seconds_per_photo'], 2)} ({r(b['read_s'], 2)}, {r(b['infer_s'], 2)}, {r(b['write_s'], 2)}) "
                f"| {r(b['evaluate_s'])} s | {r(b['val_miou'], 4)} | {b['peak_rss_mb']} MB | {r(o['seconds'])} s "
                f"({r(o['stages_s']['infer'])} s) | {o['peak_rss_mb']} MB |"]

    return expect


def suite_training(d: dict) -> list[str]:
    """The whole suite's row of the measured-on-this-code table: training steps, baselines, loader, inference."""
    full, demo = d["training"]["full"], d["training"]["demo"]
    return [f"| {r(d['seconds'])} s;", f"bare step {r(full['bare_step']['images_per_s'], 2)} img/s "
            f"({r(full['bare_step']['achieved_gflops'])} GFLOP/s against the {r(d['machine']['fp32_peak_gflops'])} "
            f"GFLOP/s", f"pipeline {r(full['pipeline_over_bare'], 2)} of it; demo "
            f"{r(demo['bare_step']['images_per_s'], 1)} img/s, pipeline {r(demo['pipeline_over_bare'], 2)} of it",
            *(f"{r(t['notebook_baseline'][k]['ours_over_baseline'], 2)}x" for t in (full, demo)
              for k in ("dev_1500x1000", "synthetic_6000x4000")),
            f"makes {d['loader']['crops_per_s']} augmented",
            f"on torch {r(d['inference']['predict']['seconds_per_photo'], 2)} s, `evaluate` "
            f"{r(d['inference']['evaluate']['seconds_per_photo'], 2)} s per photo"]


def suite_goals(d: dict) -> list[str]:
    """The whole suite against step 15's goals: photo seconds, the float backends' mIoU spread (rounded up to a
    whole 1e-6), the orthomosaic seconds, the refused int8 export's pixel agreement."""
    photo = {b["backend"]: b for b in d["backends"]["results"]}
    ortho = {k: v["results"]["full"]["seconds"] for k, v in d["ortho_backends"].items() if "results" in v}
    miou = [b["val_miou"] for b in photo.values()]
    agree = re.search(r"pixels agree ([\d.]+)%", d["backends"]["int8"]["refused"]).group(1)
    return [f"met by ONNX Runtime ({r(photo['onnx']['seconds_per_photo'], 2)} s)",
            f"by torch too ({r(photo['torch']['seconds_per_photo'], 2)} s;",
            f"agree to {math.ceil((max(miou) - min(miou)) * 1e6)}e-6",
            f"ONNX Runtime's {r(ortho['onnx'])} s is {r(ortho['onnx'] / ortho['torch'], 2)}x torch's "
            f"{r(ortho['torch'])} s",
            f"{agree} % of the pixels"]


def ortho_geometry(d: dict) -> list[str]:
    """One tile geometry's orthomosaic run: tiles run and skipped, seconds (whole, inferring strips), peak RSS."""
    o = d["results"]["full"]
    return [f"{o['tiles']} tiles of {o['tile']}² at overlap {o['overlap']} run ({o['tiles_skipped']} skipped)",
            f"{r(o['seconds'])} s (", f"{r(o['stages_s']['infer'])} s)", f"{o['peak_rss_mb']} MB"]


def ortho_budget(d: dict) -> list[str]:
    """What the 100 s goal leaves the strips once the rest of the job has run."""
    o = d["results"]["full"]
    rest = o["seconds"] - o["stages_s"]["infer"]
    return [f"took {r(rest)} s of the {r(o['seconds'])}", f"under about {r(100 - rest)} s, "
            f"{r(o['stages_s']['infer'] / (100 - rest), 1)}x"]


def ortho_tail(o: dict) -> float:
    """Seconds of an orthomosaic job after its COG: the area tables, the style files and the preview."""
    st = o["stages_s"]
    return st["total"] - st["infer"] - st["sieve_count"] - st["polygons"] - st["cog"]


def ortho_profile(d: dict) -> list[str]:
    """The profiled orthomosaic job's stages, as the text lists them."""
    o = d["results"]["full"]
    p, st = o["profile_s"], o["stages_s"]
    rest = st["infer"] - p["network"] - p["read_working_scale"] - p["upsample_argmax"]
    return [f"{r(o['seconds'])} s that run", f"forward passes {r(p['network'])} s",
            f"working grid (GDAL) {r(p['read_working_scale'])} s",
            f"full-resolution labels {r(p['upsample_argmax'])} s",
            f"class raster) {r(rest)} s", f"polygons {r(p['polygons'])} s", f"the COG {r(st['cog'])} s",
            f"the preview {r(p['preview'])} s", f"area count {r(st['sieve_count'])} s",
            f"the network's {r(p['network'])} s and the {r(o['seconds'] - p['network'])} s around it"]


def after_the_preview_change(d: dict) -> list[str]:
    """The plain orthomosaic run after the preview change against the suite's onnx run (``d``: run.json)."""
    before, after = d["ortho_backends"]["onnx"]["results"]["full"], load("ortho-onnx-picture.json")["results"]["full"]
    return [f"took {r(ortho_tail(after), 1)} s against {r(ortho_tail(before), 1)} s in the suite's run",
            f"the whole job {r(after['seconds'])} s against {r(before['seconds'])} s",
            f"the strips took {r(after['stages_s']['infer'] - before['stages_s']['infer'])} s longer"]


def int8_row(prefix: str):
    """A row of the int8 table: pixel agreement, the worst class and its IoU, passed or not."""
    def expect(d: dict) -> list[str]:
        (v,) = [v for k, v in d["variants"].items() if k.startswith(prefix)]
        return [f"| {pct(v['pixel_agreement'], 2)} % | {v['worst_class']} {r(v['worst_class_iou'], 3)} | "
                f"{'yes' if v['passed'] else 'no'} |"]

    return expect


def tta_text(d: dict) -> list[str]:
    """Flip TTA against none on the two trained models: pooled and per-image mIoU, evaluation seconds."""
    a, b = d["models"]["full-30m"], d["models"]["full-long"]
    return [f"(val {r(a['plain']['miou'], 3)}) {r(a['tta']['miou'], 3)} with TTA (+{r(a['miou_gain'], 3)} pooled, "
            f"+{r(a['per_image_gain'], 3)} per-image), {r(a['tta']['seconds'])} s instead of "
            f"{r(a['plain']['seconds'])} s",
            f"`full-long` {r(b['tta']['miou'], 3)} instead of {r(b['plain']['miou'], 3)} (+{r(b['miou_gain'], 3)}; "
            f"per-image {r(b['tta']['per_image_miou'], 3)} instead of {r(b['plain']['per_image_miou'], 3)}), "
            f"{r(b['tta']['seconds'])} s instead of {r(b['plain']['seconds'])} s"]


def finetune_row(key: str):
    def expect(d: dict) -> list[str]:
        run = d[key]
        return [f"| {r(run['val_miou_native'], 3)} |", *(f"| {r(v, 3)} |" for v in run["per_class_iou"].values()),
                f"| {run['epochs']}, {run['steps']} |"]

    return expect


NUMBERS = [
    Numbers("docs/labelling.md", "| the parent (`--init RUN`) |", "finetune.json", finetune_row("from_parent")),
    Numbers("docs/labelling.md", "| ImageNet EfficientNet-Lite0 |", "finetune.json", finetune_row("from_imagenet")),
    Numbers("docs/labelling.md", "Fine-tuning gains", "finetune.json", lambda d: [f"+{r(d['gain'], 3)} mIoU"]),
    Numbers("docs/labelling.md", "Does the ranking point at the photos", "uncertainty.json", lambda d: [
        f"ρ = {r(d['spearman'], 3)}** over {d['photos']} photos", f"The {d['top']} photos",
        f"mean error of {pct(d['top_mean_error'])} %", f"other {d['photos'] - d['top']} of {pct(d['rest_mean_error'])} %"]),
    Numbers("docs/labelling.md", "a parent `full` model trained for 30 minutes", "finetune.json", lambda d: [
        f"({d['parent_train_images']}", f"val mIoU {r(d['parent']['val_miou_native'], 3)} on the 22 classes",
        f"last {d['few']} of"]),
    Numbers("docs/index.md", "Measured here (2-core CPU, `python benchmarks/demo.py`", "demo.json", demo_page),
    Numbers("docs/benchmarks.md", "| demo, start to printed paths", "demo.json", demo_row),
    Numbers("docs/benchmarks.md", "Memory of the survey path on a large orthomosaic", "survey-memory.json",
            lambda d: [f"cache build {r(d['cache_build_s'], 1)} s at {d['cache_peak_rss_mb']} MB peak",
                       f"5m` {d['train_peak_rss_mb']} MB peak", f"`evaluate` {d['evaluate_peak_rss_mb']} MB peak",
                       f"(val mIoU {r(d['val_miou'], 3)})", f"({d['blocks']} blocks of"]),
    *[Numbers("docs/benchmarks.md", f"| {path} (`--data", "survey-vs-photos-full-30m.json", survey_row(key))
      for path, key in (("survey", "survey"), ("photos", "photos"))],
    Numbers("docs/benchmarks.md", "Both rows are this code's", "survey-vs-photos-full-30m.json", lambda d: [
        f"scores {r(-d['difference'], 3)} below the photo path", f"with {d['survey']['steps']} optimiser steps against "
        f"{d['photos']['steps']}", ", ".join(f"{r(x)}" for x in d["survey"]["epoch_s"][:3]) + " s on the survey",
        "against " + ", ".join(f"{r(x)}" for x in d["photos"]["epoch_s"][:3]) + " s on the photos"]),
    Numbers("docs/benchmarks.md", "Both rows are this code's",
            "ef0347f:benchmarks/results/survey-vs-photos-full-30m.json", lambda d: [
                f"The {r(-d['difference'], 3)} gap", f"and {d['survey']['steps']} in another"]),
    Numbers("docs/benchmarks.md", "Both rows are this code's",
            "c8ad2bc:benchmarks/results/survey-vs-photos-full-30m.json", lambda d: [
                f"the same survey path did {d['survey']['steps']} optimiser steps"]),
    *[Numbers(page, where, "gis.json", lambda d: [f"{pct(d['agreement'], 2)} % of the pixels"])
      for page, where in (("README.md", "In QGIS or WebODM"), ("docs/index.md", "In QGIS or WebODM"),
                          ("docs/gis.md", "**Measured.**"))],
    Numbers("docs/gis.md", "**Measured.**", "gis.json", lambda d: [
        f"{d['photos']} dev val photos", f"GeoDeep {d['geodeep']}", f"--gsd {d['gsd_m']}",
        f"{r(d['miou_geodeep'], 3)} through GeoDeep, {r(d['miou_predict'], 3)} through `droneseg predict`"]),
    *[Numbers("docs/benchmarks.md", f"| {name} |", "backends.json", backend_row(key))
      for name, key in (("torch", "torch"), ("onnx (ONNX Runtime)", "onnx"), ("openvino (OpenVINO, f32)", "openvino"))],
    Numbers("docs/prediction.md", "Without `--backend`, a run", "backends.json", lambda d: [
        f"{r(photo_ratio(d, 'onnx'), 2)}x torch's seconds per 6000x4000 photo"]),
    Numbers("docs/benchmarks.md", "The three agree to 1e-6", "backends.json", lambda d: [
        f"network {r(ratio(d, 'onnx'), 2)}x torch's", f"OpenVINO's {r(ratio(d, 'openvino'), 2)}x",
        f"ONNX Runtime takes {r(photo_ratio(d, 'onnx'), 2)}x torch's seconds per photo",
        f"OpenVINO {r(photo_ratio(d, 'openvino'), 2)}x", f"run and {r(d['results'][0]['write_s'], 2)} s now"]),
    *[Numbers("docs/benchmarks.md", f"| {name}, orthomosaic |", f"ortho-backend-{key}.json", lambda d: [
        f"| {r(d['results']['full']['seconds'])} s (network {r(d['results']['full']['stages_s']['infer'])} s) |",
        f"| {d['results']['full']['peak_rss_mb']} MB |"])
      for name, key in (("torch", "torch"), ("onnx (ONNX Runtime)", "onnx"), ("openvino (OpenVINO, f32)", "openvino"))],
    *[Numbers("docs/benchmarks.md", f"| {name}, whole suite |", "run.json", suite_row(key))
      for name, key in (("torch", "torch"), ("onnx (ONNX Runtime)", "onnx"), ("openvino (OpenVINO, f32)", "openvino"))],
    Numbers("docs/benchmarks.md", "The whole benchmark suite, given a trained model", "run.json", lambda d: [
        f"{r(d['seconds'])} s for the whole suite", f"val mIoU {r(d['backends']['results'][0]['val_miou'], 3)}"]),
    Numbers("docs/benchmarks.md", "Against step 15's goals on this CPU", "run.json", suite_goals),
    Numbers("docs/benchmarks.md", "| benchmark suite, whole", "run.json", suite_training),
    *[Numbers("docs/benchmarks.md", "Tile geometry does not buy it either", f"ortho-onnx-tile{t}.json", ortho_geometry)
      for t in (512, 1024)],
    Numbers("docs/benchmarks.md", "Tile geometry does not buy it either", "ortho-onnx-tile512.json", ortho_budget),
    *[Numbers("docs/benchmarks.md", "Where the time goes, from the orthomosaic job", src, fn)
      for src, fn in (("ortho-onnx-profile.json", ortho_profile), ("run.json", after_the_preview_change))],
    *[Numbers("docs/benchmarks.md", f"| {name}", "int8.json", int8_row(name)) for name in (
        "every convolution int8", "first and last convolution float", "the same, ranges from the 99.999th percentile",
        "the first three and the last convolution float")],
    Numbers("docs/benchmarks.md", "Keeping the convolution that sees the pixels", "int8.json", lambda d: [
        f"a batch of {['one', 'two', 'three', 'four'][d['speed']['batch'] - 1]} {d['speed']['tile']}² tiles in "
        f"{r(d['speed']['int8_s_per_batch'], 3)} s against {r(d['speed']['float_s_per_batch'], 3)} s in float, "
        f"{r(d['speed']['int8_speedup'], 2)}x faster"]),
    Numbers("docs/benchmarks.md", "Flip TTA at evaluation (`droneseg", "tta.json", tta_text),
    # the results table: in the README, the docs' home page and Benchmarks
    *[Numbers(page, where, src, fn) for page in ("README.md", "docs/index.md", "docs/benchmarks.md")
      for where, src, fn in RESULTS_TABLE],
    Numbers("docs/benchmarks.md", "Per-class IoU of `full`:", "recipes/full-30m.json", per_class),
    # what two hours buy
    Numbers("docs/benchmarks.md", "`full-long-2h.json` |", "recipes/full-long-2h.json", step15_row),
    Numbers("docs/benchmarks.md", "Per-class IoU of `full-long`:", "recipes/full-long-2h.json", per_class),
    Numbers("docs/benchmarks.md", "Four times the budget buys", "recipes/full-long-2h.json", lambda d: [
        f"{d['budget_detail']['done_steps']} here", f"door 0.046 -> {iou(d['per_class_iou']['door'])}",
        f"fence-pole (0.13 -> {iou(d['per_class_iou']['fence-pole'])})", "Peak RSS 3.5 GB"]),
    Numbers("docs/benchmarks.md", "Four times the budget buys", "recipes/full-long-2h.json", lambda d: [
        "(" + ", ".join(r(e["val_miou"], 3) for e in d["val_curve"][-4:]) + ")"]),
    Numbers("docs/benchmarks.md", "How far the 30-minute goal is", "recipes/full-long-2h.json", lambda d: [
        f"first after epoch {e['epoch']} ({r(e['val_miou'], 3)} at {r(e['elapsed_s'])} s, "
        f"{(e['epoch'] + 1) * 1000 // 8}" for e in (next(e for e in d["val_curve"] if e["val_miou"] >= 0.545),
                                                   next(e for e in d["val_curve"] if e["val_miou"] >= 0.6))] + [
        f"({r(d['val_curve'][-1]['val_miou'], 3)} and {r(d['val_miou_native'], 3)})"]),
    Numbers("docs/benchmarks.md", "How far the 30-minute goal is", "recipes/full-30m.json", lambda d: [
        f"30 minutes buy {d['budget_detail']['done_steps']} on the Xeon", f"{r(d['val_miou_native'], 3)} first",
        f"step {r(2000 / d['budget_detail']['done_steps'], 1)}x faster"]),
    Numbers("docs/benchmarks.md", "How far the 30-minute goal is", "survey-vs-photos-full-30m.json", lambda d: [
        f"and {d['photos']['steps']} on an EPYC"]),
    Numbers("docs/benchmarks.md", "Four times the budget buys", "recipes/full-30m.json", lambda d: [
        f"results table ({r(d['val_miou_native'], 3)}", f"{d['budget_detail']['done_steps']} optimiser steps there",
        f"door {iou(d['per_class_iou']['door'])} ->", f"fence-pole ({iou(d['per_class_iou']['fence-pole'])} ->"]),
    Numbers("docs/benchmarks.md", "Door (21 of 250 training photos", "recipes/full-30m.json",
            lambda d: [f"this run made {d['epochs']} epochs at {r(d['images_per_s'], 1)} img/s"]),
    *[Numbers("docs/benchmarks.md", f"`{name}-8m.json`", f"recipes/{name}-8m.json", recipe_row) for name in RECIPE_ROWS],
    *[Numbers("docs/benchmarks.md", f"`{name}-8m.json`", f"recipes/{name}-8m.json", step15_row) for name in STEP15_ROWS],
    Numbers("docs/benchmarks.md", "`full-1024-8m.json`", "recipes/full-1024-8m.json",
            lambda d: [f"returned after {r(d['wall_s'])} s"]),
    # "Measured on this code"
    Numbers("docs/benchmarks.md", "| cache build per photo", "cache.json", lambda d: [
        f"{r(d['sets']['dev_1500x1000']['build_draft']['median_s'], 2)} s (1500x1000)",
        f"{r(d['sets']['synthetic_6000x4000']['build_draft']['median_s'], 2)} s (6000x4000 JPEG",
        f"vs {r(d['sets']['synthetic_6000x4000']['build_full_decode']['median_s'], 2)} s full decoding"]),
    Numbers("docs/benchmarks.md", "| cache read of a 384² crop", "cache.json",
            lambda d: [f"| {r(d['sets']['dev_1500x1000']['read']['crop_read_ms'], 1)} ms |"]),
    Numbers("docs/benchmarks.md", "| train `full` preset on the dev train split", "recipes/full-30m.json",
            lambda d: [f"| {r(d['images_per_s'], 1)} img/s;", f"val mIoU {r(d['val_miou_native'], 3)} (above)"]),
    Numbers("docs/benchmarks.md", "| evaluate that model on the 50 dev val photos", "recipes/full-30m.json",
            lambda d: [f"| {r(d['final_eval_s'])} s (validation at working size during training: "
                       f"{r(d['budget_detail']['val_s'])} s)"]),
    Numbers("docs/benchmarks.md", "| benchmark suite, quick", "run-quick.json", quick_suite),
    Numbers("docs/benchmarks.md", "| predict one 6000x4000 photo, U-Net", "predict.json", predict_row),
    Numbers("docs/benchmarks.md", "| evaluate 6000x4000 photos with masks", "evaluate.json", evaluate_row),
    Numbers("docs/benchmarks.md", "| evaluate at native size", "evaluate.json", evaluate_native_row),
    Numbers("docs/benchmarks.md", "| predict a 20,000 x 20,000 orthomosaic", "ortho.json", ortho_headline),
    Numbers("docs/benchmarks.md", "Unet-Lite0 training, 512² crops", "gpu.json", gpu_train),
    Numbers("docs/benchmarks.md", "predict one 6000x4000 photo, Unet-Lite0", "gpu.json", gpu_predict),
    # orthomosaics
    Numbers("docs/benchmarks.md", "On real imagery:", "ortho_vs_photo.json", ortho_vs_photo),
    Numbers("docs/benchmarks.md", "Measured on this machine (", "ortho.json", ortho_scene),
    Numbers("docs/benchmarks.md", "| demo (U-Net [16,32,64,128], 6 classes) |", "ortho.json", ortho_row("demo")),
    Numbers("docs/benchmarks.md", "| full (FPN EfficientNet-Lite0, 22 classes) |", "ortho.json", ortho_row("full")),
    Numbers("docs/benchmarks.md", "With `--backend onnx`", "ortho-onnx.json", ortho_onnx),
    Numbers("docs/benchmarks.md", "With `--strip 2048`", "ortho-strip2048-10000.json", lambda d: [
        f"peaked at {gb(d['results']['demo']['peak_rss_mb'])} on a 10,000² orthomosaic ({r(d['results']['demo']['seconds'])} s)",
        f"{r(d['results']['demo']['rss_after_imports_mb'] / 1000, 1)} GB of it is importing torch"]),
    Numbers("docs/benchmarks.md", "With `--strip 2048`", "ortho-strip2048-20000.json", lambda d: [
        f"{gb(d['results']['demo']['peak_rss_mb'])} on the 20,000² one (4x the pixels, {r(d['results']['demo']['seconds'])} s",
        f"{d['results']['demo']['tiles']} tiles instead of"]),
    Numbers("docs/benchmarks.md", "With `--strip 2048`", "ortho.json",
            lambda d: [f"tiles instead of {d['results']['demo']['tiles']})"]),
    # earlier runs, from the repo's history
    Numbers("docs/benchmarks.md", "Before class-uniform crops, `six`", f"5f183da:{OLD}/six-30m.json",
            lambda d: [f"`six` reached {r(d['val_miou_native'], 3)} in {d['epochs']} epochs"]),
    Numbers("docs/benchmarks.md", "Before class-uniform crops, `six`", f"5f183da:{OLD}/paved-30m.json",
            lambda d: [f"`paved` {r(d['val_miou_native'], 3)} in {d['epochs']} epochs at {r(d['images_per_s'], 1)} img/s"]),
    Numbers("docs/benchmarks.md", "Door (21 of 250 training photos", f"bd394f1:{OLD}/full-30m.json",
            lambda d: [f"{r(d['val_miou_native'], 3)} before, in {d['epochs']} epochs at {r(d['images_per_s'], 1)} img/s"]),
    Numbers("docs/benchmarks.md", "At 30 minutes:", f"bbf7ffb:{OLD}/full-30m.json",
            lambda d: [f"{r(d['val_miou_native'], 3)} without EMA"]),
    Numbers("docs/benchmarks.md", "At 30 minutes:", f"20fd93c:{OLD}/full-30m.json",
            lambda d: [f"{r(d['val_miou_native'], 3)} with EMA (door {r(d['per_class_iou']['door'], 3)};"]),
    Numbers("docs/benchmarks.md", "At 30 minutes:", f"bd394f1:{OLD}/full-30m.json",
            lambda d: [f"{r(d['val_miou_native'], 3)} with EMA and 256² x 8 (door {r(d['per_class_iou']['door'], 3)};"]),
    Numbers("docs/benchmarks.md", "| benchmark suite, quick", "bd394f1:benchmarks/results/run-quick.json",
            lambda d: [f"({r(d['training']['full']['pipeline_over_bare'], 2)} in the run before"]),
    Numbers("docs/benchmarks.md", "An earlier run of the same code path", "a5b7016:benchmarks/results/ortho.json",
            lambda d: [f"took {r(d['results']['demo']['seconds'])} s and {r(d['results']['full']['seconds'])} s"]),
]


@cache
def load(source: str) -> dict:
    if ":" not in source:
        return json.loads((RESULTS / source).read_text(encoding="utf-8"))
    proc = subprocess.run(["git", "-C", str(ROOT), "show", source], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"git history not available here ({source})")
    return json.loads(proc.stdout)


def blocks(page: str) -> list[str]:
    """The page's paragraphs and table rows, each with its whitespace collapsed to single spaces."""
    out: list[str] = []
    for chunk in re.split(r"\n\s*\n", (ROOT / page).read_text(encoding="utf-8")):
        lines = chunk.splitlines()
        rows = [ln for ln in lines if ln.startswith("|")]
        rest = " ".join(ln for ln in lines if not ln.startswith("|"))
        out += [" ".join(ln.split()) for ln in rows]
        if rest.strip():
            out.append(" ".join(rest.split()))
    return out


@pytest.mark.parametrize("n", NUMBERS, ids=[n.id for n in NUMBERS])
def test_the_text_quotes_the_json(n: Numbers):
    where = " ".join(n.where.split())
    found = [b for b in blocks(n.page) if where in b]
    assert len(found) == 1, f"{n.page}: {len(found)} paragraphs or rows contain {n.where!r}, expected one"
    data = load(n.source)
    missing = [text for text in n.expect(data) if text not in found[0]]
    assert not missing, f"{n.page}, the block with {n.where!r}, should say (from {n.source}): {missing}"


def test_every_recipe_run_is_quoted():
    """Each run under benchmarks/results/recipes/ is a published result: a new one lands with its row in the docs."""
    quoted = {n.source for n in NUMBERS if ":" not in n.source}
    on_disk = {str(p.relative_to(RESULTS)) for p in (RESULTS / "recipes").glob("*.json")}
    assert on_disk - quoted == set(), "recipe JSON quoted by no page: add its row to docs/benchmarks.md and NUMBERS"


# ---------------------------------------------------------------------------------------------------------------
# pages: size, links, site


def test_readme_is_a_landing_page_that_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) < 10_000, f"README.md has {len(text)} characters; move detail into docs/"
    assert text.splitlines()[:6] == [
        "# droneseg",
        "",
        "```bash",
        "make demo   # sets up .venv (pip, pinned), synthesises aerial scenes, trains a small U-Net on CPU, evaluates, predicts",
        "make test   # sets up .venv the same way and runs the whole test suite",
        "```",
    ]


def slug(heading: str) -> str:
    """The anchor GitHub and mkdocs' toc both give a plain heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return re.sub(r"[ ]+", "-", text.strip())


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(page: str):
    path = ROOT / page
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif page.startswith("docs/") and not dest.is_relative_to(ROOT / "docs"):
            bad.append(f"{target}: outside docs/, not part of the site")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading gives #{anchor}")
    assert not bad, f"{page}: {bad}"


def test_the_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "images" / "ortho_preview.jpg").is_file()


# ---------------------------------------------------------------------------------------------------------------
# scripts/devset/build.py on a fake download

TABLE = [("unlabeled", 0, 0, 0), ("paved-area", 128, 64, 128), ("grass", 0, 102, 0), ("door", 254, 148, 12)]
TRAIN, VAL = ["000", "001"], ["003"]


def fake_photo() -> Image.Image:
    """8x8 grey photo whose 4x4 blocks alternate 0 and 200 in a checkerboard: each block averages 100."""
    board = (np.indices((8, 8)).sum(0) % 2) * 200
    return Image.fromarray(np.repeat(board[..., None], 3, axis=2).astype(np.uint8))


def fake_index_mask() -> np.ndarray:
    """8x8 of grass (2) with door (3) at (2, 2), the centre of block (0, 0), and paved-area (1) at (2, 6)."""
    m = np.full((8, 8), 2, np.uint8)
    m[2, 2], m[2, 6] = 3, 1
    m[0, 0] = 1  # not a block centre: never sampled
    return m


def write_table(path: Path) -> None:
    path.write_text("name, r, g, b\n" + "".join(f"{n}, {r_}, {g}, {b}\n" for n, r_, g, b in TABLE))


def write_splits(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (folder / "val.txt").write_text("\n".join(VAL) + "\n")
    return folder


def fake_kaggle(root: Path) -> Path:
    """The Kaggle archive as it unpacks: photos and index masks two levels down, colour masks doubly nested."""
    inner = root / "dataset" / "semantic_drone_dataset"
    for sub in ("original_images", "label_images_semantic"):
        (inner / sub).mkdir(parents=True)
    (root / "RGB_color_image_masks" / "RGB_color_image_masks").mkdir(parents=True)
    colors = np.array([t[1:] for t in TABLE], np.uint8)
    for i in TRAIN + VAL:
        fake_photo().save(inner / "original_images" / f"{i}.jpg", quality=100)
        Image.fromarray(fake_index_mask()).save(inner / "label_images_semantic" / f"{i}.png")
        Image.fromarray(colors[fake_index_mask()]).save(root / "RGB_color_image_masks" / "RGB_color_image_masks" / f"{i}.png")
    write_table(root / "class_dict_seg.csv")
    return root


def fake_tugraz(root: Path, bad_colour_in: str | None = None) -> Path:
    images, gt = root / "training_set" / "images", root / "training_set" / "gt" / "semantic"
    images.mkdir(parents=True)
    (gt / "label_images").mkdir(parents=True)
    colors = np.array([t[1:] for t in TABLE], np.uint8)
    for i in TRAIN + VAL:
        fake_photo().save(images / f"{i}.jpg", quality=100)
        rgb = colors[fake_index_mask()]
        if i == bad_colour_in:
            rgb[5, 5] = (1, 2, 3)
        Image.fromarray(rgb).save(gt / "label_images" / f"{i}.png")
    write_table(gt / "class_dict.csv")
    return root


def run_build(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BUILD), *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("layout", ["kaggle", "tugraz"])
def test_build_devset_from_a_fake_download(tmp_path, layout):
    download = fake_kaggle(tmp_path / "dl") if layout == "kaggle" else fake_tugraz(tmp_path / "dl")
    out = tmp_path / "data" / "semantic-drone-dev"
    proc = run_build(download, "--out", out, "--factor", "4", "--splits", write_splits(tmp_path / "splits"))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}/original_images/: 3 photos of 2x2 (from 8x8: 4x4 box average" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "RGB_color_image_masks", "class_dict_seg.csv", "label_images_semantic", "original_images", "splits"]
    for i in TRAIN + VAL:
        photo = np.asarray(Image.open(out / "original_images" / f"{i}.jpg"))
        assert photo.shape == (2, 2, 3) and np.abs(photo.astype(int) - 100).max() <= 2  # the box mean, not a sample
        index = np.asarray(Image.open(out / "label_images_semantic" / f"{i}.png"))
        assert index.tolist() == [[3, 1], [2, 2]]  # the block centres: door at (2, 2), paved-area at (2, 6)
        rgb = np.asarray(Image.open(out / "RGB_color_image_masks" / f"{i}.png"))
        assert rgb[0, 0].tolist() == [254, 148, 12] and rgb[0, 1].tolist() == [128, 64, 128]
    assert (out / "class_dict_seg.csv").read_text().splitlines() == ["name, r, g, b", "unlabeled, 0, 0, 0",
                                                                     "paved-area, 128, 64, 128", "grass, 0, 102, 0",
                                                                     "door, 254, 148, 12"]
    assert (out / "splits" / "train.txt").read_text().split() == TRAIN
    assert (out / "splits" / "val.txt").read_text().split() == VAL
    # a second build into the same folder is refused, and changes nothing
    again = run_build(download, "--out", out, "--splits", tmp_path / "splits")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists and is not empty" in again.stderr


def test_build_devset_names_every_missing_id_on_one_line(tmp_path):
    """The shipped split files name 300 ids; a download holding 3 of them is refused before anything is written."""
    shipped = [line for name in ("train", "val")
               for line in (BUILD.parent / f"{name}.txt").read_text().split()]
    assert len(shipped) == 300 and len(set(shipped)) == 300
    out = tmp_path / "out"
    proc = run_build(fake_kaggle(tmp_path / "dl"), "--out", out)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    missing = [i for i in shipped if i not in TRAIN + VAL]
    assert f"{len(missing)} of 300 ids have no photo or mask: {', '.join(missing)}" in proc.stderr
    assert not out.exists()


def test_build_devset_refuses_an_unknown_colour_naming_the_file(tmp_path):
    download = fake_tugraz(tmp_path / "dl", bad_colour_in="001")
    out = tmp_path / "out"
    proc = run_build(download, "--out", out, "--splits", write_splits(tmp_path / "splits"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "training_set/gt/semantic/label_images/001.png: unknown colour (1, 2, 3) in 1 pixels" in proc.stderr
    assert not out.exists() and list(tmp_path.glob(".out.*")) == []  # the temporary folder is gone too

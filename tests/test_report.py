"""The evaluation folder: files exist and agree with the matrix, JSON round-trips, the page stands alone."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from droneseg.metrics import PerImageIoU, SegmentationMetrics
from droneseg.report import ImageResult, spread, write_evaluation
from droneseg.report.plots import prediction_panels, training_curves
from droneseg.schemes import LabelScheme, SchemeSpec, TargetSpec, build_scheme, get_scheme

FILES = (
    "metrics.json", "curves.json", "metrics.txt", "per_class.csv", "per_image.csv", "confusion_matrix.csv",
    "confusion_matrix_normalized.csv", "confusion_matrix.png", "confusion_matrix_normalized.png",
    "pr_curves.png", "roc_curves.png", "report.html",
)


@dataclass
class Case:
    scheme: LabelScheme
    metrics: dict
    confusion: np.ndarray
    per_image: dict
    images: list[ImageResult]
    report: Path


def evaluate_random(
    scheme: LabelScheme, folder: Path, absent: tuple[int, ...] = (), panels: int = 6, training: bool = False
) -> Case:
    """Random masks with skewed class shares and predictions of falling quality, run through the real metrics."""
    g = torch.Generator().manual_seed(0)
    k, (n, h, w) = scheme.num_classes, (6, 24, 32)
    shares = 0.8 ** torch.arange(k, dtype=torch.float64)
    shares[list(absent)] = 0
    target = torch.multinomial(shares, n * h * w, replacement=True, generator=g).view(n, h, w)
    target[0, :3] = scheme.ignore_index
    logits = torch.randn(n, k, h, w, generator=g)
    strength = torch.linspace(4.0, 0.5, k)[target.clamp(max=k - 1)] * torch.linspace(1.5, 0.3, n)[:, None, None]
    logits.scatter_add_(1, target.clamp(max=k - 1)[:, None], strength[:, None])
    metrics = SegmentationMetrics.from_scheme(scheme, curves=True, thresholds=21)
    metrics.update(logits, target)
    pred = logits.argmax(1)
    per_image = PerImageIoU(k)
    images = []
    for i in range(n):
        per_image.update(pred[i], target[i])
        valid = target[i] != scheme.ignore_index
        acc = float((pred[i] == target[i])[valid].float().mean())
        panel = None
        if i < panels:  # the last images may have no panel, which the page must say
            panel = folder / "predictions" / f"img{i}.png"
            photo = np.asarray(Image.fromarray(scheme.colorize(target[i].numpy())).convert("L").convert("RGB"))
            prediction_panels([(f"img{i}", photo, target[i].numpy(), pred[i].numpy())], scheme, panel)
        images.append(ImageResult(f"img{i}", None, acc, panel))
    pim = per_image.compute()
    images = [ImageResult(im.id, v, im.pixel_accuracy, im.panel) for im, v in zip(images, pim["values"])]
    result = metrics.compute()
    confusion = metrics.confmat.numpy()
    context = {"model": "runs/demo-x/model.safetensors", "split": "test", "data": folder / "data", "images": n,
               "tta": False, "time": "2025-01-02T03:04:05"}
    curves = None
    if training:
        curves = folder / "training_curves.png"
        epochs = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "val_miou": e / 9, "lr": 1e-3} for e in (1, 2)]
        training_curves(epochs, curves)
    report = write_evaluation(folder / "eval", scheme, result, confusion, pim, images, context, curves)
    return Case(scheme, result, confusion, pim, images, report)


@pytest.fixture(scope="module")
def full_case(tmp_path_factory) -> Case:
    """22 classes, the last two never in the ground truth; the two worst images have no panel; training curves."""
    folder = tmp_path_factory.mktemp("full")
    return evaluate_random(get_scheme("full"), folder, absent=(20, 21), panels=4, training=True)


@pytest.fixture(scope="module")
def paved_case(tmp_path_factory) -> Case:
    return evaluate_random(get_scheme("paved"), tmp_path_factory.mktemp("paved"), panels=1)


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


@pytest.mark.slow
@pytest.mark.parametrize("case_name", ["full_case", "paved_case"])
def test_every_file_is_written(case_name: str, request) -> None:
    case = request.getfixturevalue(case_name)
    folder = case.report.parent
    assert case.report == folder / "report.html"
    for name in FILES:
        assert (folder / name).stat().st_size > 0, name
    for name in FILES:
        if name.endswith(".png"):
            assert Image.open(folder / name).size[0] > 300, name


@pytest.mark.slow  # the 22-class report takes ~8 s to draw
def test_confusion_csvs_match_the_matrix_and_leave_absent_rows_blank(full_case: Case) -> None:
    folder, names = full_case.report.parent, list(full_case.scheme.names)
    raw = read_csv(folder / "confusion_matrix.csv")
    assert raw[0][1:] == names and [r[0] for r in raw[1:]] == names
    assert np.array_equal(np.array([r[1:] for r in raw[1:]], dtype=np.int64), full_case.confusion)
    norm = read_csv(folder / "confusion_matrix_normalized.csv")
    assert norm[0] == raw[0]
    support = full_case.confusion.sum(1)
    for row, counts, s in zip(norm[1:], full_case.confusion, support):
        if s == 0:
            assert row[1:] == [""] * len(names), row[0]
        else:
            assert np.array(row[1:], dtype=float) == pytest.approx(counts / s, abs=1e-6)
    assert norm[22][0] == "obstacle" and norm[22][1:] == [""] * 22  # absent by construction


@pytest.mark.slow  # the 22-class report takes ~8 s to draw
def test_per_class_csv_matches_metrics_with_blanks_for_none(full_case: Case) -> None:
    rows = read_csv(full_case.report.parent / "per_class.csv")
    assert rows[0] == ["name", "iou", "f1", "precision", "recall", "support", "predicted", "ap", "auc"]
    for row, c in zip(rows[1:], full_case.metrics["per_class"]):
        assert row[0] == c["name"] and int(row[5]) == c["support"] and int(row[6]) == c["predicted"]
        for cell, key in zip(row[1:5] + row[7:], ("iou", "f1", "precision", "recall", "ap", "auc")):
            assert (cell == "") if c[key] is None else float(cell) == c[key], (c["name"], key)
    obstacle = rows[22]  # absent: no recall, no AP, no AUC
    assert obstacle[0] == "obstacle" and (obstacle[4], obstacle[7], obstacle[8]) == ("", "", "")


@pytest.mark.slow  # the 22-class report takes ~8 s to draw
def test_metrics_json_round_trips_and_labels_per_image_miou(full_case: Case) -> None:
    folder = full_case.report.parent
    saved = json.loads((folder / "metrics.json").read_text())
    assert "curves" not in saved and "curves" in full_case.metrics
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy", "fw_iou", "mean_f1", "mean_ap", "mean_auc"):
        assert saved[key] == full_case.metrics[key], key
    assert saved["per_class"] == json.loads(json.dumps(full_case.metrics["per_class"]))
    assert saved["absent_classes"] == ["ar-marker", "obstacle"]
    block = saved["per_image"]
    assert block["per_image_miou"] == full_case.per_image["per_image_miou"] and block["images"] == 6
    assert block["definition"].startswith("per_image_miou: mean over images of the per-image mean IoU")
    assert block["definition"].endswith("NOT the pooled mIoU")
    assert saved["context"]["split"] == "test" and saved["context"]["data"].endswith("data")  # a Path, as text
    assert json.loads((folder / "curves.json").read_text()) == json.loads(json.dumps(full_case.metrics["curves"]))


@pytest.mark.slow  # the 22-class report takes ~8 s to draw
def test_metrics_txt_puts_pooled_miou_first_and_names_absent_classes(full_case: Case) -> None:
    text = (full_case.report.parent / "metrics.txt").read_text()
    summary = [line for line in text.splitlines() if line.startswith(("Pooled mIoU", "Per-image mIoU"))]
    assert summary[0].startswith("Pooled mIoU") and f"{full_case.metrics['miou']:.3f}" in summary[0]
    assert "NOT the pooled mIoU" in summary[1]
    assert "left out of every mean): ar-marker, obstacle" in text
    table = text.split("Per class, by IoU")[1].splitlines()[3:25]
    assert len({len(line.removesuffix("  (absent)")) for line in table}) == 1  # aligned columns


def test_two_class_report_prints_the_threshold_table(paved_case: Case) -> None:
    folder = paved_case.report.parent
    text = (folder / "metrics.txt").read_text()
    rows = [line.split() for line in text.split("Thresholds for paved-area")[1].splitlines()[2:]]
    assert [r[0] for r in rows] == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]
    assert "Thresholds for paved-area" in (folder / "report.html").read_text()
    assert list(json.loads((folder / "curves.json").read_text())) == ["other", "paved-area"]


@pytest.mark.slow  # the 22-class report takes ~8 s to draw
def test_html_is_self_contained_and_shows_every_class_and_example(full_case: Case) -> None:
    page = full_case.report.read_text()
    assert 'src="http' not in page and "<script" not in page and "url(" not in page
    # 2 matrices, PR, ROC, training curves, 4 example panels
    assert page.count('src="data:image/png;base64,') == 4 + 1 + 4 and "<h2>Training</h2>" in page
    for name in full_case.scheme.names:
        assert f"{name}</td>" in page or f"{name}<span" in page, name
    assert "Examples, best to worst" in page
    assert page.count(" of 6 · img") == 4  # the 4 drawn images, each with its rank; img4 and img5 have no panel
    assert "img4" not in page.split("Examples, best to worst")[1]
    assert "absent from ground truth" in page and "not the pooled mIoU" in page


def test_html_escapes_class_names_and_context(tmp_path: Path) -> None:
    table = get_scheme("full").table
    spec = SchemeSpec(name="x", classes=[TargetSpec(name="<b>cars & co</b>", sources=["car"]),
                                         TargetSpec(name="rest", sources="rest")])
    scheme = build_scheme(spec, table)
    page = evaluate_random(scheme, tmp_path, panels=0).report.read_text()
    assert "&lt;b&gt;cars &amp; co&lt;/b&gt;" in page and "<b>cars" not in page


def test_a_model_near_chance_gets_a_banner_and_the_training_is_said(full_case: Case, tmp_path: Path) -> None:
    """A run that stopped on its budget after two steps with a model near chance: the page opens with a warning,
    metrics.txt says it, and both say what training did (epochs, steps, why it stopped, the budget)."""
    c = full_case
    metrics = {**c.metrics, "chance_miou": c.metrics["miou"]}  # as good as painting the frequent class
    training = {"epochs": 1, "schedule": {"done_steps": 2}, "wall_time_s": 61.0, "stopped_by": "max_time",
                "budget": {"budget_s": 240.0}}
    page = write_evaluation(tmp_path, c.scheme, metrics, c.confusion, c.per_image, c.images, {"model": "m"},
                            training=training).read_text()
    said = "trained 1 epoch (2 optimiser steps) in 61 s, stopped by the time budget (240 s)"
    assert '<p class="warning">Near chance: pooled mIoU' in page and f"<p>T{said[1:]}.</p>" in page
    text = (tmp_path / "metrics.txt").read_text()
    assert "WARNING: Near chance" in text and f"Training: {said}." in text
    assert json.loads((tmp_path / "metrics.json").read_text())["context"]["training"] == said
    plain = write_evaluation(tmp_path / "b", c.scheme, c.metrics, c.confusion, c.per_image, c.images, {})
    assert "Near chance" not in plain.read_text() and "<h2>Training</h2>" not in plain.read_text()


@pytest.mark.parametrize(
    ("mious", "n", "chosen"),
    [
        # ranking: a .9, g .8, e .7, c .5, f .3, b .1 (d and h have no score)
        ([0.9, 0.1, 0.5, None, 0.7, 0.3, 0.8, float("nan")], 3, ["a", "e", "b"]),
        ([0.9, 0.1, 0.5, None, 0.7, 0.3, 0.8, float("nan")], 2, ["a", "b"]),
        ([0.9, 0.1, 0.5, None, 0.7, 0.3, 0.8, float("nan")], 1, ["e"]),  # the median of six: the 3rd
        ([0.9, 0.1, 0.5, None, 0.7, 0.3, 0.8, float("nan")], 4, ["a", "e", "c", "b"]),
        ([0.2, 0.6, 0.4, 0.8], 9, ["d", "b", "c", "a"]),  # more asked than scored: all, best first
        ([0.5], 0, []),
    ],
    ids=["best-median-worst", "best-worst", "median", "four", "all", "none"],
)
def test_figures_are_spread_from_best_to_worst(mious: list, n: int, chosen: list[str]) -> None:
    images = [ImageResult(chr(ord("a") + i), m, None, None) for i, m in enumerate(mious)]
    assert [im.id for im in spread(images, n)] == chosen


def test_mismatched_confusion_matrix_is_named(paved_case: Case, tmp_path: Path) -> None:
    c = paved_case
    with pytest.raises(ValueError, match=r"confusion matrix has shape \(3, 3\), expected \(2, 2\)"):
        write_evaluation(tmp_path, c.scheme, c.metrics, np.zeros((3, 3), np.int64), c.per_image, c.images, {})
    with pytest.raises(ValueError, match="differ from scheme 'six'"):
        write_evaluation(tmp_path, get_scheme("six"), c.metrics, c.confusion, c.per_image, c.images, {})


_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.src))), true);
const __ce = console.error; console.error = (...a) => { window.__errors.push(a.join(" ")); __ce(...a); };
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const r = {errors: window.__errors, images: imgs.length, tables: document.querySelectorAll("table").length,
             broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)};
  const p = document.createElement("pre"); p.id = "probe"; p.textContent = JSON.stringify(r); document.body.appendChild(p);
});
</script>"""


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args],
        check=True, capture_output=True, timeout=120, text=True,
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (make test installs it as root)")
def test_report_renders_in_headless_chromium(full_case: Case, tmp_path: Path) -> None:
    """The page as a browser runs it: no console or script errors, every figure decodes, the tables are there, and
    the screenshot is a page of text, cards and figures."""
    probe = tmp_path / "probed.html"
    probe.write_text(full_case.report.read_text(encoding="utf-8").replace("<head>", "<head>" + _PROBE, 1),
                     encoding="utf-8")
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path / "p1").stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    assert result["errors"] == [] and result["broken"] == []
    assert result["images"] >= 3 and result["tables"] >= 2
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,3000", full_case.report.as_uri(), profile=tmp_path / "p2")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (3000, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, cards, figures: far from one colour
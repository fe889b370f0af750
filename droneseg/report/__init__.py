"""The evaluation folder of one split: every number as files, the figures, and one HTML page.

Contract
--------
``write_evaluation`` takes ``SegmentationMetrics(curves=True).compute()`` output, the same (K, K)
int confusion matrix (rows ground truth, columns prediction, K = ``scheme.num_classes``),
``PerImageIoU.compute()`` output and one :class:`ImageResult` per image, and writes::

    metrics.json   every number but the curves, the labelled per-image block, and ``context``
    curves.json    PR/ROC arrays per class present
    metrics.txt    human summary; per_class.csv, per_image.csv
    confusion_matrix{,_normalized}.{csv,png}   normalised rows with no ground truth: blank / grey
    pr_curves.png roc_curves.png report.html

Undefined ratios (None) are null in JSON and blank in CSV. ``context`` is free-form; the report
reads ``model``, ``split``, ``images``, ``tta`` and ``time`` when present.

>>> normalize_rows(np.array([[3, 1], [0, 0]])).tolist()
[[0.75, 0.25], [nan, nan]]
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from io import StringIO
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.patheffects import withStroke  # noqa: E402

from droneseg.chance import near_chance  # noqa: E402
from droneseg.files import atomic_write_json, atomic_write_text  # noqa: E402
from droneseg.report.formats import PER_IMAGE_DEFINITION, POOLED_DEFINITION, ImageResult, class_order, fmt, pct  # noqa: E402
from droneseg.report.html import render_html  # noqa: E402
from droneseg.report.plots import save_figure  # noqa: E402
from droneseg.runs import describe_training  # noqa: E402
from droneseg.schemes import LabelScheme  # noqa: E402

_LIGHT = 0.7  # luminance above which a line on white gets a dark outline
_LINE_STYLES = ("-", "--", "-.", ":")
_DATA_FILES = (
    "metrics.txt", "metrics.json", "per_class.csv", "per_image.csv", "confusion_matrix.csv",
    "confusion_matrix_normalized.csv", "curves.json",
)


def normalize_rows(confusion: np.ndarray) -> np.ndarray:
    """(K, K) counts -> rows divided by their sum (recall on the diagonal); NaN rows without ground truth."""
    counts = np.asarray(confusion, dtype=np.float64)
    support = counts.sum(1, keepdims=True)
    return np.divide(counts, support, out=np.full_like(counts, np.nan), where=support > 0)


def ranked(images: Sequence[ImageResult]) -> list[ImageResult]:
    """Scored images by per-image mIoU, best first (ties by id); images without a score are left out."""
    scored = [im for im in images if im.miou is not None and not math.isnan(im.miou)]
    return sorted(scored, key=lambda im: (-im.miou, im.id))


def spread(images: Sequence[ImageResult], n: int) -> list[ImageResult]:
    """Up to ``n`` scored images spread evenly over the ranking, best first: 1 gives the median image, 2 the best
    and the worst, 3 best, median and worst, and so on; every scored image when ``n`` >= their number."""
    order = ranked(images)
    if n <= 0 or not order:
        return []
    if n == 1:
        return [order[(len(order) - 1) // 2]]
    if n >= len(order):
        return order
    return [order[i] for i in sorted({round(j * (len(order) - 1) / (n - 1)) for j in range(n)})]


def _luma(rgb: np.ndarray) -> float:
    """Relative luminance, 0 black .. 1 white, of an RGB triple in 0..1."""
    return float(np.asarray(rgb, np.float64)[:3] @ np.array([0.299, 0.587, 0.114]))


def _csv(rows: Sequence[Sequence[object]]) -> str:
    buf = StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _cell(value: object) -> object:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def metrics_text(scheme: LabelScheme, metrics: dict, per_image: dict, context: dict) -> str:
    """The plain-text summary: headline numbers (pooled mIoU first), the class table, absent classes."""
    present = sum(c["present"] for c in metrics["per_class"])
    title = f"Evaluation of {context.get('model', '?')} on split {context.get('split', '?')}"
    summary = [
        ("Pooled mIoU", fmt(metrics["miou"]), f"mean IoU of the {present} classes present, one confusion matrix"),
        ("Pixel accuracy", pct(metrics["pixel_accuracy"]), f"{metrics['pixels']:,} pixels scored"),
        ("Mean class accuracy", pct(metrics["mean_class_accuracy"]), "mean recall over present classes"),
        ("Frequency-weighted IoU", fmt(metrics["fw_iou"]), "IoU weighted by pixel share"),
        ("Mean F1 (Dice)", fmt(metrics["mean_f1"]), ""),
        ("Mean AP", fmt(metrics.get("mean_ap")), "binned PR curves"),
        ("Mean AUC", fmt(metrics.get("mean_auc")), "binned ROC curves"),
        ("Per-image mIoU", fmt(per_image["per_image_miou"]), f"over {per_image['images']} images; NOT the pooled mIoU"),
    ]
    facts = [f"{k} {v}" for k, v in context.items() if k not in ("model", "split", "training")]
    lines = [title, "=" * len(title), ", ".join([f"scheme {scheme.name} ({scheme.num_classes} classes)", *facts]), ""]
    lines += [f"Training: {context['training']}.", ""] if context.get("training") else []
    lines += [f"{k:<23} {v:>7}   {h}".rstrip() for k, v, h in summary]
    flag = near_chance(metrics)
    lines += ["", f"WARNING: {flag}"] if flag else []
    lines += ["", POOLED_DEFINITION, PER_IMAGE_DEFINITION]
    width = max(len(n) for n in scheme.names)
    cols = ("IoU", "F1", "Prec.", "Recall", "AP", "AUC")
    header = f"{'class':<{width}}  " + " ".join(f"{c:>6}" for c in cols) + f" {'support':>13} {'predicted':>13}"
    lines += ["", "Per class, by IoU (support and predicted in pixels):", header, "-" * len(header)]
    for i in class_order(metrics):
        c = metrics["per_class"][i]
        values = " ".join(f"{fmt(c.get(k)):>6}" for k in ("iou", "f1", "precision", "recall", "ap", "auc"))
        flag = "" if c["present"] else "  (absent)"
        lines.append(f"{c['name']:<{width}}  {values} {c['support']:>13,} {c['predicted']:>13,}{flag}")
    absent = metrics["absent_classes"]
    lines += ["", f"Absent from the ground truth (left out of every mean): {', '.join(absent)}" if absent
              else "Every class is present in the ground truth."]
    if "threshold_table" in metrics:
        lines += ["", f"Thresholds for {scheme.names[1]} (called where its probability >= threshold):",
                  f"{'threshold':>9} {'precision':>9} {'recall':>9} {'F1':>9} {'IoU':>9}"]
        for t in metrics["threshold_table"]:
            values = " ".join(f"{fmt(t[k]):>9}" for k in ("precision", "recall", "f1", "iou"))
            lines.append(f"{t['threshold']:>9.1f} {values}")
    return "\n".join(lines) + "\n"


def _compact(n: int) -> str:
    """A pixel count in at most 4 characters: 812, 3.4k, 35k, 1.2M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            v = n / scale
            return f"{v:.1f}{suffix}" if v < 10 else f"{v:.0f}{suffix}"
    return str(n)


def confusion_figure(confusion: np.ndarray, names: Sequence[str], path: Path, normalized: bool) -> None:
    """Rows ground truth, columns prediction; ~0.45 inch per class, numbers in cells up to 24 classes."""
    k = len(names)
    absent = confusion.sum(1) == 0
    side = max(3.0, 0.45 * k)
    fig, ax = plt.subplots(figsize=(side + 2.8, side + 1.6))
    if normalized:
        values = np.ma.masked_invalid(normalize_rows(confusion))
        cmap, norm = plt.get_cmap("Blues").with_extremes(bad="0.88"), Normalize(0.0, 1.0)
        title, label = "Confusion matrix, each ground-truth row sums to 1", "share of the row's pixels"
    else:
        values = np.ma.masked_equal(confusion.astype(np.float64), 0)
        cmap, norm = plt.get_cmap("YlGnBu").with_extremes(bad="white"), LogNorm(1.0, max(2.0, float(confusion.max())))
        title, label = "Confusion matrix, pixel counts", "pixels (log scale; white: none)"
    im = ax.imshow(values, cmap=cmap, norm=norm, interpolation="nearest")
    if k <= 24:
        shown = np.argwhere(~values.mask & (values.filled(0) >= 0.005)) if normalized else np.argwhere(confusion > 0)
        size = 9 if k <= 12 else 8
        for r, c in shown:
            v = values[r, c]
            text = f"{v:.2f}" if normalized else f"{int(v):,}" if side / k >= 1.0 else _compact(int(v))
            color = "white" if _luma(cmap(norm(v))) < 0.5 else "0.1"
            weight = "bold" if r == c else "normal"
            ax.text(c, r, text, ha="center", va="center", fontsize=size, color=color, fontweight=weight)
    ax.set_xticks(range(k), names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), [f"{n} (absent)" if a else n for n, a in zip(names, absent)])
    for tick, a in zip(ax.get_yticklabels(), absent):
        if a:
            tick.set_color("0.55")
    ax.set_xticks(np.arange(k + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(k + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    ax.set(xlabel="prediction", ylabel="ground truth", title=title)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label=label)
    fig.tight_layout()
    save_figure(fig, path)


def curves_figure(scheme: LabelScheme, metrics: dict, path: Path, kind: Literal["pr", "roc"]) -> None:
    """One line per class present in the scheme's colour (light colours outlined), legend sorted by AP / AUC.

    Two-class schemes show only the positive class (index 1), with the 0.5 threshold marked.
    """
    key, xkey, ykey = ("ap", "recall", "precision") if kind == "pr" else ("auc", "fpr", "tpr")
    per_class, curves = metrics["per_class"], metrics["curves"]
    binary = scheme.num_classes == 2
    chosen = [i for i, c in enumerate(per_class) if c["name"] in curves and (not binary or i == 1)]
    chosen.sort(key=lambda i: -(per_class[i][key] or 0.0))
    many = len(chosen) > 1
    fig, ax = plt.subplots(figsize=(9.5, 6.2) if many else (5.4, 5.2))
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls=":", color="0.6", lw=1, label="chance" if not many else None)
    width = max((len(per_class[i]["name"]) for i in chosen), default=0)
    for rank, i in enumerate(chosen):
        c, curve = per_class[i], curves[per_class[i]["name"]]
        x, y = np.asarray(curve[xkey]), np.asarray(curve[ykey])
        if kind == "roc":
            x, y = np.r_[x, 0.0], np.r_[y, 0.0]  # the curve starts at (0, 0)
        rgb = scheme.colors[i] / 255.0
        (line,) = ax.plot(
            x, y, color=rgb, lw=2.0, ls=_LINE_STYLES[rank // 6 % 4] if many else "-",
            label=f"{c['name']:<{width}}  {fmt(c[key])}",
        )
        if _luma(rgb) > _LIGHT:
            line.set_path_effects([withStroke(linewidth=3.6, foreground="0.3")])
        if binary:
            j = int(np.argmin(np.abs(np.asarray(curve["thresholds"]) - 0.5)))
            ax.plot(x[j], y[j], "o", ms=8, mfc=rgb, mec="0.15", label="threshold 0.5")
    if not chosen:
        ax.text(0.5, 0.5, "no class present in the ground truth", ha="center", va="center", color="0.4")
    xlabel, ylabel = ("recall", "precision") if kind == "pr" else ("false positive rate", "true positive rate")
    name = "Precision–recall" if kind == "pr" else "ROC"
    title = f"{name} curve of {scheme.names[1]}" if binary else f"{name} curves"
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    if chosen:
        header = f"{'class':<{width}}  {key.upper()}"
        inside = "lower left" if kind == "pr" else "lower right"
        legend = ax.legend(
            loc="upper left" if many else inside, bbox_to_anchor=(1.02, 1.0) if many else None, title=header,
            prop={"family": "monospace", "size": 8.5}, handlelength=2.6, alignment="left", frameon=not many,
        )
        legend.get_title().set(family="monospace", fontsize=8.5, fontweight="bold")
    fig.tight_layout()
    save_figure(fig, path)


def _check(scheme: LabelScheme, metrics: dict, confusion: np.ndarray) -> None:
    k = scheme.num_classes
    names = tuple(c["name"] for c in metrics["per_class"])
    if names != scheme.names:
        raise ValueError(f"metrics classes {list(names)} differ from scheme {scheme.name!r}: {list(scheme.names)}")
    if confusion.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {confusion.shape}, expected ({k}, {k}) for {scheme.name!r}")
    if "confusion_matrix" in metrics and not np.array_equal(confusion, np.asarray(metrics["confusion_matrix"])):
        raise ValueError("confusion matrix differs from metrics['confusion_matrix']: they come from different runs")
    if "curves" not in metrics:
        raise ValueError("metrics has no 'curves': compute them with SegmentationMetrics(curves=True)")


def write_evaluation(
    folder: Path,
    scheme: LabelScheme,
    metrics: dict,
    confusion: np.ndarray,
    per_image: dict,
    images: list[ImageResult],
    context: dict,
    training_curves: Path | None = None,
    training: dict | None = None,
    map_figure: tuple[Path, str] | None = None,
) -> Path:
    """Write the evaluation folder (created if needed); returns the path of ``report.html``. ``training``: the
    model's ``train_summary.json`` fields, said in one line (:func:`droneseg.runs.describe_training`).
    ``map_figure``: (a PNG already in ``folder``, its caption): a survey's blocks coloured by their mIoU."""
    folder, confusion = Path(folder), np.asarray(confusion)
    _check(scheme, metrics, confusion)
    folder.mkdir(parents=True, exist_ok=True)
    context = json.loads(json.dumps(context, default=str))  # paths and times as strings
    if training is not None:
        context["training"] = describe_training(training)
    # 1. numbers
    numbers = {k: v for k, v in metrics.items() if k != "curves"}
    block = {"definition": PER_IMAGE_DEFINITION, **{k: v for k, v in per_image.items() if k != "values"}}
    atomic_write_json(
        folder / "metrics.json",
        {"context": context, "miou_definition": POOLED_DEFINITION, **numbers, "per_image": block},
    )
    atomic_write_json(folder / "curves.json", metrics["curves"])
    atomic_write_text(folder / "metrics.txt", metrics_text(scheme, metrics, per_image, context))
    columns = ("name", "iou", "f1", "precision", "recall", "support", "predicted", "ap", "auc")
    rows = [[_cell(c.get(col)) for col in columns] for c in metrics["per_class"]]
    atomic_write_text(folder / "per_class.csv", _csv([columns, *rows]))
    rows = [[im.id, _cell(im.miou), _cell(im.pixel_accuracy)] for im in images]
    atomic_write_text(folder / "per_image.csv", _csv([("id", "miou", "pixel_accuracy"), *rows]))
    corner = ["ground_truth \\ prediction", *scheme.names]
    counts = [[n, *row] for n, row in zip(scheme.names, confusion.astype(np.int64).tolist())]
    atomic_write_text(folder / "confusion_matrix.csv", _csv([corner, *counts]))
    rows = normalize_rows(confusion).tolist()
    shares = [[n, *(_cell(round(v, 6)) for v in row)] for n, row in zip(scheme.names, rows)]
    atomic_write_text(folder / "confusion_matrix_normalized.csv", _csv([corner, *shares]))
    # 2. figures
    confusion_figure(confusion, scheme.names, folder / "confusion_matrix.png", normalized=False)
    confusion_figure(confusion, scheme.names, folder / "confusion_matrix_normalized.png", normalized=True)
    curves_figure(scheme, metrics, folder / "pr_curves.png", "pr")
    curves_figure(scheme, metrics, folder / "roc_curves.png", "roc")
    # 3. the page, from what is now on disk
    order = ranked(images)
    examples = [(rank, im) for rank, im in enumerate(order, 1) if im.panel is not None]
    page = render_html(folder, scheme, metrics, per_image, examples, len(order), context, training_curves,
                       _DATA_FILES, map_figure)
    atomic_write_text(folder / "report.html", page)
    return folder / "report.html"

"""The one-page HTML report of an evaluation.

Contract
--------
``render_html`` returns a single self-contained page: inline CSS, figures embedded as base64
``data:image/png`` URIs, no scripts and no external assets (relative links to the files it shows
are the only references). Every name and context value is HTML-escaped; numbers are written by
:mod:`droneseg.report.formats`, as in every other report file.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from droneseg.chance import near_chance
from droneseg.report.formats import (
    DASH,
    PER_IMAGE_DEFINITION,
    POOLED_DEFINITION,
    ImageResult,
    class_order,
    fmt,
    pct,
)

if TYPE_CHECKING:
    from droneseg.schemes import LabelScheme


def data_uri(path: Path) -> str:
    """A PNG as an inline ``data:`` URI, so the page needs no other file to show it."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


_CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d8dee4;--soft:#f6f8fa;--accent:#2563eb}
*{box-sizing:border-box}
body{margin:0;background:#eef1f5;color:var(--fg);
 font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:28px 20px 40px}
header h1{font-size:26px;margin:0 0 4px;word-break:break-word}
header p{margin:0;color:var(--muted)}
h2{font-size:19px;margin:0 0 10px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin:18px 0}
.warning{background:#fff4e5;border-left:4px solid #e67700;padding:10px 14px;margin:16px 0;font-weight:600}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin:20px 0}
@media (max-width:760px){.cards{grid-template-columns:repeat(2,1fr)}}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card.main{border:2px solid var(--accent)}
.card .k{font-size:13px;color:var(--muted);font-weight:600}
.card .v{font-size:30px;font-weight:650;font-variant-numeric:tabular-nums;line-height:1.25}
.card .h{font-size:12px;color:var(--muted);line-height:1.35}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums;font-size:14px}
th,td{padding:5px 9px;text-align:left;border-bottom:1px solid #edf0f3;white-space:nowrap}
th{font-size:13px;color:var(--muted);border-bottom:2px solid var(--line)}
.n{text-align:right}
tbody tr:nth-child(even){background:var(--soft)}
tr.absent td{color:#9aa3ad}
tr.best td{font-weight:650}
.sw{display:inline-block;width:13px;height:13px;border-radius:3px;border:1px solid rgba(0,0,0,.4);
 vertical-align:-2px;margin-right:7px}
.bar{display:inline-block;width:110px;height:9px;background:#e4e8ee;border-radius:5px;vertical-align:middle;
 margin-right:8px;overflow:hidden}
.bar span{display:block;height:100%;background:var(--accent)}
.tag{font-size:11px;color:#8c959f;margin-left:6px}
img{max-width:100%;height:auto;display:block;margin:6px auto}
figure{margin:10px 0 18px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:16px}
@media (max-width:760px){.pair{grid-template-columns:1fr}}
figcaption{color:var(--muted);font-size:14px;margin-bottom:2px}
figcaption b{color:var(--fg)}
.note{color:var(--muted);font-size:13px;margin:4px 0 8px}
.kv td:first-child{color:var(--muted);width:180px}
.kv td{white-space:normal;word-break:break-all}
a{color:var(--accent)}
"""


def _card(label: str, value: str, hint: str, main: bool = False) -> str:
    cls = "card main" if main else "card"
    body = f'<div class="k">{label}</div><div class="v">{value}</div><div class="h">{hint}</div>'
    return f'<div class="{cls}">{body}</div>'


def _cards(metrics: dict, per_image: dict) -> str:
    present, n = sum(c["present"] for c in metrics["per_class"]), per_image["images"]
    cards = [
        _card("Pooled mIoU", fmt(metrics["miou"]), f"mean IoU of {present} classes present, one pooled matrix", True),
        _card("Pixel accuracy", pct(metrics["pixel_accuracy"]), f"{metrics['pixels']:,} pixels scored"),
        _card("Mean class accuracy", pct(metrics["mean_class_accuracy"]), "mean recall over present classes"),
        _card("Frequency-weighted IoU", fmt(metrics["fw_iou"]), "IoU weighted by each class's pixel share"),
        _card("Mean F1 (Dice)", fmt(metrics["mean_f1"]), "over present classes"),
        _card("Mean AP", fmt(metrics.get("mean_ap")), "area under the binned precision–recall curves"),
        _card("Mean AUC", fmt(metrics.get("mean_auc")), "area under the binned ROC curves"),
        _card("Per-image mIoU", fmt(per_image["per_image_miou"]), f"mean of {n} images' mIoU; not the pooled mIoU"),
    ]
    flag = near_chance(metrics)
    warning = f'<p class="warning">{escape(flag)}</p>' if flag else ""
    return f'{warning}<div class="cards">{"".join(cards)}</div>'


def _class_table(metrics: dict, scheme: LabelScheme) -> str:
    """Present classes by IoU (best first), then absent ones greyed, in scheme order."""
    total = max(metrics["pixels"], 1)
    rows = []
    for i in class_order(metrics):
        c = metrics["per_class"][i]
        r, g, b = (int(v) for v in scheme.colors[i])
        iou = c["iou"]
        bar = f'<span class="bar"><span style="width:{100 * (iou or 0):.1f}%"></span></span>'
        tag = "" if c["present"] else '<span class="tag">absent from ground truth</span>'
        cells = [
            f'<td><span class="sw" style="background:rgb({r},{g},{b})"></span>{escape(c["name"])}{tag}</td>',
            f'<td class="n">{bar}{fmt(iou)}</td>',
            *(f'<td class="n">{fmt(c.get(key))}</td>' for key in ("f1", "precision", "recall", "ap", "auc")),
            f'<td class="n" title="{c["support"]:,} pixels">{pct(c["support"] / total)}</td>',
            f'<td class="n" title="{c["predicted"]:,} pixels">{pct(c["predicted"] / total)}</td>',
        ]
        rows.append(f'<tr{"" if c["present"] else " class=absent"}>{"".join(cells)}</tr>')
    columns = ("IoU", "F1", "Precision", "Recall", "AP", "AUC", "GT share", "Pred. share")
    head = "".join(f'<th class="n">{h}</th>' for h in columns)
    return f"<table><thead><tr><th>Class</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _threshold_table(metrics: dict, scheme: LabelScheme) -> str:
    table = metrics["threshold_table"]
    best = max(range(len(table)), key=lambda j: table[j]["f1"] or -1.0)
    rows = "".join(
        f'<tr{" class=best" if j == best else ""}><td class="n">{t["threshold"]:.1f}</td>'
        + "".join(f'<td class="n">{fmt(t[k])}</td>' for k in ("precision", "recall", "f1", "iou"))
        + "</tr>"
        for j, t in enumerate(table)
    )
    return (
        f"<section><h2>Thresholds for {escape(scheme.names[1])}</h2>"
        f'<p class="note">Pixels called {escape(scheme.names[1])} where its probability is at least the threshold; '
        "bold: best F1.</p>"
        '<table style="width:auto"><thead><tr>'
        + "".join(f'<th class="n">{h}</th>' for h in ("Threshold", "Precision", "Recall", "F1", "IoU"))
        + f"</tr></thead><tbody>{rows}</tbody></table>"
        "</section>"
    )


def _figure(path: Path, folder: Path, alt: str, caption: str = "") -> str:
    """An embedded PNG that also links to its file, for full size (a relative link, not an asset)."""
    href = Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()
    img = f'<a href="{escape(href)}" title="open full size"><img src="{data_uri(path)}" alt="{escape(alt)}"></a>'
    top = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{top}{img}</figure>"


def _examples(folder: Path, examples: list[tuple[int, ImageResult]], scored: int) -> str:
    """The images drawn by evaluate (``--figures N``: spread from best to worst), with their rank."""
    items = []
    for rank, im in examples:
        caption = (f"<b>#{rank} of {scored} · {escape(im.id)}</b> · mIoU {fmt(im.miou)} · "
                   f"pixel accuracy {pct(im.pixel_accuracy)}")
        if Path(im.panel).is_file():
            items.append(_figure(im.panel, folder, f"panels of {im.id}", caption))
        else:
            items.append(f"<figure><figcaption>{caption} · its panel file is missing</figcaption></figure>")
    body = "".join(items) or '<p class="note">No image was drawn (evaluate --figures 0).</p>'
    note = ("Ranked by per-image mIoU (mean IoU over the classes present in that image), best first; "
            "the images drawn are spread over that ranking (best, median, worst… see --figures).")
    return f'<section><h2>Examples, best to worst</h2><p class="note">{note}</p>{body}</section>'


def _details(context: dict, folder_files: Sequence[str]) -> str:
    rows = "".join(f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>" for k, v in context.items())
    links = " · ".join(f'<a href="{escape(f)}">{escape(f)}</a>' for f in folder_files)
    return (
        f'<section><h2>Run details</h2><table class="kv"><tbody>{rows}</tbody></table>'
        f'<p class="note">Files beside this page: {links}</p></section>'
    )


def render_html(
    folder: Path,
    scheme: LabelScheme,
    metrics: dict,
    per_image: dict,
    examples: list[tuple[int, ImageResult]],
    scored: int,
    context: dict,
    training_curves: Path | None,
    files: Sequence[str],
    map_figure: tuple[Path, str] | None = None,
) -> str:
    """The page, from the metrics and the figures already written in ``folder``."""
    model, split = escape(str(context.get("model", DASH))), escape(str(context.get("split", DASH)))
    facts = [
        f"split <b>{split}</b>",
        f"{escape(str(context.get('images', per_image['images'])))} images",
        f"scheme {escape(scheme.name)} ({scheme.num_classes} classes)",
        f"TTA {'on' if context['tta'] else 'off'}" if isinstance(context.get("tta"), bool) else "",
        escape(str(context.get("time", ""))),
    ]
    absent = metrics["absent_classes"]
    absent_note = (
        f" Absent from this split's ground truth, so left out of every mean: {escape(', '.join(absent))}."
        if absent
        else ""
    )
    parts = [
        f"<header><h1>Evaluation of {model}</h1><p>{' · '.join(f for f in facts if f)}</p></header>",
        _cards(metrics, per_image),
        f'<p class="note">{escape(POOLED_DEFINITION)}. {escape(PER_IMAGE_DEFINITION)}.</p>',
        f'<section><h2>Per-class results</h2><p class="note">Sorted by IoU. Share columns: fraction of all scored '
        f"pixels that are the class in the ground truth / in the prediction.{absent_note}</p>"
        f"{_class_table(metrics, scheme)}</section>",
    ]
    if "threshold_table" in metrics:
        parts.append(_threshold_table(metrics, scheme))
    if map_figure is not None:
        figure, caption = map_figure
        parts.append(f'<section><h2>On the map</h2><p class="note">{escape(caption)}</p>'
                     + _figure(figure, folder, "Blocks coloured by their mIoU") + "</section>")
    parts.append(
        "<section><h2>Confusion matrices</h2>"
        '<p class="note">Rows: ground truth; columns: prediction. '
        "Normalised per row, the diagonal is each class's recall.</p>"
        + _figure(folder / "confusion_matrix_normalized.png", folder, "Row-normalised confusion matrix")
        + _figure(folder / "confusion_matrix.png", folder, "Confusion matrix in pixels, log colour scale")
        + "</section>"
    )
    which = (
        f"the curves of {escape(scheme.names[1])}, the 0.5 threshold marked"
        if scheme.num_classes == 2
        else "one curve per class present in the ground truth, legends sorted by AP and AUC"
    )
    parts.append(
        "<section><h2>Precision–recall and ROC curves</h2>"
        f'<p class="note">Binned over probability thresholds; {which}. Click a figure for its full-size file.</p>'
        + f'<div class="{"pair" if scheme.num_classes == 2 else ""}">'
        + _figure(folder / "pr_curves.png", folder, "Precision–recall curves")
        + _figure(folder / "roc_curves.png", folder, "ROC curves")
        + "</div></section>"
    )
    trained = f'<p>{escape(context["training"].capitalize())}.</p>' if context.get("training") else ""
    curves = (_figure(training_curves, folder, "Training curves of this run")
              if training_curves is not None and Path(training_curves).is_file() else "")
    if trained or curves:
        parts.append(f"<section><h2>Training</h2>{trained}{curves}</section>")
    parts.append(_examples(folder, examples, scored))
    parts.append(_details(context, files))
    title = f"{model} · {split} · droneseg evaluation"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{title}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )


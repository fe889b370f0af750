"""The model card: what a person needs to decide whether to use a model, beside every trained model.

Contract
--------
* :func:`model_card` reads a finished run folder (``model.json``, ``train_summary.json``, ``config.yaml``, the
  final evaluation's ``metrics.json``, ``splits/``) and returns the card as plain data; :func:`write_model_card`
  writes it as ``MODEL_CARD.md`` and ``model_card.json`` (atomically). Every number is read from those files,
  none recomputed: the card says what the run's own evaluation said.
* The training data: its folder, fingerprint and image count, the split sizes, and its licence. Synthetic scenes
  (``droneseg synth`` leaves ``SYNTHETIC.txt``) are free of any. Otherwise a class table equal to the Semantic Drone
  Dataset's (24 classes, names and colours) is that dataset: non-commercial research and education only, to be
  cited (TU Graz), and the card says a model trained on it inherits that. Other data: the card asks its owner to
  state the licence.
* Known limits: the scenes and heights the model saw (for the Semantic Drone Dataset: one garden suburb of Graz,
  nadir photos from 5 to 30 m), its working scale (GSD, or the working long side when the GSD is unknown), the
  classes it never saw in its val split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from droneseg import __version__
from droneseg.classes import ClassTable
from droneseg.data.synthetic import SYNTHETIC_MARK
from droneseg.files import atomic_write_json, atomic_write_text

SDD_LICENCE = ("Semantic Drone Dataset (Institute of Computer Graphics and Vision, TU Graz, "
               "www.dronedataset.icg.tugraz.at): non-commercial research and education only; cite it in any "
               "publication; no redistribution of the data. A model trained on it is for the same uses.")
SYNTHETIC_LICENCE = ("synthetic scenes drawn by `droneseg synth`: no dataset's licence applies; a model trained on "
                     "them has seen no real photo.")
SDD_LIMITS = ("Trained on nadir photos of one garden suburb (Graz, Austria) taken from 5 to 30 m above ground: other "
              "regions, seasons, oblique views and heights it never saw may score far lower.")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _is_sdd(scheme: dict) -> bool:
    """Whether a model's class table is the Semantic Drone Dataset's own (names and colours)."""
    builtin = ClassTable.builtin()
    names, colours = scheme.get("source_names"), scheme.get("source_colors")
    return (names is not None and tuple(names) == builtin.names and colours is not None
            and np.array_equal(np.asarray(colours, np.uint8), builtin.colors))


def model_card(run: Path) -> dict:
    """The card of the finished run ``run`` as plain data (see the module contract)."""
    import yaml

    run = Path(run)
    info = _read(run / "model.json")
    summary = _read(run / "train_summary.json")
    metrics = _read((run / summary["eval_report"]).with_name("metrics.json")) if summary.get("eval_report") else {}
    try:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except OSError:
        config = {}
    environment = config.get("environment", {})
    splits = {p.stem: sum(1 for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
              for p in sorted((run / "splits").glob("*.txt"))}
    splits = {k: v for k, v in splits.items() if v}
    scheme = info.get("scheme", {})
    targets = scheme.get("names") or []
    root = (info.get("dataset") or {}).get("root")
    synthetic = root is not None and (Path(root) / SYNTHETIC_MARK).is_file()
    sdd = _is_sdd(scheme) and not synthetic
    per_class = [{"name": c["name"], "iou": c.get("iou"), "present": c.get("present")}
                 for c in metrics.get("per_class", [])]
    model = info.get("model", {})
    return {
        "run": run.name, "droneseg": info.get("version", __version__),
        "model": {"arch": model.get("arch"), "encoder": model.get("encoder") if model.get("arch") != "classic-unet"
                  else None, "channels": model.get("channels") if model.get("arch") == "classic-unet" else None,
                  "init": info.get("extra", {}).get("init")},
        "data": {"root": (info.get("dataset") or {}).get("root"), "fingerprint": (info.get("dataset") or {}).get(
            "fingerprint"), "images": (info.get("dataset") or {}).get("images"), "splits": splits,
            "licence": SDD_LICENCE if sdd else SYNTHETIC_LICENCE if synthetic else None},
        "classes": {"scheme": scheme.get("name"), "names": list(targets),
                    "colours": [{"name": n, "rgb": list(c)} for n, c in zip(targets, scheme.get("colors", []))]},
        "scale": {"gsd_m": info.get("gsd"), "working_long_side": info.get("long_side"), "crop": info.get("crop")},
        "metrics": {"protocol": (metrics.get("miou_definition") or "").removeprefix("miou: ") or None,
                    "split": (metrics.get("context") or {}).get("split"),
                    "images": (metrics.get("context") or {}).get("images"), "miou": metrics.get("miou"),
                    "per_image_miou": (metrics.get("per_image") or {}).get("per_image_miou"),
                    "chance_miou": metrics.get("chance_miou"), "pixel_accuracy": metrics.get("pixel_accuracy"),
                    "per_class": per_class},
        "training": {"epochs": summary.get("epochs"), "optimiser_steps": (summary.get("schedule") or {}).get(
            "done_steps"), "wall_s": summary.get("wall_time_s"), "command_s": summary.get("command_s"),
            "stopped_by": summary.get("stopped_by"), "budget": (config.get("train") or {}).get("max_time"),
            "device": summary.get("device"), "processes": summary.get("world_size"),
            "precision": summary.get("precision"), "torch": environment.get("torch")},
        "limits": [SDD_LIMITS] if sdd else [],
    }


def _n(value: object, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render(card: dict) -> str:
    """``MODEL_CARD.md`` of a card."""
    m, d, t, s = card["metrics"], card["data"], card["training"], card["scale"]
    arch = card["model"]["arch"] + (f" on {card['model']['encoder']}" if card["model"]["encoder"] else "") + (
        f" {card['model']['channels']}" if card["model"]["channels"] else "")
    parent = card["model"]["init"]
    absent = [c["name"] for c in m["per_class"] if c["present"] is False]
    limits = [*card["limits"],
              (f"Works at {s['gsd_m'] * 100:.3g} cm of ground per pixel (predict reads orthomosaics at that scale)."
               if s["gsd_m"] else f"Works at a long side of {s['working_long_side']} px; its ground resolution is "
               "unknown (give --gsd when training to record it)."),
              *([f"Classes absent from its {m['split']} split, so not measured: {', '.join(absent)}."]
                if absent else [])]
    rows = "\n".join(f"| {c['name']} | {_n(c['iou'])} |" for c in m["per_class"])
    lines = [
        f"# Model card: {card['run']}", "",
        f"{arch}, {len(card['classes']['names'])} classes (scheme `{card['classes']['scheme']}`), trained with "
        f"droneseg {card['droneseg']}" + (f", starting from `{parent['run']}` (weights SHA-256 "
                                          f"{parent['weights_sha256'][:12]}…)" if parent else "") + ".", "",
        "## Training data", "",
        f"- Folder: `{d['root']}`; fingerprint `{d['fingerprint']}`; {d['images']} images; splits: "
        + ", ".join(f"{k} {v}" for k, v in d["splits"].items()) + ".",
        f"- Licence: {d['licence'] or 'not stated: the owner of the training data must say under which terms '}"
        + ("" if d["licence"] else "this model may be used (add it here)."),
        f"- Classes: {', '.join(card['classes']['names'])}.", "",
        "## How well it works", "",
        *([f"Pooled mIoU on its {m['split']} split ({m['images']} images, native resolution): **{_n(m['miou'])}**; "
           f"per-image mIoU {_n(m['per_image_miou'])}; pixel accuracy {_n(m['pixel_accuracy'])}; a labelling that "
           f"ignores the photos would score {_n(m['chance_miou'])}.", "",
           f"Protocol: {m['protocol']}.", "",
           "| class | IoU |", "|---|---|", rows, ""] if m["miou"] is not None else
          ["No final evaluation in the run folder: `droneseg evaluate RUN --data DATA` scores it.", ""]),
        "## Training", "",
        "No train_summary.json: this model was not trained by `droneseg train`, or its run did not finish."
        if t["epochs"] is None else
        f"{t['epochs']} epochs, {t['optimiser_steps']} optimiser steps, {_n(t['wall_s'], 0)} s of training "
        f"({_n(t['command_s'], 0)} s for the whole command), stopped by {t['stopped_by']}; budget "
        f"{t['budget'] or 'none'}; {t['processes']} process(es) on {t['device']}, precision {t['precision']}, "
        f"torch {t['torch']}.", "",
        "## Known limits", "", *(f"- {x}" for x in limits), "",
    ]
    return "\n".join(lines)


def write_model_card(run: Path) -> Path:
    """Write ``MODEL_CARD.md`` and ``model_card.json`` into the run folder; -> the Markdown file."""
    card = model_card(run)
    atomic_write_json(Path(run) / "model_card.json", card)
    atomic_write_text(Path(run) / "MODEL_CARD.md", render(card))
    return Path(run) / "MODEL_CARD.md"

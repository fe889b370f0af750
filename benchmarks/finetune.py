"""Fine-tuning against ImageNet on a few photos of a user's own scheme, same code, same budget.

The dev set is split into a parent's data and a child's (symlinks in a folder outside the repository, never
committed): the parent trains ``-c full`` for ``--parent-time`` on the dev train photos except the last ``--few`` of
``splits/train.txt``; the child has those ``--few`` photos to train on and the 50 dev val photos to score on, in a
user scheme (``green-vs-built`` of docs/data.md plus ``water``). Then the ``finetune`` preset runs twice for
``--max-time``: from the parent (``--init PARENT``) and from ImageNet EfficientNet-Lite0 (the preset's own start).
Both val mIoUs and the gain go to ``benchmarks/results/finetune.json``.

    python benchmarks/finetune.py --data ../shared/data/semantic-drone-dev [--parent RUN] [--work /tmp/ft]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCHEME = """\
name: green-built-water
classes:
  - {name: built, sources: [roof, wall, paved-area, fence, fence-pole, window, door, ar-marker], color: [200, 0, 0]}
  - {name: green, sources: [grass, vegetation, tree, bald-tree], color: [0, 160, 0]}
  - {name: water, sources: [water, pool], color: [28, 42, 168]}
  - {name: other, sources: rest, color: [130, 130, 130]}
ignore: [unlabeled, conflicting]
"""


def dataset(data: Path, out: Path, train: list[str], val: list[str]) -> Path:
    """A dataset folder at ``out`` linking to ``data``'s photos, with its own split files."""
    (out / "splits").mkdir(parents=True, exist_ok=True)
    for entry in data.iterdir():
        if entry.name != "splits" and not (out / entry.name).exists():
            (out / entry.name).symlink_to(entry.resolve())
    (out / "splits" / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (out / "splits" / "val.txt").write_text("".join(f"{i}\n" for i in val))
    return out


def train(args: list[str]) -> dict:
    """One ``droneseg train`` -> its train_summary.json, with the run folder and wall seconds."""
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "droneseg", "train", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"droneseg train {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    run = Path(done.stdout.strip().splitlines()[-1])
    return {"command": "droneseg train " + " ".join(args), **record(run), "wall_s": round(time.monotonic() - t0, 1)}


def record(run: Path) -> dict:
    """What the results JSON keeps of a finished run: its summary's numbers and the per-class IoU of its final
    evaluation."""
    summary = json.loads((run / "train_summary.json").read_text())
    metrics = json.loads((run / summary["eval_report"]).with_name("metrics.json").read_text())
    return {"run": str(run), **{k: summary.get(k) for k in ("val_miou_native", "epochs", "stopped_by", "val_images",
                                                            "train_images", "command_s")},
            "steps": summary["schedule"]["done_steps"],
            "per_class_iou": {c["name"]: c["iou"] for c in metrics["per_class"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/droneseg-finetune"), help="outside the repository")
    ap.add_argument("--few", type=int, default=25, help="photos the child trains on")
    ap.add_argument("--parent", type=Path, help="a parent run to reuse instead of training one")
    ap.add_argument("--parent-time", default="30m")
    ap.add_argument("--max-time", default="10m")
    ap.add_argument("--only", choices=["parent", "children"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "finetune.json")
    args = ap.parse_args()
    from droneseg.data.splits import read_split_file

    train_ids = read_split_file(args.data / "splits" / "train.txt")
    val_ids = read_split_file(args.data / "splits" / "val.txt")
    few = train_ids[-args.few:]
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result.update({"command": " ".join(["python benchmarks/finetune.py", *sys.argv[1:]]), "few": len(few),
                   "parent_train_images": len(train_ids) - len(few), "val_images": len(val_ids),
                   "max_time": args.max_time, "scheme": SCHEME})
    runs = args.work / "runs"
    parent = args.parent
    if parent is None and args.only != "children":
        data = dataset(args.data, args.work / "parent-data", train_ids[:-args.few], val_ids)
        result["parent"] = train(["-c", "full", "--data", str(data), "--max-time", args.parent_time,
                                  "--out", str(runs)])
        parent = Path(result["parent"]["run"])
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.only == "parent":
        return
    parent = parent or Path(result["parent"]["run"])
    data = dataset(args.data, args.work / "child-data", few, val_ids)
    scheme = args.work / "green-built-water.yaml"
    scheme.write_text(SCHEME)
    common = ["-c", "finetune", "--data", str(data), "--set", f"data.scheme={scheme}", "--max-time", args.max_time,
              "--out", str(runs)]
    result["from_parent"] = train([*common, "--init", str(parent)])
    result["from_imagenet"] = train(common)
    result["gain"] = result["from_parent"]["val_miou_native"] - result["from_imagenet"]["val_miou_native"]
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Does "label these next" point at the photos the model gets wrong? Spearman's rank correlation between each val
photo's uncertain share (``predict --uncertainty``, ``label_next.csv``) and its error, 1 - pixel accuracy
(``evaluate``'s ``per_image.csv``), over the val split of a dataset, with a trained model.

    python benchmarks/uncertainty.py --model RUN --data ../shared/data/semantic-drone-dev [--out JSON]

The predictions go to a temporary folder (they are derived from the dataset: never committed).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

from common import droneseg

ROOT = Path(__file__).resolve().parents[1]


def top_and_rest(ids: list[str], shares: dict[str, float], error: dict[str, float], top: int = 10) -> dict:
    """Mean error of the ``top`` photos label_next.csv ranks first, and of the others."""
    ranked = sorted(ids, key=lambda i: -shares[i])
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {"top": top, "top_mean_error": mean([error[i] for i in ranked[:top]]),
            "rest_mean_error": mean([error[i] for i in ranked[top:]])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a run folder")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "uncertainty.json")
    args = ap.parse_args()
    from droneseg.data.layout import find_layout
    from droneseg.data.splits import read_split_file
    from droneseg.labelling.uncertainty import spearman

    ids = read_split_file(args.data / "splits" / f"{args.split}.txt")
    by_id = {s.id: s.image for s in find_layout(args.data).samples}
    with tempfile.TemporaryDirectory(prefix="droneseg-uncertainty-") as tmp:
        predict_s = droneseg("predict", args.model, *[by_id[i] for i in ids], "--out", f"{tmp}/pred", "--uncertainty")
        droneseg("evaluate", args.model, "--data", args.data, "--split", args.split, "--out", f"{tmp}/eval",
                 "--figures", "0")
        with open(f"{tmp}/pred/label_next.csv") as fh:
            shares = {Path(r["photo"]).stem: float(r["uncertain_share"]) for r in csv.DictReader(fh)}
        per_image = next(Path(f"{tmp}/eval").rglob("per_image.csv"))
        with per_image.open() as fh:
            error = {r["id"]: 1 - float(r["pixel_accuracy"]) for r in csv.DictReader(fh) if r["pixel_accuracy"]}
    common = sorted(set(shares) & set(error))
    rho = spearman([shares[i] for i in common], [error[i] for i in common])
    result = {"command": " ".join(["python benchmarks/uncertainty.py", *sys.argv[1:]]), "model": str(args.model),
              "split": args.split, "photos": len(common), "spearman": rho, "predict_s": round(predict_s, 1),
              **top_and_rest(common, shares, error),
              "rows": [{"id": i, "uncertain_share": shares[i], "error": error[i]} for i in common]}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()

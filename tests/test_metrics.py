"""Known-answer tests for droneseg.metrics; every expected value is worked out by hand in a comment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.classification import MulticlassAUROC, MulticlassAveragePrecision

from droneseg.errors import DataError
from droneseg.metrics import PerImageIoU, SegmentationMetrics, confusion_to_metrics
from droneseg.schemes import get_scheme
from droneseg.tiler import luma_threshold

IGN = 255


def one_hot_scores(labels: list[int], k: int) -> torch.Tensor:
    """Labels of one 1-row image -> (1, K, 1, W) scores whose argmax is the label."""
    return torch.nn.functional.one_hot(torch.tensor([labels]), k).permute(2, 0, 1)[None].float()


def binary_probs(scores: list[float]) -> torch.Tensor:
    """Class-1 scores of one 1-row image -> (1, 2, 1, W) probabilities [1 - s, s]."""
    s = torch.tensor(scores)
    return torch.stack([1 - s, s])[None, :, None, :]


def test_all_ones_prediction_against_half_ones_gives_iou_half() -> None:
    # pred [1,1,1,1], gt [1,1,0,0]: class 1 tp 2, fp 2, fn 0 -> 2/4 = 0.5; class 0 tp 0, fn 2 -> 0/2 = 0
    m = SegmentationMetrics(["zero", "one"])
    m.update(one_hot_scores([1, 1, 1, 1], 2), torch.tensor([[[1, 1, 0, 0]]]))
    r = m.compute()
    assert r["confusion_matrix"] == [[0, 2], [0, 2]]
    zero, one = r["per_class"]
    assert one["iou"] == 0.5 and one["precision"] == 0.5 and one["recall"] == 1.0
    assert one["f1"] == pytest.approx(2 / 3)  # 2*2 / (2 + 4)
    assert zero["iou"] == 0.0 and zero["precision"] is None and zero["recall"] == 0.0
    assert r["miou"] == 0.25


def test_false_positive_only_class_is_listed_absent_and_left_out_of_miou() -> None:
    # rows gt a, b, c; columns prediction. c has no gt but one prediction (a pixel of a called c).
    cm = np.array([[3, 1, 1], [1, 4, 0], [0, 0, 0]])
    r = confusion_to_metrics(cm, ["a", "b", "c"])
    a, b, c = r["per_class"]
    # a: tp 3, support 5, predicted 4 -> IoU 3/6, F1 6/9, precision 3/4, recall 3/5
    assert (a["iou"], a["f1"], a["precision"], a["recall"]) == pytest.approx((0.5, 2 / 3, 0.75, 0.6))
    # b: tp 4, support 5, predicted 5 -> IoU 4/6, F1 8/10, precision 4/5, recall 4/5
    assert (b["iou"], b["f1"], b["precision"], b["recall"]) == pytest.approx((2 / 3, 0.8, 0.8, 0.8))
    # c: tp 0, predicted 1 -> IoU 0, F1 0, precision 0, recall undefined
    assert (c["iou"], c["f1"], c["precision"], c["recall"]) == (0.0, 0.0, 0.0, None)
    assert (c["support"], c["predicted"], c["present"]) == (0, 1, False)
    assert r["absent_classes"] == ["c"]
    assert r["miou"] == pytest.approx(7 / 12)  # (1/2 + 2/3) / 2, not (1/2 + 2/3 + 0) / 3
    assert r["mean_f1"] == pytest.approx(11 / 15)  # (2/3 + 4/5) / 2
    assert r["mean_class_accuracy"] == pytest.approx(0.7)  # (3/5 + 4/5) / 2
    assert r["pixels"] == 10 and r["pixel_accuracy"] == pytest.approx(0.7)  # (3 + 4) / 10


def test_class_neither_in_gt_nor_predicted_gives_json_null() -> None:
    r = confusion_to_metrics(torch.tensor([[2, 1, 0], [0, 3, 0], [0, 0, 0]]), ["a", "b", "c"])
    c = r["per_class"][2]
    assert (c["iou"], c["f1"], c["precision"], c["recall"]) == (None, None, None, None)
    assert '"iou": null' in json.dumps(c, allow_nan=False)
    assert r["miou"] == pytest.approx((2 / 3 + 3 / 4) / 2)  # a: 2/(3+2-2), b: 3/(3+4-3)


def test_pixel_accuracy_mean_class_accuracy_and_fw_iou_on_small_matrix() -> None:
    cm = np.array([[6, 2], [1, 1]])  # 10 pixels: 8 of class 0, 2 of class 1
    r = confusion_to_metrics(cm, ["a", "b"])
    assert r["pixel_accuracy"] == pytest.approx(0.7)  # (6 + 1) / 10
    assert r["mean_class_accuracy"] == pytest.approx(0.625)  # (6/8 + 1/2) / 2
    # IoU a = 6 / (8 + 7 - 6) = 2/3, IoU b = 1 / (2 + 3 - 1) = 1/4; fw = 0.8 * 2/3 + 0.2 * 1/4 = 7/12
    assert r["fw_iou"] == pytest.approx(7 / 12)


def test_confusion_matrix_of_wrong_shape_names_it() -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 2\), expected \(3, 3\)"):
        confusion_to_metrics(np.eye(2), ["a", "b", "c"])


def test_ignored_pixels_count_nowhere() -> None:
    # gt [0, 1, ign, ign], pred [0, 1, 0, 1]: only the first two pixels count, both right
    m = SegmentationMetrics(["a", "b"], curves=True)
    m.update(one_hot_scores([0, 1, 0, 1], 2), torch.tensor([[[0, 1, IGN, IGN]]]))
    r = m.compute()
    assert r["confusion_matrix"] == [[1, 0], [0, 1]]
    assert r["pixels"] == 2 and r["miou"] == 1.0
    assert int(m.hist.sum()) == 2 * 2  # two kept pixels, one score per class each


def test_all_ignored_image_is_skipped_in_per_image_miou() -> None:
    m = PerImageIoU(num_classes=2)
    m.update(torch.tensor([[0, 1]]), torch.tensor([[IGN, IGN]]))
    m.update(torch.tensor([[0, 1]]), torch.tensor([[0, IGN]]))  # class 0 present: IoU 1/1
    r = m.compute()
    assert r == {"per_image_miou": 1.0, "images": 1, "skipped_all_ignored": 1, "values": [1.0]}


def test_pooled_miou_differs_from_per_image_miou() -> None:
    # image A: gt [0,0,0,0], pred [0,0,0,0] -> present {0}, IoU 1 -> image mIoU 1
    # image B: gt [0,1,1,1], pred [1,1,1,1] -> IoU0 0/1 = 0, IoU1 3/4 -> image mIoU 0.375
    # per-image mIoU = (1 + 0.375) / 2 = 0.6875
    # pooled cm [[4, 1], [0, 3]]: IoU0 4/5, IoU1 3/4 -> mIoU 0.775
    pred = torch.tensor([[[0, 0, 0, 0]], [[1, 1, 1, 1]]])
    gt = torch.tensor([[[0, 0, 0, 0]], [[0, 1, 1, 1]]])
    per_image = PerImageIoU(num_classes=2)
    per_image.update(pred, gt)
    pooled = SegmentationMetrics(["a", "b"])
    pooled.update(torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float(), gt)
    assert per_image.compute()["values"] == [1.0, 0.375]
    assert per_image.compute()["per_image_miou"] == pytest.approx(0.6875)
    assert pooled.compute()["miou"] == pytest.approx(0.775)


def test_binned_ap_and_auc_are_one_when_classes_separate() -> None:
    m = SegmentationMetrics(["neg", "pos"], curves=True, from_logits=False)
    m.update(binary_probs([0.9, 0.8, 0.2, 0.1]), torch.tensor([[[1, 1, 0, 0]]]))
    r = m.compute()
    assert [c["ap"] for c in r["per_class"]] == [1.0, 1.0]
    assert [c["auc"] for c in r["per_class"]] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("pos", "neg", "ap", "auc"),
    [
        # one score per 0.01 bin: binned equals exact. Ranked: .95+ .81- .72+ .56- .48+ .33+ .27- .12-
        # AP = 1/4 * (P@1 + P@2 + P@3 + P@4) = 1/4 * (1 + 2/3 + 3/5 + 4/6) = 11/15
        # AUC = correctly ordered (pos, neg) pairs / 16 = (4 + 3 + 2 + 2) / 16 = 11/16
        ([0.95, 0.72, 0.48, 0.33], [0.81, 0.56, 0.27, 0.12], 11 / 15, 11 / 16),
        # .728+ and .723- share bin [.72, .73): exact AP is 11/15 and AUC 11/16 as above, but binned
        # they tie: P@2 = 2/4, so AP = 1/4 * (1 + 1/2 + 3/5 + 2/3) = 83/120, and the tied pair
        # counts half: AUC = (4 + 2.5 + 2 + 2) / 16 = 21/32
        ([0.95, 0.728, 0.48, 0.33], [0.81, 0.723, 0.27, 0.12], 83 / 120, 21 / 32),
    ],
    ids=["no-shared-bin-equals-exact", "shared-bin-counts-as-tie"],
)
def test_binned_ap_and_auc_against_hand_computed_exact_values(
    pos: list[float], neg: list[float], ap: float, auc: float
) -> None:
    m = SegmentationMetrics(["neg", "pos"], curves=True, from_logits=False)
    m.update(binary_probs(pos + neg), torch.tensor([[[1] * 4 + [0] * 4]]))
    r = m.compute()
    assert r["per_class"][1]["ap"] == pytest.approx(ap, abs=1e-12)
    assert r["per_class"][1]["auc"] == pytest.approx(auc, abs=1e-12)
    assert set(r["curves"]) == {"neg", "pos"} and len(r["curves"]["pos"]["fpr"]) == 101


def test_binary_threshold_table_on_positive_class() -> None:
    # scores >= 0.5: .95+ .728+ .81- .723- -> tp 2, fp 2, fn 2: P 1/2, R 1/2, F1 4/8, IoU 2/6
    m = SegmentationMetrics.from_scheme(get_scheme("paved"), from_logits=False)  # other, paved-area
    m.update(binary_probs([0.95, 0.728, 0.48, 0.33, 0.81, 0.723, 0.27, 0.12]), torch.tensor([[[1] * 4 + [0] * 4]]))
    row = {r["threshold"]: r for r in m.compute()["threshold_table"]}[0.5]
    assert (row["precision"], row["recall"], row["f1"]) == (0.5, 0.5, 0.5)
    assert row["iou"] == pytest.approx(1 / 3)


def test_curves_match_torchmetrics_binned_ap_and_auroc() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 6, 6), torch.randint(0, 3, (2, 6, 6))
    m = SegmentationMetrics(["a", "b", "c"], curves=True, thresholds=11)
    m.update(logits, target)
    r = m.compute()
    probs = logits.softmax(1)
    ap = MulticlassAveragePrecision(num_classes=3, thresholds=11, average=None)(probs, target)
    auc = MulticlassAUROC(num_classes=3, thresholds=11, average=None)(probs, target)
    assert [c["ap"] for c in r["per_class"]] == pytest.approx(ap.tolist(), abs=1e-6)
    assert [c["auc"] for c in r["per_class"]] == pytest.approx(auc.tolist(), abs=1e-6)


def test_two_batches_equal_one_batch_and_state_stays_bounded() -> None:
    torch.manual_seed(1)
    logits, target = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4, 8, 8))
    target[0, :2] = IGN
    once = SegmentationMetrics(["a", "b", "c"], curves=True, thresholds=21)
    once.update(logits, target)
    twice = SegmentationMetrics(["a", "b", "c"], curves=True, thresholds=21)
    twice.update(logits[:1], target[:1])
    twice.update(logits[1:], target[1:])
    assert once.compute() == twice.compute()
    assert twice.hist.shape == (3, 22, 2)  # (K, T+1, 2) however many pixels went in


def test_absent_class_has_no_curve_and_no_ap() -> None:
    m = SegmentationMetrics(["a", "b", "c"], curves=True)
    m.update(torch.randn(1, 3, 2, 2), torch.tensor([[[0, 1], [0, 1]]]))
    r = m.compute()
    assert set(r["curves"]) == {"a", "b"}
    assert (r["per_class"][2]["ap"], r["per_class"][2]["auc"]) == (None, None)


def test_bad_target_value_and_shape_are_named() -> None:
    m = SegmentationMetrics(["a", "b"])
    with pytest.raises(ValueError, match="target value 7"):
        m.update(torch.randn(1, 2, 1, 2), torch.tensor([[[0, 7]]]))
    with pytest.raises(ValueError, match=r"scores \(1, 3, 1, 2\)"):
        m.update(torch.randn(1, 3, 1, 2), torch.tensor([[[0, 1]]]))


def test_luma_threshold_at_map_mean_and_median() -> None:
    prob = torch.tensor([[0.1, 0.2], [0.3, 0.9]])
    # mean = 1.5 / 4 = 0.375 -> only 0.9 above; lower median = 0.2 -> 0.3 and 0.9 above
    assert luma_threshold(prob, "mean").tolist() == [[0, 0], [0, 1]]
    assert luma_threshold(prob, "median").tolist() == [[0, 0], [1, 1]]
    # a batch splits each map at its own statistic: 1 - prob = [[.9, .8], [.7, .1]], mean 0.625
    assert luma_threshold(torch.stack([prob, 1 - prob]), "mean")[1].tolist() == [[1, 1], [1, 0]]
    with pytest.raises(DataError, match="choose from"):
        luma_threshold(prob, "mode")  # type: ignore[arg-type]


def _ddp_worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(2)
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    m = SegmentationMetrics(["a", "b", "c"], curves=True, thresholds=11)
    m.update(logits[rank : rank + 1], target[rank : rank + 1])
    per_image = PerImageIoU(num_classes=3)
    per_image.update(logits[rank : rank + 1].argmax(1), target[rank : rank + 1])
    result = (m.compute(), per_image.compute()["images"])
    if rank == 0:
        with open(out_file, "w") as fh:
            json.dump(result, fh)
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_sync_pools_both_ranks(tmp_path) -> None:
    out = tmp_path / "out.json"
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2)
    torch.manual_seed(2)
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    whole = SegmentationMetrics(["a", "b", "c"], curves=True, thresholds=11)
    whole.update(logits, target)
    synced, images = json.loads(out.read_text())
    assert synced == json.loads(json.dumps(whole.compute())) and images == 2


@pytest.mark.parametrize(("support", "expected"), [
    ([50, 50], 1 / 3),        # two equal classes: a coin flip, IoU (0.5·0.5)/(0.5 + 0.5 - 0.25) each
    ([90, 10, 0], 0.45),      # all pixels the big class: IoU 0.9 and 0 over the two present classes
    ([100], 1.0),             # one class: nothing to learn
    ([0, 0], None),           # no pixels: no chance level
])
def test_chance_miou_is_the_best_labelling_that_ignores_the_photo(support, expected):
    from droneseg.chance import chance_miou

    got = chance_miou(np.array(support))
    assert got == (None if expected is None else pytest.approx(expected))


def test_a_model_that_paints_one_class_is_flagged_near_chance_and_a_good_one_is_not():
    from droneseg.chance import near_chance

    names = ["a", "b", "c", "d"]
    majority = np.zeros((4, 4), np.int64)
    majority[:, 0] = [400, 300, 200, 100]  # every pixel called "a"
    m = confusion_to_metrics(majority, names)
    # labels drawn with the class shares score best here: mean of p / (2 - p) = 0.1476 (the painter: 0.4 / 4)
    assert m["miou"] == pytest.approx(0.1) and m["chance_miou"] == pytest.approx(0.14755, abs=1e-5)
    assert near_chance(m).startswith("Near chance: pooled mIoU 0.100")
    assert near_chance(confusion_to_metrics(np.diag([400, 300, 200, 100]), names)) is None

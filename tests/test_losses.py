"""Losses against values computed by hand; one ignore convention for all."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from droneseg.losses import LOSSES, LossConfig, build_loss, class_weights_from_counts

IGNORE = 255


def _logits(probs: list[list[float]]) -> torch.Tensor:
    """Per-pixel class probabilities -> (1, K, 1, P) logits whose softmax gives them back."""
    p = torch.tensor(probs, dtype=torch.float64).log()  # (P, K)
    return p.T[None, :, None, :].float()


# two pixels, two classes; p(class 1) = 0.8 and 0.4, labels 1 and 0
PROBS = [[0.2, 0.8], [0.6, 0.4]]
LABELS = torch.tensor([[[1, 0]]])


@pytest.mark.parametrize(
    "terms, expected",
    [
        # CE: -(ln 0.8 + ln 0.6) / 2
        ({"ce": 1.0}, -(math.log(0.8) + math.log(0.6)) / 2),
        # focal gamma 2: -(0.2^2 ln 0.8 + 0.4^2 ln 0.6) / 2
        ({"focal": 1.0}, -(0.04 * math.log(0.8) + 0.16 * math.log(0.6)) / 2),
        # dice: class0 2*0.6/(0.8+1)=0.6667, class1 2*0.8/(1.2+1)=0.7273 -> 1 - mean
        ({"dice": 1.0}, 1 - (2 * 0.6 / 1.8 + 2 * 0.8 / 2.2) / 2),
        # lovasz class1: errors [0.2 (fg), 0.4 (bg)] sorted [0.4 bg, 0.2 fg]; grads [0.5, 0.5] -> 0.3;
        # class0: errors [0.2 (bg), 0.4 (fg)] -> sorted [0.4 fg, 0.2 bg]; grads [1, 0] -> 0.4; mean 0.35
        ({"lovasz": 1.0}, 0.35),
        # OHEM keeps the hardest quarter, rounded up: one pixel, the one with p_y = 0.6
        ({"ohem": 1.0}, -math.log(0.6)),
        ({"ce": 1.0, "dice": 0.5}, -(math.log(0.8) + math.log(0.6)) / 2 + 0.5 * (1 - (2 * 0.6 / 1.8 + 2 * 0.8 / 2.2) / 2)),
    ],
)
def test_loss_matches_hand_value(terms, expected):
    total, parts = build_loss(LossConfig(terms=terms), IGNORE)(_logits(PROBS), LABELS)
    assert float(total) == pytest.approx(expected, abs=1e-5)
    assert set(parts) == set(terms)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignored_pixels_change_nothing(name):
    loss = build_loss(LossConfig(terms={name: 1.0}), IGNORE)
    base, _ = loss(_logits(PROBS), LABELS)
    # a third pixel, confidently wrong, but ignored
    extra, _ = loss(_logits(PROBS + [[0.99, 0.01]]), torch.tensor([[[1, 0, IGNORE]]]))
    assert float(extra) == pytest.approx(float(base), abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_all_ignored_batch_gives_zero_with_gradient(name):
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    total, _ = build_loss(LossConfig(terms={name: 1.0}), IGNORE)(logits, torch.full((1, 2, 2), IGNORE))
    total.backward()
    assert float(total.detach()) == 0.0 and torch.isfinite(logits.grad).all()


def test_class_weighted_ce_is_the_weighted_mean():
    w = torch.tensor([1.0, 3.0])
    total, _ = build_loss(LossConfig(terms={"ce": 1.0}), IGNORE, class_weights=w)(_logits(PROBS), LABELS)
    # (3 * -ln 0.8 + 1 * -ln 0.6) / (3 + 1)
    assert float(total) == pytest.approx((-3 * math.log(0.8) - math.log(0.6)) / 4, abs=1e-6)


def test_perfect_prediction_scores_zero_on_overlap_losses():
    logits = _logits([[1 - 1e-9, 1e-9], [1e-9, 1 - 1e-9]])
    labels = torch.tensor([[[0, 1]]])
    for name in ("dice", "lovasz"):
        assert float(build_loss(LossConfig(terms={name: 1.0}), IGNORE)(logits, labels)[0]) == pytest.approx(0, abs=1e-6)


def test_class_weights_by_hand():
    counts = np.array([600, 300, 100, 0])
    # inverse: 1000 / (3 * n)
    assert class_weights_from_counts(counts, "inverse") == pytest.approx([1000 / 1800, 1000 / 900, 1000 / 300, 0])
    # median frequency: freqs 0.6, 0.3, 0.1 -> median 0.3
    assert class_weights_from_counts(counts, "median") == pytest.approx([0.5, 1.0, 3.0, 0])
    assert class_weights_from_counts(counts, "none") is None
    # sqrt: f = (.6, .3, .1); w = f^-1/2 / sum f^1/2; the pixel-weighted mean weight is 1
    f = np.array([0.6, 0.3, 0.1])
    w = class_weights_from_counts(counts, "sqrt")
    assert w == pytest.approx([*(f**-0.5 / np.sum(f**0.5)), 0], rel=1e-6) and float(f @ w[:3]) == pytest.approx(1.0)


def test_unknown_loss_names_choices():
    with pytest.raises(ValueError, match=r"unknown loss 'bce'; choose from \['ce', 'dice', 'focal', 'lovasz', 'ohem'\]"):
        LossConfig(terms={"bce": 1.0})


def test_ohem_keeps_the_hardest_share():
    # keep half of the two pixels: the one with p_y = 0.6 (loss -ln 0.6) is harder than p_y = 0.8
    loss = build_loss(LossConfig(terms={"ohem": 1.0}, ohem_keep=0.5), IGNORE)
    assert float(loss(_logits(PROBS), LABELS)[0]) == pytest.approx(-math.log(0.6), abs=1e-6)
    # an ignored pixel, however wrong, is never "hard"
    extra = loss(_logits(PROBS + [[0.99, 0.01]]), torch.tensor([[[1, 0, IGNORE]]]))[0]
    assert float(extra) == pytest.approx(-math.log(0.6), abs=1e-6)


def test_dense_losses_equal_the_per_pixel_reference_on_a_random_batch():
    """CE against torch's own ignore/weight handling, Dice against a one-hot count over the valid pixels."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, 9, generator=gen, dtype=torch.float64).float()
    target = torch.randint(0, 5, (2, 7, 9), generator=gen)
    target[target == 4] = IGNORE  # class 4 absent, and about a fifth of the pixels ignored
    w = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0])
    ce = build_loss(LossConfig(terms={"ce": 1.0}), IGNORE, class_weights=w)(logits, target)[0]
    assert float(ce) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target, weight=w,
                                                                              ignore_index=IGNORE)), rel=1e-6)
    keep = target != IGNORE
    probs = logits.softmax(1).permute(0, 2, 3, 1)[keep]  # (P, K)
    onehot = torch.nn.functional.one_hot(target[keep], 5).float()
    present = onehot.sum(0) > 0
    ref = 1 - (2 * (probs * onehot).sum(0) / (probs.sum(0) + onehot.sum(0)))[present].mean()
    assert float(build_loss(LossConfig(terms={"dice": 1.0}), IGNORE)(logits, target)[0]) == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class-weighted"])
def test_label_smoothing_is_torchs(weighted: bool):
    """With and without class weights, ignored pixels included: the value of F.cross_entropy(label_smoothing=0.1)."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 5, 6, generator=gen)
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    target[0, 0] = IGNORE
    w = torch.tensor([0.5, 1.0, 2.0, 4.0]) if weighted else None
    ours = build_loss(LossConfig(terms={"ce": 1.0}, label_smoothing=0.1), IGNORE, class_weights=w)(logits, target)[0]
    ref = torch.nn.functional.cross_entropy(logits, target, weight=w, ignore_index=IGNORE, label_smoothing=0.1)
    assert float(ours) == pytest.approx(float(ref), rel=1e-6)
    # by hand, one pixel, two classes, p = (0.2, 0.8), label 1: 0.9 (-ln 0.8) + 0.1 (-ln 0.2 - ln 0.8) / 2
    one = build_loss(LossConfig(terms={"ce": 1.0}, label_smoothing=0.1), IGNORE)(_logits([[0.2, 0.8]]),
                                                                                 torch.tensor([[[1]]]))[0]
    assert float(one) == pytest.approx(-0.9 * math.log(0.8) - 0.05 * (math.log(0.2) + math.log(0.8)), rel=1e-6)

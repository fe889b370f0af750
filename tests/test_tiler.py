"""The tiler: tile grid, window weights, blending, the one bilinear upsampler, luma thresholds, bounded memory and
windows of the output (the code every consumer of a network runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import scene, tiny_net

from droneseg.tiler import Tiler, axis_weights, cosine_window, tile_origins

SEAM_TOL = {"cosine": 0.05, "gaussian": 0.01}


def pixelwise(weights: torch.Tensor):
    """A 'network' that maps each pixel on its own (a 1x1 conv): tiling cannot change its output."""
    return lambda x: torch.einsum("bchw,ck->bkhw", x, weights)


def test_tile_origins_cover_the_axis_with_the_last_tile_flush_with_the_end():
    assert tile_origins(10, 4, 3) == [0, 3, 6]
    assert tile_origins(10, 4, 4) == [0, 4, 6]
    assert tile_origins(4, 8, 6) == [0]


def test_window_weights_are_positive_and_flat_on_the_image_borders():
    first, middle, last = axis_weights([0, 3, 6], 4, 10, cosine_window(4))
    assert first[:2].tolist() == [1.0, 1.0] and first[3] < 1
    assert last[2:].tolist() == [1.0, 1.0] and last[0] < 1
    assert torch.equal(middle, cosine_window(4)) and (middle > 0).all()


@pytest.mark.parametrize("blend", ["cosine", "gaussian"])
@pytest.mark.parametrize("tta", [False, True])
def test_blending_reproduces_a_pixelwise_net_exactly(blend, tta):
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    tiler = Tiler(lambda x: x * 2.0, num_classes=3, tile=16, overlap=0.3, batch=3, tta=tta, blend=blend)
    bands = list(tiler.bands(image))
    assert [y0 for y0, _ in bands] == sorted({y0 for y0, _ in bands}) and bands[0][0] == 0
    blended = torch.cat([b for _, b in bands])  # (37, 53, 3)
    expected = torch.from_numpy(image).float() / 255 * 2
    assert torch.allclose(blended, expected, atol=1e-5)


def test_full_size_labels_are_the_argmax_of_one_bilinear_upsampling():
    image = scene(60, 40)
    weights = torch.randn(3, 5, generator=torch.Generator().manual_seed(1)) * 4
    run = pixelwise(weights)
    tiler = Tiler(run, num_classes=5, tile=24, overlap=0.25)
    labels = tiler.labels(image, (97, 151))
    logits = run(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    up = F.interpolate(logits, size=(97, 151), mode="bilinear", align_corners=False)[0]  # (5, 97, 151)
    assert (labels == up.argmax(0).numpy()).mean() >= 0.9999  # exact up to float ties
    assert 0 < tiler.interpolated_pixels < 97 * 151  # only pixels between differing source pixels


def test_luma_labels_threshold_the_bright_probability_at_its_mean():
    image = scene(60, 40)
    run = pixelwise(torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0]]))
    labels = Tiler(run, num_classes=2, tile=32).labels(image, (80, 120), luma="mean")
    up = F.interpolate(run(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255), size=(80, 120),
                       mode="bilinear", align_corners=False)[0]
    prob = up.softmax(0)[1]
    assert (labels == (prob > prob.mean()).numpy()).mean() >= 0.9999


@pytest.mark.parametrize("blend", ["cosine", "gaussian"])
def test_tiled_prediction_matches_a_single_pass_over_the_whole_image(blend):
    net = tiny_net(22)
    image = scene(200, 136)
    tiled = torch.cat([b for _, b in Tiler(net, 22, tile=64, overlap=0.5, blend=blend).bands(image)]).permute(2, 0, 1)
    with torch.inference_mode():
        whole = net(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0]  # (22, 136, 200)
    assert len(whole.argmax(0).unique()) >= 5  # the labels vary, so agreement means something
    assert (tiled.argmax(0) == whole.argmax(0)).float().mean() >= 0.99
    assert (tiled - whole).abs().max() <= SEAM_TOL[blend]


def test_largest_float_buffer_is_far_below_a_full_size_probability_map():
    k, (H, W) = 22, (1500, 2000)
    image = scene(500, 375)  # working size of a 2000x1500 photo at long side 500
    tiler = Tiler(pixelwise(torch.randn(3, k)), num_classes=k, tile=128, batch=4)
    labels = tiler.labels(image, (H, W))
    assert labels.shape == (H, W) and labels.dtype == np.uint8
    assert 0 < tiler.peak_buffer_elems <= k * H * W / 10


@pytest.mark.parametrize("size", [(10, 15), (33, 20), (3, 200)])
def test_outputs_much_smaller_than_the_working_size_are_the_same_bilinear_argmax(size):
    """Several tile rows feeding an output less than half as tall: rows are never read from the wrong band."""
    image = scene(150, 100)
    weights = torch.randn(3, 5, generator=torch.Generator().manual_seed(2)) * 4
    run = pixelwise(weights)
    labels = Tiler(run, num_classes=5, tile=24, overlap=0.25).labels(image, size)
    logits = run(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    expected = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    assert (labels == expected).mean() >= 0.999


@pytest.mark.parametrize("size", [(70, 90), (151, 200), (40, 50)])
def test_labels_of_a_window_read_from_a_window_equal_the_whole_outputs(size):
    """iter_labels(region=, window_of=) gives exactly the pixels labels() gives, also from a cut-out of the working
    image that holds only what the region reads; its confidence is the top softmax probability upsampled."""
    net = tiny_net(5)
    tiler = Tiler(net, 5, tile=32, overlap=0.25, batch=3)
    image = scene(90, 70, seed=3)
    H, W = size
    whole = tiler.labels(image, (H, W))
    conf_whole = np.concatenate([c["confidence"] for _, _, c in tiler.iter_labels(image, (H, W),
                                                                                   maps=("confidence",))])
    logits = net(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    top = F.interpolate(logits.softmax(1).amax(1, keepdim=True), size=(H, W), mode="bilinear", align_corners=False)
    assert np.abs(conf_whole.astype(int) - top[0, 0].detach().mul(255).round().numpy()).max() <= 40  # tiles vs one pass
    for y0, y1, x0, x1 in [(0, H, 0, W), (5, H - 3, 7, W - 11), (H // 2, H // 2 + 3, W // 3, W // 3 + 1)]:
        rows = list(tiler.iter_labels(image, (H, W), region=(y0, y1, x0, x1), maps=("confidence",)))
        assert np.array_equal(np.concatenate([r for _, r, _ in rows]), whole[y0:y1, x0:x1])
        assert np.array_equal(np.concatenate([c["confidence"] for _, _, c in rows]), conf_whole[y0:y1, x0:x1])
    # a cut-out of the working image (rows 10.., columns 20..) and the region reading only those: with a pixelwise
    # net (tiling cannot change its logits) the upsampling alone decides, and must give the whole output's pixels
    flat = Tiler(pixelwise(torch.randn(3, 5)), 5, tile=32, overlap=0.25)
    reference = flat.labels(image, (H, W))
    sy, sx = 70 / H, 90 / W
    y0, x0 = int(np.ceil((10 + 0.5) / sy - 0.5)), int(np.ceil((20 + 0.5) / sx - 0.5))
    cut = np.ascontiguousarray(image[10:, 20:])
    rows = flat.iter_labels(cut, (H, W), region=(y0, H, x0, W), window_of=(10, 20, 70, 90))
    assert np.array_equal(np.concatenate([r for _, r, _ in rows]), reference[y0:, x0:])
    with pytest.raises(ValueError, match="outside"):
        list(flat.iter_labels(cut, (H, W), region=(0, H, 0, W), window_of=(10, 20, 70, 90)))

"""Prediction on full-size photos: tiling and blending, banded upsampling, bounded memory, files written."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from droneseg.classes import ClassTable, DataError
from droneseg.predict import output_paths, predict, write_outputs
from droneseg.runs import load_model
from droneseg.schemes import get_scheme
from droneseg.tiler import Tiler, axis_weights, cosine_window, tile_origins
from helpers import ShapeRecorder, save_tiny_model, scene, tiny_net

# Tiled vs whole-image logits of the tiny U-Net below (tile 64, overlap 0.5, 200x136): measured max |diff|
# 0.011-0.022 (cosine) and 0.0014-0.003 (gaussian) over 5 seeds, logits' std ≈ 0.37; zero padding at tile
# borders is the only difference, and the windows weight it down.
SEAM_TOL = {"cosine": 0.05, "gaussian": 0.01}


def pixelwise(weights: torch.Tensor):
    """A 'network' that maps each pixel on its own (a 1x1 conv): tiling cannot change its output."""
    return lambda x: torch.einsum("bchw,ck->bkhw", x, weights)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"))


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


def test_predict_writes_masks_colours_and_overlays_at_photo_size_in_dataset_numbering(model_dir, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(scene(150, 100)).save(tmp_path / "in" / "a.jpg")
    Image.fromarray(scene(90, 120, seed=1)).save(tmp_path / "in" / "b.png")
    summary = predict(model_dir, [tmp_path / "in"], tmp_path / "out", tile=32, progress=False)
    assert summary.failed == [] and [Path(p).name for p in summary.photos] == ["a.jpg", "b.png"]
    scheme = get_scheme("full")
    for stem, size in (("a", (150, 100)), ("b", (90, 120))):
        mask, color = Image.open(tmp_path / "out" / f"{stem}.png"), Image.open(tmp_path / "out" / f"{stem}_color.png")
        overlay = Image.open(tmp_path / "out" / f"{stem}_overlay.jpg")
        assert (mask.mode, color.mode, overlay.mode) == ("L", "RGB", "RGB")
        assert mask.size == color.size == overlay.size == size
        source = np.asarray(mask)
        assert set(np.unique(source)) <= set(scheme.write_as.tolist())  # dataset indices: no 0, no 23
        assert np.array_equal(np.asarray(color), scheme.table.index_to_rgb(source))
    assert ClassTable.from_csv(tmp_path / "out" / "class_dict.csv") == scheme.table  # full maps one to one


@pytest.mark.parametrize(
    ("scheme_name", "numbering", "values", "table"),
    [
        ("paved", "auto", {0, 1}, ["other", "paved-area"]),
        ("six", "auto", set(range(6)), ["paved-area", "dirt", "grass", "roof", "water", "other"]),
        ("six", "dataset", None, None),  # forced: the dataset's numbering, a group written as its first member
        ("full", "scheme", set(range(22)), None),  # forced: 0..21
    ],
)
def test_grouping_schemes_write_their_own_classes_with_a_class_table(tmp_path, scheme_name, numbering, values, table):
    model = save_tiny_model(tmp_path / "m", scheme=scheme_name, inference={"tile": 32})
    Image.fromarray(scene(120, 80)).save(tmp_path / "p.png")
    predict(model, [tmp_path / "p.png"], tmp_path / "out", numbering=numbering, progress=False)
    scheme = get_scheme(scheme_name)
    written = ClassTable.from_csv(tmp_path / "out" / "class_dict.csv")
    mask = np.asarray(Image.open(tmp_path / "out" / "p.png"))
    color = np.asarray(Image.open(tmp_path / "out" / "p_color.png"))
    assert np.array_equal(color, written.colors[mask])  # every pixel in its class table colour
    if numbering == "dataset":
        assert written == scheme.table and set(np.unique(mask)) <= set(scheme.write_as.tolist())
        return
    assert written.names == (tuple(table) if table else scheme.names) and set(np.unique(mask)) <= values
    assert np.array_equal(written.colors, scheme.colors)  # the colours the report paints these classes in


def test_luma_median_splits_every_photo_in_half(tmp_path):
    model = save_tiny_model(tmp_path / "m", scheme="luma", inference={"tile": 32})
    Image.fromarray(scene(120, 80)).save(tmp_path / "p.png")
    for rule in ("mean", "median"):
        predict(model, [tmp_path / "p.png"], tmp_path / rule, luma=rule, progress=False)
    median = np.asarray(Image.open(tmp_path / "median" / "p.png"))
    assert median.mean() == pytest.approx(0.5, abs=0.01)
    assert not np.array_equal(median, np.asarray(Image.open(tmp_path / "mean" / "p.png")))


def test_overlay_is_the_photo_blended_half_and_half_with_the_class_colours(tmp_path):
    scheme = get_scheme("full")
    photo = np.full((64, 96, 3), (100, 150, 200), np.uint8)
    labels = np.zeros((64, 96), np.uint8)
    labels[:, 48:] = 2  # paved-area | grass
    counts = write_outputs(photo, labels, scheme.written(), output_paths(Path("p.jpg"), tmp_path))
    assert counts.tolist() == [48 * 64, 0, 48 * 64] + [0] * 19
    overlay = np.asarray(Image.open(tmp_path / "p_overlay.jpg")).astype(int)
    paved, grass = (128, 64, 128), (0, 102, 0)
    assert np.abs(overlay[:, :40] - np.add((100, 150, 200), paved) / 2).max() <= 3  # JPEG rounding only
    assert np.abs(overlay[:, 56:] - np.add((100, 150, 200), grass) / 2).max() <= 3


def test_scale_writes_smaller_outputs_while_the_network_sees_its_training_scale(tmp_path, monkeypatch):
    """A preview changes the written size only: the same tiles reach the network, areas stay in photo units."""
    import droneseg.predict as predict_module

    model = save_tiny_model(tmp_path / "m", long_side=100, inference={"tile": 32})
    Image.fromarray(scene(200, 120)).save(tmp_path / "p.png")
    seen = {}
    for scale in (1.0, 0.25):
        recorder = {}

        def load(path, device, _rec=recorder):
            net, info = load_model(path, device)
            _rec["net"] = ShapeRecorder(net)
            return _rec["net"], info

        monkeypatch.setattr(predict_module, "load_model", load)
        out = tmp_path / f"out{scale}"
        summary = predict(model, [tmp_path / "p.png"], out, scale=scale, gsd=0.1, progress=False)
        seen[scale] = recorder["net"].shapes
        rows = list(csv.DictReader(summary.class_areas.open()))
        assert sum(float(r["area_m2"]) for r in rows) == pytest.approx(200 * 120 * 0.1**2, rel=1e-6)
    assert seen[1.0] == seen[0.25] and set(seen[1.0]) == {(32, 32)}  # working size 100x60 in 32-pixel tiles
    full, preview = (np.asarray(Image.open(tmp_path / f"out{s}" / "p.png")) for s in (1.0, 0.25))
    assert full.shape == (120, 200) and preview.shape == (30, 50)
    assert (preview == full[1::4, 1::4]).mean() >= 0.9  # the same map, sampled near the same ground points


def test_class_areas_shares_sum_to_one_and_square_metres_are_pixels_times_gsd_squared(model_dir, tmp_path):
    for name, (w, h) in (("a", (64, 48)), ("b", (50, 70))):
        Image.fromarray(scene(w, h)).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    summary = predict(model_dir, [tmp_path / "a.png", tmp_path / "b.png"], out, tile=32, gsd=0.05, progress=False)
    rows = list(csv.DictReader(summary.class_areas.open()))
    scheme = get_scheme("full")
    for photo, stem in ((str(tmp_path / "a.png"), "a"), (str(tmp_path / "b.png"), "b")):
        mine = [r for r in rows if r["photo"] == photo]
        assert [r["class"] for r in mine] == list(scheme.names)
        w, h = Image.open(out / f"{stem}.png").size
        counts = np.bincount(scheme.encode(np.asarray(Image.open(out / f"{stem}.png"))).ravel(), minlength=22)
        assert [int(r["pixels"]) for r in mine] == counts[:22].tolist()
        assert sum(float(r["share"]) for r in mine) == pytest.approx(1.0, abs=1e-5)
        for r in mine:
            assert float(r["area_m2"]) == pytest.approx(float(r["share"]) * w * h * 0.05**2, abs=1e-3)


def test_unreadable_photos_are_named_on_stderr_and_the_others_still_done(model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(scene(64, 48)).save(folder / "good.jpg")
    (folder / "text.png").write_text("not an image")
    Image.fromarray(scene(64, 48)).save(folder / "cut.jpg")
    (folder / "cut.jpg").write_bytes((folder / "cut.jpg").read_bytes()[:300])
    summary = predict(model_dir, [folder], tmp_path / "out", tile=32, progress=False)
    assert sorted(Path(p).name for p in summary.failed) == ["cut.jpg", "text.png"]
    assert [Path(p).name for p in summary.photos] == ["good.jpg"]
    assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "cut.png").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "cut.jpg" in err[0] and "text.png" in err[1]


def test_exif_rotated_jpeg_gives_the_mask_of_the_displayed_photo(model_dir, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 80x48, displayed rotated 90° clockwise: 48x80
    Image.fromarray(scene(80, 48)).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    upright = np.asarray(Image.open(tmp_path / "rotated.jpg").transpose(Image.Transpose.ROTATE_270))
    Image.fromarray(upright).save(tmp_path / "upright.png")
    predict(model_dir, [tmp_path / "rotated.jpg", tmp_path / "upright.png"], tmp_path / "out", tile=32, progress=False)
    rotated, reference = (np.asarray(Image.open(tmp_path / "out" / f"{s}.png")) for s in ("rotated", "upright"))
    assert rotated.shape == (80, 48)
    assert np.array_equal(rotated, reference)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_grey_rgba_and_16_bit_photos_are_predicted(model_dir, tmp_path, mode):
    rgb = scene(40, 30)
    image = {
        "L": lambda: Image.fromarray(rgb).convert("L"),
        "RGBA": lambda: Image.fromarray(np.dstack([rgb, np.full((30, 40), 200, np.uint8)])),
        "I;16": lambda: Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
    }[mode]()
    assert image.mode == mode
    image.save(tmp_path / "p.png")
    summary = predict(model_dir, [tmp_path / "p.png"], tmp_path / "out", tile=32, progress=False)
    assert summary.failed == [] and Image.open(tmp_path / "out" / "p.png").size == (40, 30)


def test_luma_model_writes_a_zero_one_mask_in_black_and_white(tmp_path):
    model = save_tiny_model(tmp_path / "m", scheme="luma")
    Image.fromarray(scene(60, 40)).save(tmp_path / "p.png")
    predict(model, [tmp_path / "p.png"], tmp_path / "out", tile=32, progress=False)
    mask = np.asarray(Image.open(tmp_path / "out" / "p.png"))
    assert set(np.unique(mask)) == {0, 1}
    color = np.asarray(Image.open(tmp_path / "out" / "p_color.png"))
    assert np.array_equal(color, np.repeat(mask[..., None] * 255, 3, axis=2))


def test_bad_inputs_fail_before_any_work_naming_the_problem(model_dir, tmp_path):
    Image.fromarray(scene(32, 32)).save(tmp_path / "x.jpg")
    Image.fromarray(scene(32, 32)).save(tmp_path / "x.png")
    with pytest.raises(DataError, match="missing.jpg"):
        predict(model_dir, [tmp_path / "missing.jpg"], tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="same outputs x"):
        predict(model_dir, [tmp_path], tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="overwrite this input"):
        predict(model_dir, [tmp_path / "x.png"], tmp_path, progress=False)
    with pytest.raises(ValueError, match="scale"):
        predict(model_dir, [tmp_path / "x.png"], tmp_path / "out", scale=2.0, progress=False)
    with pytest.raises(ValueError, match="--blend: .*gaussian"):
        predict(model_dir, [tmp_path / "x.png"], tmp_path / "out", blend="box", progress=False)
    with pytest.raises(DataError, match="numbering"):
        predict(model_dir, [tmp_path / "x.png"], tmp_path / "out", numbering="both", progress=False)  # type: ignore
    assert not (tmp_path / "out").exists()


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
    conf_whole = np.concatenate([c for _, _, c in tiler.iter_labels(image, (H, W), confidence=True)])
    logits = net(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    top = F.interpolate(logits.softmax(1).amax(1, keepdim=True), size=(H, W), mode="bilinear", align_corners=False)
    assert np.abs(conf_whole.astype(int) - top[0, 0].detach().mul(255).round().numpy()).max() <= 40  # tiles vs one pass
    for y0, y1, x0, x1 in [(0, H, 0, W), (5, H - 3, 7, W - 11), (H // 2, H // 2 + 3, W // 3, W // 3 + 1)]:
        rows = list(tiler.iter_labels(image, (H, W), region=(y0, y1, x0, x1), confidence=True))
        assert np.array_equal(np.concatenate([r for _, r, _ in rows]), whole[y0:y1, x0:x1])
        assert np.array_equal(np.concatenate([c for _, _, c in rows]), conf_whole[y0:y1, x0:x1])
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

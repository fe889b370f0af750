"""Prediction on full-size photos: tiling and blending, banded upsampling, bounded memory, files written."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import ShapeRecorder, save_tiny_model, scene
from PIL import Image

import droneseg.session as session_module
from droneseg.artifact import load_model
from droneseg.classes import ClassTable, DataError
from droneseg.predict import output_paths, predict, write_outputs
from droneseg.schemes import get_scheme
from droneseg.tiler import InferenceOverrides


# Tiled vs whole-image logits of the tiny U-Net below (tile 64, overlap 0.5, 200x136): measured max |diff|
# 0.011-0.022 (cosine) and 0.0014-0.003 (gaussian) over 5 seeds, logits' std ≈ 0.37; zero padding at tile
# borders is the only difference, and the windows weight it down.
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"))


def test_predict_writes_masks_colours_and_overlays_at_photo_size_in_dataset_numbering(model_dir, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(scene(150, 100)).save(tmp_path / "in" / "a.jpg")
    Image.fromarray(scene(90, 120, seed=1)).save(tmp_path / "in" / "b.png")
    summary = predict(model_dir, [tmp_path / "in"], tmp_path / "out", progress=False, inference=InferenceOverrides(tile=32))
    assert summary.failed == [] and [Path(p).name for p in summary.photos] == ["a.jpg", "b.png"]
    scheme = get_scheme("full")
    for stem, size in (("a", (150, 100)), ("b", (90, 120))):
        mask, color = Image.open(tmp_path / "out" / f"{stem}.png"), Image.open(tmp_path / "out" / f"{stem}_color.png")
        overlay = Image.open(tmp_path / "out" / f"{stem}_overlay.jpg")
        # the colour mask is a palette PNG: every reader expands it to the class colours
        assert (mask.mode, color.mode, overlay.mode) == ("L", "P", "RGB")
        assert mask.size == color.size == overlay.size == size
        source = np.asarray(mask)
        assert set(np.unique(source)) <= set(scheme.write_as.tolist())  # dataset indices: no 0, no 23
        assert np.array_equal(np.asarray(color.convert("RGB")), scheme.table.index_to_rgb(source))
        assert np.array_equal(cv2.imread(str(tmp_path / "out" / f"{stem}_color.png"))[..., ::-1],
                              scheme.table.index_to_rgb(source))  # OpenCV too
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
    color = np.asarray(Image.open(tmp_path / "out" / "p_color.png").convert("RGB"))
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
        predict(model, [tmp_path / "p.png"], tmp_path / rule, progress=False, inference=InferenceOverrides(luma_threshold=rule))
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

    model = save_tiny_model(tmp_path / "m", long_side=100, inference={"tile": 32})
    Image.fromarray(scene(200, 120)).save(tmp_path / "p.png")
    seen = {}
    for scale in (1.0, 0.25):
        recorder = {}

        def load(path, device, _rec=recorder):
            net, info = load_model(path, device)
            _rec["net"] = ShapeRecorder(net)
            return _rec["net"], info

        monkeypatch.setattr(session_module, "load_model", load)
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
    summary = predict(model_dir, [tmp_path / "a.png", tmp_path / "b.png"], out, gsd=0.05, progress=False, inference=InferenceOverrides(tile=32))
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
    summary = predict(model_dir, [folder], tmp_path / "out", progress=False, inference=InferenceOverrides(tile=32))
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
    predict(model_dir, [tmp_path / "rotated.jpg", tmp_path / "upright.png"], tmp_path / "out", progress=False, inference=InferenceOverrides(tile=32))
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
    summary = predict(model_dir, [tmp_path / "p.png"], tmp_path / "out", progress=False, inference=InferenceOverrides(tile=32))
    assert summary.failed == [] and Image.open(tmp_path / "out" / "p.png").size == (40, 30)


def test_luma_model_writes_a_zero_one_mask_in_black_and_white(tmp_path):
    model = save_tiny_model(tmp_path / "m", scheme="luma")
    Image.fromarray(scene(60, 40)).save(tmp_path / "p.png")
    predict(model, [tmp_path / "p.png"], tmp_path / "out", progress=False, inference=InferenceOverrides(tile=32))
    mask = np.asarray(Image.open(tmp_path / "out" / "p.png"))
    assert set(np.unique(mask)) == {0, 1}
    color = np.asarray(Image.open(tmp_path / "out" / "p_color.png").convert("RGB"))
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
        predict(model_dir, [tmp_path / "x.png"], tmp_path / "out", progress=False, inference=InferenceOverrides(blend="box"))
    with pytest.raises(DataError, match="numbering"):
        predict(model_dir, [tmp_path / "x.png"], tmp_path / "out", numbering="both", progress=False)  # type: ignore
    assert not (tmp_path / "out").exists()


def test_predict_warns_when_the_runs_own_evaluation_was_near_chance(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "run", long_side=100, inference={"tile": 32})
    (model / "train_summary.json").write_text('{"val_miou_native": 0.01, "chance_miou": 0.05}')
    Image.fromarray(scene(60, 40)).save(tmp_path / "p.png")
    predict(model, [tmp_path / "p.png"], tmp_path / "out", progress=False)
    err = capsys.readouterr().err
    assert f"warning: {model}: Near chance: pooled mIoU 0.010" in err
    (model / "train_summary.json").write_text('{"val_miou_native": 0.5, "chance_miou": 0.05}')
    predict(model, [tmp_path / "p.png"], tmp_path / "out2", progress=False)
    assert "Near chance" not in capsys.readouterr().err


def test_uncertainty_maps_and_the_label_next_ranking(model_dir, tmp_path, capsys):
    """--uncertainty: a map per photo (255 · (1 - margin), the labels unchanged), 0 where the photo is transparent,
    and label_next.csv ranking the photos by uncertain share, its counts those of the maps."""
    from droneseg.cli import main

    (tmp_path / "in").mkdir()
    Image.fromarray(scene(150, 100)).save(tmp_path / "in" / "a.jpg")
    rgba = np.dstack([scene(90, 120, seed=1), np.full((120, 90), 255, np.uint8)])
    rgba[:40, :, 3] = 0  # a transparent band: no data
    Image.fromarray(rgba).save(tmp_path / "in" / "b.png")
    plain = predict(model_dir, [tmp_path / "in"], tmp_path / "plain", progress=False)
    with pytest.raises(SystemExit) as stop:
        main(["predict", str(model_dir), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--uncertainty",
              "--gsd", "0.1"])
    assert stop.value.code == 0 and "label_next.csv: the photos ranked" in capsys.readouterr().out
    assert plain.failed == []
    for stem in ("a", "b"):  # the labels do not depend on asking for the map
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"{stem}.png")),
                              np.asarray(Image.open(tmp_path / "plain" / f"{stem}.png")))
    maps = {s: np.asarray(Image.open(tmp_path / "out" / f"{s}_uncertainty.png")) for s in ("a", "b")}
    assert maps["a"].shape == (100, 150) and maps["b"].shape == (120, 90)
    assert (maps["b"][:40] == 0).all() and maps["a"].max() > 0
    with (tmp_path / "out" / "label_next.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["rank"] for r in rows] == ["1", "2"]
    shares = [float(r["uncertain_share"]) for r in rows]
    assert shares == sorted(shares, reverse=True)
    for r in rows:
        m = maps[Path(r["photo"]).stem]
        valid = m[40:] if Path(r["photo"]).stem == "b" else m
        assert int(r["valid_px"]) == valid.size and int(r["uncertain_px"]) == int((valid >= 128).sum())
        assert float(r["uncertain_m2"]) == pytest.approx(int(r["uncertain_px"]) * 0.01)

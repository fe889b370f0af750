"""``droneseg import``: exports made with the labelling tools' own libraries (the test extra installs them all, so
nothing here skips) (Datumaro's VOC segmentation writer, the
one behind CVAT's "Segmentation mask 1.1"; Label Studio's converter; labelme and imgviz) round-trip exactly, and
every bad input is one line naming its file, with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from droneseg.classes import ClassTable
from droneseg.cli import main
from droneseg.data.layout import find_layout
from droneseg.images import read_mask

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # labelme imports PyQt5; no display in CI

PHOTOS = 4


def _truth(synth_root: Path) -> tuple[list[Path], list[np.ndarray], list[str]]:
    """The first photos of the synthetic set, their masks as class names (None = unlabelled) by index, names."""
    layout = find_layout(synth_root)
    samples = layout.samples[:PHOTOS]
    masks = [read_mask(s.mask, s.mask_kind, layout.table) for s in samples]
    return [s.image for s in samples], masks, list(layout.table.names)


def _imported_names(out: Path) -> dict[str, np.ndarray]:
    """stem -> (H, W) array of class names of an imported dataset ('unlabeled' where nothing)."""
    layout = find_layout(out)
    names = np.array(layout.table.names, dtype=object)
    return {s.id: names[read_mask(s.mask, s.mask_kind, layout.table)] for s in layout.samples}


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        main(["import", *map(str, args)])
    got = capsys.readouterr()
    return stop.value.code, got.out, got.err


def _expected(mask: np.ndarray, names: list[str]) -> np.ndarray:
    out = np.array(names, dtype=object)[mask]
    out[mask == names.index("unlabeled")] = "unlabeled"
    return out


# -- CVAT (Datumaro) ------------------------------------------------------------------------------------------------

def _cvat_export(photos: list[Path], masks: list[np.ndarray], names: list[str], table: ClassTable, out: Path,
                 subsets: list[str]) -> Path:
    import datumaro as dm
    from datumaro.components.annotation import AnnotationType, LabelCategories, Mask, MaskCategories

    present = sorted({names[v] for m in masks for v in np.unique(m)} - {"unlabeled"})
    labels = ["background", *present]
    colours = {0: (0, 0, 0), **{i + 1: tuple(int(c) for c in table.colors[names.index(n)])
                                for i, n in enumerate(present)}}
    items = []
    for photo, mask, subset in zip(photos, masks, subsets):
        anns = [Mask(image=mask == names.index(n), label=labels.index(n), z_order=0)
                for n in present if (mask == names.index(n)).any()]
        items.append(dm.DatasetItem(id=photo.stem, subset=subset, annotations=anns))
    ds = dm.Dataset.from_iterable(items, categories={
        AnnotationType.label: LabelCategories.from_iterable(labels),
        AnnotationType.mask: MaskCategories(colormap=colours)})
    folder = out / "cvat"
    ds.export(str(folder), "voc_segmentation", save_media=False,
              label_map={n: [colours[i], "", ""] for i, n in enumerate(labels)})
    zipped = out / "cvat.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return zipped


def test_cvat_segmentation_mask_export_round_trips_with_its_subsets(synth_root, tmp_path, capsys):
    photos, masks, names = _truth(synth_root)
    table = find_layout(synth_root).table
    export = _cvat_export(photos, masks, names, table, tmp_path, ["train", "train", "train", "val"])
    code, out, err = _run(capsys, "cvat", export, "--images", synth_root / "original_images", "--out", tmp_path / "d")
    assert code == 0, err
    got = _imported_names(tmp_path / "d")
    for photo, mask in zip(photos, masks):
        assert (got[photo.stem] == _expected(mask, names)).all()
    assert (tmp_path / "d" / "splits" / "val.txt").read_text().split() == [photos[3].stem]
    assert len((tmp_path / "d" / "splits" / "train.txt").read_text().split()) == 3
    # the label map's colours are kept for the classes
    imported = ClassTable.from_csv(tmp_path / "d" / "class_dict_seg.csv")
    roof = imported.names.index("roof") if "roof" in imported.names else None
    if roof is not None:
        assert tuple(imported.colors[roof]) == tuple(table.colors[names.index("roof")])
    assert "4 photos" in err and "unlabelled" in err


def test_cvat_an_unknown_colour_a_jpeg_mask_and_a_wrong_size_are_listed_and_nothing_is_written(synth_root, tmp_path,
                                                                                              capsys):
    photos, masks, names = _truth(synth_root)
    table = find_layout(synth_root).table
    zipped = _cvat_export(photos, masks, names, table, tmp_path, ["default"] * PHOTOS)
    folder = tmp_path / "cvat"
    first = folder / "SegmentationClass" / f"{photos[0].stem}.png"
    rgb = np.asarray(Image.open(first).convert("RGB")).copy()
    rgb[:3, :3] = (1, 2, 3)  # a colour no label has (an editor's anti-aliasing, say)
    Image.fromarray(rgb).save(first)
    second = folder / "SegmentationClass" / f"{photos[1].stem}.png"
    Image.open(second).convert("RGB").resize((50, 30), Image.NEAREST).save(second)
    third = folder / "SegmentationClass" / f"{photos[2].stem}.png"
    Image.open(third).convert("RGB").save(third.with_suffix(".jpg"))
    third.unlink()
    code, _, err = _run(capsys, "cvat", folder, "--images", synth_root / "original_images", "--out", tmp_path / "d")
    assert code == 2 and not (tmp_path / "d").exists()
    lines = err.strip().splitlines()
    assert any(f"{first.name}: colour (1, 2, 3) in 9 px is not in labelmap.txt" in line for line in lines)
    assert any(f"{second.name}: mask of 50x30 px, its photo {photos[1].name} is 96x64" in line for line in lines)
    assert any(f"{third.stem}.jpg: not a PNG" in line for line in lines)
    assert any(f"photo {photos[2].stem!r} is listed but has no mask in SegmentationClass/" in line for line in lines)
    assert lines[-1].startswith(f"droneseg: error: {folder}: 4 problems in this CVAT Segmentation mask 1.1 export, "
                                "nothing written")
    assert zipped.is_file()


# -- Label Studio ---------------------------------------------------------------------------------------------------

def _ls_tasks(photos: list[Path], masks: list[np.ndarray], names: list[str]) -> list[dict]:
    from label_studio_converter import brush
    tasks = []
    for i, (photo, mask) in enumerate(zip(photos, masks)):
        h, w = mask.shape
        results = []
        for v in np.unique(mask):
            if names[v] == "unlabeled":
                continue
            rle = brush.mask2rle(((mask == v) * 255).astype(np.uint8))
            results.append({"id": f"r{i}{v}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
                            "original_width": w, "original_height": h, "image_rotation": 0,
                            "value": {"format": "rle", "rle": rle, "brushlabels": [names[v]]}})
        tasks.append({"id": 100 + i, "data": {"image": f"/data/upload/3/{i:08x}-{photo.name}"},
                      "annotations": [{"id": 7 + i, "completed_by": 1, "was_cancelled": False, "result": results}]})
    return tasks


def test_label_studio_json_brush_rle_round_trips_and_our_decoder_is_theirs(synth_root, tmp_path, capsys):
    from label_studio_converter import brush

    from droneseg.labelling.labelstudio import decode_rle

    photos, masks, names = _truth(synth_root)
    tasks = _ls_tasks(photos, masks, names)
    rle = tasks[0]["annotations"][0]["result"][0]["value"]["rle"]
    assert np.array_equal(decode_rle(rle), brush.decode_rle(rle))
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    code, _, err = _run(capsys, "labelstudio", tmp_path / "export.json", "--images", synth_root / "original_images",
                        "--out", tmp_path / "d")
    assert code == 0, err
    got = _imported_names(tmp_path / "d")
    for photo, mask in zip(photos, masks):
        assert (got[photo.stem] == _expected(mask, names)).all()
    assert not (tmp_path / "d" / "splits").exists()


def test_label_studio_png_export_round_trips_through_the_task_list(synth_root, tmp_path, capsys):
    from label_studio_converter import brush
    photos, masks, names = _truth(synth_root)
    tasks = _ls_tasks(photos, masks, names)
    pngs = tmp_path / "png"
    pngs.mkdir()
    for t in tasks:  # what Label Studio's PNG export runs: the converter's own writer
        a = t["annotations"][0]
        flat = [{**r, **r["value"]} for r in a["result"]]
        brush.save_brush_images_from_annotation(t["id"], a["id"], "ann@example.org", "tag", flat, str(pngs), "png")
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    code, _, err = _run(capsys, "labelstudio", pngs, "--images", synth_root / "original_images",
                        "--tasks", tmp_path / "export.json", "--out", tmp_path / "d")
    assert code == 0, err
    got = _imported_names(tmp_path / "d")
    for photo, mask in zip(photos, masks):
        assert (got[photo.stem] == _expected(mask, names)).all()


def test_label_studio_later_regions_win_and_bad_tasks_are_listed(synth_root, tmp_path, capsys):
    from label_studio_converter import brush
    photos, _, _ = _truth(synth_root)
    h, w = 64, 96
    a, b = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    a[10:40, 10:60], b[30:50, 50:90] = 255, 255

    def region(mask, label, width=w):
        return {"type": "brushlabels", "original_width": width, "original_height": h,
                "value": {"rle": brush.mask2rle(mask), "brushlabels": [label]}}

    good = {"id": 1, "data": {"image": f"s3://bucket/{photos[0].name}?sig=x"},
            "annotations": [{"id": 1, "result": [region(a, "roof"), region(b, "grass")]}]}
    (tmp_path / "one.json").write_text(json.dumps([good]))
    code, _, err = _run(capsys, "labelstudio", tmp_path / "one.json", "--images", synth_root / "original_images",
                        "--out", tmp_path / "d")
    assert code == 0, err
    got = _imported_names(tmp_path / "d")[photos[0].stem]
    assert got[35, 55] == "grass" and got[20, 20] == "roof" and got[0, 0] == "unlabeled"
    bad = [good,
           {"id": 2, "data": {"image": "nowhere.jpg"}, "annotations": [{"id": 2, "result": [region(a, "roof")]}]},
           {"id": 3, "data": {"image": photos[1].name}, "annotations": [{"id": 3, "was_cancelled": True,
                                                                         "result": [region(a, "roof")]}]},
           {"id": 4, "data": {"image": photos[2].name}, "annotations": [{"id": 4, "result": [
               {**region(a, "roof"), "original_width": 100}]}]},
           {"id": 5, "data": {"image": photos[3].name}, "annotations": [{"id": 5, "result": [region(a, "car")]}]}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    code, _, err = _run(capsys, "labelstudio", tmp_path / "bad.json", "--images", synth_root / "original_images",
                        "--classes", tmp_path / "d" / "class_dict_seg.csv", "--out", tmp_path / "e")
    assert code == 2 and not (tmp_path / "e").exists()
    problems = [line for line in err.splitlines() if line.startswith("problem:")]
    assert len(problems) == 4
    assert "task 2: no photo named 'nowhere.jpg'" in problems[0]
    assert f"task 3 ({photos[1].name}): no labels" in problems[1]
    assert "drawn on a 100x64 image, the photo is 96x64" in problems[2]
    assert "label ['car'] is not one of the classes" in problems[3]


# -- labelme --------------------------------------------------------------------------------------------------------

def _labelme_shapes(rng: np.random.Generator, w: int, h: int) -> list[dict]:
    shapes = []
    for label in ("roof", "grass", "water", "roof"):
        cx, cy = rng.uniform(10, w - 10), rng.uniform(10, h - 10)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 6))
        pts = [[float(cx + rng.uniform(5, 25) * np.cos(t)), float(cy + rng.uniform(5, 25) * np.sin(t))]
               for t in angles]
        shapes.append({"label": label, "points": pts, "group_id": None, "description": "", "shape_type": "polygon",
                       "flags": {}, "mask": None})
    shapes.append({"label": "grass", "points": [[5.0, 5.0], [30.5, 20.2]], "group_id": None, "description": "",
                   "shape_type": "rectangle", "flags": {}, "mask": None})
    return shapes


def test_labelme_json_rasterises_as_labelme_does(synth_root, tmp_path, capsys):
    import labelme
    from labelme import LabelFile
    from labelme.utils import shapes_to_label

    photos, _, _ = _truth(synth_root)
    rng = np.random.default_rng(0)
    folder = tmp_path / "labelme"
    folder.mkdir()
    truth = {}
    order = ["grass", "roof", "water"]
    for photo in photos:
        shapes = _labelme_shapes(rng, 96, 64)
        LabelFile().save(str(folder / f"{photo.stem}.json"), shapes, os.path.relpath(photo, folder), 64, 96)
        cls, _ = shapes_to_label((64, 96), shapes, {n: i + 1 for i, n in enumerate(order)})
        truth[photo.stem] = cls
    code, _, err = _run(capsys, "labelme", folder, "--out", tmp_path / "d")
    assert code == 0, (err, labelme.__version__)
    got = _imported_names(tmp_path / "d")
    for stem, cls in truth.items():
        want = np.array(["unlabeled", *order], dtype=object)[cls]
        assert (got[stem] == want).all()


def test_labelme2voc_palette_pngs_are_read_as_indices_and_rgb_copies_refused(synth_root, tmp_path, capsys):
    import imgviz
    photos, _, _ = _truth(synth_root)
    voc = tmp_path / "voc"
    (voc / "SegmentationClassPNG").mkdir(parents=True)
    (voc / "class_names.txt").write_text("_background_\nroof\ngrass\nwater")  # as labelme2voc.py writes it
    rng = np.random.default_rng(1)
    labels = {}
    for photo in photos:
        lbl = rng.integers(-1, 4, size=(64, 96)).astype(np.int32)  # -1: __ignore__
        # labelme2voc's writer; -1 (__ignore__) wraps to 255 in its uint8 cast
        imgviz.io.lblsave(str(voc / "SegmentationClassPNG" / f"{photo.stem}.png"), lbl.astype(np.uint8))
        labels[photo.stem] = lbl
    shutil.copytree(synth_root / "original_images", voc / "JPEGImages")  # as labelme2voc lays them out
    code, _, err = _run(capsys, "labelme", voc, "--out", tmp_path / "d")  # photos from its JPEGImages/
    assert code == 0, err
    got = _imported_names(tmp_path / "d")
    names = np.array(["unlabeled", "unlabeled", "roof", "grass", "water"], dtype=object)  # -1 and 0: unlabelled
    for stem, lbl in labels.items():
        assert (got[stem] == names[lbl + 1]).all()
    one = voc / "SegmentationClassPNG" / f"{photos[0].stem}.png"
    Image.open(one).convert("RGB").save(one)  # a viewer's "save as": colours, not indices
    code, _, err = _run(capsys, "labelme", voc, "--images", synth_root / "original_images", "--out", tmp_path / "e")
    assert code == 2 and not (tmp_path / "e").exists()
    assert f"problem: {one}: a RGB image; labelme2voc writes palette PNGs whose values are the class indices" in err


def test_import_never_overwrites_and_refuses_an_unknown_tool(synth_root, tmp_path, capsys):
    (tmp_path / "d").mkdir()
    code, _, err = _run(capsys, "labelme", tmp_path, "--out", tmp_path / "d")
    assert code == 2 and "no labelme .json file" in err
    code, _, err = _run(capsys, "roboflow", tmp_path, "--out", tmp_path / "x")
    assert code == 2 and "'roboflow': not a labelling tool droneseg imports" in err


def test_an_imported_dataset_trains(synth_root, tmp_path, capsys):
    """The import's output is a dataset like any other: check-data is clean."""
    photos, masks, names = _truth(synth_root)
    tasks = _ls_tasks(photos, masks, names)
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    code, _, err = _run(capsys, "labelstudio", tmp_path / "export.json", "--images", synth_root / "original_images",
                        "--out", tmp_path / "d")
    assert code == 0, err
    with pytest.raises(SystemExit) as stop:
        main(["check-data", str(tmp_path / "d")])
    assert stop.value.code == 0, capsys.readouterr()
    shutil.rmtree(tmp_path / "d")


def test_orthomosaic_tiles_labelled_elsewhere_come_back_as_a_survey_on_the_map(tmp_path, capsys):
    """tiles -> (Label Studio brushes of the true classes on each tile) -> import: the dataset of tiles and a survey
    whose polygons, rasterised on the orthomosaic's grid, give back the true classes on every tile exactly."""
    import pyogrio
    import pyogrio.raw
    import rasterio
    import shapely
    from label_studio_converter import brush
    from rasterio.features import rasterize

    from droneseg.geo.scene import labels_path, write_synthetic_ortho

    ortho = tmp_path / "o.tif"
    write_synthetic_ortho(ortho, (520, 400), gsd=0.05, seed=2)
    with pytest.raises(SystemExit) as stop:
        main(["tiles", str(ortho), "--out", str(tmp_path / "tiles"), "--size", "128"])
    assert stop.value.code == 0
    sidecar = json.loads((tmp_path / "tiles" / "tiles.json").read_text())
    with rasterio.open(labels_path(ortho)) as ds:
        truth, transform, crs = ds.read(1), ds.transform, ds.crs
    with rasterio.open(ortho) as ds:
        alpha = ds.read(4)
    assert 0 < len(sidecar["tiles"]) < 12  # 4 x 3 whole tiles, those over the elliptic collar left out
    names = list(ClassTable.builtin().names)
    tasks = []
    for i, (name, tile) in enumerate(sorted(sidecar["tiles"].items())):
        r, c = tile["row_off"], tile["col_off"]
        assert (alpha[r:r + 128, c:c + 128] > 0).all()  # never over the collar
        patch = truth[r:r + 128, c:c + 128]
        regions = [{"type": "brushlabels", "original_width": 128, "original_height": 128,
                    "value": {"rle": brush.mask2rle(((patch == v) * 255).astype(np.uint8)),
                              "brushlabels": [names[v]]}} for v in np.unique(patch)]
        tasks.append({"id": i, "data": {"image": f"/data/upload/1/{name}"}, "annotations": [{"id": i,
                                                                                            "result": regions}]})
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    code, _, err = _run(capsys, "labelstudio", tmp_path / "export.json", "--images", tmp_path / "tiles",
                        "--out", tmp_path / "d")
    assert code == 0, err
    assert f"the tiles' labels on the map of {ortho.resolve()}" in err
    survey = yaml_load(tmp_path / "d" / "survey.yaml")
    assert survey["rasters"] == [str(ortho.resolve())] and survey["class_field"] == "class"
    _, _, wkb, fields = pyogrio.raw.read(tmp_path / "d" / "labels.gpkg", columns=["class"])
    geoms = shapely.from_wkb(wkb)
    burnt = rasterize(((g, names.index(n)) for g, n in zip(geoms, fields[0])), out_shape=truth.shape,
                      transform=transform, fill=255, dtype="uint8")
    for tile in sidecar["tiles"].values():
        r, c = tile["row_off"], tile["col_off"]
        assert np.array_equal(burnt[r:r + 128, c:c + 128], truth[r:r + 128, c:c + 128])
    assert rasterio.crs.CRS.from_user_input(pyogrio.read_info(tmp_path / "d" / "labels.gpkg")["crs"]) == crs
    with pytest.raises(SystemExit) as stop:  # and droneseg reads it as the survey it is
        main(["check-data", str(tmp_path / "d" / "survey.yaml")])
    assert stop.value.code == 0, capsys.readouterr()


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_photos_are_found_by_path_never_guessed_and_ids_with_dots_kept(tmp_path):
    """Two flights' DJI_0001.JPG: a name both hold is a problem, a path under --images picks one; an id with dots
    (CVAT's, labelme2voc's stems) is a whole stem; Label Studio's local-files URLs name a path."""
    from droneseg.labelling.dataset import PhotoFinder
    from droneseg.labelling.labelstudio import _image_name

    for folder in ("f1", "f2"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "DJI_0001.JPG")
    Image.new("RGB", (8, 8)).save(tmp_path / "f1" / "2023.05.12_0001.jpg")
    finder = PhotoFinder(tmp_path)
    assert "2 photos named 'DJI_0001.JPG'" in finder.find("DJI_0001.JPG")
    assert finder.find("f2/DJI_0001.JPG") == tmp_path / "f2" / "DJI_0001.JPG"
    assert finder.find("2023.05.12_0001") == tmp_path / "f1" / "2023.05.12_0001.jpg"
    assert _image_name({"data": {"image": "/data/local-files/?d=f2/DJI_0001.JPG"}}) == "f2/DJI_0001.JPG"
    assert _image_name({"data": {"image": "/data/upload/3/ab12cd34-plot%20%233.jpg"}}) == "ab12cd34-plot #3.jpg"


def test_labelme_special_labels_unpaint_and_a_tiles_sidecar_is_not_a_labelme_file(synth_root, tmp_path):
    from droneseg.labelling.labelme import read_labelme

    photo = find_layout(synth_root).samples[0].image
    folder = tmp_path / "lm"
    folder.mkdir()
    shapes = [{"label": "roof", "points": [[0, 0], [50, 40]], "shape_type": "rectangle"},
              {"label": "__ignore__", "points": [[10, 10], [20, 20]], "shape_type": "rectangle"}]
    (folder / "a.json").write_text(json.dumps({"shapes": shapes, "imagePath": str(photo), "imageHeight": 64,
                                               "imageWidth": 96}))
    (folder / "tiles.json").write_text("{}")
    imported = read_labelme(folder, None)
    assert imported.problems == [] and [n for n, _ in imported.classes] == ["roof"]
    mask = imported.photos[0].mask
    assert mask[5, 5] == 1 and mask[15, 15] == 0 and mask[60, 90] == 0


def test_a_label_map_with_one_colour_twice_and_a_class_named_unlabeled_are_refused(synth_root, tmp_path, capsys):
    from droneseg.labelling.cvat import read_cvat
    from droneseg.labelling.dataset import Imported, Photo, write_dataset

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "labelmap.txt").write_text("background:0,0,0::\nroof:1,2,3::\nwall:1,2,3::\n")
    with pytest.raises(Exception, match=r"labels 'roof' and 'wall' share the colour \(1, 2, 3\)"):
        read_cvat(tmp_path / "x", synth_root / "original_images")
    imported = Imported("test", tmp_path, classes=[("Unlabeled", None), ("roof", None)],
                        photos=[Photo(find_layout(synth_root).samples[0].image, np.ones((64, 96), np.uint8))])
    with pytest.raises(Exception, match="a class named 'Unlabeled'"):
        write_dataset(imported, tmp_path / "d")
    assert not (tmp_path / "d").exists()

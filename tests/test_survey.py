"""Surveys: orthomosaics + vector labels as a dataset (droneseg.geo.survey), built from small synthetic scenes whose
true classes are known pixel by pixel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio", reason="the geo extra is not installed (make test installs it)")
pyogrio = pytest.importorskip("pyogrio")
shapely = pytest.importorskip("shapely")

import pyogrio.raw  # noqa: E402
import yaml  # noqa: E402
from helpers import TINY_TRAIN, exit_code  # noqa: E402

from droneseg.data.layout import DataSource, SurveyOptions  # noqa: E402
from droneseg.geo.scene import TABLE, labels_path, write_synthetic_ortho, write_synthetic_survey  # noqa: E402
from droneseg.geo.survey import load_survey, render_block  # noqa: E402

GSD = 0.1
SIZE = (960, 720)



@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A 96 x 72 m synthetic orthomosaic at 10 cm with its true classes as polygons: the survey YAML."""
    root = tmp_path_factory.mktemp("survey")
    write_synthetic_ortho(root / "o.tif", SIZE, gsd=GSD, seed=5)
    return write_synthetic_survey(root / "o.tif")["survey"]


def copy_survey(synth: Path, tmp_path: Path, **changes) -> Path:
    """A private copy of the synthetic survey with ``changes`` to its YAML."""
    folder = Path(shutil.copytree(synth.parent, tmp_path / "s"))
    path = folder / synth.name
    raw = yaml.safe_load(path.read_text()) | changes
    path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if v is not None}))
    return path


def write_labels(path: Path, geoms: list, values: list, crs: str | None = "EPSG:32633", field: str = "class",
                 geometry_type: str = "Unknown") -> Path:
    pyogrio.raw.write(path, geometry=shapely.to_wkb(np.array(geoms, dtype=object)),
                      field_data=[np.array(values, dtype=object)], fields=[field], driver="GPKG" if path.suffix ==
                      ".gpkg" else "GeoJSON", geometry_type=geometry_type, crs=crs)
    return path


def truth(synth: Path) -> np.ndarray:
    with rasterio.open(labels_path(synth.parent / "o.tif")) as ds:
        return ds.read(1)


def test_rasterised_polygons_give_back_the_true_classes_and_the_split_leaves_a_buffer(synth):
    """The labels, polygonised and rasterised again on the working grid, are the true class raster pixel for pixel
    wherever they are not in a buffer; every block of the split is the same under the same seed; no labelled
    training pixel lies within the buffer of a scored validation pixel."""
    layout = DataSource.of(synth).find(SurveyOptions(min_buffer_px=96, seed=3))
    assert layout.kind == "survey" and layout.gsd == GSD and layout.plan.buffer_px == 96
    again = DataSource.of(synth).find(SurveyOptions(min_buffer_px=96, seed=3))
    assert layout.splits == again.splits and layout.splits["val"] and layout.splits["train"]
    true = truth(synth)
    labelled = {s: [] for s in ("train", "val")}
    for sample in layout.samples:
        block = sample.block
        image, mask = render_block(block)
        assert image.shape[:2] == mask.shape == block.shape
        c0, r0 = round(block.window[0]), round(block.window[1])  # working grid == raster grid at its own GSD
        here = true[r0:r0 + block.shape[0], c0:c0 + block.shape[1]]
        seen = mask != 255
        assert (mask[seen] == here[seen]).all(), sample.id
        buffered = np.zeros_like(seen)
        for a, b, c, d in block.ignore:
            buffered[a:c, b:d] = True
        assert (seen | buffered | (here == 255)).all(), "every true pixel outside a buffer is labelled"
        rows, cols = np.nonzero(seen)
        labelled[block.split].append(np.column_stack([rows + r0, cols + c0]))
    train, val = (np.concatenate(labelled[s]) for s in ("train", "val"))
    # Chebyshev distance from every val pixel to the nearest train pixel (a grid: check the val pixels' rows/columns)
    gap = min(np.abs(train[:, None, :] - v[None, None, :]).max(-1).min() for v in val[:: max(1, len(val) // 400)])
    assert gap >= 96


def test_the_smaller_polygon_wins_and_unlabelled_pixels_are_ignored_unless_background_names_a_class(synth, tmp_path):
    with rasterio.open(synth.parent / "o.tif") as ds:
        x0, y0 = ds.transform.c, ds.transform.f
    road = shapely.box(x0 + 20, y0 - 50, x0 + 70, y0 - 20)  # inside the flight's valid area
    car = shapely.box(x0 + 30, y0 - 40, x0 + 34, y0 - 38)  # on the road: drawn last whatever the file order
    survey = copy_survey(synth, tmp_path, labels="drawn.gpkg", extent=None, block=96.0)
    write_labels(survey.parent / "drawn.gpkg", [car, road], ["car", "paved-area"])
    layout = DataSource.of(survey).find(SurveyOptions(min_buffer_px=0, val_fraction=0.0))
    mask = np.full((720, 960), 255, np.uint8)
    for s in layout.samples:
        c0, r0 = round(s.block.window[0]), round(s.block.window[1])
        mask[r0:r0 + s.block.shape[0], c0:c0 + s.block.shape[1]] = render_block(s.block)[1]
    car_px, road_px = (mask == TABLE.index("car")).sum(), (mask == TABLE.index("paved-area")).sum()
    assert car_px == 40 * 20 and road_px == 500 * 300 - 40 * 20
    assert (mask == 255).sum() == 960 * 720 - 500 * 300  # unlabelled: ignored
    survey = copy_survey(synth, tmp_path / "b", labels="drawn.gpkg", background="grass", block=96.0)
    write_labels(survey.parent / "drawn.gpkg", [car, road], ["car", "paved-area"])
    layout = DataSource.of(survey).find(SurveyOptions(min_buffer_px=0, val_fraction=0.0))
    grass = sum((render_block(s.block)[1] == TABLE.index("grass")).sum() for s in layout.samples)
    inside = (truth(synth) != 255).sum()  # the extent is the valid area
    assert grass == pytest.approx(inside - 500 * 300, rel=0.01)


def test_labels_in_another_crs_are_reprojected_from_what_they_declare(synth, tmp_path):
    """GeoJSON in WGS84 (what QGIS exports by default): reprojected to the raster's UTM zone, not read as metres."""
    from rasterio.warp import transform_geom

    with rasterio.open(synth.parent / "o.tif") as ds:
        x0, y0 = ds.transform.c, ds.transform.f
    roof = shapely.box(x0 + 30, y0 - 50, x0 + 50, y0 - 20)
    wgs84 = shapely.geometry.shape(transform_geom("EPSG:32633", "EPSG:4326", shapely.geometry.mapping(roof)))
    survey = copy_survey(synth, tmp_path, labels="roof.geojson", extent=None, block=96.0)
    write_labels(survey.parent / "roof.geojson", [wgs84], ["roof"], crs="EPSG:4326")
    layout = DataSource.of(survey).find(SurveyOptions(min_buffer_px=0, val_fraction=0.0))
    roof_px = sum((render_block(s.block)[1] == TABLE.index("roof")).sum() for s in layout.samples)
    assert roof_px == pytest.approx(200 * 300, rel=0.01)
    assert any("reprojected" in n for n in layout.plan.notes)


@pytest.mark.parametrize("labels, change, message", [
    ("nocrs.gpkg", {}, "declares no CRS and"),
    ("unknown.gpkg", {}, "feature 1: class 'spaceship' is not in the classes of"),
    ("line.gpkg", {}, "feature 1 is a LineString; labels are polygons (or give line_width:"),
    ("roof.gpkg", {"split_field": "split", "extent": None}, "split_field: needs an extent: layer holding it"),
    ("roof.gpkg", {"class_field": "kind"}, "no field 'kind' (fields: class)"),
    ("roof.gpkg", {"rasters": ["missing/*.tif"]}, "rasters: 'missing/*.tif' names no file"),
])
def test_labels_that_cannot_be_used_are_one_line_naming_file_layer_and_feature(synth, tmp_path, labels, change,
                                                                                message, capsys):
    with rasterio.open(synth.parent / "o.tif") as ds:
        x0, y0 = ds.transform.c, ds.transform.f
    survey = copy_survey(synth, tmp_path, labels=labels, **change)
    box = shapely.box(x0 + 30, y0 - 50, x0 + 50, y0 - 20)
    geom = {"line.gpkg": shapely.LineString([(x0 + 1, y0 - 1), (x0 + 20, y0 - 20)])}.get(labels, box)
    value = {"unknown.gpkg": "spaceship"}.get(labels, "roof")
    write_labels(survey.parent / labels, [geom], [value], crs=None if labels == "nocrs.gpkg" else "EPSG:32633")
    assert exit_code("check-data", "--data", survey) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_lines_are_drawn_as_wide_as_line_width_and_broken_geometries_are_repaired_and_counted(synth, tmp_path,
                                                                                          capsys):
    with rasterio.open(synth.parent / "o.tif") as ds:
        x0, y0 = ds.transform.c, ds.transform.f
    bowtie = shapely.Polygon([(x0 + 20, y0 - 20), (x0 + 40, y0 - 40), (x0 + 40, y0 - 20), (x0 + 20, y0 - 40)])
    fence = shapely.LineString([(x0 + 50, y0 - 6), (x0 + 50, y0 - 66)])
    survey = copy_survey(synth, tmp_path, labels="mixed.gpkg", line_width=0.4, extent=None, block=96.0)
    write_labels(survey.parent / "mixed.gpkg", [bowtie, fence, shapely.Polygon()], ["grass", "fence", "roof"])
    s = load_survey(survey)
    assert s.labels.repaired == 1 and s.labels.skipped == ["feature 3: empty geometry"]
    layout = DataSource.of(survey).find(SurveyOptions(min_buffer_px=0, val_fraction=0.0))
    fence_px = sum((render_block(b.block)[1] == TABLE.index("fence")).sum() for b in layout.samples)
    assert fence_px == pytest.approx(600 * 4, rel=0.1)  # 60 m long, 0.4 m wide at 10 cm
    grass_px = sum((render_block(b.block)[1] == TABLE.index("grass")).sum() for b in layout.samples)
    assert grass_px == pytest.approx(2 * 100 * 100, rel=0.05)  # the bow tie's two triangles: 2 x 100 m² / 2
    exit_code("check-data", "--data", survey)
    out = capsys.readouterr().out
    assert "1 invalid geometries repaired" in out and "feature 3: empty geometry; skipped" in out


def test_check_data_summarises_a_survey(synth, capsys):
    assert exit_code("check-data", "--data", synth) in (0, 1)
    out = capsys.readouterr().out
    assert "survey " in out and "labelled area by split (m²): train" in out and "% of it labelled" in out


@pytest.mark.slow
def test_train_and_evaluate_on_a_survey(synth, tmp_path, capsys):
    """`train --data survey.yaml`: blocks cached at the survey's GSD, a GeoPackage of the split in the run, the GSD in
    model.json (predict needs no --model-gsd); `evaluate RUN --data survey.yaml` cuts and splits the blocks as the
    run did and gives the final evaluation's number."""
    args = ["train", "-c", "demo", "--data", synth, "--out", tmp_path / "runs", *TINY_TRAIN, "--max-epochs", "2",
            "--set", "inference.tile=96", "--set", "data.crop=96"]
    assert exit_code(*args) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    info = json.loads((run / "model.json").read_text())
    assert info["gsd"] == GSD and info["long_side"] is None and info["extra"]["survey_grid"]["buffer_px"] == 96
    layers = [str(r[0]) for r in pyogrio.list_layers(run / "splits" / "blocks.gpkg")]
    assert layers[:1] == ["blocks"] and (run / "splits" / "blocks.png").is_file()
    summary = json.loads((run / "train_summary.json").read_text())
    assert exit_code("evaluate", run, "--data", synth, "--out", tmp_path / "again") == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["miou"] == summary["val_miou_native"]
    val = (run / "splits" / "val.txt").read_text().split()
    assert again["context"]["images"] == len(val)
    rows = (tmp_path / "again" / "per_block.csv").read_text().splitlines()
    assert rows[0].startswith("block,split,raster,left") and sorted(r.split(",")[0] for r in rows[1:]) == sorted(val)
    assert all(r.split(",")[1] == "val" for r in rows[1:])
    page = (tmp_path / "again" / "report.html").read_text()
    assert "<h2>On the map</h2>" in page and "blocks_map.png" in page
    # another survey whose classes are not the model's: one line, exit 2
    other = copy_survey(synth, tmp_path / "other")
    (other.parent / "o_classes.csv").write_text("name,r,g,b\ngrass,0,102,0\nroof,70,70,70\n")
    with rasterio.open(synth.parent / "o.tif") as ds:
        everything = shapely.box(*ds.bounds)
    (other.parent / "o_labels.gpkg").unlink()
    write_labels(other.parent / "o_labels.gpkg", [everything], ["grass"])
    capsys.readouterr()
    assert exit_code("evaluate", run, "--data", other, "--out", tmp_path / "other-eval") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "its class table differs from the one the model was trained with" in err
    # predict reads a new orthomosaic at the GSD the model learnt, with no --model-gsd
    assert exit_code("predict", run, synth.parent / "o.tif", "--out", tmp_path / "seg", "--vector", "none") == 0
    areas = json.loads((tmp_path / "seg" / "o_class_areas.json").read_text())
    assert areas["model_gsd_m"] == GSD and areas["model_gsd_source"] == "model.json"


@pytest.mark.parametrize("kind", ["geographic", "non-square"])
def test_geographic_and_non_square_rasters_give_the_true_areas(tmp_path, kind):
    """A raster in degrees (EPSG:4326) and one with 10 x 5 cm pixels: the working grid is square in ground metres,
    and the labelled pixels x GSD² add up to each class's true area (within 3 %)."""
    if kind == "geographic":
        deg = 1e-6  # ~7.7 cm east-west, ~11 cm north-south at 46° N
        areas = write_synthetic_ortho(tmp_path / "o.tif", (900, 600), gsd=deg, crs="EPSG:4326", origin=(15.0, 46.0),
                                      seed=6)
        with rasterio.open(tmp_path / "o.tif") as ds:  # the true areas: each pixel's, measured by the equal-area path
            from droneseg.geo.raster import open_ortho

            with open_ortho(tmp_path / "o.tif") as o:
                px_m2 = o.area.window(rasterio.windows.Window(0, 0, ds.width, ds.height)).mean()
        areas = {k: v / deg / deg * px_m2 for k, v in areas.items()}
    else:
        areas = write_synthetic_ortho(tmp_path / "o.tif", (600, 900), gsd=0.1, seed=6)
        for path in (tmp_path / "o.tif", labels_path(tmp_path / "o.tif")):
            with rasterio.open(path, "r+") as ds:
                ds.transform = rasterio.Affine(0.1, 0, ds.transform.c, 0, -0.05, ds.transform.f)
        areas = {k: v / 2 for k, v in areas.items()}
    survey = write_synthetic_survey(tmp_path / "o.tif", block_px=200)["survey"]
    layout = DataSource.of(survey).find(SurveyOptions(min_buffer_px=0, val_fraction=0.0))
    counts = np.zeros(256, np.int64)
    for s in layout.samples:
        counts += np.bincount(render_block(s.block)[1].ravel(), minlength=256)
    measured = {TABLE.names[i]: counts[i] * layout.gsd**2 for i in range(len(TABLE)) if counts[i]}
    big = {k: v for k, v in areas.items() if v > 0.02 * sum(areas.values())}
    for name, area in big.items():
        assert measured[name] == pytest.approx(area, rel=0.03), name
    if kind == "geographic":
        assert any("equal-area" in n for n in layout.plan.notes)
    else:
        assert any("non-square pixels" in n for n in layout.plan.notes) and layout.gsd == 0.1


def test_overlapping_rasters_are_said_to_split_independently(synth, tmp_path, capsys):
    survey = copy_survey(synth, tmp_path, rasters=["o.tif", "again.tif"])
    shutil.copy(survey.parent / "o.tif", survey.parent / "again.tif")
    exit_code("check-data", "--data", survey)
    out = capsys.readouterr().out
    assert "again.tif overlap: their blocks are drawn to splits independently" in out and "gdalbuildvrt" in out


def _block(row: int, col: int, n: int, split: str, raster: str = "r.tif"):
    from droneseg.geo.survey import Block

    return Block(raster, (col * n, row * n, n, n), (n, n), (1, 0, col * n, 0, -1, -row * n), split, (), (), None,
                 None, "area", "")


@pytest.mark.parametrize("layout", [
    {(0, 0): "train", (1, 1): "val"},                     # corner only: two half-buffers would leave half a gap
    {(0, 0): "train", (0, 1): "val"},                     # side by side
    {(0, 0): "train", (0, 1): "test", (1, 1): "val"},     # corner and sides, three splits
    {(0, 0): "val", (0, 1): "train", (1, 0): "train", (1, 1): "train", (0, 2): "test"},
])
def test_no_labelled_pixel_of_one_split_lies_within_the_buffer_of_another(layout):
    from droneseg.geo.survey import _with_buffers

    n, buffer = 24, 8
    cells = [(f"b{r}{c}", _block(r, c, n, split)) for (r, c), split in layout.items()]
    blocks = _with_buffers(cells, buffer)
    kept: dict[str, list] = {}
    for name, (r, c) in zip(blocks, layout):
        used = np.ones((n, n), bool)
        for a, b, cc, d in blocks[name].ignore:
            used[a:cc, b:d] = False
        rows, cols = np.nonzero(used)
        kept.setdefault(blocks[name].split, []).append(np.column_stack([rows + r * n, cols + c * n]))
    sets = {k: np.concatenate(v) for k, v in kept.items()}
    for a in sets:
        for b in sets:
            if a < b and len(sets[a]) and len(sets[b]):
                gap = np.abs(sets[a][:, None, :] - sets[b][None, :, :]).max(-1).min()
                assert gap > buffer, (a, b, gap)
    assert len(sets["val"]) == n * n, "validation keeps its whole block"


def test_rasters_with_the_same_name_in_two_folders_keep_every_block(synth, tmp_path):
    survey = copy_survey(synth, tmp_path, rasters=["flight*/o.tif"], block=24.0)
    for f in ("flight1", "flight2"):
        (survey.parent / f).mkdir()
        shutil.copy(survey.parent / "o.tif", survey.parent / f / "o.tif")
    layout = DataSource.of(survey).find(SurveyOptions(min_buffer_px=0))
    ids = [s.id for s in layout.samples]
    assert len(ids) == len(set(ids)) == 2 * 12 and ids[0].startswith("flight1_o-") and ids[-1].startswith("flight2_o-")


def test_background_without_an_extent_is_every_valid_pixel_and_a_dissolved_layer_ranks_its_parts(synth, tmp_path):
    with rasterio.open(synth.parent / "o.tif") as ds:
        x0, y0 = ds.transform.c, ds.transform.f
    road = shapely.box(x0 + 20, y0 - 50, x0 + 70, y0 - 20)
    cars = shapely.MultiPolygon([shapely.box(x0 + 30, y0 - 40, x0 + 34, y0 - 38),
                                 shapely.box(x0 + 75, y0 - 40, x0 + 79, y0 - 38)])  # one feature, parts apart
    survey = copy_survey(synth, tmp_path, labels="dissolved.gpkg", extent=None, background="grass", block=96.0)
    write_labels(survey.parent / "dissolved.gpkg", [road, cars], ["paved-area", "car"])
    layout = DataSource.of(survey).find(SurveyOptions(min_buffer_px=0, val_fraction=0.0))
    counts = sum(np.bincount(render_block(s.block)[1].ravel(), minlength=256) for s in layout.samples)
    valid = (truth(synth) != 255).sum()
    assert counts[TABLE.index("car")] == 2 * 40 * 20  # each part outranks what it lies on, not their sum
    assert counts[TABLE.index("paved-area")] == 500 * 300 - 40 * 20  # the car on the road wins
    assert counts[TABLE.index("grass")] + counts[TABLE.index("car")] + counts[TABLE.index("paved-area")] == valid


def test_line_width_is_refused_for_a_layer_in_degrees(synth, tmp_path, capsys):
    survey = copy_survey(synth, tmp_path, labels="fence.geojson", line_width=0.5)
    write_labels(survey.parent / "fence.geojson", [shapely.LineString([(15.0, 46.0), (15.0001, 46.0)])], ["fence"],
                 crs="EPSG:4326")
    assert exit_code("check-data", "--data", survey) == 2
    assert "line_width is in metres and this layer is not in a metric CRS" in capsys.readouterr().err


SURVEY_FLOOR = 0.35
"""Val mIoU (six classes) the demo recipe must beat on conftest's synthetic survey (survey_run) in 6 epochs; it scored 0.466
(chance 0.201) on a 2-core CPU in 71 s."""


@pytest.mark.slow
def test_the_demo_recipe_learns_a_synthetic_survey(survey_run):
    """§5 of step 12: offline, `synth-ortho` then `train -c demo --data <stem>_survey.yaml` learns the map: its val
    blocks score well above chance (the best labelling that ignores the photos). The run: conftest's survey_run."""
    summary = json.loads((survey_run / "train_summary.json").read_text())
    assert summary["epochs"] == 6
    assert summary["val_miou_native"] >= SURVEY_FLOOR and summary["val_miou_native"] >= 2 * summary["chance_miou"]


def test_check_data_says_how_much_a_rasters_nodata_value_masks(synth, tmp_path, capsys):
    """An RGB copy of the scene declaring nodata 0 (the collar black, no alpha): the share it masks is a line."""
    survey = copy_survey(synth, tmp_path, rasters=["rgb.tif"])
    with rasterio.open(survey.parent / "o.tif") as src:
        profile = src.profile | {"count": 3, "nodata": 0}
        profile.pop("photometric", None)
        with rasterio.open(survey.parent / "rgb.tif", "w", **profile) as dst:
            dst.write(src.read([1, 2, 3]))
    exit_code("check-data", "--data", survey)
    out = capsys.readouterr().out
    assert "warning: " in out and "rgb.tif: its declared nodata value 0 marks about" in out

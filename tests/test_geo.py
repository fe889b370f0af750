"""Orthomosaics: georeferenced rasters in, a class COG, polygons and areas out (the geo extra).

The scenes are synthetic GeoTIFFs the tests write (UTM 33N, 5 cm/px, an alpha collar, and a copy of the same
ground at 2 cm/px). Where the test is about geometry rather than a network, the "model" is a colour oracle: each
class is painted in its palette colour and the oracle picks the nearest class colour, so every error left is the
pipeline's (resampling, blocks, masks, areas), not a model's.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

rasterio = pytest.importorskip("rasterio", reason="the geo extra is not installed (make test installs it)")
pyogrio = pytest.importorskip("pyogrio")
shapely = pytest.importorskip("shapely")

from helpers import exit_code, gdal_attribute_table, save_tiny_model, tiny_net  # noqa: E402
from rasterio.windows import Window  # noqa: E402

from droneseg.classes import ClassTable  # noqa: E402
from droneseg.errors import DataError, UserError  # noqa: E402
from droneseg.geo import is_ortho, require  # noqa: E402
from droneseg.geo.options import OrthoOptions  # noqa: E402
from droneseg.geo.ortho import NODATA, plan_strips, segment_ortho, working_grid  # noqa: E402
from droneseg.geo.raster import open_ortho  # noqa: E402
from droneseg.geo.scene import labels_path, write_synthetic_ortho  # noqa: E402
from droneseg.schemes import get_scheme  # noqa: E402
from droneseg.tiler import Tiler  # noqa: E402

TABLE = ClassTable.builtin()
SCHEME = get_scheme("full")
WRITTEN = SCHEME.written("auto")  # full: the dataset's own indices
SIZE5 = (640, 480)  # 32 x 24 m at 5 cm
SIZE2 = (1600, 1200)  # the same ground at 2 cm


def oracle(x: torch.Tensor) -> torch.Tensor:
    """Logits of the nearest class colour: (B, 3, h, w) in [0, 1] -> (B, K, h, w)."""
    colours = torch.from_numpy(TABLE.colors[SCHEME.write_as].astype(np.float32) / 255.0)  # (K, 3)
    return -((x[:, None] - colours[None, :, :, None, None]) ** 2).sum(2) * 100.0


def oracle_tiler(tile: int = 128) -> Tiler:
    return Tiler(oracle, SCHEME.num_classes, tile=tile, overlap=0.25, batch=4)


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> dict[str, tuple[Path, dict[str, float]]]:
    """Flat-coloured scenes at 5 cm and 2 cm (same ground) with their known class areas."""
    root = tmp_path_factory.mktemp("flat")
    return {"5cm": (root / "o5.tif", write_synthetic_ortho(root / "o5.tif", SIZE5, gsd=0.05, seed=3, flat=True)),
            "2cm": (root / "o2.tif", write_synthetic_ortho(root / "o2.tif", SIZE2, gsd=0.02, render_gsd=0.05, seed=3,
                                                           flat=True))}


@pytest.fixture(scope="module")
def textured(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("textured")
    write_synthetic_ortho(root / "t5.tif", SIZE5, gsd=0.05, seed=4)
    write_synthetic_ortho(root / "t2.tif", SIZE2, gsd=0.02, render_gsd=0.05, seed=4)
    return {"5cm": root / "t5.tif", "2cm": root / "t2.tif"}



def read(path: Path, band: int = 1) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(band)


def test_class_cog_keeps_crs_and_transform_collar_is_nodata_and_it_validates(flat, tmp_path):
    from rio_cogeo.cogeo import cog_validate

    src, _ = flat["5cm"]
    res = segment_ortho(src, tmp_path, oracle_tiler(), WRITTEN, 0.05,
                        OrthoOptions(strip=256, confidence=True, uncertainty=True), progress=False)
    with rasterio.open(src) as a, rasterio.open(res.files["classes"]) as b:
        assert b.crs == a.crs and b.crs.to_wkt() == a.crs.to_wkt()
        assert b.transform == a.transform and (b.width, b.height) == (a.width, a.height)
        assert b.nodata == NODATA and b.dtypes == ("uint8",)
        alpha, classes = a.read(4), b.read(1)
        assert b.overviews(1), "overviews are built"
        overview = b.read(1, out_shape=(b.height // 2, b.width // 2))  # served from the overview
        cmap = b.colormap(1)
    assert ((classes == NODATA) == (alpha == 0)).all(), "nodata exactly on the collar"
    assert set(np.unique(overview)) <= set(np.unique(classes)), "overviews pick classes, never average ids"
    paved = SCHEME.names.index("paved-area")
    assert cmap[int(WRITTEN.values[paved])][:3] == tuple(TABLE.colors[TABLE.names.index("paved-area")])
    truth = read(labels_path(src))
    assert (classes == truth).mean() > 0.999  # flat colours at the model's scale: the oracle is exact
    valid, errors, warnings = cog_validate(str(res.files["classes"]))
    assert valid and not errors, errors
    # the QGIS style beside it: the paletted renderer, one entry per class with its name and the COG's colour
    import xml.etree.ElementTree as ET

    renderer = ET.parse(res.files["style"]).getroot().find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = {int(e.get("value")): (e.get("color"), e.get("label")) for e in renderer.iter("paletteEntry")}
    assert sorted(entries) == sorted(int(v) for v in WRITTEN.values) and NODATA not in entries
    value = int(WRITTEN.values[paved])
    assert entries[value] == ("#{:02x}{:02x}{:02x}".format(*cmap[value][:3]), "paved-area")
    # its raster attribute table, as GDAL reads it: value, class name and colour of every class
    rat = {int(row["Value"]): row for row in gdal_attribute_table(res.files["classes"])}
    assert sorted(rat) == sorted(int(v) for v in WRITTEN.values)
    assert rat[value]["Class"] == "paved-area" and tuple(int(rat[value][c]) for c in ("Red", "Green", "Blue")) == \
        tuple(cmap[value][:3])
    conf = read(res.files["confidence"])
    assert (conf[alpha == 0] == 0).all() and conf[alpha > 0].min() > 200
    # uncertainty: nodata 255 on the collar, 0..254 inside; label_next.csv's cells count exactly its pixels
    unc = read(res.files["uncertainty"])
    assert (unc[alpha == 0] == 255).all() and unc[alpha > 0].max() <= 254
    with res.files["label_next"].open() as fh:
        cells = list(csv.DictReader(fh))
    assert sum(int(c["valid_px"]) for c in cells) == int((alpha > 0).sum())
    assert sum(int(c["uncertain_px"]) for c in cells) == int(((unc >= 128) & (alpha > 0)).sum())
    assert [int(c["uncertain_px"]) for c in cells] == sorted((int(c["uncertain_px"]) for c in cells), reverse=True)
    with rasterio.open(src) as a:
        left, top = a.transform * (0, 0)
    first = next(c for c in cells if c["cell"] == "r0c0")
    assert float(first["left"]) == pytest.approx(left) and float(first["top"]) == pytest.approx(top)


@pytest.mark.parametrize("copy", ["5cm", "2cm"])
def test_class_areas_match_the_known_areas_of_the_scene_within_2_percent(flat, tmp_path, copy):
    src, known = flat[copy]
    res = segment_ortho(src, tmp_path, oracle_tiler(), WRITTEN, 0.05, OrthoOptions(strip=384, vector=None), progress=False)
    table = json.loads(res.files["areas_json"].read_text())
    assert res.scale == pytest.approx((0.05 / 0.05 if copy == "5cm" else 0.4,) * 2)
    got = {row["class"]: row["area_m2"] for row in table["classes"]}
    total = sum(known.values())
    assert table["valid_area_m2"] == pytest.approx(total, rel=1e-3)
    # At 5 cm the oracle sees the scene as drawn: every class exact. The 2 cm copy is read at the model's 5 cm
    # (GDAL average over 2.5 px), so pixels on class edges mix two colours and the oracle may pick a third class
    # for them: thin classes (walls, 4 m²) move by up to 16% there, the classes of >= 5% of the scene by < 1%.
    for name, area in known.items():
        if copy == "5cm" or area > 0.05 * total:
            assert got[name] == pytest.approx(area, rel=0.02 if copy == "2cm" else 1e-6), name
    assert sum(abs(got.get(n, 0) - a) for n, a in {**got, **known}.items() if n in known) < 0.02 * total
    assert sum(a for n, a in got.items() if n not in known) < 0.002 * total
    shares = [row["share"] for row in table["classes"]]
    assert sum(shares) == pytest.approx(1.0, abs=1e-4)
    assert "projected CRS" in table["area_method"] and table["model_gsd_m"] == 0.05


@pytest.mark.slow
@pytest.mark.parametrize("copy", ["5cm", "2cm"])
def test_a_scene_predicted_in_strips_equals_the_one_pass_result(textured, tmp_path, copy):
    """A real (random) U-Net on a textured scene: strips with context vs one pass of the tiler over the whole
    scene. Bit for bit when the one pass also skips the tiles with no data; >= 99% against a one pass that
    infers them too (pixels beside the collar)."""
    src = textured[copy]
    # batch 1: a strip's tile rows batch other tiles together than the whole scene's, and a CPU library may pick
    # another convolution algorithm for another batch size (last-bit differences); one tile at a time, never
    tiler = Tiler(tiny_net(SCHEME.num_classes), SCHEME.num_classes, tile=96, overlap=0.25, batch=1)
    res = segment_ortho(src, tmp_path, tiler, WRITTEN, 0.05, OrthoOptions(strip=160, vector=None), progress=False)
    assert res.strips >= 4 and res.tiles_skipped > 0
    with open_ortho(src) as o:
        grid = working_grid(o.width, o.height, res.scale)
        image, share = o.read_working(Window(0, 0, o.width, o.height), grid.size)
        valid = o.valid(Window(0, 0, o.width, o.height))
        plain = WRITTEN.apply(tiler.labels(image, (o.height, o.width)))
        empty = lambda y, x, th, tw: not share[y : y + th, x : x + tw].any()  # noqa: E731
        skipping = np.concatenate([rows for _, rows, _ in tiler.iter_labels(image, (o.height, o.width), skip=empty)])
    strips = read(res.files["classes"])
    assert (strips[valid] == WRITTEN.apply(skipping)[valid]).all()
    agree = (strips[valid] == plain[valid]).mean()
    assert agree >= 0.99, agree
    assert len(np.unique(plain[valid])) > 3, "the network's labels vary over the scene"


@pytest.mark.parametrize("scale", [1.0, 0.4, 5 / 3])
def test_strips_are_made_of_the_scenes_own_tiles_and_hold_every_tile_over_their_core(scale):
    """For many scene widths and strip widths: strips tile the raster's columns once, each strip's tiles are the
    scene's tiles, and every scene tile over the working columns a core reads is in its strip (what makes strips
    equal one pass bit for bit)."""
    from droneseg.tiler import tile_origins

    tile, stride = 96, 72
    for width in range(40, 1500, 23):
        grid = working_grid(width, 50, (scale, scale))
        w = grid.size[1]
        scene = set(tile_origins(w, min(tile, w), stride))
        for strip in (50, 64, 100, 157, 300):
            strips = plan_strips(grid, strip, tile, stride)
            assert strips[0].x0 == 0 and strips[-1].x1 == width
            assert all(a.x1 == b.x0 for a, b in zip(strips, strips[1:]))
            for s in strips:
                n = s.i1 - s.i0
                own = {s.i0 + o for o in tile_origins(n, min(tile, n), stride)}
                assert own <= scene, (width, strip, s, sorted(own - scene))
                first = max(0, math.floor((s.x0 + 0.5) * grid.scale[0] - 0.5))
                last = min(w - 1, math.floor((s.x1 - 0.5) * grid.scale[0] - 0.5) + 1)
                needed = {o for o in scene if o <= last and o + min(tile, w) > first}
                assert needed <= own, (width, strip, s, sorted(needed - own))


def test_polygons_cover_the_valid_area_without_gaps_or_overlaps_and_carry_class_names(flat, tmp_path):
    src, _ = flat["5cm"]
    res = segment_ortho(src, tmp_path, oracle_tiler(), WRITTEN, 0.05, OrthoOptions(strip=256), progress=False)
    meta, _, geometry, fields = pyogrio.raw.read(res.files["polygons"])
    assert meta["fields"].tolist() == ["class_id", "class", "area_m2"]
    geoms = shapely.from_wkb(geometry)
    ids, names, areas = fields
    assert set(names) <= set(SCHEME.names) and len(geoms) == res.polygons > 10
    assert all(WRITTEN.names[i] == n for i, n in zip(ids, names))
    assert np.allclose(shapely.area(geoms), areas, atol=1e-4)
    table = json.loads(res.files["areas_json"].read_text())
    union = shapely.area(shapely.union_all(geoms))
    assert union == pytest.approx(shapely.area(geoms).sum(), rel=1e-9), "no overlaps"
    assert union == pytest.approx(table["valid_area_m2"], rel=1e-9), "no gaps"
    for row in table["classes"]:
        assert areas[names == row["class"]].sum() == pytest.approx(row["area_m2"], abs=1e-3)
    with rasterio.open(src) as ds:
        assert rasterio.crs.CRS.from_wkt(meta["crs"] if "PROJCS" in meta["crs"] else ds.crs.to_wkt()) == ds.crs


def test_geojson_min_area_and_coverage_simplification(flat, tmp_path):
    src, _ = flat["5cm"]
    plain = segment_ortho(src, tmp_path / "plain", oracle_tiler(), WRITTEN, 0.05,
                          OrthoOptions(strip=256, vector="geojson"), progress=False)
    sieved = segment_ortho(src, tmp_path / "sieved", oracle_tiler(), WRITTEN, 0.05,
                           OrthoOptions(strip=256, vector="geojson", min_area=1.0, simplify=0.05), progress=False)
    g_plain = shapely.from_wkb(pyogrio.raw.read(plain.files["polygons"])[2])
    g = shapely.from_wkb(pyogrio.raw.read(sieved.files["polygons"])[2])
    assert 0 < len(g) < len(g_plain)
    union = shapely.area(shapely.union_all(g))
    assert union == pytest.approx(shapely.area(g).sum(), rel=1e-9), "simplified as one coverage: no overlaps"
    assert shapely.coverage_is_valid(g), "shared edges stay shared, vertex for vertex"
    collar = shapely.union_all(g_plain).exterior  # regions touching the collar may have nowhere to merge
    inner = ~shapely.intersects(g, shapely.buffer(collar, 0.2))
    assert shapely.area(g[inner]).min() >= 1.0 - 0.05
    a_plain = json.loads(plain.files["areas_json"].read_text())
    a_sieved = json.loads(sieved.files["areas_json"].read_text())
    assert a_sieved["valid_area_m2"] == a_plain["valid_area_m2"], "the sieve moves pixels between classes only"
    assert shapely.area(g).sum() == pytest.approx(a_plain["valid_area_m2"], rel=0.005)


@pytest.mark.slow
def test_geographic_crs_areas_are_measured_on_an_equal_area_projection(tmp_path):
    pyproj = pytest.importorskip("pyproj")
    deg = 5e-7  # about 5.6 cm north-south, 3.8 cm east-west at 47° N
    src = tmp_path / "geo.tif"
    write_synthetic_ortho(src, (320, 240), gsd=deg, render_gsd=deg, crs="EPSG:4326", origin=(15.0, 47.0), seed=2,
                          flat=True)
    with open_ortho(src) as o:
        assert o.gsd[0] == pytest.approx(deg * 111_320 * math.cos(math.radians(47)), rel=0.01)
        assert o.gsd[1] == pytest.approx(deg * 111_180, rel=0.01)
    res = segment_ortho(src, tmp_path / "out", oracle_tiler(), WRITTEN, 0.05, OrthoOptions(strip=128), progress=False)
    table = json.loads(res.files["areas_json"].read_text())
    assert "equal-area" in table["area_method"] and "+proj=laea" in table["area_method"]
    geod = pyproj.Geod(ellps="WGS84")
    geoms = shapely.from_wkb(pyogrio.raw.read(res.files["polygons"])[2])
    true_area = sum(abs(geod.geometry_area_perimeter(g)[0]) for g in geoms)
    assert table["valid_area_m2"] == pytest.approx(true_area, rel=1e-3)
    areas = pyogrio.raw.read(res.files["polygons"])[3][2]
    assert areas.sum() == pytest.approx(true_area, rel=1e-3)


def _variant(src: Path, dst: Path, kind: str) -> None:
    """Rewrite an RGBA GeoTIFF as RGB with a nodata value, RGB with an internal mask, 12-bit in 16-bit samples, or
    RGBA with white under alpha 0 (what lies there must never tint a colour)."""
    with rasterio.open(src) as ds:
        rgba, profile = ds.read(), ds.profile
    rgb, alpha = rgba[:3], rgba[3]
    if kind == "white-collar":
        rgb[:, alpha == 0] = 255
        with rasterio.open(dst, "w", **profile) as out:
            out.write(rgba)
        return
    profile.update(count=3, photometric="RGB")
    if kind == "nodata":
        rgb = np.where(alpha > 0, np.maximum(rgb, 1), 0)  # 0 only in the collar
        profile.update(nodata=0)
    if kind in ("12bit", "12bit-untagged"):  # declared as NBITS=12 as 12-bit camera orthos are, or not at all
        rgb = ((rgb.astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16)
        profile.update(dtype="uint16", **({"nbits": 12} if kind == "12bit" else {}))
    if kind == "8in16":  # 8-bit values stored as UInt16
        rgb = rgb.astype(np.uint16)
        profile.update(dtype="uint16")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(dst, "w", **profile) as out:
        out.write(rgb)
        if kind != "nodata":
            out.write_mask(alpha)


@pytest.mark.parametrize("kind", ["nodata", "mask", "12bit", "12bit-untagged", "8in16"])
def test_nodata_values_internal_masks_and_12_bit_orthos_give_the_rgba_result(flat, tmp_path, kind):
    """Also 16-bit files that do not use 16 bits and do not say so: the scale comes from their values, with a
    warning naming the file and its largest value, never a black picture."""
    src, _ = flat["5cm"]
    ref = segment_ortho(src, tmp_path / "ref", oracle_tiler(), WRITTEN, 0.05, OrthoOptions(vector=None), progress=False)
    other = tmp_path / f"{kind}.tif"
    _variant(src, other, kind)
    expected_bits = {"12bit": 12, "12bit-untagged": 12, "8in16": 8}.get(kind, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_ortho(other) as o:
            assert o.bits == expected_bits, o.bits_from
        res = segment_ortho(other, tmp_path / kind, oracle_tiler(), WRITTEN, 0.05, OrthoOptions(vector=None),
                            progress=False)
    said = [str(w.message) for w in caught if "NBITS" in str(w.message)]
    assert bool(said) == (kind in ("12bit-untagged", "8in16"))
    assert all(str(other) in m and f"read as {expected_bits}-bit" in m for m in said)
    assert json.loads(res.files["areas_json"].read_text())["bits"] == expected_bits
    a, b = read(ref.files["classes"]), read(res.files["classes"])
    assert ((a == NODATA) == (b == NODATA)).all()
    assert (a == b).mean() > 0.999


@pytest.mark.parametrize("kind", ["rgba", "white-collar", "nodata", "mask", "12bit", "overviews"])
def test_the_preview_picture_is_the_working_read_at_a_fraction_of_its_cost(textured, tmp_path, kind):
    """Ortho.read_picture (Pillow's box filter over full-resolution rows, a chunk at a time) gives the picture
    read_working (GDAL's average) gives, whatever the chunk: colours averaged over valid pixels only, fully
    invalid pixels black, the valid share; a scene with overviews is read from them, as read_working reads it."""
    src = textured["2cm"]
    if kind == "overviews":
        shutil.copy(src, tmp_path / "o.tif")
        with rasterio.open(tmp_path / "o.tif", "r+") as ds:
            ds.build_overviews([2, 4], rasterio.enums.Resampling.average)
        src = tmp_path / "o.tif"
    elif kind != "rgba":
        _variant(src, tmp_path / f"{kind}.tif", kind)
        src = tmp_path / f"{kind}.tif"
    shape = (300, 400)  # a quarter of 1200 x 1600: four source pixels a preview pixel
    with open_ortho(src) as o:
        gdal, gdal_share = o.read_working(Window(0, 0, o.width, o.height), shape)
        pictures = [o.read_picture(shape, source_rows=rows) for rows in (5, 64, 10_000)]
    for image, share in pictures:
        assert image.shape == (*shape, 3) and image.dtype == np.uint8 and share.dtype == np.float32
        if kind == "overviews":
            assert (image == gdal).all() and (share == gdal_share).all()
            continue
        # at an integer factor every source pixel counts whole in both: the same share, to the last 8-bit level
        # (GDAL masks a file's nodata value after resampling, not before: its share there is 0 or 1)
        if kind != "nodata":
            assert np.abs(share - gdal_share).max() <= 1 / 255 + 1e-6
        assert (image[share == 0] == 0).all()
        diff = np.abs(image.astype(int) - gdal.astype(int))
        assert diff[(gdal_share == 1) & (share == 1)].max() <= 1  # rounding: Pillow's fixed point, GDAL's float
        edge = (share > 0) & (share < 1)  # a colour over a valid share s: two 8-bit roundings, each over s
        assert (diff[edge] <= 2 + 1 / share[edge, None]).all()
    assert (pictures[0][0] == pictures[2][0]).all(), "chunks at whole source rows change nothing"
    assert 0 < (gdal_share > 0).mean() < 1 and len(np.unique(gdal.reshape(-1, 3), axis=0)) > 50, "a varied picture"


def test_tiles_outside_the_valid_area_are_not_inferred(flat, tmp_path):
    src, _ = flat["5cm"]
    calls = []

    def counting(x):
        calls.append(x.shape[0])
        return oracle(x)

    res = segment_ortho(src, tmp_path, Tiler(counting, SCHEME.num_classes, tile=32, overlap=0.25), WRITTEN, 0.05,
                        OrthoOptions(strip=48, vector=None), progress=False)
    assert res.tiles_skipped > 0 and res.strips == len(plan_strips(working_grid(*SIZE5, (1.0, 1.0)), 48, 32, 24))
    assert sum(calls) == res.tiles
    classes = read(res.files["classes"])
    assert (classes[:20, :20] == NODATA).all()  # a corner of the collar: never written, reads back as nodata


@pytest.mark.slow
def test_predict_cli_on_an_orthomosaic_writes_every_output(textured, tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model", long_side=None)
    out = tmp_path / "pred"
    code = exit_code("predict", model, textured["5cm"], "--out", out, "--vector", "geojson", "--confidence",
                   "--strip", "256")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "GSD is unknown" in captured.err, "a model without a GSD is said to be read at the ortho's own scale"
    for suffix in ("_classes.tif", "_confidence.tif", "_polygons.geojson", "_class_areas.csv", "_class_areas.json",
                   "_preview.jpg"):
        assert (out / f"t5{suffix}").is_file(), suffix
    assert "1 orthomosaic segmented" in captured.out and "photo" not in captured.out
    assert not list(out.glob(".*.tif")), "no temporary files left"


def test_model_gsd_scales_the_working_resolution(textured, tmp_path):
    model = save_tiny_model(tmp_path / "model", long_side=None, gsd=0.1)
    code = exit_code("predict", model, textured["2cm"], "--out", tmp_path / "p", "--vector", "none")
    assert code == 0
    meta = json.loads((tmp_path / "p" / "t2_class_areas.json").read_text())
    assert meta["working_scale"] == pytest.approx([0.2, 0.2]) and meta["model_gsd_source"] == "model.json"


def test_bad_orthomosaics_are_named_and_skipped(flat, tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model", long_side=None)
    bad_vrt = tmp_path / "broken.vrt"
    bad_vrt.write_text("<VRTDataset nonsense")
    floats = tmp_path / "floats.tif"
    with rasterio.open(flat["5cm"][0]) as ds:
        profile = {**ds.profile, "dtype": "float32", "count": 3}
        data = ds.read([1, 2, 3]).astype(np.float32)
    with rasterio.open(floats, "w", **profile) as dst:
        dst.write(data)
    code = exit_code("predict", model, bad_vrt, floats, flat["5cm"][0], "--out", tmp_path / "p", "--model-gsd", "0.05",
                   "--vector", "none")
    err = capsys.readouterr().err
    assert code == 1
    assert f"{bad_vrt}: cannot read as a raster" in err
    assert f"{floats}: float32 samples; orthomosaics must be 8- or 16-bit unsigned" in err
    assert (tmp_path / "p" / "o5_classes.tif").is_file(), "the good one is still done"


def test_photos_are_not_orthomosaics_and_a_missing_extra_is_named(flat, tmp_path, monkeypatch):
    from PIL import Image

    plain = tmp_path / "plain.tif"
    Image.new("RGB", (8, 8)).save(plain)
    assert is_ortho(flat["5cm"][0]) and not is_ortho(plain) and is_ortho(tmp_path / "x.vrt")
    real_import = __builtins__["__import__"] if isinstance(__builtins__, dict) else __builtins__.__import__

    def no_rasterio(name, *args, **kwargs):
        if name == "rasterio":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", no_rasterio)
    with pytest.raises(UserError, match=r"pip install 'droneseg\[geo\]'"):
        require()


def test_working_gsd_of_a_model_is_the_photos_gsd_over_the_working_scale(tmp_path):
    from PIL import Image

    from droneseg.engine.train import working_gsd

    for i, size in enumerate([(600, 400), (600, 400), (300, 200)]):
        Image.new("RGB", size).save(tmp_path / f"{i}.png")
    assert working_gsd(0.01, [tmp_path / "0.png", tmp_path / "1.png"], 150) == pytest.approx(0.04)
    assert working_gsd(None, [tmp_path / "2.png"], 150) is None
    with pytest.raises(DataError, match="meet the network at different scales"):
        working_gsd(0.01, [tmp_path / "0.png", tmp_path / "2.png"], 150)
    # the ragged edge chips of a tiled orthomosaic, none resized: one working GSD
    assert working_gsd(0.01, [tmp_path / "0.png", tmp_path / "2.png"], None) == pytest.approx(0.01)
    assert working_gsd(0.01, [tmp_path / "0.png", tmp_path / "2.png"], 600) == pytest.approx(0.01)


def test_georeferenced_chips_give_their_gsd_from_their_geotransforms(tmp_path):
    from droneseg.engine.train import working_gsd

    chips = []
    for i, (w, h) in enumerate([(256, 256), (256, 100), (90, 256)]):
        chips.append(tmp_path / f"chip{i}.tif")
        write_synthetic_ortho(chips[-1], (max(w, 16), max(h, 16)), gsd=0.03, seed=i, collar=False)
    assert working_gsd(None, chips, None) == pytest.approx(0.03)
    assert working_gsd(None, chips, 512) == pytest.approx(0.03)  # never up-scaled
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    assert working_gsd(None, [*chips, tmp_path / "photo.png"], None) is None  # not every photo is a chip: unknown


def test_min_area_merges_small_regions_across_windows_and_never_eats_large_ones(tmp_path, monkeypatch):
    """Sieve windows of 512 px (monkeypatched from 4096): a 2100 px line and a 1200 px band that cross window edges
    stay whole; a 20 px patch across an edge and a 1 px speck are merged."""
    from affine import Affine

    import droneseg.geo.ortho as ortho_module

    monkeypatch.setattr(ortho_module, "PASS_WINDOW", 512)
    values = np.full((300, 1500), 1, np.uint8)
    values[100, 0:1400] = 2
    values[200:202, 300:1500] = 3
    values[50:52, 505:515] = 4
    values[10, 10] = 5
    values[:, :3] = NODATA

    class Writer:
        pass

    profile = dict(driver="GTiff", width=1500, height=300, count=1, dtype="uint8", nodata=NODATA, crs="EPSG:32633",
                   transform=Affine.translation(500_000, 5_200_000) @ Affine.scale(0.05, -0.05))
    with rasterio.open(tmp_path / "c.tif", "w+", **profile) as ds:
        ds.write(values[None])
        writer = Writer()
        writer.ds = ds
        ortho_module._sieve(writer, 1000)
        after = ds.read(1)
    assert (after == 2).sum() == (values == 2).sum() and (after == 3).sum() == 2400
    assert not (after == 4).any() and not (after == 5).any()
    assert (after[:, :3] == NODATA).all()


@pytest.mark.slow
def test_a_folder_predicted_into_itself_twice_does_not_segment_its_own_outputs(flat, tmp_path, capsys):
    import shutil

    model = save_tiny_model(tmp_path / "model", long_side=None)
    folder = tmp_path / "flight"
    folder.mkdir()
    shutil.copy(flat["5cm"][0], folder / "o5.tif")
    for _ in range(2):
        assert exit_code("predict", model, folder, "--out", folder, "--model-gsd", "0.05", "--confidence") == 0
        assert "1 orthomosaic segmented" in capsys.readouterr().out
    assert not list(folder.glob("*_classes_classes.tif")) and not list(folder.glob("*_confidence_classes.tif"))
    # a class map given on purpose is refused as one, by name
    assert exit_code("predict", model, labels_path(flat["5cm"][0]), "--out", tmp_path / "p", "--model-gsd",
                   "0.05") == 1
    assert "one band with a colour table: a class map, not imagery" in capsys.readouterr().err


@pytest.mark.slow
def test_grouping_scheme_areas_and_polygons_name_the_schemes_classes_in_any_numbering(textured, tmp_path):
    model = save_tiny_model(tmp_path / "model", scheme="six", long_side=None)
    assert exit_code("predict", model, textured["5cm"], "--out", tmp_path / "p", "--model-gsd", "0.05",
                   "--numbering", "dataset") == 0
    rows = json.loads((tmp_path / "p" / "t5_class_areas.json").read_text())["classes"]
    assert [r["class"] for r in rows] == list(get_scheme("six").names)
    assert [r["class_id"] for r in rows] == get_scheme("six").written("dataset").values.tolist()
    names = pyogrio.raw.read(tmp_path / "p" / "t5_polygons.gpkg")[3][1]
    assert set(names) <= set(get_scheme("six").names)


@pytest.mark.parametrize("option,value", [("--min-area", "0"), ("--min-area", "nan"), ("--simplify", "-1"),
                                          ("--model-gsd", "inf")])
def test_ortho_options_are_checked_before_any_work(flat, tmp_path, capsys, option, value):
    model = save_tiny_model(tmp_path / "model", long_side=None)
    assert exit_code("predict", model, flat["5cm"][0], "--out", tmp_path / "p", option, value) == 2
    assert f"{option} must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_gdal_causes_and_control_points_are_named(flat, tmp_path, capsys):
    from rasterio.control import GroundControlPoint

    model = save_tiny_model(tmp_path / "model", long_side=None)
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(f"""<VRTDataset rasterXSize="64" rasterYSize="64">
  <SRS>EPSG:32633</SRS><GeoTransform>500000, 0.05, 0, 5200000, 0, -0.05</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1"><SimpleSource>
    <SourceFilename relativeToVRT="1">gone.tif</SourceFilename><SourceBand>1</SourceBand>
  </SimpleSource></VRTRasterBand></VRTDataset>""")
    gcp = tmp_path / "gcp.tif"
    points = [GroundControlPoint(0, 0, 15.0, 47.0), GroundControlPoint(0, 63, 15.0, 46.99),
              GroundControlPoint(63, 0, 15.01, 47.0)]
    with rasterio.open(gcp, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 64, 64), np.uint8))
        dst.gcps = (points, rasterio.crs.CRS.from_epsg(4326))
    assert exit_code("predict", model, vrt, gcp, "--out", tmp_path / "p", "--model-gsd", "0.05") == 1
    err = capsys.readouterr().err
    assert "gone.tif" in err and "See previous exception" not in err
    assert f"{gcp}: georeferenced by 3 ground control points only" in err


def test_web_mercator_is_measured_on_the_ground_not_in_its_map_metres(tmp_path):
    """EPSG:3857 metres are 1/cos(latitude) ground metres: at 60° N a 10 cm map pixel is 5 cm of ground, and an area
    is a quarter of its map area. GSD and areas come from the ground (the geodesic area of the polygons)."""
    pyproj = pytest.importorskip("pyproj")

    lat, lon = 60.0, 10.0
    x0 = math.radians(lon) * 6378137.0
    y0 = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) * 6378137.0
    src = tmp_path / "merc.tif"
    write_synthetic_ortho(src, (320, 240), gsd=0.10, crs="EPSG:3857", origin=(x0, y0), seed=2, flat=True)
    with open_ortho(src) as o:
        assert o.gsd[0] == pytest.approx(0.05, rel=0.01) and o.gsd[1] == pytest.approx(0.05, rel=0.01)
        assert "not ground units" in o.area.method and "0.50" in o.area.method
    res = segment_ortho(src, tmp_path / "out", oracle_tiler(), WRITTEN, 0.05, OrthoOptions(strip=128), progress=False)
    assert res.scale == pytest.approx((1.0, 1.0), rel=0.01)  # read at its own resolution: 5 cm of ground
    table = json.loads(res.files["areas_json"].read_text())
    geod = pyproj.Geod(ellps="WGS84")
    to_lonlat = pyproj.Transformer.from_crs(3857, 4326, always_xy=True).transform
    geoms = shapely.from_wkb(pyogrio.raw.read(res.files["polygons"])[2])
    lonlat = shapely.transform(geoms, lambda xy: np.column_stack(to_lonlat(xy[:, 0], xy[:, 1])))
    true_area = sum(abs(geod.geometry_area_perimeter(g)[0]) for g in lonlat)
    assert table["valid_area_m2"] == pytest.approx(true_area, rel=2e-3)
    assert table["valid_area_m2"] == pytest.approx(0.25 * sum(shapely.area(geoms)), rel=0.01)


def test_a_local_survey_crs_is_segmented_with_areas_in_its_units(flat, tmp_path):
    """Metashape's "Local Coordinates (m)" (a LOCAL_CS): no map projection, a real survey in metres."""
    src, known = flat["5cm"]
    local = tmp_path / "local.tif"
    shutil.copy(src, local)
    wkt = ('LOCAL_CS["Local Coordinates (m)",LOCAL_DATUM["Local Datum",0],UNIT["metre",1,AUTHORITY["EPSG","9001"]],'
           'AXIS["X",EAST],AXIS["Y",NORTH]]')
    with rasterio.open(local, "r+") as ds:
        ds.crs = rasterio.crs.CRS.from_wkt(wkt)
    with open_ortho(local) as o:
        assert o.gsd == pytest.approx((0.05, 0.05)) and "local CRS" in o.area.method
    res = segment_ortho(local, tmp_path / "out", oracle_tiler(), WRITTEN, 0.05, OrthoOptions(vector=None),
                        progress=False)
    assert json.loads(res.files["areas_json"].read_text())["valid_area_m2"] == pytest.approx(sum(known.values()))


def test_a_tiff_with_a_world_file_is_an_orthomosaic(flat, tmp_path):
    """ortho.tif + ortho.tfw (+ its CRS in ortho.tif.aux.xml): GDAL reads it as georeferenced, so droneseg does."""
    from PIL import Image

    src, _ = flat["5cm"]
    with rasterio.open(src) as ds:
        rgb, transform, crs = ds.read([1, 2, 3]).transpose(1, 2, 0), ds.transform, ds.crs
    plain = tmp_path / "in" / "ortho.tif"
    plain.parent.mkdir()
    Image.fromarray(rgb).save(plain)
    assert not is_ortho(plain)  # a photo until something georeferences it
    t = transform
    (tmp_path / "in" / "ortho.tfw").write_text(
        "\n".join(f"{v!r}" for v in (t.a, t.d, t.b, t.e, t.c + t.a / 2, t.f + t.e / 2)) + "\n")
    (tmp_path / "in" / "ortho.tif.aux.xml").write_text(f"<PAMDataset><SRS>{crs.to_wkt()}</SRS></PAMDataset>\n")
    assert is_ortho(plain)
    model = save_tiny_model(tmp_path / "model", scheme="six", long_side=None)
    assert exit_code("predict", model, plain, "--out", tmp_path / "p", "--model-gsd", "0.05", "--vector", "none") == 0
    with rasterio.open(tmp_path / "p" / "ortho_classes.tif") as out:
        assert out.crs == crs and out.transform.almost_equals(transform)


def test_outputs_of_an_earlier_run_with_other_options_are_named(flat, tmp_path, capsys):
    src, _ = flat["5cm"]
    model = save_tiny_model(tmp_path / "model", scheme="six", long_side=None)
    out = tmp_path / "p"
    assert exit_code("predict", model, src, "--out", out, "--model-gsd", "0.05", "--confidence", "--vector", "none") == 0
    capsys.readouterr()
    assert exit_code("predict", model, src, "--out", out, "--model-gsd", "0.05", "--vector", "none") == 0
    err = capsys.readouterr().err
    assert f"{out / 'o5_confidence.tif'} is left from an earlier run" in err
    assert "_classes.tif is left" not in err


def test_a_declared_nodata_value_that_masks_real_pixels_is_said(tmp_path):
    """8-bit RGB declaring nodata=255: a white roof becomes a hole. The share it masks is counted and said, naming
    the file, and recorded in the area table; an alpha band decides validity without a word."""
    rgb = np.full((3, 100, 200), 100, np.uint8)
    rgb[:, 40:60, 50:100] = 255  # a white roof: 1,000 of 20,000 pixels
    profile = dict(driver="GTiff", width=200, height=100, count=3, dtype="uint8", crs="EPSG:32633", nodata=255,
                   transform=rasterio.transform.from_origin(500_000, 5_200_000, 0.05, 0.05), photometric="RGB")
    src = tmp_path / "white.tif"
    with rasterio.open(src, "w", **profile) as ds:
        ds.write(rgb)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = segment_ortho(src, tmp_path / "out", oracle_tiler(64), WRITTEN, 0.05, OrthoOptions(vector=None),
                            progress=False)
    said = [str(w.message) for w in caught if "nodata" in str(w.message)]
    assert said and str(src) in said[0] and "about 5.0 % of the pixels" in said[0] and "-unsetnodata" in said[0]
    meta = json.loads(res.files["areas_json"].read_text())
    assert meta["nodata_value"] == 255 and meta["nodata_share"] == pytest.approx(0.05)
    assert meta["valid_pixels"] == 19_000 and meta["nodata_from"] == "the file"


def _white_roof(tmp_path: Path, name: str = "white roof #2.tif", alpha: bool = False) -> Path:
    """8-bit RGB declaring nodata=255, 1,000 of its 20,000 pixels white (a roof), 2,000 at 7 (a dark car park)."""
    rgb = np.full((3, 100, 200), 100, np.uint8)
    rgb[:, 40:60, 50:100] = 255
    rgb[:, 0:10, 0:200] = 7
    bands = [*rgb, np.full((100, 200), 255, np.uint8)] if alpha else list(rgb)
    profile = dict(driver="GTiff", width=200, height=100, count=len(bands), dtype="uint8", crs="EPSG:32633",
                   transform=rasterio.transform.from_origin(500_000, 5_200_000, 0.05, 0.05), photometric="RGB",
                   **({"alpha": "YES"} if alpha else {"nodata": 255}))
    src = tmp_path / name
    with rasterio.open(src, "w", **profile) as ds:
        ds.write(np.stack(bands))
    return src


@pytest.mark.parametrize("nodata, valid, share, warned", [("none", 20_000, None, False), ("7", 18_000, 0.1, True)])
def test_nodata_option_overrides_the_declared_value(tmp_path, nodata, valid, share, warned):
    """--nodata none: the white roof is classified (every pixel holds data, no warning); --nodata 7: the dark
    pixels are the holes instead, said as --nodata's. The file is not touched; its name holds a space and '#'."""
    src = _white_roof(tmp_path)
    before = src.read_bytes()
    options = OrthoOptions.from_cli(vector="none", nodata=nodata)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = segment_ortho(src, tmp_path / "out", oracle_tiler(64), WRITTEN, 0.05, options, progress=False)
    said = [str(w.message) for w in caught if "no data" in str(w.message)]
    assert bool(said) == warned and (not said or "--nodata 7 marks about 10.0 %" in said[0])
    meta = json.loads(res.files["areas_json"].read_text())
    assert meta["valid_pixels"] == valid and meta["nodata_from"] == "--nodata"
    assert meta["nodata_share"] == (None if share is None else pytest.approx(share))
    assert meta["nodata_value"] == (None if nodata == "none" else 7)
    with rasterio.open(res.files["classes"]) as ds:
        classes = ds.read(1)
    assert (classes[40:60, 50:100] != NODATA).all(), "the roof is classified"
    assert ((classes[0:10] == NODATA).all()) == (nodata == "7")
    assert src.read_bytes() == before


@pytest.mark.parametrize("nodata, alpha, says", [
    ("300", False, "--nodata 300 is not a value its uint8 samples can hold (a whole number 0..255)"),
    ("2.5", False, "--nodata 2.5 is not a value"),
    ("none", True, "its alpha band or mask decides which pixels hold data"),
])
def test_nodata_option_that_cannot_apply_is_refused(tmp_path, nodata, alpha, says):
    src = _white_roof(tmp_path, "o.tif", alpha=alpha)
    with pytest.raises(DataError, match=r"o\.tif: ") as err:
        open_ortho(src, OrthoOptions.from_cli(nodata=nodata).nodata)
    assert says in str(err.value)


def test_nodata_option_on_the_command_line(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model", long_side=None)
    src = _white_roof(tmp_path)
    assert exit_code("predict", model, src, "--out", tmp_path / "p", "--nodata", "white") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--nodata must be none or a number (a pixel value), got 'white'" in err
    assert exit_code("predict", model, src, "--out", tmp_path / "p", "--model-gsd", "0.05", "--vector", "none",
                   "--nodata", "none") == 0
    assert "marks about" not in capsys.readouterr().err
    meta = json.loads((tmp_path / "p" / "white roof #2_class_areas.json").read_text())
    assert meta["valid_pixels"] == 20_000 and meta["nodata_from"] == "--nodata"

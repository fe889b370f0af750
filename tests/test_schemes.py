"""Class table and label schemes on small hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest

from droneseg.classes import IGNORE_INDEX, ClassTable, DataError
from droneseg.schemes import SCHEMES, LabelScheme, get_scheme

TABLE = ClassTable.builtin()
# source indices: unlabeled, paved-area, dirt, grass, gravel, water, roof, car, tree, conflicting
SRC = np.array([[0, 1, 2, 3, 4], [5, 9, 17, 19, 23]], dtype=np.uint8)
X = IGNORE_INDEX


def test_builtin_table_has_the_dataset_order():
    assert len(TABLE) == 24
    assert TABLE.names[0] == "unlabeled" and TABLE.names[22] == "obstacle" and TABLE.names[23] == "conflicting"
    assert TABLE.colors[1].tolist() == [128, 64, 128]


def test_csv_with_spaces_after_commas_matches_builtin(tmp_path):
    lines = ["name, r, g, b"] + [f"{n}, {r}, {g}, {b}" for n, (r, g, b) in zip(TABLE.names, TABLE.colors.tolist())]
    (tmp_path / "class_dict_seg.csv").write_text("\n".join(lines) + "\n")
    assert ClassTable.from_csv(tmp_path / "class_dict_seg.csv") == TABLE


@pytest.mark.parametrize(
    "text, problem",
    [
        ("label, r, g, b\nx, 1, 2, 3\n", "header"),
        ("name, r, g, b\nx, 1, 2\n", ":2: expected 4 fields"),
        ("name, r, g, b\nx, 1, 2, 300\n", "outside 0..255"),
        ("name, r, g, b\nx, 1, 2, 3\ny, 1, 2, 3\n", "share one colour"),
        ("name, r, g, b\nx, 1, 2, z\n", "not three integers"),
    ],
)
def test_bad_csv_names_file_and_problem(tmp_path, text, problem):
    path = tmp_path / "class_dict.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=problem) as err:
        ClassTable.from_csv(path)
    assert str(path) in str(err.value)


def test_rgb_to_index_round_trip():
    rgb = TABLE.index_to_rgb(SRC)
    assert np.array_equal(TABLE.rgb_to_index(rgb), SRC)


def test_unknown_colour_names_file_colour_and_count():
    rgb = TABLE.index_to_rgb(SRC)
    rgb[0, :3] = (1, 2, 3)
    with pytest.raises(DataError, match=r"m\.png: unknown colour \(1, 2, 3\) in 3 pixels"):
        TABLE.rgb_to_index(rgb, "m.png")


# expected targets of SRC, by hand
EXPECTED = {
    # full: source k -> k-1, unlabeled and conflicting ignored
    "full": [[X, 0, 1, 2, 3], [4, 8, 16, 18, X]],
    # six: paved-area 0, dirt 1, grass 2, roof 3, water 4, everything else real -> other 5
    "six": [[X, 0, 1, 2, 5], [4, 3, 5, 5, X]],
    # paved: other 0, paved-area 1
    "paved": [[X, 1, 0, 0, 0], [0, 0, 0, 0, X]],
}
# written back in source numbering: single-source targets exactly, 'rest' as its first class in table
# order (six: gravel 4; paved: dirt 2); ignored pixels as unlabeled 0
DECODED = {
    "full": [[0, 1, 2, 3, 4], [5, 9, 17, 19, 0]],
    "six": [[0, 1, 2, 3, 4], [5, 9, 4, 4, 0]],
    "paved": [[0, 1, 2, 2, 2], [2, 2, 2, 2, 0]],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scheme_encodes_and_decodes_by_hand(name):
    scheme = get_scheme(name, TABLE)
    target = scheme.encode(SRC)
    assert target.tolist() == EXPECTED[name]
    assert scheme.decode(target).tolist() == DECODED[name]
    assert np.array_equal(scheme.encode(scheme.decode(target)), target)  # predictions re-encode exactly
    # colours written back are the dataset's own for single-source targets
    rgb = TABLE.index_to_rgb(scheme.decode(target))
    assert rgb[0, 1].tolist() == [128, 64, 128]


def test_full_scheme_has_22_real_classes_with_dataset_colours():
    s = get_scheme("full", TABLE)
    assert s.num_classes == 22 and s.names[0] == "paved-area" and s.names[-1] == "obstacle"
    assert np.array_equal(s.colors, TABLE.colors[1:23])
    assert np.array_equal(s.colorize(np.array([0, 21, X], np.uint8)), [[128, 64, 128], [2, 135, 115], [0, 0, 0]])


def test_luma_thresholds_mask_luminance_at_image_mean():
    s = get_scheme("luma", TABLE)
    # unlabeled black (luma 0), bald-tree (190,250,190) bright, grass (0,102,0) dark-ish
    src = np.array([[0, 0, 20, 3]], np.uint8)
    lum = [0.0, 0.0, 0.299 * 190 + 0.587 * 250 + 0.114 * 190, 0.587 * 102]
    mean = sum(lum) / 4  # 62.6: only bald-tree is above
    assert s.encode(src).tolist() == [[int(v > mean) for v in lum]] == [[0, 0, 1, 0]]
    with pytest.raises(ValueError, match="luma"):
        s.decode(np.zeros((1, 1), np.uint8))


def test_every_builtin_scheme_round_trips_through_dict():
    for name in SCHEMES:
        s = get_scheme(name, TABLE)
        t = LabelScheme.from_dict(s.to_dict())
        assert t.names == s.names and np.array_equal(t.colors, s.colors)
        assert np.array_equal(t.encode(SRC), s.encode(SRC))


def test_user_scheme_from_yaml(tmp_path):
    path = tmp_path / "green.yaml"
    path.write_text(
        "name: green\n"
        "classes:\n"
        "  - {name: built, sources: [roof, paved-area], color: [200, 0, 0]}\n"
        "  - {name: green, sources: [grass, tree]}\n"
        "  - {name: rest, sources: rest}\n"
        "ignore: [unlabeled, conflicting, car]\n"
    )
    s = get_scheme(str(path), TABLE)
    assert s.names == ("built", "green", "rest")
    assert s.colors.tolist() == [[200, 0, 0], [0, 102, 0], [128, 128, 128]]
    assert s.encode(SRC).tolist() == [[X, 0, 2, 1, 2], [2, 0, X, 1, X]]
    # a group is written back as its first listed source; 'rest' as its first class in table order (dirt)
    assert s.decode(np.array([0, 1, 2], np.uint8)).tolist() == [9, 3, 2]


@pytest.mark.parametrize(
    "body, problem",
    [
        ("name: a\nclasses:\n  - {name: x, sources: [grass]}\n", "neither mapped nor ignored"),
        ("name: a\nclasses:\n  - {name: x, sources: [grasss]}\n", "unknown class 'grasss'"),
        ("name: a\nclasses:\n  - {name: x, sources: [grass]}\n  - {name: y, sources: [grass]}\n", "claimed twice"),
        ("name: a\nclasses:\n  - {name: x, sources: rest, colour: [1, 2, 3]}\n", "classes.0.colour"),
        ("name: a\nclasses: [\n", "not valid YAML"),
    ],
)
def test_bad_user_scheme_names_file_and_key(tmp_path, body, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(DataError, match=problem) as err:
        get_scheme(str(path), TABLE)
    assert str(path) in str(err.value)


def test_unknown_scheme_lists_choices():
    with pytest.raises(DataError, match=r"\['full', 'luma', 'paved', 'six'\]"):
        get_scheme("seven")

"""Splits by image id: seeded, from files, and never leaking an id between splits."""

from __future__ import annotations

import pytest

from droneseg.classes import DataError
from droneseg.data.splits import make_splits

IDS = [f"{i:03d}" for i in range(20)]


def test_seeded_split_is_disjoint_complete_and_repeatable():
    a = make_splits(IDS, None, 0.2, 0.1, seed=3)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (14, 4, 2)
    assert sorted(a["train"] + a["val"] + a["test"]) == IDS
    assert a == make_splits(IDS, None, 0.2, 0.1, seed=3) != make_splits(IDS, None, 0.2, 0.1, seed=4)


def test_split_files_are_used_and_test_is_optional(tmp_path):
    (tmp_path / "train.txt").write_text("000\n001.jpg\n# a comment\n\n002\n")
    (tmp_path / "val.txt").write_text("003\n")
    assert make_splits(IDS, tmp_path, 0.2, 0.0, 0) == {"train": ["000", "001", "002"], "val": ["003"], "test": []}


@pytest.mark.parametrize(
    "train, val, problem",
    [
        ("000\n001\n", "001\n", "1 ids are in both train and val, e.g. '001'"),
        ("000\n999\n", "001\n", "1 ids have no image/mask pair, e.g. '999'"),
    ],
)
def test_bad_split_files_name_the_file_and_the_id(tmp_path, train, val, problem):
    (tmp_path / "train.txt").write_text(train)
    (tmp_path / "val.txt").write_text(val)
    with pytest.raises(DataError, match=problem) as err:
        make_splits(IDS, tmp_path, 0.2, 0.0, 0)
    assert str(tmp_path) in str(err.value)


def test_seeded_splits_keep_augmented_copies_with_their_source_photo():
    """`droneseg augment` writes `<id>_aug<k>`: a copy of a training photo must never be scored in val or test."""
    photos = [f"{i:03d}" for i in range(20)]
    ids = photos + [f"{p}_aug{k}" for p in photos for k in range(3)] + ["x_aug1"]  # x_aug1: no source, its own photo
    for seed in range(5):
        splits = make_splits(ids, None, 0.2, 0.1, seed=seed)
        where = {i: name for name, members in splits.items() for i in members}
        assert sorted(where) == sorted(ids)
        for p in photos:
            assert {where[f"{p}_aug{k}"] for k in range(3)} == {where[p]}
        assert len(splits["val"]) % 4 == 0 or "x_aug1" in splits["val"]  # whole groups of 4
    # the photos alone split as before the copies existed
    assert make_splits(photos, None, 0.2, 0.1, seed=0) == {
        k: [i for i in v if "_aug" not in i] for k, v in make_splits(ids[:-1], None, 0.2, 0.1, seed=0).items()}

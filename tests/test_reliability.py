"""Reliability, from one table: bad input gets one line and a non-zero exit; faults lose nothing.

Every row of :data:`BAD_INPUTS` breaks one thing (a file, a folder, a config key, an option) and runs the real
command in-process through :func:`droneseg.cli.main`; the row passes when the command exits with the expected code,
its last stderr line is one ``droneseg: error:`` line naming the file or key and the problem (no traceback), and
nothing that existed before was changed. :data:`ACCEPTED` lists inputs from the field that must be *read right*,
not refused. :data:`FAULTS` injects kills, Ctrl-C, a diverging loss, a full disk, name clashes, concurrent writers,
a malicious checkpoint and a bug of ours, and checks what survives. The README's reliability section quotes the
row counts of these three tables.
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN, run_cli, save_tiny_model
from PIL import Image

from droneseg.data.synthetic import write_synthetic

# end-to-end runs in subprocesses: a hung one fails after 300 s with its traceback (pyproject: 120 s)
pytestmark = pytest.mark.timeout(300)

TINY = [*TINY_TRAIN, "--set", "train.final_eval=false"]


def digest(*roots: Path) -> dict[str, str]:
    """Path -> sha1 of every file under ``roots`` (what must survive a failed command untouched)."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")) if Path(root).exists() else []:
            if p.is_file():
                out[str(p)] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-c", "demo", "--data", str(data), "--out", str(out), *TINY, "--max-epochs", "1", *extra]


# -- building bad inputs ----------------------------------------------------------------------------------------
def photo(data: Path, i: int = 0) -> Path:
    return data / "original_images" / f"{i:03d}.jpg"


def index_mask(data: Path, i: int = 0) -> Path:
    return data / "label_images_semantic" / f"{i:03d}.png"


def only_rgb_masks(data: Path) -> Path:
    """The dataset with its colour masks only (the index folder removed); -> the colour mask folder."""
    shutil.rmtree(data / "label_images_semantic")
    return data / "RGB_color_image_masks"


def _missing(tmp, data):
    return train_args(tmp / "nowhere", tmp / "runs"), [str(tmp / "nowhere"), "no such folder"]


def _empty(tmp, data):
    (tmp / "empty").mkdir()
    return train_args(tmp / "empty", tmp / "runs"), [str(tmp / "empty"), "original_images"]


def _wrong_layout(tmp, data):
    (data / "original_images").rename(data / "photos")
    return train_args(data, tmp / "runs"), [str(data), "no 'original_images/'"]


def _table_header(tmp, data):
    (data / "class_dict_seg.csv").write_text("label,red,green,blue\nunlabeled,0,0,0\n")
    return train_args(data, tmp / "runs"), ["class_dict_seg.csv", "header must be 'name, r, g, b'"]


def _table_duplicate_colour(tmp, data):
    table = data / "class_dict_seg.csv"
    rows = table.read_text().splitlines()
    rows[2] = rows[2].split(",")[0] + "," + ",".join(rows[1].split(",")[1:])  # class 1 takes class 0's colour
    table.write_text("\n".join(rows) + "\n")
    return train_args(data, tmp / "runs"), ["class_dict_seg.csv", "share one colour"]


def _table_missing_rows(tmp, data):
    table = data / "class_dict_seg.csv"
    table.write_text("\n".join(table.read_text().splitlines()[:4]) + "\n")  # 3 classes; masks use up to 23
    return ["check-data", data], ["label_images_semantic", "outside the 3-class table"]


def _foreign_colour(tmp, data):
    masks = only_rgb_masks(data)
    arr = np.array(Image.open(masks / "000.png").convert("RGB"))
    arr[:4, :4] = (1, 2, 3)
    Image.fromarray(arr).save(masks / "000.png")
    return train_args(data, tmp / "runs"), [str(masks / "000.png"), "unknown colour (1, 2, 3)"]


def _index_out_of_range(tmp, data):
    arr = np.array(Image.open(index_mask(data)))
    arr[0, 0] = 200
    Image.fromarray(arr).save(index_mask(data))
    return train_args(data, tmp / "runs"), [str(index_mask(data)), "index 200 is outside"]


def _truncated_jpeg(tmp, data):
    raw = photo(data).read_bytes()
    photo(data).write_bytes(raw[: len(raw) // 2])
    return train_args(data, tmp / "runs"), [str(photo(data))]


def _corrupt_png(tmp, data):
    raw = bytearray(index_mask(data).read_bytes())
    raw[60:90] = b"\x00" * 30  # inside the image data: the zlib stream breaks
    index_mask(data).write_bytes(bytes(raw))
    return train_args(data, tmp / "runs"), [str(index_mask(data))]


def _zero_byte(tmp, data):
    photo(data).write_bytes(b"")
    return train_args(data, tmp / "runs"), [str(photo(data)), "empty file (0 bytes)"]


def _size_mismatch(tmp, data):
    Image.open(index_mask(data)).resize((50, 40), Image.Resampling.NEAREST).save(index_mask(data))
    return train_args(data, tmp / "runs"), [str(index_mask(data)), "mask is 50x40 but image 000.jpg is 96x64"]


def _mask_on_stored_view(tmp, data):
    """A photo with an EXIF turn whose mask was drawn on the pixels as stored."""
    im = Image.open(photo(data))
    stored = im.transpose(Image.Transpose.ROTATE_270)  # displayed = stored turned back by orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(photo(data), exif=exif.tobytes())
    Image.open(index_mask(data)).transpose(Image.Transpose.ROTATE_270).save(index_mask(data))
    return train_args(data, tmp / "runs"), [str(index_mask(data)), "EXIF orientation 6", "as displayed"]


def _five_band_tiff(tmp, data):
    """A multispectral 5-band 16-bit frame where a photo belongs (Pillow has no mode for it)."""
    tiff = data / "original_images" / "000.tif"
    _write_tiff(tiff, np.zeros((64, 96, 5), np.uint16))
    photo(data).unlink()
    return train_args(data, tmp / "runs"), [str(tiff), "5 bands of 16-bit unsigned integers"]


def _split_escapes(tmp, data):
    (data / "splits" / "val.txt").write_text("000\n../../etc/passwd\n")
    return train_args(data, tmp / "runs"), [str(data / "splits" / "val.txt") + ":2", "'../../etc/passwd'",
                                            "not an image id"]


def _config_key(tmp, data):
    return train_args(data, tmp / "runs", "--set", "train.learning_rate=0.1"), ["train.learning_rate", "Extra inputs"]


def _config_type(tmp, data):
    return train_args(data, tmp / "runs", "--set", "data.batch_size=many"), ["data.batch_size", "integer"]


def _preset(tmp, data):
    return ["train", "-c", "fulll", "--data", str(data)], ["unknown config 'fulll'", "full"]


def _negative_lr(tmp, data):
    return train_args(data, tmp / "runs", "--set", "train.lr=-0.1"), ["train.lr", "greater than 0"]


def _crop_too_big(tmp, data):
    return ["train", "-c", "demo", "--data", str(data), "--set", "data.crop=512"], ["data", "crop 512 is larger than "
                                                                                   "the working size (long side 256)"]


def _overlap(tmp, data):
    model = save_tiny_model(tmp / "model")
    return ["predict", model, photo(data), "--out", tmp / "pred", "--overlap", "1.0"], ["--overlap", "0.9"]


def _overlap_config(tmp, data):
    return train_args(data, tmp / "runs", "--set", "inference.overlap=1"), ["inference.overlap", "less than 1"]


def _small_tile(tmp, data):
    model = save_tiny_model(tmp / "model")
    return ["predict", model, photo(data), "--out", tmp / "pred", "--tile", "16"], ["--tile", "32"]


def _model_newer(tmp, data):
    model = save_tiny_model(tmp / "model")
    info = json.loads((model / "model.json").read_text())
    info["format"] = 99
    (model / "model.json").write_text(json.dumps(info))
    return ["predict", model, photo(data), "--out", tmp / "pred"], [str(model / "model.json"), "format 99 is newer"]


def _model_missing_file(tmp, data):
    model = save_tiny_model(tmp / "model")
    (model / "model.safetensors").unlink()
    return ["predict", model, photo(data), "--out", tmp / "pred"], ["model.safetensors"]


def _weights_pickle(tmp, data):
    model = save_tiny_model(tmp / "model")
    (model / "model.safetensors").write_bytes(_evil_pickle(tmp / "pwned"))
    return ["predict", model, photo(data), "--out", tmp / "pred"], [str(model / "model.safetensors")]


def _evil_checkpoint(tmp, data):
    """A run whose last.ckpt is a pickle that would create a file if unpickled."""
    run = tmp / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(_demo_config(data))
    (run / "checkpoints" / "last.ckpt").write_bytes(_evil_pickle(tmp / "pwned"))
    return ["train", "--resume", run], [str(run / "checkpoints" / "last.ckpt"), "refused"]


def _resume_nothing(tmp, data):
    return ["train", "--resume", tmp / "not-a-run"], [str(tmp / "not-a-run")]


def _resume_with_a_preset(tmp, data):
    """`train -c paved --resume RUN` used to continue the run as configured, the preset silently ignored."""
    return ["train", "--resume", tmp / "run", "-c", "paved", "--out", tmp / "runs"], ["--resume", "-c/--config",
                                                                                     "--out"]


def _opset_out_of_range(tmp, data):
    model = save_tiny_model(tmp / "model")
    return ["export", model, "--opset", "24"], ["--opset 24", "opsets 11 to"]


def _data_is_a_file(tmp, data):
    ortho = tmp / "ortho.tif"
    ortho.write_bytes(b"II*\x00")
    return ["train", "-c", "demo", "--data", ortho], [str(ortho), "a file, not a dataset folder"]


def _augment_into_data(tmp, data):
    return ["augment", data, "--out", data], [str(data), "exists and is not empty"]


def _evil_pickle(marker: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    return pickle.dumps({"state_dict": Evil()})


def _demo_config(data: Path) -> str:
    from droneseg.config import dump_config, load_config

    return dump_config(load_config("demo", [f"data.root={data}"]))


def _write_tiff(path: Path, arr: np.ndarray) -> None:
    """A minimal uncompressed little-endian TIFF of an (H, W, C) uint16 array (C bands, chunky)."""
    h, w, c = arr.shape
    data = arr.astype("<u2").tobytes()
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, c), (278, 4, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1),
               (339, 3, 1, 1)]
    ifd_at = 8 + len(data)
    head = b"II*\x00" + ifd_at.to_bytes(4, "little")
    ifd = len(entries).to_bytes(2, "little")
    for tag, typ, count, value in entries:
        ifd += tag.to_bytes(2, "little") + typ.to_bytes(2, "little") + count.to_bytes(4, "little")
        ifd += value.to_bytes(2, "little") + b"\x00\x00" if typ == 3 else value.to_bytes(4, "little")
    path.write_bytes(head + data + ifd + b"\x00\x00\x00\x00")


@dataclass(frozen=True)
class Bad:
    name: str
    make: Callable[[Path, Path], tuple[list, list[str]]]  # (tmp, private data copy) -> (argv, what the line names)
    code: int = 2  # 1 for check-data, which reports every problem


BAD_INPUTS = [
    Bad("missing data folder", _missing),
    Bad("empty data folder", _empty),
    Bad("wrong layout", _wrong_layout),
    Bad("class table with a wrong header", _table_header),
    Bad("class table with duplicate colours", _table_duplicate_colour),
    Bad("class table with missing rows", _table_missing_rows, code=1),
    Bad("mask with a foreign colour", _foreign_colour),
    Bad("mask with an out-of-range index", _index_out_of_range),
    Bad("truncated JPEG", _truncated_jpeg),
    Bad("corrupt PNG", _corrupt_png),
    Bad("zero-byte photo", _zero_byte),
    Bad("image/mask size mismatch", _size_mismatch),
    Bad("mask drawn on the stored view of an EXIF-turned photo", _mask_on_stored_view),
    Bad("5-band 16-bit TIFF", _five_band_tiff),
    Bad("split file entry outside the dataset", _split_escapes),
    Bad("unknown config key", _config_key),
    Bad("config value of the wrong type", _config_type),
    Bad("preset that does not exist", _preset),
    Bad("negative learning rate", _negative_lr),
    Bad("crop larger than the working size", _crop_too_big),
    Bad("tile overlap of 1 (option)", _overlap),
    Bad("tile overlap of 1 (config)", _overlap_config),
    Bad("tile smaller than 32", _small_tile),
    Bad("model folder of a newer format", _model_newer),
    Bad("model folder without its weights", _model_missing_file),
    Bad("weights file that is a pickle", _weights_pickle),
    Bad("checkpoint that is a malicious pickle", _evil_checkpoint),
    Bad("resume of a folder that is no run", _resume_nothing),
    Bad("augment over its own input", _augment_into_data),
    Bad("resume given a preset it cannot honour", _resume_with_a_preset),
    Bad("export to an opset the exporter cannot write", _opset_out_of_range),
    Bad("a dataset given as a file", _data_is_a_file),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.name for c in BAD_INPUTS])
def test_bad_input_gets_one_line_naming_it_and_nothing_is_destroyed(case: Bad, synth_root, tmp_path, capsys):
    data = Path(shutil.copytree(synth_root, tmp_path / "data"))
    argv, names = case.make(tmp_path, data)
    before = digest(tmp_path)
    result = run_cli(capsys, *argv)
    assert result.code == case.code, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err and "internal error" not in result.err
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    if argv[0] == "check-data":  # a report of every problem, one line each, then the count
        assert lines and lines[-1].endswith("problems"), result.err[-2000:]
        lines = [ln for ln in result.out.splitlines() if ln.startswith("problem: ") and all(f in ln for f in names)]
        assert lines, result.out[-3000:]
    else:
        assert lines and lines[-1].startswith("droneseg: error: "), result.err[-2000:]
    for fragment in names:
        assert fragment in lines[-1], (fragment, lines[-1])
    after = digest(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that existed was changed
    assert not (tmp_path / "pwned").exists()  # no pickle ran


# -- inputs from the field that must be read right, not refused ----------------------------------------------------
def _grey(data):
    arr = np.linspace(0, 255, 96 * 64).reshape(64, 96).astype(np.uint8)
    Image.fromarray(arr, "L").save(photo(data))
    return np.repeat(np.asarray(Image.open(photo(data)))[..., None], 3, axis=2)


def _rgba(data):
    rgb = np.asarray(Image.open(photo(data)).convert("RGB"))
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :10] = 0
    target = data / "original_images" / "000.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(target)
    photo(data).unlink()
    expected = rgb.copy()
    expected[:, :10] = 0  # transparent: composited on black
    return expected


def _sixteen_bit_dark(data):
    """A dark 16-bit photo (max 4000 of 65535) must stay dark: scaled by its bit depth, not by its maximum."""
    arr = np.linspace(0, 4000, 96 * 64).reshape(64, 96).astype(np.uint16)
    target = data / "original_images" / "000.png"
    Image.fromarray(arr).save(target)
    photo(data).unlink()
    grey = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _cmyk(data):
    rgb = Image.open(photo(data)).convert("RGB")
    rgb.convert("CMYK").save(photo(data), quality=100)
    return np.asarray(Image.open(photo(data)).convert("RGB"))


def _exif_turned(data):
    """A photo stored sideways with orientation 6 and its mask drawn on the displayed view (what labelling tools
    show): read as displayed, it is the original photo again."""
    im = Image.open(photo(data))
    expected = np.asarray(im.convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.transpose(Image.Transpose.ROTATE_90).save(photo(data), exif=exif.tobytes(), quality=100, subsampling=0)
    return expected


def _palette_colour_mask(data):
    """A colour mask saved as a palette PNG: read by the colours it shows (the class table's), not as positions."""
    masks = only_rgb_masks(data)
    rgb = np.asarray(Image.open(masks / "000.png").convert("RGB"))
    colours, positions = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    order = np.random.default_rng(0).permutation(len(colours))  # palette positions unrelated to class indices
    indexed = Image.fromarray(order[positions.ravel()].reshape(rgb.shape[:2]).astype(np.uint8), "P")
    palette = np.zeros((256, 3), np.uint8)
    palette[order] = colours
    indexed.putpalette(palette.tobytes())
    indexed.save(masks / "000.png")
    assert Image.open(masks / "000.png").mode == "P"
    return None


def _table_in_masks_folder(data):
    masks = only_rgb_masks(data)
    shutil.move(data / "class_dict_seg.csv", masks / "class_dict_seg.csv")
    return None


ACCEPTED = {
    "grey photo": _grey,
    "RGBA photo": _rgba,
    "dark 16-bit photo": _sixteen_bit_dark,
    "CMYK photo": _cmyk,
    "EXIF-turned photo with its mask on the displayed view": _exif_turned,
    "colour mask saved as a palette PNG": _palette_colour_mask,
    "class table inside the masks folder": _table_in_masks_folder,
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_field_inputs_are_read_by_what_they_show(name, synth_root, tmp_path, capsys):
    from droneseg.data.layout import find_layout
    from droneseg.images import read_image, read_mask

    data = Path(shutil.copytree(synth_root, tmp_path / "data"))
    reference = find_layout(synth_root).samples[0]
    truth = read_mask(reference.mask, reference.mask_kind, find_layout(synth_root).table)
    expected = ACCEPTED[name](data)
    if (data / "RGB_color_image_masks" / "class_dict_seg.csv").exists():
        args = ["check-data", "--images", data / "original_images", "--masks", data / "RGB_color_image_masks"]
    else:
        args = ["check-data", data]
    result = run_cli(capsys, *args)
    assert result.code == 0 and "all clean" in result.out, result.out + result.err
    layout = find_layout(data) if args[1] == data else find_layout(images=args[2], masks=args[4])
    sample = layout.by_id()["000"]
    if expected is not None:
        got = read_image(sample.image)
        assert got.shape == expected.shape
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= (12 if "CMYK" in name or "EXIF" in name else 0)
    assert np.array_equal(read_mask(sample.mask, sample.mask_kind, layout.table), truth)  # classes, not positions


def test_check_data_warns_of_masks_holding_only_unlabeled(synth_root, tmp_path, capsys):
    data = Path(shutil.copytree(synth_root, tmp_path / "data"))
    Image.fromarray(np.zeros((64, 96), np.uint8)).save(index_mask(data, 3))
    result = run_cli(capsys, "check-data", data)
    assert result.code == 0
    assert f"warning: {index_mask(data, 3)}: holds only 'unlabeled' pixels" in result.out


def test_check_data_names_exif_turned_photos_and_the_view_of_their_masks(synth_root, tmp_path, capsys):
    data = Path(shutil.copytree(synth_root, tmp_path / "data"))
    _exif_turned(data)
    result = run_cli(capsys, "check-data", data)
    assert result.code == 0
    assert f"warning: {photo(data)}: EXIF orientation 6 (turned 90° clockwise), read as displayed; its mask " \
           "matches the displayed view" in result.out


def test_transparent_pixels_get_no_class_and_no_area(synth_root, tmp_path, capsys):
    """Alpha is a validity mask: transparent pixels are nodata in the mask (255), transparent in the colour mask,
    and in no class's area."""
    model = save_tiny_model(tmp_path / "model", long_side=None)
    rgb = np.asarray(Image.open(photo(synth_root)).convert("RGB"))
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :40] = 0
    src = tmp_path / "ortho.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(src)
    result = run_cli(capsys, "predict", model, src, "--out", tmp_path / "pred")
    assert result.code == 0, result.err
    mask = np.asarray(Image.open(tmp_path / "pred" / "ortho.png"))
    assert (mask[:, :40] == 255).all() and (mask[:, 40:] != 255).all()
    colour = Image.open(tmp_path / "pred" / "ortho_color.png")  # a palette PNG whose tRNS hides the nodata index
    assert colour.mode == "P" and colour.info["transparency"] == 255
    alpha = np.asarray(colour.convert("RGBA"))[..., 3]
    assert (alpha[:, :40] == 0).all() and (alpha[:, 40:] == 255).all()
    with (tmp_path / "pred" / "class_areas.csv").open() as fh:
        pixels = sum(int(r["pixels"]) for r in csv.DictReader(fh))
    assert pixels == 64 * (96 - 40)


# -- faults ------------------------------------------------------------------------------------------------------
def _cli_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "droneseg", *map(str, args)]


def _rows(run: Path) -> list[dict]:
    with (run / "logs" / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run) of a 5-epoch training run nothing interrupted: what every interrupted one must end like."""
    tmp = tmp_path_factory.mktemp("ref")
    data = write_synthetic(tmp / "data", n=12, size=(96, 64), seed=7)
    env = {**os.environ, "DRONESEG_CACHE": str(tmp / "cache")}
    ref = subprocess.run(_cli_cmd(*train_args(data, tmp / "runs")[:-2], "--max-epochs", "5"), capture_output=True,
                         text=True, timeout=600, env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]
    return data, Path(ref.stdout.strip().splitlines()[-1])


def _start_and_wait(data: Path, out: Path, epochs_logged: int) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(_cli_cmd(*train_args(data, out)[:-2], "--max-epochs", "5"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        runs = list(out.glob("demo-*"))
        if runs and (runs[0] / "logs" / "metrics.csv").exists() and len(_rows(runs[0])) >= epochs_logged \
                and (runs[0] / "checkpoints" / "last.ckpt").exists():
            return proc, runs[0]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("training never reached the epoch to interrupt")


def _resumes_like_the_uninterrupted(run: Path, ref_run: Path) -> None:
    resumed = subprocess.run(_cli_cmd("train", "--resume", run), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows, ref_rows = _rows(run), _rows(ref_run)
    assert [int(r["epoch"]) for r in rows] == list(range(5))  # each epoch exactly once
    # same data order, RNG and schedule: the losses are the uninterrupted run's, bit for bit
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in ref_rows]


def fault_sigkill_during_training(tmp_path, capsys, uninterrupted, monkeypatch):
    """SIGKILL after two epochs: the resume loses at most the current epoch and ends like the uninterrupted run."""
    data, ref_run = uninterrupted
    proc, run = _start_and_wait(data, tmp_path / "killed", 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "train_summary.json").exists()
    logged = len(_rows(run))  # epochs finished when it died: last.ckpt is the last one's, or the one before
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] >= logged - 2
    _resumes_like_the_uninterrupted(run, ref_run)


def fault_sigint_during_training(tmp_path, capsys, uninterrupted, monkeypatch):
    """Ctrl-C (to the whole process group, as a terminal sends it): saved at a step boundary, exit 130, a line
    saying how to resume; the resume ends like the uninterrupted run."""
    data, ref_run = uninterrupted
    proc, run = _start_and_wait(data, tmp_path / "interrupted", 1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.decode().strip().splitlines()[-1] == (
        f"droneseg: error: {run}: interrupted (Ctrl-C); saved checkpoints/last.ckpt at step "
        f"{torch.load(run / 'checkpoints' / 'last.ckpt', weights_only=True)['global_step']}; "
        f"continue with: droneseg train --resume {run}")
    assert not (run / "train_summary.json").exists()
    _resumes_like_the_uninterrupted(run, ref_run)


_SAVER = """
import json, os, random, sys, time
import torch
from pathlib import Path
from droneseg.engine.checkpoints import AtomicCheckpointIO
torch.set_num_threads(1)  # no OpenMP pool in this process: its forks stay safe
io, path, rng, seen = AtomicCheckpointIO(), Path(sys.argv[1]), random.Random(0), []
for trial in range(4):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the saver that is killed: a loop of saves, each step's tensor holding the step
        os.close(read)
        for step in range(10**6):
            io.save_checkpoint({"global_step": step, "w": torch.full((2_000_000,), float(step))}, path)
            if step == 0:
                os.write(write, b"1")
        os._exit(0)
    os.close(write)
    os.read(read, 1)  # one save done
    time.sleep(rng.uniform(0.0, 0.3))
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    os.close(read)
    ckpt = torch.load(path, weights_only=True)
    seen.append([int(ckpt["global_step"]), bool((ckpt["w"] == ckpt["global_step"]).all())])
print(json.dumps(seen))
"""


def fault_sigkill_during_checkpoint_save(tmp_path, capsys, uninterrupted, monkeypatch):
    """SIGKILL at random moments of a loop of 8 MB checkpoint saves (4 times; the savers are forks of one process,
    which imports torch once): the checkpoint on disk always loads whole (its tensor holds its own step), and the
    next save clears the killed save's temporary file."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    r = subprocess.run([sys.executable, "-c", _SAVER, str(path)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout)
    assert len(seen) == 4 and all(whole for _, whole in seen), seen
    from droneseg.engine.checkpoints import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"global_step": -1}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def fault_nan_loss(tmp_path, capsys, uninterrupted, monkeypatch):
    """A loss that turns NaN at the third step stops training with exit 4 and a line naming the epoch and step,
    before the NaN reaches the weights: last.ckpt (the first epoch's end) loads with finite weights."""
    from droneseg.engine.task import SegmentationTask

    data, _ = uninterrupted
    real, calls = SegmentationTask._shared_step, {"train": 0}

    def poisoned(self, logits, target, stage, *args, **kwargs):
        loss = real(self, logits, target, stage, *args, **kwargs)
        if stage == "train":
            calls["train"] += 1
            if calls["train"] == 3:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(SegmentationTask, "_shared_step", poisoned)
    result = run_cli(capsys, *train_args(data, tmp_path / "runs")[:-2], "--max-epochs", "3")
    assert result.code == 4, result.err[-2000:]
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("droneseg: error: ") and "loss became nan at epoch 1, step 2 (batch 0" in line
    run = next((tmp_path / "runs").glob("demo-*"))
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2 and all(torch.isfinite(v).all() for v in state["state_dict"].values()
                                             if v.is_floating_point())


class _FullDisk:
    """Makes writes through droneseg's atomic writer fail with ENOSPC for temp files of target names matching
    ``pattern``, from the ``after``-th such file on (earlier ones succeed)."""

    def __init__(self, monkeypatch, pattern: str, after: int = 0) -> None:
        self.pattern, self.after, self.seen = pattern, after, 0
        real = os.fdopen

        def fdopen(fd, mode="r", *args, **kwargs):
            fh = real(fd, mode, *args, **kwargs)
            name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
            if "w" in mode and name.startswith(".") and name.endswith(".tmp") and \
                    fnmatch.fnmatch(name[1:].rsplit(".", 2)[0], self.pattern):
                self.seen += 1
                if self.seen > self.after:
                    return _Failing(fh)
            return fh

        monkeypatch.setattr(os, "fdopen", fdopen)


class _Failing(io.RawIOBase):
    def __init__(self, fh) -> None:
        self.fh = fh

    def write(self, b) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def fileno(self) -> int:
        return self.fh.fileno()

    def close(self) -> None:
        self.fh.close()
        super().close()

    def __exit__(self, *exc) -> None:
        self.close()


def fault_disk_full_writing_a_checkpoint(tmp_path, capsys, uninterrupted, monkeypatch):
    """The disk fills while epoch 2's last.ckpt is written: one line naming it, exit 2; epoch 1's last.ckpt
    loads, no temporary file is left."""
    data, _ = uninterrupted
    _FullDisk(monkeypatch, "last.ckpt", after=1)
    result = run_cli(capsys, *train_args(data, tmp_path / "runs")[:-2], "--max-epochs", "3")
    run = next((tmp_path / "runs").glob("demo-*"))
    assert result.code == 2, result.err[-2000:]
    assert result.err.strip().splitlines()[-1] == \
        f"droneseg: error: {run / 'checkpoints' / 'last.ckpt'}: No space left on device"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not list((run / "checkpoints").glob(".*.tmp"))


def fault_disk_full_writing_a_mask(tmp_path, capsys, uninterrupted, monkeypatch):
    """The disk fills at the second photo's mask: one line naming it, exit 2; the first photo's outputs are whole."""
    data, _ = uninterrupted
    model = save_tiny_model(tmp_path / "model", long_side=None)
    _FullDisk(monkeypatch, "001.png")
    out = tmp_path / "pred"
    result = run_cli(capsys, "predict", model, photo(data, 0), photo(data, 1), "--out", out)
    assert result.code == 2, result.err[-2000:]
    assert result.err.strip().splitlines()[-1] == f"droneseg: error: {out / '001.png'}: No space left on device"
    for name in ("000.png", "000_color.png", "000_overlay.jpg"):
        Image.open(out / name).load()  # whole
    assert not (out / "001.png").exists() and not list(out.glob(".*.tmp"))


def fault_disk_full_writing_the_report(tmp_path, capsys, uninterrupted, monkeypatch):
    """The disk fills at report.html: one line naming it, exit 2; the model and an earlier evaluation untouched."""
    data, ref_run = uninterrupted
    run = Path(shutil.copytree(ref_run, tmp_path / "run"))
    first = run_cli(capsys, "evaluate", run, "--data", data, "--figures", "1")
    assert first.code == 0, first.err[-2000:]
    before = digest(run)
    _FullDisk(monkeypatch, "report.html")
    result = run_cli(capsys, "evaluate", run, "--data", data, "--figures", "1", "--out", tmp_path / "again")
    assert result.code == 2, result.err[-2000:]
    assert result.err.strip().splitlines()[-1] == \
        f"droneseg: error: {tmp_path / 'again' / 'report.html'}: No space left on device"
    assert digest(run) == before


def fault_second_run_with_the_same_name(tmp_path, capsys, uninterrupted, monkeypatch):
    """Two runs started in the same second: the second gets a new folder, the first is untouched."""
    import datetime as real_datetime

    from droneseg import runs

    data, _ = uninterrupted

    class Frozen(real_datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 1, 12, 0, 0)

    monkeypatch.setattr(runs, "datetime", Frozen)
    first = run_cli(capsys, *train_args(data, tmp_path / "runs"))
    assert first.code == 0, first.err[-2000:]
    before = digest(tmp_path / "runs")
    second = run_cli(capsys, *train_args(data, tmp_path / "runs"))
    assert second.code == 0, second.err[-2000:]
    assert first.out.strip().endswith("demo-20260101-120000")
    assert second.out.strip().endswith("demo-20260101-120000-2")
    after = digest(tmp_path / "runs")
    assert {k: after[k] for k in before} == before


def fault_two_predicts_into_one_folder(tmp_path, capsys, uninterrupted, monkeypatch):
    """Two predict commands started together on one output folder: the second is refused with one line naming the
    folder (the first holds it), or runs after it; no file is corrupt and class_areas.csv is whole."""
    data, _ = uninterrupted
    model = save_tiny_model(tmp_path / "model", long_side=None)
    photos = sorted((data / "original_images").iterdir())
    out = tmp_path / "pred"
    procs = [subprocess.Popen(_cli_cmd("predict", model, *photos, "--out", out), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, _, err in results:
        if code == 2:
            line = err.strip().splitlines()[-1]  # the holder's pid, unless asked before the holder wrote it
            assert line.startswith(f"droneseg: error: {out}: ") and " is writing here; wait for it" in line
    for p in photos:
        for name in (f"{p.stem}.png", f"{p.stem}_color.png", f"{p.stem}_overlay.jpg"):
            Image.open(out / name).load()
    with (out / "class_areas.csv").open() as fh:
        assert {r["photo"] for r in csv.DictReader(fh)} == {str(p) for p in photos}


def fault_a_bug_of_ours_is_not_bad_input(tmp_path, capsys, uninterrupted, monkeypatch):
    """A ValueError from a bug (here: injected where the data module counts class pixels) is an internal error,
    exit 3, with how to see the traceback; --debug prints it."""
    from droneseg.data import datamodule

    data, _ = uninterrupted
    monkeypatch.setenv("DRONESEG_DEBUG", "0")  # --debug sets it; restored after the test

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    monkeypatch.setattr(datamodule, "class_counts", broken)
    result = run_cli(capsys, *train_args(data, tmp_path / "runs"))
    assert result.code == 3, result.err[-2000:]
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("droneseg: internal error: ValueError: operands could not be broadcast") and "--debug" in line
    assert "Traceback" not in result.err
    debug = run_cli(capsys, "--debug", *train_args(data, tmp_path / "runs2"))
    assert debug.code == 3 and "Traceback (most recent call last)" in debug.err


FAULTS = [fault_sigkill_during_training, fault_sigint_during_training, fault_sigkill_during_checkpoint_save,
          fault_nan_loss, fault_disk_full_writing_a_checkpoint, fault_disk_full_writing_a_mask,
          fault_disk_full_writing_the_report, fault_second_run_with_the_same_name, fault_two_predicts_into_one_folder,
          fault_a_bug_of_ours_is_not_bad_input]


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__.removeprefix("fault_") for f in FAULTS])
def test_fault(fault, tmp_path, capsys, uninterrupted, monkeypatch):
    fault(tmp_path, capsys, uninterrupted, monkeypatch)


ROOT = Path(__file__).resolve().parents[1]


def test_the_totals_are_from_a_run_of_these_tables():
    """benchmarks/results/reliability.json (scripts/reliability.py) counts a run of the tables as they are now:
    a row added or removed since needs the script run again."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from reliability import case_rows

    totals = json.loads((ROOT / "benchmarks" / "results" / "reliability.json").read_text())
    assert totals["bad_inputs"]["refused"] == len(BAD_INPUTS), "run scripts/reliability.py"
    assert totals["bad_inputs"]["read_by_what_they_show"] == len(ACCEPTED), "run scripts/reliability.py"
    assert totals["faults"]["injected"] == len(FAULTS), "run scripts/reliability.py"
    rows = case_rows()
    assert [int(n) for n, _ in rows] == list(range(1, 12)) and all(tests for _, tests in rows)
    assert {n: r["tests"] for n, r in totals["step11_cases"]["rows_detail"].items()} == dict(rows)


@pytest.mark.parametrize("page", ["README.md", "docs/reliability.md"])
def test_the_docs_quote_the_totals_of_the_test_run(page):
    text = " ".join((ROOT / page).read_text().split())
    totals = json.loads((ROOT / "benchmarks" / "results" / "reliability.json").read_text())
    bad, faults, cases = totals["bad_inputs"], totals["faults"], totals["step11_cases"]
    assert f"{bad['tried']} bad inputs tried, {bad['handled']} handled" in text
    survived = "nothing lost" if faults["nothing_lost"] == faults["injected"] else f"{faults['nothing_lost']} survived"
    assert f"{faults['injected']} faults injected, {survived}" in text
    assert f"{cases['handled']} of {cases['rows']} field cases of step 11 handled" in text
    if page != "README.md":
        assert f"Bad input ({len(BAD_INPUTS)} rows)" in text and f"not refused ({len(ACCEPTED)} rows)" in text
        assert totals["commit"] in text


# -- step 11: names people give files, derived files that outlive their source, folders predicted into twice --------
ODD_STEMS = ["plot #3", "-dash first", "Zürich été", "IMG_7", "two  spaces.v2"]


@pytest.mark.slow
def test_names_people_give_files_survive_every_file_droneseg_writes_and_reads(synth_root, tmp_path, capsys):
    """`#`, a leading dash, spaces, accents, a dot in the stem and an upper-case suffix: the split files droneseg
    writes read back to the same ids, and evaluate and predict find every photo by them."""
    from droneseg.data.layout import find_layout
    from droneseg.data.splits import make_splits, read_split_file, save_splits

    data = Path(shutil.copytree(synth_root, tmp_path / "data"))
    ids = sorted(p.stem for p in (data / "original_images").iterdir())[: len(ODD_STEMS)]
    for old, new in zip(ids, ODD_STEMS):
        suffix = ".JPG" if new == "IMG_7" else ".jpg"
        (data / "original_images" / f"{old}.jpg").rename(data / "original_images" / f"{new}{suffix}")
        for folder in ("label_images_semantic", "RGB_color_image_masks"):
            (data / folder / f"{old}.png").rename(data / folder / f"{new}.png")
    shutil.rmtree(data / "splits")
    layout = find_layout(data)
    assert not layout.problems and set(ODD_STEMS) <= {s.id for s in layout.samples}
    splits = {"train": [], "val": sorted(s.id for s in layout.samples), "test": []}
    save_splits(splits, data / "splits")
    assert read_split_file(data / "splits" / "val.txt") == splits["val"]  # every name round-trips
    assert make_splits([s.id for s in layout.samples], data / "splits", 0.2, 0.0, 0)["val"] == splits["val"]
    model = save_tiny_model(tmp_path / "model", "six", long_side=None, inference={"tile": 32})
    assert run_cli(capsys, "evaluate", model, "--data", data, "--split", data / "splits" / "val.txt",
                   "--figures", "0", "--out", tmp_path / "eval").code == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["context"]["images"] == len(splits["val"])
    assert run_cli(capsys, "predict", model, data / "original_images", "--out", tmp_path / "pred").code == 0
    assert {f"{stem}_color.png" for stem in ODD_STEMS} <= {p.name for p in (tmp_path / "pred").iterdir()}


def test_a_damaged_cache_entry_is_rebuilt_with_a_line_saying_so(synth_root, tmp_path, capsys):
    """A killed run leaves a cut entry, an empty entry and a stray temporary: the cache is derived data, so the
    next command rebuilds what it cannot trust (said on stderr) and removes the leftover."""
    from droneseg.data.cache import STALE_TEMP_S, build_cache, entry_problem
    from droneseg.data.layout import find_layout

    layout = find_layout(synth_root)
    samples = layout.samples[:3]
    entries = build_cache(samples, layout.table, 48, tmp_path / "cache", workers=1, progress=False)
    good = [np.asarray(e.load()[0]).copy() for e in entries]
    cut, empty = entries[0].image, entries[1].mask
    cut.write_bytes(cut.read_bytes()[:-100])
    empty.write_bytes(b"")
    stray = tmp_path / "cache" / f".{entries[2].image.name}.x1y2.tmp"
    stray.write_bytes(b"half")
    os.utime(stray, (time.time() - STALE_TEMP_S - 10,) * 2)
    fresh = tmp_path / "cache" / ".another.npy.a1b2.tmp"  # a live writer's: left alone
    fresh.write_bytes(b"busy")
    capsys.readouterr()
    again = build_cache(samples, layout.table, 48, tmp_path / "cache", workers=1, progress=False)
    err = capsys.readouterr().err
    assert f"cache entry of {samples[0].id} is damaged ({cut.name} is " in err
    assert f"cache entry of {samples[1].id} is damaged ({empty.name} unreadable" in err
    assert samples[2].id not in err
    assert all(entry_problem(e) is None for e in again)
    assert all((np.asarray(e.load()[0]) == g).all() for e, g in zip(again, good))
    assert not stray.exists() and fresh.exists()


def test_predict_twice_into_its_input_folder_replaces_its_outputs(synth_root, tmp_path, capsys):
    """The second run reads its own earlier masks as outputs, not photos; a mask the user put beside a photo is
    still refused as a clash. No lock file is left behind."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        shutil.copy(photo(synth_root, i), folder)
    model = save_tiny_model(tmp_path / "model", "six", long_side=None, inference={"tile": 32})
    for _ in range(2):
        result = run_cli(capsys, "predict", model, folder, "--out", folder)
        assert result.code == 0 and result.out.startswith("2 photos segmented"), result.err
        assert not (folder / ".droneseg.lock").exists()
    (folder / "000_color.png").unlink()  # now 000.png is not known to be ours: a file of the user's
    result = run_cli(capsys, "predict", model, folder, "--out", tmp_path / "elsewhere")
    assert result.code == 2 and "rename one" in result.err

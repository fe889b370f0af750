"""The ``droneseg`` command: each sub-command parses its options, calls one public function, and
prints where the output went. Bad input ends with one ``droneseg: error: …`` line and exit code 2; a bug ends
with one ``droneseg: internal error: …`` line and exit code 3 (``--debug`` shows the traceback). The exit codes
are listed in :mod:`droneseg.errors`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
import typer.core

from droneseg.errors import DataError

if TYPE_CHECKING:
    from droneseg.data.layout import DataSource
    from droneseg.tiler import InferenceOverrides

def _flags_without_metavar(params: list) -> list:
    """Flags take no value: ``--help`` shows none (typer would print ``<bool>``)."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class _Command(typer.core.TyperCommand):
    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        return _flags_without_metavar(super().get_params(ctx))


class _Group(typer.core.TyperGroup):
    """The top level: commands in workflow order (as registered)."""

    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        return _flags_without_metavar(super().get_params(ctx))


app = typer.Typer(
    name="droneseg",
    cls=_Group,
    help="Semantic segmentation of aerial drone photos and orthomosaics. Workflow: demo (no data needed); synth, "
         "synth-ortho (synthetic data); check-data, augment; train; evaluate; predict; export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
command = partial(app.command, cls=_Command)

DATA_HELP = ("Dataset folder: Kaggle layout (original_images/ with label_images_semantic/ index masks or "
             "RGB_color_image_masks/ colour masks, class_dict_seg.csv: name, r, g, b per class) or TU Graz layout; "
             "or give --images and --masks.")
DataOpt = Annotated[Optional[Path], typer.Option("--data", help=DATA_HELP)]
ImagesOpt = Annotated[Optional[Path], typer.Option("--images", help="Folder of photos, with --masks, instead of --data.")]
MasksOpt = Annotated[Optional[Path], typer.Option("--masks", help="Folder of masks (index or colour PNGs), paired with --images by file stem.")]
TableOpt = Annotated[Optional[Path], typer.Option("--class-table", help="class_dict CSV (name, r, g, b) overriding the one found.")]


def _source(data: Path | None, images: Path | None, masks: Path | None, table: Path | None) -> DataSource:
    from droneseg.data.layout import DataSource

    if data is not None and (images is not None or masks is not None):
        raise DataError("give --data DIR or --images DIR --masks DIR, not both")
    if (images is None) != (masks is None):
        raise DataError("--images and --masks go together")
    if data is None and images is None:
        raise DataError("no dataset: pass --data DIR (or --images DIR --masks DIR)")
    return DataSource(data, images, masks, table)


SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key, e.g. --set train.lr=3e-4 (repeatable).")]
DEBUG_ENV = "DRONESEG_DEBUG"


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help=f"Print the traceback of any error (or {DEBUG_ENV}=1).")] = False,
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not WIDTHxHEIGHT, e.g. 768x512") from None
    if w < 16 or h < 16:
        raise typer.BadParameter(f"{text!r}: each side must be at least 16 pixels")
    return w, h


@command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the synthetic data and the run.")] = Path("runs"),
    set_: SetOpt = None,
) -> None:
    """No data, no arguments: synthesise scenes, train the small U-Net on CPU, evaluate, predict, print where."""
    started = time.monotonic()
    from droneseg.config import load_config
    from droneseg.data.splits import read_split_file
    from droneseg.data.synthetic import write_synthetic
    from droneseg.engine.train import train as run_training
    from droneseg.predict import predict

    data = out / "demo-data"
    if not (data / "splits" / "val.txt").is_file():
        write_synthetic(data, n=DEMO_SCENES, size=DEMO_SIZE, seed=0)
    cfg = load_config("demo", list(set_ or []), {"data.root": str(data.resolve())})
    run = run_training(cfg, out=out, started=started)
    photos = [data / "original_images" / f"{i}.jpg" for i in read_split_file(data / "splits" / "val.txt")[:3]]
    predict(run, photos, run / "predict", progress=False)
    summary = json.loads((run / "train_summary.json").read_text(encoding="utf-8"))
    typer.echo(f"demo data:      {data}")
    typer.echo(f"run folder:     {run}")
    if "val_miou_native" in summary:
        typer.echo(f"val mIoU:       {summary['val_miou_native']:.3f} (native resolution, {summary['val_images']} images)")
        typer.echo(f"report:         {run / summary['eval_report']}")
    else:
        typer.echo(f"val mIoU:       {summary['best_val_miou_working_size']:.3f} (working size; final evaluation off)")
    typer.echo(f"predictions:    {run / 'predict'}")


@command()
def synth(
    out: Annotated[Path, typer.Argument(help="New folder to write the synthetic dataset into.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 40,
    size: Annotated[str, typer.Option("--size", help="WIDTHxHEIGHT of each scene.")] = "768x512",
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same scenes.")] = 0,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9, help="Share of the scenes listed in splits/val.txt.")] = 0.2,
) -> None:
    """Write procedural aerial scenes in the Kaggle layout with the real palette."""
    from droneseg.data.synthetic import write_synthetic

    path = write_synthetic(out, n=n, size=_parse_size(size), seed=seed, val_fraction=val_fraction)
    typer.echo(f"wrote {n} synthetic scenes to {path}")


@command("synth-ortho")
def synth_ortho(
    out: Annotated[Path, typer.Argument(help="GeoTIFF to write (its true classes go to <stem>_labels.tif beside it).")],
    size: Annotated[str, typer.Option("--size", help="WIDTHxHEIGHT in pixels.")] = "4000x3000",
    gsd: Annotated[float, typer.Option("--gsd", help="Metres per pixel.")] = 0.05,
    crs: Annotated[str, typer.Option("--crs", help="Any CRS GDAL knows: EPSG:32633, a WKT or PROJ string.")] = "EPSG:32633",
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same ground.")] = 0,
) -> None:
    """Write a synthetic georeferenced orthomosaic (RGBA GeoTIFF, transparent collar) to try `predict` on, and its
    true classes as a survey to train on (polygons, extent, <stem>_survey.yaml)."""
    from droneseg.geo import require

    require()
    from droneseg.geo.scene import labels_path, survey_paths, write_synthetic_ortho, write_synthetic_survey

    for path in (out, labels_path(out), *survey_paths(out).values()):
        if path.exists():
            raise DataError(f"{path} exists; synthetic data never overwrites files")
    areas = write_synthetic_ortho(out, _parse_size(size), gsd=gsd, crs=crs, seed=seed)
    files = write_synthetic_survey(out)
    typer.echo(f"wrote {out} and {labels_path(out)}: {sum(areas.values()):.1f} m² of valid ground; its labels as "
               f"polygons in {files['labels'].name}, to train on: droneseg train -c demo --data {files['survey']}")


@command("import")
def import_cmd(
    tool: Annotated[str, typer.Argument(help="The labelling tool whose export this is: cvat, labelstudio or labelme.")],
    source: Annotated[Path, typer.Argument(help="cvat: the Segmentation mask 1.1 zip (or its folder); labelstudio: the JSON export, or the folder of its PNG export; labelme: a folder of its JSON files, one of them, or labelme2voc's output folder.")],
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of the labelled photos (found by file name; for labelme2voc: its JPEGImages/ by default).")] = None,
    out: Annotated[Path, typer.Option("--out", help="New dataset folder to write (never overwritten).")] = Path("data"),
    classes: Annotated[Optional[Path], typer.Option("--classes", help="Class order and colours: a name,r,g,b CSV or a list of names (labelme's labels.txt). Default: the tool's label map (CVAT), class_names.txt (labelme2voc), else the labels found, sorted.")] = None,
    tasks: Annotated[Optional[Path], typer.Option("--tasks", help="labelstudio PNG export only: the project's JSON export, which maps its task ids to photos.")] = None,
) -> None:
    """Turn a labelling tool's export into a dataset droneseg trains on (index masks, class_dict_seg.csv, splits/).
    Strict: every problem is listed, one line each naming its file, and nothing is written unless there are none."""
    from droneseg.labelling.dataset import ImportFailed, read_classes, write_dataset

    tool = tool.lower().replace("-", "").replace("_", "")
    if tasks is not None and tool != "labelstudio":
        raise DataError("--tasks is for Label Studio's PNG export")
    wanted = read_classes(classes) if classes is not None else None
    if tool == "cvat":
        from droneseg.labelling.cvat import read_cvat

        if classes is not None:
            raise DataError("--classes: a CVAT export carries its label map (labelmap.txt); drop --classes")
        imported = read_cvat(source, images)
    elif tool == "labelstudio":
        from droneseg.labelling.labelstudio import read_labelstudio

        if images is None:
            raise DataError("--images: give the folder of the photos the Label Studio project labelled")
        imported = read_labelstudio(source, images, wanted, tasks)
    elif tool == "labelme":
        from droneseg.labelling.labelme import read_labelme

        imported = read_labelme(source, images, wanted)
    else:
        raise DataError(f"{tool!r}: not a labelling tool droneseg imports; choose cvat, labelstudio or labelme")
    from droneseg.labelling.tiles import read_sidecar

    folders = {p.image.parent for p in imported.photos}
    sidecar = read_sidecar(next(iter(folders))) if len(folders) == 1 else None
    then = None
    if sidecar is not None:  # tiles cut by `droneseg tiles`: their labels go back onto the map as a survey
        from droneseg.geo import require

        require()  # before anything is written
        from droneseg.labelling.tiles import tiles_to_survey

        then = partial(tiles_to_survey, sidecar=sidecar)  # written into the dataset before it is moved into place
    try:
        summary = write_dataset(imported, out, then)
    except ImportFailed as failed:
        for line in failed.problems:
            typer.echo(f"problem: {line}", err=True)
        raise
    if sidecar is not None:
        survey = out / "survey.yaml"
        typer.echo(f"the tiles' labels on the map of {sidecar['source']}: {survey} (train on it: droneseg train "
                   f"--data {survey})", err=True)
    for line in imported.notes:
        typer.echo(f"note: {line}", err=True)
    labelled = {k: v for k, v in summary["pixels"].items() if k != "unlabeled"}
    typer.echo(f"{imported.tool}: {summary['photos']} photos, {len(summary['classes'])} classes "
               f"({', '.join(summary['classes'])}); {100 * summary['unlabeled_share']:.1f} % of pixels unlabelled "
               f"(ignored); " + (f"splits {summary['splits']}" if summary["splits"] else "no splits (droneseg draws "
               "seeded ones)") + f"; pixels per class: {labelled}", err=True)
    typer.echo(str(out))


@command("tiles")
def tiles_cmd(
    ortho: Annotated[Path, typer.Argument(help="The orthomosaic to cut (GeoTIFF or any raster GDAL reads, with a CRS).")],
    out: Annotated[Path, typer.Option("--out", help="New folder for the tiles, their world files and tiles.json.")],
    size: Annotated[int, typer.Option("--size", help="Tile side in pixels, at the orthomosaic's own resolution.")] = 1024,
    nodata: Annotated[Optional[str], typer.Option("--nodata", help="The value that marks no data instead of the file's declared one, or none.", show_default=False)] = None,
) -> None:
    """Cut an orthomosaic into PNG tiles to label in CVAT, Label Studio or labelme (whole tiles with data everywhere,
    each with its georeference); `droneseg import` of their labels then writes a survey on the map."""
    from droneseg.geo import require

    require()
    from droneseg.geo.options import OrthoOptions
    from droneseg.labelling.tiles import cut_tiles

    done = cut_tiles(ortho, out, size, OrthoOptions.from_cli(nodata=nodata).nodata)
    typer.echo(f"{done['tiles']} tiles of {size}x{size} px in {out} ({done['skipped']} left out: over the collar or "
               f"the raster's edge); label them, then: droneseg import TOOL EXPORT --images {out} --out DATA", err=True)
    typer.echo(str(out))


@command("check-data")
def check_data(
    data_dir: Annotated[Optional[Path], typer.Argument(help="Dataset folder (the same as --data).", show_default=False)] = None,
    data: DataOpt = None,
    images: ImagesOpt = None,
    masks: MasksOpt = None,
    class_table: TableOpt = None,
    workers: Annotated[int, typer.Option(help="Parallel decoding processes.")] = _workers(),
) -> None:
    """Report every problem of a dataset (one line each, naming the file) and its class table; exit 0 only when clean."""
    from droneseg.data.check import check_dataset

    if data_dir is not None and data is not None:
        raise DataError("give the dataset folder once (DATA or --data)")
    layout = _source(data_dir or data, images, masks, class_table).find()
    typer.echo(layout.describe())
    summary: list[str] = []
    if layout.plan is not None:  # a survey
        from droneseg.data.check import CheckReport
        from droneseg.geo.survey import check_survey

        problems, notes, blocks, pixels, summary = check_survey(layout.plan, progress=sys.stderr.isatty())
        report = CheckReport(problems, len(layout.samples), blocks, pixels, notes)
    else:
        report = check_dataset(layout, workers=workers, progress=sys.stderr.isatty())
    for line in report.problems:
        typer.echo(f"problem: {line}")
    for line in report.notes:
        typer.echo(f"warning: {line}")
    typer.echo(report.class_table_text(layout.table, "blocks" if layout.plan is not None else "images"))
    for line in summary:
        typer.echo(line)
    what = "blocks" if layout.plan is not None else "pairs"
    if report.ok:
        typer.echo(f"{report.checked} {what} checked: all clean")
    else:
        typer.echo(f"{report.checked} {what} checked: {len(report.problems)} problems", err=True)
        raise typer.Exit(1)


@command()
def augment(
    data: Annotated[Path, typer.Argument(help="Dataset folder (Kaggle or TU Graz layout).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="New folder for the augmented dataset.")],
    copies: Annotated[int, typer.Option("--copies", min=1, help="Augmented copies of each training photo.")] = 4,
    crop: Annotated[Optional[int], typer.Option("--crop", min=16, help="Cut random scaled square crops of this side instead of whole photos.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same copies.")] = 0,
) -> None:
    """Offline augmentation of the training ids (the original project's workflow), in the Kaggle layout."""
    from droneseg.data.offline import augment_dataset

    path = augment_dataset(data, out, copies, seed=seed, crop=crop, progress=sys.stderr.isatty())
    typer.echo(f"wrote augmented dataset to {path}")


def _train_help() -> str:
    from droneseg.config import PRESETS

    lines = "\n".join(f"- {name}: {text}" for name, text in PRESETS.items())
    return ("Train a model; prints the run folder. Under torchrun, srun or an OAR job script it trains on every rank.\n\n"
            f"Presets (-c NAME; or a YAML file of your own):\n\n{lines}\n\n"
            "The dataset (--data, or --images and --masks) holds photos and masks paired by file stem and a class "
            "table naming your classes; check it first with `droneseg check-data`.")


@command(help=_train_help())
def train(
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="Preset name (listed above) or YAML path. [default: full]", show_default=False)] = None,
    data: DataOpt = None,
    images: ImagesOpt = None,
    masks: MasksOpt = None,
    class_table: TableOpt = None,
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for run folders. [default: runs]", show_default=False)] = None,
    max_time: Annotated[Optional[str], typer.Option("--max-time", help="Wall-clock budget of the whole command, e.g. 30m, 2h.")] = None,
    max_epochs: Annotated[Optional[int], typer.Option("--max-epochs", min=1, help="Most epochs to train (default: the preset's train.max_epochs).")] = None,
    devices: Annotated[Optional[str], typer.Option("--devices", help="Devices (processes) per node: a number or auto (default: train.devices).")] = None,
    num_nodes: Annotated[Optional[int], typer.Option("--num-nodes", min=1, help="Nodes of a cluster job (default: train.num_nodes).")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="The run folder itself: resumed if it holds this run unfinished (a requeued job), else a new run there.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder; with --max-epochs/--max-time, also a finished one.")] = None,
    gsd: Annotated[Optional[float], typer.Option("--gsd", help="Metres per pixel of the dataset's photos at their own size (sets data.gsd); model.json then records the model's GSD, for orthomosaics.")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from a trained run's model (sets train.init): the same classes load the whole network, other classes its encoder and decoder with a new head. See the finetune preset.")] = None,
) -> None:
    started = time.monotonic()  # --max-time counts from here, the heavy imports included
    from droneseg.config import load_config

    extend = {"train.max_epochs": max_epochs, "train.max_time": max_time}
    if resume is not None:  # every option it cannot honour is refused, none silently ignored
        given = {"-c/--config": config, "--set": set_, "--out": out, "--run-dir": run_dir, "--data": data,
                 "--images": images, "--masks": masks, "--class-table": class_table, "--gsd": gsd,
                 "--devices": devices, "--num-nodes": num_nodes, "--init": init}
        refused = [name for name, value in given.items() if value is not None and value != []]
        if refused:
            raise DataError(f"--resume continues a run as it was configured and takes only --max-epochs and "
                            f"--max-time (to extend it); drop {', '.join(refused)}")
        cfg = None
    else:
        values: dict[str, object] = {"train.devices": _devices(devices), "train.num_nodes": num_nodes, "data.gsd": gsd,
                                     "train.init": init}
        if data is not None or images is not None or masks is not None:
            source = _source(data, images, masks, class_table)
            values.update({"data.root": source.root, "data.images": source.images, "data.masks": source.masks})
        values["data.class_table"] = class_table
        values = {k: str(v.resolve()) if isinstance(v, Path) else v for k, v in values.items() if v is not None}
        cfg = load_config(config or "full", list(set_ or []), {**values, **extend})
        if cfg.train.init:  # a wrong --init is answered at once, before Lightning is imported
            from droneseg.engine.init import Parent

            Parent.open(cfg.train.init)
    # Lightning (seconds to import) only once the config is known to be valid: a typo is answered at once
    from droneseg.engine.train import Requeued
    from droneseg.engine.train import train as run_training

    try:
        run = run_training(cfg, out=out or Path("runs"), resume=resume, started=started, run_dir=run_dir,
                           extend=extend if resume is not None else None)
    except Requeued as stop:
        typer.echo(f"droneseg: {stop}", err=True)
        raise typer.Exit(stop.exit_code) from None
    from droneseg.cluster import detect

    if detect().rank == 0:  # one line for the job, from rank 0
        typer.echo(str(run))


def _devices(text: str | None) -> int | str | None:
    """``--devices``: a number of devices, or ``auto``."""
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise DataError(f"--devices: a number or auto, got {text!r}") from None


TileOpt = Annotated[Optional[int], typer.Option("--tile", min=32, help="Tile side at working scale.", rich_help_panel="Inference (default: model.json)")]
OverlapOpt = Annotated[Optional[float], typer.Option("--overlap", min=0.0, max=0.9, help="Tile overlap share.", rich_help_panel="Inference (default: model.json)")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch", min=1, help="Tiles per forward pass.", rich_help_panel="Inference (default: model.json)")]
BlendOpt = Annotated[Optional[str], typer.Option("--blend", help="gaussian or cosine tile weights.", rich_help_panel="Inference (default: model.json)")]
TtaOpt = Annotated[Optional[bool], typer.Option("--tta/--no-tta", help="Average over flips.", show_default=False, rich_help_panel="Inference (default: model.json)")]
LumaOpt = Annotated[Optional[str], typer.Option("--luma-threshold", help="luma scheme: split each map at its mean or median.", rich_help_panel="Inference (default: model.json)")]
BackendOpt = Annotated[Optional[str], typer.Option("--backend", help="torch, onnx (ONNX Runtime on RUN/model.onnx, exported if missing), onnx-int8 (ONNX Runtime on RUN/model-int8.onnx, from export --format int8) or openvino (OpenVINO on RUN/model.onnx; the openvino extra); default: onnx on a CPU where ONNX Runtime is installed and RUN/model.onnx holds the current weights (droneseg export RUN writes it), else torch; an .onnx MODEL runs on onnx unless openvino is asked for.", show_default=False)]
NumberingOpt = Annotated[str, typer.Option("--numbering", help="Mask values: auto (dataset's for one-to-one schemes, else the scheme's 0..K-1), dataset, scheme.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 … (default: cuda if present).")]
ModelArg = Annotated[Path, typer.Argument(help="Run folder (or its model.json), or an exported model.onnx.", show_default=False)]


def _inference(tile: int | None, overlap: float | None, batch: int | None, blend: str | None, tta: bool | None,
               luma: str | None) -> InferenceOverrides:
    """The inference options of evaluate and predict as the one object that travels down."""
    from droneseg.tiler import InferenceOverrides

    return InferenceOverrides(tile=tile, overlap=overlap, batch=batch, blend=blend, tta=tta, luma_threshold=luma)


@command("evaluate")
def evaluate_cmd(
    model: ModelArg,
    data: DataOpt = None,
    images: ImagesOpt = None,
    masks: MasksOpt = None,
    class_table: TableOpt = None,
    split: Annotated[str, typer.Option("--split", help="val, test, train (the run's own split files on the dataset it was trained on, else the dataset's splits/), or a file of ids.")] = "val",
    backend: BackendOpt = None,
    tile: TileOpt = None,
    overlap: OverlapOpt = None,
    batch: BatchOpt = None,
    blend: BlendOpt = None,
    tta: TtaOpt = None,
    luma: LumaOpt = None,
    save_masks: Annotated[bool, typer.Option("--save-masks", help="Write each predicted mask at native size, with masks/class_dict.csv.")] = False,
    numbering: NumberingOpt = "auto",
    figures: Annotated[int, typer.Option("--figures", min=0, help="Prediction figures for N images spread from best to worst (1: the median).")] = 6,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default RUN/eval/SPLIT, then SPLIT-2…).")] = None,
    device: DeviceOpt = None,
) -> None:
    """Evaluate a trained model on a whole split at native mask resolution; writes metrics, figures, report.html.

    The photos go through the same model session and tiler as validation and predict.
    """
    from droneseg.cluster import detect
    from droneseg.evaluate import evaluate

    folder = evaluate(model, _source(data, images, masks, class_table), split=split,
                      inference=_inference(tile, overlap, batch, blend, tta, luma), backend=backend,
                      save_masks=save_masks, numbering=numbering, figures=figures, out=out, device=device,
                      progress=sys.stderr.isatty())
    if detect().rank == 0:  # under torchrun/srun every rank scored a shard; rank 0 wrote the report
        typer.echo(str(folder / "report.html"))


ORTHO = "Orthomosaics"


@command("predict")
def predict_cmd(
    model: ModelArg,
    inputs: Annotated[list[Path], typer.Argument(help="Photos, orthomosaics (GeoTIFF, VRT, JP2…) or folders of them.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder for masks, colour masks, overlays, class_dict.csv and class_areas.csv; for orthomosaics <stem>_classes.tif, _polygons.gpkg, _class_areas.csv/.json, _preview.jpg.")],
    backend: BackendOpt = None,
    tile: TileOpt = None,
    overlap: OverlapOpt = None,
    batch: BatchOpt = None,
    blend: BlendOpt = None,
    tta: TtaOpt = None,
    luma: LumaOpt = None,
    gsd: Annotated[Optional[float], typer.Option("--gsd", help="Photos: metres per photo pixel, for areas in m² (an orthomosaic's comes from its geotransform).")] = None,
    scale: Annotated[float, typer.Option("--scale", help="Photos: write outputs at this fraction of the photo's size (0.25: a fast preview); the network still sees its training scale.")] = 1.0,
    numbering: NumberingOpt = "auto",
    device: DeviceOpt = None,
    model_gsd: Annotated[Optional[float], typer.Option("--model-gsd", help="Metres of ground per pixel the model works at (default: model.json; unknown: the ortho's own resolution, with a warning).", rich_help_panel=ORTHO)] = None,
    confidence: Annotated[bool, typer.Option("--confidence", help="Also write <stem>_confidence.tif (top class probability x 255).", rich_help_panel=ORTHO)] = False,
    vector: Annotated[str, typer.Option("--vector", help="Polygons as gpkg, geojson, or none.", rich_help_panel=ORTHO)] = "gpkg",
    min_area: Annotated[Optional[float], typer.Option("--min-area", help="Merge regions under this many m² into their neighbours.", rich_help_panel=ORTHO)] = None,
    simplify: Annotated[Optional[float], typer.Option("--simplify", help="Simplify polygons as a coverage (tolerance in CRS units: metres, or degrees in a geographic CRS; shared edges stay shared).", rich_help_panel=ORTHO)] = None,
    nodata: Annotated[Optional[str], typer.Option("--nodata", help="The value that marks no data instead of the file's declared one, or none: every pixel holds data (a white roof in an 8-bit ortho declaring nodata 255).", rich_help_panel=ORTHO, show_default=False)] = None,
    uncertainty: Annotated[bool, typer.Option("--uncertainty", help="Also write <stem>_uncertainty.png (255 x (1 - the margin between the two likeliest classes)) and label_next.csv: the photos ranked by uncertain share, to label first.")] = False,
    strip: Annotated[int, typer.Option("--strip", help="Strip width in working pixels (memory grows with it; each strip reads about a tile of context more on each side).", rich_help_panel=ORTHO)] = 4096,
) -> None:
    """Segment photos of any size and georeferenced orthomosaics (the geo extra), with the settings in model.json.

    Photos: masks, colour masks, overlays and class areas. Orthomosaics (GeoTIFF and other GDAL rasters, read window
    by window): a class COG, polygons, areas in m² and a preview.
    """
    from droneseg.geo.options import OrthoOptions
    from droneseg.predict import predict

    ortho = OrthoOptions.from_cli(model_gsd=model_gsd, confidence=confidence, vector=vector, min_area=min_area,
                                  simplify=simplify, strip=strip, nodata=nodata)
    summary = predict(model, inputs, out, inference=_inference(tile, overlap, batch, blend, tta, luma),
                      backend=backend, gsd=gsd, scale=scale, numbering=numbering, device=device,
                      progress=sys.stderr.isatty(), ortho=ortho, uncertainty=uncertainty)
    if summary.rank > 0:  # rank 0 reports for the whole job
        return
    n_photos = len(summary.photos) - len(summary.orthos)
    counts = [_count(n_photos, "photo")] if n_photos or not summary.orthos else []
    counts += [_count(len(summary.orthos), "orthomosaic")] if summary.orthos else []
    typer.echo(f"{' and '.join(counts)} segmented into {summary.out}"
               + (f" by {len(summary.ranks)} processes" if len(summary.ranks) > 1 else ""))
    for ortho in summary.orthos.values():
        typer.echo("  " + ortho["files"]["classes"])
    if uncertainty and (summary.out / "label_next.csv").is_file():
        typer.echo(f"  {summary.out / 'label_next.csv'}: the photos ranked by uncertain share, to label first")
    if summary.failed:
        typer.echo(f"{_count(len(summary.failed), 'input')} could not be read: {', '.join(summary.failed)}", err=True)
        raise typer.Exit(1)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@command("export")
def export_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder (or its model.json).", show_default=False)],
    format: Annotated[str, typer.Option("--format", help="onnx: for droneseg's onnx backend (any size, logits); int8: the same in 8-bit integers for --backend onnx-int8, calibrated on --data's train split and checked class by class on its val split; qgis: one file for QGIS's Deepness plugin and WebODM's GeoDeep (fixed square tiles, probabilities, their metadata).")] = "onnx",
    out: Annotated[Optional[Path], typer.Option("--out", help="File or folder (default RUN/model.onnx, where --backend onnx looks; RUN/model-int8.onnx for int8; RUN/model-qgis.onnx for qgis).")] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX operator set version to write (11 to the exporter's newest, 20 with torch 2.14).")] = 17,
    gsd: Annotated[Optional[float], typer.Option("--gsd", help="qgis: metres of ground per pixel at the model's working size (default: model.json's gsd, from training with --gsd).", show_default=False)] = None,
    tile: Annotated[Optional[int], typer.Option("--tile", help="qgis: tile side in pixels (default: the model's inference tile).", show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="int8: the dataset the model was trained on (calibration tiles from its train split, the parity check on its val split).", show_default=False)] = None,
    calibration: Annotated[int, typer.Option("--calibration", help="int8: calibration tiles (one per training photo, in turn).")] = 32,
    check: Annotated[int, typer.Option("--check", help="int8: val photos labelled by both models for the parity check.")] = 10,
) -> None:
    """Export to ONNX with the model's description as metadata, checking parity with PyTorch (int8: class by class
    with the float model)."""
    from droneseg.export import FORMATS, export

    formats = [*FORMATS, "int8"]
    if format not in formats:
        raise typer.BadParameter(f"unknown format {format!r}; choose from {formats}")
    if format != "qgis" and (gsd is not None or tile is not None):
        raise typer.BadParameter("--gsd and --tile are for --format qgis")
    if format == "int8":
        if data is None:
            raise typer.BadParameter("--format int8 needs --data (the dataset the model was trained on)")
        from droneseg.quantize import quantize

        typer.echo(str(quantize(model, data, out, calibration=calibration, check=check, progress=sys.stderr.isatty())))
        return
    if data is not None:
        raise typer.BadParameter("--data is for --format int8")
    result = export(model, out, opset=opset, format=format, gsd=gsd, tile=tile)
    typer.echo(str(result))


DEMO_SCENES = 48
DEMO_SIZE = (384, 256)


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in sys.argv[1:]


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``argv``: the arguments, default ``sys.argv[1:]``); always ends with ``sys.exit``.

    The user's errors (:class:`~droneseg.errors.UserError`, a usage error of an option, and an ``OSError`` that
    names its file: missing, unreadable, disk full) become one ``droneseg: error:`` line and their exit code;
    anything else is a bug, said to be one, with exit code 3. ``--debug`` or ``DRONESEG_DEBUG=1`` adds the
    traceback."""
    from droneseg.errors import EXIT_INPUT, EXIT_INTERRUPTED

    try:
        code = app(args=argv, prog_name="droneseg", standalone_mode=False)
    except typer.Abort:  # Ctrl-C outside training (which saves and raises Interrupted instead)
        typer.echo("droneseg: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - click's own errors, by name: typer vendors click
        kinds = {c.__name__ for c in type(exc).__mro__}
        if "NoArgsIsHelpError" in kinds:  # plain `droneseg`: its help
            exc.show()  # type: ignore[attr-defined]
            sys.exit(0)
        if "UsageError" in kinds:
            ctx = getattr(exc, "ctx", None)
            where = f" (see: droneseg {ctx.info_name} --help)" if ctx is not None and ctx.parent is not None else ""
            typer.echo(f"droneseg: error: {exc.format_message()}{where}", err=True)  # type: ignore[attr-defined]
            sys.exit(EXIT_INPUT)
        if "ClickException" in kinds:
            typer.echo(f"droneseg: error: {exc.format_message()}", err=True)  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        _fail(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(exc: Exception) -> None:
    """The user's error as one line and its exit code, else an internal error."""
    from droneseg.errors import EXIT_INPUT, UserError

    _traceback_if_debug(exc)
    if isinstance(exc, UserError):
        typer.echo(f"droneseg: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if isinstance(exc, OSError) and exc.filename is not None:
        typer.echo(f"droneseg: error: {exc.filename}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_INPUT)
    _internal(exc)


def _traceback_if_debug(exc: BaseException) -> None:
    if _debug():
        import traceback

        traceback.print_exception(exc)


def _internal(exc: BaseException) -> None:
    from droneseg.errors import EXIT_INTERNAL

    first = str(exc).splitlines()[0] if str(exc) else ""
    how = "" if _debug() else f"; run again with --debug (or {DEBUG_ENV}=1) for the traceback"
    typer.echo(f"droneseg: internal error: {type(exc).__name__}: {first} (a bug in droneseg or a library, not in "
               f"your input{how}, and please report it)", err=True)
    sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()

"""``droneseg check-data``: every problem in a dataset at once, one line each, and a class table.

Contract
--------
``check_dataset`` streams the pairs through worker processes (one photo per worker in memory at a
time, so 400 photos of 6000x4000 are fine) and returns a :class:`CheckReport`: the problems
(``<file>: <what>``), notes (warnings: photos with an EXIF turn and which view their mask matches, masks
that hold only `unlabeled`), and per source class the number of images containing it and its pixel count.
Images are decoded in full (at a reduced JPEG DCT scale, which still reads every byte), so a
truncated file is caught; masks are decoded at full size.

>>> CheckReport(problems=[], checked=0, class_images=np.zeros(2, int), class_pixels=np.zeros(2, int)).ok
True
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from droneseg.classes import ClassTable, DataError
from droneseg.data.layout import Layout, Sample
from droneseg.images import ORIENTATIONS, PHOTO_MODES, PhotoView, mask_size_problem, open_image, photo_view, read_mask


@dataclass
class CheckReport:
    problems: list[str]
    checked: int
    class_images: np.ndarray  # (N,) images containing each source class
    class_pixels: np.ndarray  # (N,) pixels of each source class
    notes: list[str] = field(default_factory=list)  # warnings: EXIF-turned photos, masks with nothing labelled

    @property
    def ok(self) -> bool:
        return not self.problems

    def class_table_text(self, table: ClassTable, unit: str = "images") -> str:
        """Per source class: the ``unit`` (images, a survey's blocks) holding it and its share of the pixels."""
        total = max(int(self.class_pixels.sum()), 1)
        lines = [f"{'idx':>3}  {'class':<14}{unit:>8}{'pixel share':>13}"]
        for i, name in enumerate(table.names):
            share = 100.0 * self.class_pixels[i] / total
            lines.append(f"{i:>3}  {name:<14}{int(self.class_images[i]):>8}{share:>12.2f}%")
        return "\n".join(lines)


def _verify_image(sample: Sample) -> PhotoView:
    """Decode the whole photo (reduced DCT scale for JPEG) and return its header view (stored/displayed size)."""
    view = photo_view(sample.image)
    with open_image(sample.image) as im:
        try:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
            im.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{sample.image}: unreadable or truncated image ({exc})") from None
        if im.mode not in PHOTO_MODES:
            raise DataError(f"{sample.image}: photo of mode {im.mode}; accepted: 8- or 16-bit grey, palette, RGB, "
                            "RGBA, CMYK, YCbCr")
    return view


def check_sample(sample: Sample, table: ClassTable) -> tuple[list[str], list[str], np.ndarray | None]:
    """Problems of one pair, notes (warnings that do not stop training), and its (N,) class pixel counts when the
    mask is readable."""
    problems: list[str] = []
    notes: list[str] = []
    view = None
    try:
        view = _verify_image(sample)
    except DataError as exc:
        problems.append(str(exc))
    if sample.mask is None:
        return problems, notes, None
    try:
        mask = read_mask(sample.mask, sample.mask_kind, table)
    except DataError as exc:
        return problems + [str(exc)], notes, None
    if view is not None:
        problem = mask_size_problem(sample.mask, (mask.shape[1], mask.shape[0]), sample.image, view)
        if problem:
            problems.append(problem)
        elif view.orientation != 1:
            which = ("its mask matches the displayed view" if view.stored != view.displayed
                     else "its mask's size cannot tell which view it was drawn on: check an overlay")
            notes.append(f"{sample.image}: EXIF orientation {view.orientation} "
                         f"({ORIENTATIONS.get(view.orientation, '?')}), read as displayed; {which}")
    counts = np.bincount(mask.ravel(), minlength=len(table)).astype(np.int64)
    if "unlabeled" in table.names and counts.sum() and counts[table.index("unlabeled")] == counts.sum():
        notes.append(f"{sample.mask}: holds only 'unlabeled' pixels: it adds nothing to training or scoring")
    return problems, notes, counts


def _check_one(args: tuple[Sample, ClassTable]) -> tuple[list[str], list[str], np.ndarray | None]:
    return check_sample(*args)


def check_dataset(layout: Layout, workers: int = 2, progress: bool = True) -> CheckReport:
    """Check every pair of ``layout``; problems found while pairing come first."""
    n = len(layout.table)
    problems = list(layout.problems)
    if not layout.samples:
        problems.append(f"{layout.root}: no image/mask pairs found")
    notes: list[str] = []
    class_images = np.zeros(n, dtype=np.int64)
    class_pixels = np.zeros(n, dtype=np.int64)
    jobs = [(s, layout.table) for s in layout.samples]
    bar = tqdm(total=len(jobs), desc="check-data", unit="img", disable=not progress)
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        # map keeps input order, so the report reads in file order whatever the scheduling
        for sample_problems, sample_notes, counts in pool.map(_check_one, jobs, chunksize=4):
            problems += sample_problems
            notes += sample_notes
            if counts is not None:
                class_images += counts > 0
                class_pixels += counts
            bar.update()
    bar.close()
    if layout.table_path is None and layout.samples:
        used = [name for name, px in zip(layout.table.names, class_pixels) if px > 0]
        notes.append(f"no class table found (class_dict_seg.csv or class_dict.csv at {layout.root}): the Semantic Drone "
                     f"Dataset's {n} classes are assumed, and the masks use {len(used)} of them "
                     f"({', '.join(used[:6])}{'…' if len(used) > 6 else ''}); if these are classes of your own, give "
                     "--class-table CSV (name, r, g, b per class)")
    return CheckReport(problems, len(jobs), class_images, class_pixels, notes)

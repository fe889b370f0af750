"""``droneseg check-data``: every problem in a dataset at once, one line each, and a class table.

Contract
--------
``check_dataset`` streams the pairs through worker processes (one photo per worker in memory at a
time, so 400 photos of 6000x4000 are fine) and returns a :class:`CheckReport`: the problems
(``<file>: <what>``), and per source class the number of images containing it and its pixel count.
Images are decoded in full (at a reduced JPEG DCT scale, which still reads every byte), so a
truncated file is caught; masks are decoded at full size.

>>> CheckReport(problems=[], checked=0, class_images=np.zeros(2, int), class_pixels=np.zeros(2, int)).ok
True
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from droneseg.classes import ClassTable, DataError
from droneseg.data.layout import Layout, Sample
from droneseg.io import open_image, read_mask


@dataclass
class CheckReport:
    problems: list[str]
    checked: int
    class_images: np.ndarray  # (N,) images containing each source class
    class_pixels: np.ndarray  # (N,) pixels of each source class

    @property
    def ok(self) -> bool:
        return not self.problems

    def class_table_text(self, table: ClassTable) -> str:
        total = max(int(self.class_pixels.sum()), 1)
        lines = [f"{'idx':>3}  {'class':<14}{'images':>8}{'pixel share':>13}"]
        for i, name in enumerate(table.names):
            share = 100.0 * self.class_pixels[i] / total
            lines.append(f"{i:>3}  {name:<14}{int(self.class_images[i]):>8}{share:>12.2f}%")
        return "\n".join(lines)


def _verify_image(sample: Sample) -> tuple[int, int]:
    """Decode the whole photo (reduced DCT scale for JPEG) and return its stored (W, H)."""
    with open_image(sample.image) as im:
        size = im.size
        try:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{sample.image}: unreadable or truncated image ({exc})") from None
    return size


def check_sample(sample: Sample, table: ClassTable) -> tuple[list[str], np.ndarray | None]:
    """Problems of one pair, and its (N,) class pixel counts when the mask is readable."""
    problems: list[str] = []
    size = None
    try:
        size = _verify_image(sample)
    except DataError as exc:
        problems.append(str(exc))
    if sample.mask is None:
        return problems, None
    try:
        mask = read_mask(sample.mask, sample.mask_kind, table)
    except DataError as exc:
        return problems + [str(exc)], None
    if size is not None and (mask.shape[1], mask.shape[0]) != size:
        problems.append(
            f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but image {sample.image.name} is {size[0]}x{size[1]}"
        )
    return problems, np.bincount(mask.ravel(), minlength=len(table)).astype(np.int64)


def _check_one(args: tuple[Sample, ClassTable]) -> tuple[list[str], np.ndarray | None]:
    return check_sample(*args)


def check_dataset(layout: Layout, workers: int = 2, progress: bool = True) -> CheckReport:
    """Check every pair of ``layout``; problems found while pairing come first."""
    n = len(layout.table)
    problems = list(layout.problems)
    class_images = np.zeros(n, dtype=np.int64)
    class_pixels = np.zeros(n, dtype=np.int64)
    jobs = [(s, layout.table) for s in layout.samples]
    bar = tqdm(total=len(jobs), desc="check-data", unit="img", disable=not progress)
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        # map keeps input order, so the report reads in file order whatever the scheduling
        for sample_problems, counts in pool.map(_check_one, jobs, chunksize=4):
            problems += sample_problems
            if counts is not None:
                class_images += counts > 0
                class_pixels += counts
            bar.update()
    bar.close()
    return CheckReport(problems, len(jobs), class_images, class_pixels)

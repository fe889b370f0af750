"""Label schemes: which source classes a model learns, and how its predictions map back.

Contract
--------
A scheme maps source indices (0..N-1 of a :class:`~droneseg.classes.ClassTable`) to K target
classes 0..K-1 and ``IGNORE_INDEX`` (255) for ignored pixels. ``decode`` writes targets back in
source numbering (a single-source target as that source; a group as its first listed source; the
``rest`` group as the first remaining class in table order), and ``encode(decode(t)) == t`` for every target.

Written masks (``predict``, ``evaluate --save-masks``) use :meth:`LabelScheme.written`: the dataset's numbering
where every target is exactly one source class (``full``: masks drop into any tool that reads the dataset), the
scheme's own 0..K-1 and colours where it groups classes (``six``, ``paved``, ``luma``: a ``dirt`` pixel would be a
lie where the model said "not paved"); :data:`NUMBERINGS` lets a caller force either.
``luma`` is the one non-lookup scheme: the target is whether the mask colour's luminance is
above the image's mean (the original project's 1-class mode); it has no source mapping.

>>> s = SCHEMES["six"](ClassTable.builtin())
>>> s.names
('paved-area', 'dirt', 'grass', 'roof', 'water', 'other')
>>> s.decode(s.encode(np.array([[1, 6, 9]], np.uint8))).tolist()  # rocks is 'other', decoded as gravel
[[1, 4, 9]]
>>> s.written().names[-1], s.written().values.tolist()  # but masks are written in the scheme's own classes
('other', [0, 1, 2, 3, 4, 5])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from droneseg.classes import IGNORE_INDEX, ClassTable, DataError
from droneseg.files import read_yaml_model

REST = "rest"
"""In a scheme file, ``sources: rest`` collects every source class not named elsewhere."""

_REST_COLOR = (128, 128, 128)
Numbering = Literal["auto", "dataset", "scheme"]
NUMBERINGS: tuple[str, ...] = ("auto", "dataset", "scheme")
"""How written masks number classes: ``auto`` (dataset's where the scheme maps one to one, else the scheme's),
``dataset`` (source indices through ``decode``; a group is written as its first member), ``scheme`` (0..K-1)."""
# ITU-R BT.601 luma weights, as PIL's convert("L")
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


class TargetSpec(BaseModel):
    """One target class of a scheme file."""

    model_config = ConfigDict(extra="forbid")
    name: str
    sources: list[str] | Literal["rest"]
    color: tuple[int, int, int] | None = Field(default=None, description="RGB; default: first source's colour")

    @field_validator("color")
    @classmethod
    def _rgb(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is not None and not all(0 <= c <= 255 for c in v):
            raise DataError(f"colour {v} is outside 0..255")
        return v


class SchemeSpec(BaseModel):
    """A label scheme as written in YAML (user schemes) or in :data:`BUILTIN_SPECS`."""

    model_config = ConfigDict(extra="forbid")
    name: str
    classes: list[TargetSpec] = Field(min_length=1)
    ignore: list[str] = ["unlabeled", "conflicting"]


@dataclass(frozen=True)
class WrittenClasses:
    """The numbering of written masks: ``values[t]`` is the pixel value of target ``t``; ``names``/``colors``
    describe every pixel value (the ``class_dict.csv`` written beside the masks), ``numbering`` which one it is."""

    numbering: str  # "dataset" or "scheme"
    values: np.ndarray  # (K,) uint8: target -> written value
    names: tuple[str, ...]
    colors: np.ndarray  # (N, 3) uint8, one row per written value

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """(…) uint8 targets -> (…) uint8 written values (ignored pixels, 255, stay 255)."""
        lut = np.full(256, 255, np.uint8)
        lut[: len(self.values)] = self.values
        return lut[labels]

    @property
    def target_colors(self) -> np.ndarray:
        """(K, 3) uint8: the colour each target is drawn in."""
        return self.colors[self.values]

    def to_csv(self) -> str:
        """The class table of the written values, in the dataset's ``class_dict`` format (``name, r, g, b``)."""
        rows = "".join(f"{n}, {r}, {g}, {b}\n" for n, (r, g, b) in zip(self.names, self.colors.tolist()))
        return "name, r, g, b\n" + rows


@dataclass(frozen=True, eq=False)
class LabelScheme:
    """K target classes derived from a source class table. Build with :func:`get_scheme`."""

    name: str
    table: ClassTable
    names: tuple[str, ...]
    colors: np.ndarray = field(repr=False)  # (K, 3) uint8
    lut: np.ndarray | None = field(repr=False)  # (256,) uint8 source -> target; None for luma
    write_as: np.ndarray | None = field(repr=False)  # (K,) uint8 target -> source; None for luma
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def is_luma(self) -> bool:
        return self.lut is None

    def encode(self, source: np.ndarray) -> np.ndarray:
        """(…) uint8 source indices -> (…) uint8 targets, ``ignore_index`` where ignored."""
        if self.lut is not None:
            return self.lut[source]
        luma = self.table.colors.astype(np.float64) @ _LUMA_WEIGHTS  # (N,)
        values = luma[source]
        return (values > values.mean()).astype(np.uint8)

    def decode(self, target: np.ndarray) -> np.ndarray:
        """(…) targets -> (…) source indices (ignored pixels -> 0, unlabeled)."""
        if self.write_as is None:
            raise ValueError("the luma scheme has no source classes to write back; use colorize()")
        lut = np.zeros(256, dtype=np.uint8)
        lut[: self.num_classes] = self.write_as
        return lut[target]

    @property
    def one_to_one(self) -> bool:
        """True when every target is exactly one source class (so source numbering loses nothing)."""
        if self.lut is None:
            return False
        counts = np.bincount(self.lut[: len(self.table)], minlength=256)[: self.num_classes]
        return bool((counts == 1).all())

    def written(self, numbering: Numbering = "auto") -> WrittenClasses:
        """The numbering masks are written in (see the module contract); raises KeyError for an unknown one."""
        if numbering not in NUMBERINGS:
            raise DataError(f"unknown numbering {numbering!r}; choose from {list(NUMBERINGS)}")
        if numbering == "dataset" and self.is_luma:
            raise ValueError("the luma scheme has no source classes: its masks are written as dark 0 / bright 1")
        if numbering == "dataset" or (numbering == "auto" and self.one_to_one):
            return WrittenClasses("dataset", self.write_as.copy(), self.table.names, self.table.colors)
        return WrittenClasses("scheme", np.arange(self.num_classes, dtype=np.uint8), self.names, self.colors)

    def colorize(self, target: np.ndarray) -> np.ndarray:
        """(…) targets -> (…, 3) uint8 in the scheme's colours; ignored pixels black."""
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[: self.num_classes] = self.colors
        return palette[target]

    def to_dict(self) -> dict:
        """What ``model.json`` stores so that a model can be used without the training data."""
        return {
            "name": self.name,
            "names": list(self.names),
            "colors": self.colors.tolist(),
            "source_names": list(self.table.names),
            "source_colors": self.table.colors.tolist(),
            "lut": None if self.lut is None else self.lut.tolist(),
            "write_as": None if self.write_as is None else self.write_as.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> LabelScheme:
        table = ClassTable(tuple(d["source_names"]), np.array(d["source_colors"], dtype=np.uint8))
        return cls(
            name=d["name"],
            table=table,
            names=tuple(d["names"]),
            colors=np.array(d["colors"], dtype=np.uint8),
            lut=None if d["lut"] is None else np.array(d["lut"], dtype=np.uint8),
            write_as=None if d["write_as"] is None else np.array(d["write_as"], dtype=np.uint8),
        )


def build_scheme(spec: SchemeSpec, table: ClassTable, origin: str = "scheme") -> LabelScheme:
    """Resolve a spec against a class table; every source class must be mapped or ignored."""

    def idx(name: str, where: str) -> int:
        if name not in table.names:
            raise DataError(f"{origin}: {where} names unknown class {name!r}; choose from {sorted(table.names)}")
        return table.index(name)

    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    claimed: dict[int, str] = {idx(n, "ignore"): "ignore" for n in spec.ignore}
    rest_target: int | None = None
    names, colors, write_as = [], [], []
    for k, target in enumerate(spec.classes):
        names.append(target.name)
        if target.sources == REST:
            if rest_target is not None:
                raise DataError(f"{origin}: only one class may take the 'rest'")
            rest_target = k
            colors.append(target.color or _REST_COLOR)
            write_as.append(0)
            continue
        if not target.sources:
            raise DataError(f"{origin}: class {target.name!r} lists no sources")
        members = [idx(n, f"class {target.name!r}") for n in target.sources]
        for m in members:
            if m in claimed:
                raise DataError(f"{origin}: source {table.names[m]!r} is claimed twice ({claimed[m]}, {target.name})")
            claimed[m] = target.name
            lut[m] = k
        colors.append(target.color or tuple(int(c) for c in table.colors[members[0]]))
        write_as.append(members[0])
    unclaimed = [i for i in range(len(table)) if i not in claimed]
    if rest_target is not None:
        lut[unclaimed] = rest_target
        write_as[rest_target] = unclaimed[0] if unclaimed else 0
    elif unclaimed:
        raise DataError(
            f"{origin}: source classes {[table.names[i] for i in unclaimed]} are neither mapped nor ignored "
            "(add them to 'ignore' or give one class 'sources: rest')"
        )
    if len(set(names)) != len(names):
        raise DataError(f"{origin}: duplicate target names {names}")
    return LabelScheme(
        name=spec.name,
        table=table,
        names=tuple(names),
        colors=np.array(colors, dtype=np.uint8),
        lut=lut,
        write_as=np.array(write_as, dtype=np.uint8),
    )


def _full(table: ClassTable) -> LabelScheme:
    ignore = ["unlabeled", "conflicting"]
    spec = SchemeSpec(
        name="full",
        classes=[TargetSpec(name=n, sources=[n]) for n in table.names if n not in ignore],
        ignore=[n for n in ignore if n in table.names],
    )
    return build_scheme(spec, table, "full")


def _six(table: ClassTable) -> LabelScheme:
    spec = SchemeSpec(
        name="six",
        classes=[TargetSpec(name=n, sources=[n]) for n in ("paved-area", "dirt", "grass", "roof", "water")]
        + [TargetSpec(name="other", sources=REST)],
    )
    return build_scheme(spec, table, "six")


def _paved(table: ClassTable) -> LabelScheme:
    spec = SchemeSpec(
        name="paved",
        classes=[TargetSpec(name="other", sources=REST), TargetSpec(name="paved-area", sources=["paved-area"])],
    )
    return build_scheme(spec, table, "paved")


def _luma(table: ClassTable) -> LabelScheme:
    return LabelScheme(
        name="luma",
        table=table,
        names=("dark", "bright"),
        colors=np.array([[0, 0, 0], [255, 255, 255]], dtype=np.uint8),
        lut=None,
        write_as=None,
    )


SCHEMES: dict[str, Callable[[ClassTable], LabelScheme]] = {
    "full": _full,
    "luma": _luma,
    "paved": _paved,
    "six": _six,
}
# Built-in schemes by name; a path to a YAML file gives a user scheme instead.


def load_scheme_file(path: str | Path, table: ClassTable) -> LabelScheme:
    """Read a user scheme from YAML (see :class:`SchemeSpec`)."""
    path = Path(path)
    spec = read_yaml_model(path, SchemeSpec, "scheme file")
    return build_scheme(spec, table, str(path))


def get_scheme(name_or_path: str, table: ClassTable | None = None) -> LabelScheme:
    """A built-in scheme by name, or a user scheme from a ``.yaml``/``.yml`` path."""
    table = table or ClassTable.builtin()
    if name_or_path in SCHEMES:
        return SCHEMES[name_or_path](table)
    if name_or_path.endswith((".yaml", ".yml")):
        return load_scheme_file(name_or_path, table)
    raise DataError(f"unknown label scheme {name_or_path!r}; choose from {sorted(SCHEMES)} or a .yaml file")

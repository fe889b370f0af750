"""How orthomosaic inputs are segmented: one typed object, checked once, taken whole by :mod:`droneseg.geo.ortho`.

Needs no extra (``predict`` checks the options before it knows whether an input is an orthomosaic).

>>> OrthoOptions.from_cli(vector="none", min_area=2).vector, OrthoOptions().strip
(None, 4096)
>>> OrthoOptions.from_cli(nodata="None").nodata, OrthoOptions.from_cli(nodata="0").nodata
('none', 0.0)
"""

from __future__ import annotations

import math
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from droneseg.errors import DataError

VectorFormat = Literal["gpkg", "geojson"]


class OrthoOptions(BaseModel):
    """Options of ``predict`` for orthomosaics; photos ignore them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model_gsd: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                    description="metres of ground per working pixel; None: model.json's")
    confidence: bool = Field(default=False, description="also write <stem>_confidence.tif")
    uncertainty: bool = Field(default=False, description="also write <stem>_uncertainty.tif and "
                              "<stem>_label_next.csv (cells ranked by uncertain area)")
    vector: VectorFormat | None = Field(default="gpkg", description="polygons as gpkg or geojson; None: none")
    min_area: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                   description="m²: merge smaller regions into their neighbours")
    simplify: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                   description="coverage simplification tolerance, in CRS units")
    strip: int = Field(default=4096, ge=32, description="working pixels of core width per strip")
    nodata: Union[Literal["none"], float, None] = Field(
        default=None, description="the value that marks no data instead of the file's own; 'none': every pixel "
                                  "holds data; None: as the file declares")

    @field_validator("nodata", mode="before")
    @classmethod
    def _nodata_word(cls, v: object) -> object:
        if isinstance(v, str):
            word = v.strip().lower()
            if word == "none":
                return "none"
            try:
                v = float(word)
            except ValueError:
                raise ValueError("must be none or a number") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("must be none or a finite number")
        return v

    @field_validator("vector", mode="before")
    @classmethod
    def _none_word(cls, v: object) -> object:
        return None if isinstance(v, str) and v.lower() == "none" else v

    @classmethod
    def from_cli(cls, **values: object) -> OrthoOptions:
        """Options from the command line's values; raises DataError naming the option (``--min-area``…)."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else ""
            option = "--" + field.replace("_", "-") if field else "orthomosaic options"
            if field == "nodata":
                raise DataError(f"--nodata must be none or a number (a pixel value), got {err.get('input')!r}") from None
            if field in _UNITS and err["type"] in ("greater_than", "finite_number"):
                raise DataError(f"{option} must be a positive number of {_UNITS[field]}, got {err.get('input')}"
                                ) from None
            raise DataError(f"{option}: {err['msg']} (got {err.get('input')!r})") from None


_UNITS = {"model_gsd": "metres per pixel", "min_area": "m²", "simplify": "CRS units"}

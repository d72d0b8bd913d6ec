"""How stored images become a model's input: the model's own transforms, not a guess.

`model_input(spec, model, image_size)` reads them from a registry of sources:

- `""`: as stored, or squashed to `lens.image_size`; pixels in [0, 1], no normalisation (models
  trained that way, such as the synthetic world's);
- `"timm"`: timm's data config for the model (input size, crop share, interpolation, mean, std);
- `"torchvision:<weights>"`, e.g. `torchvision:ResNet50_Weights.IMAGENET1K_V2`: the evaluation
  transforms of those weights (their metadata ships with torchvision; nothing is downloaded).

Every source reduces to one `ModelInput`: resize the shorter side, crop the centre square, then
normalise. The two halves stay apart because the crops of concept examples are cut from the
geometric view (what the model sees, in pixels) while the model gets the normalised tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from lakelens.operators.lens.codec import decode_image
from lakelens.operators.lens.models import to_tensor

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class ModelInput:
    size: int  # the square side the model sees; 0: images as stored
    resize: int  # the shorter side before the centre crop; == size and `squash`: both sides to size
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    squash: bool = False  # resize both sides to `size`, ignoring the aspect ratio (the plain source)

    def view(self, data: bytes) -> np.ndarray:
        """uint8 (size, size, 3): the image as the model sees it, before normalisation; ValueError if the bytes
        are not an image."""
        return decode_image(data, self._geometry)

    def _geometry(self, rgb):
        from PIL import Image

        if not self.size or rgb.size == (self.size, self.size):
            return rgb
        resample = getattr(Image.Resampling, self.interpolation.upper())
        if self.squash:
            return rgb.resize((self.size, self.size), resample)
        width, height = rgb.size
        # the shorter side gets exactly `resize`, the longer one is scaled and truncated, as torchvision's Resize
        new = ((self.resize, int(self.resize * height / width)) if width <= height
               else (int(self.resize * width / height), self.resize))
        rgb = rgb.resize(new, resample)
        left = int(round((new[0] - self.size) / 2.0))
        top = int(round((new[1] - self.size) / 2.0))
        return rgb.crop((left, top, left + self.size, top + self.size))

    def tensor(self, views: np.ndarray) -> torch.Tensor:
        """(n, h, w, 3) uint8 views -> (n, 3, h, w) float, normalised as the model was trained."""
        x = to_tensor(views)
        if self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0):
            return x
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


def _plain(_model: nn.Module, image_size: int, _arg: str) -> ModelInput:
    return ModelInput(image_size, image_size, "bicubic", squash=True)  # PIL's default resampling, as before


def _timm(model: nn.Module, image_size: int, _arg: str) -> ModelInput:
    from lakelens.operators.lens.compat import import_torchvision

    import_torchvision()  # timm imports torchvision
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    size = int(config["input_size"][-1])
    interpolation = config.get("interpolation", "bilinear")
    return ModelInput(size, int(np.floor(size / config.get("crop_pct", 1.0))),
                      interpolation if interpolation in INTERPOLATIONS else "bilinear",
                      tuple(map(float, config["mean"])), tuple(map(float, config["std"])))


def _torchvision(_model: nn.Module, _image_size: int, weights: str) -> ModelInput:
    from lakelens.operators.lens.compat import import_torchvision

    try:
        transform = import_torchvision().models.get_weight(weights).transforms()
    except (ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"no torchvision weights named {weights!r} (e.g. ResNet50_Weights.IMAGENET1K_V2): {exc}") from exc
    crop = int(transform.crop_size[0])
    resize = int(transform.resize_size[0])
    return ModelInput(crop, resize, transform.interpolation.value, tuple(map(float, transform.mean)),
                      tuple(map(float, transform.std)))


SOURCES: dict[str, Callable[[nn.Module, int, str], ModelInput]] = {"": _plain, "timm": _timm, "torchvision": _torchvision}


def model_input(spec: str, model: nn.Module, image_size: int = 0) -> ModelInput:
    """The model's input transform from `spec` (see the module note). With a model's own transforms,
    `image_size` must be 0 or the transforms' size."""
    source, _, arg = spec.partition(":")
    if source not in SOURCES:
        raise ValueError(f"unknown preprocess {spec!r}; known: '' (as stored), 'timm', 'torchvision:<weights>'")
    if source == "torchvision" and not arg:
        raise ValueError("preprocess 'torchvision' needs the weights' name, e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2")
    result = SOURCES[source](model, image_size, arg)
    if source and image_size and image_size != result.size:
        raise ValueError(f"image_size {image_size} differs from the {spec} transforms' {result.size}: leave image_size 0")
    return result

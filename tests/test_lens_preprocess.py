"""The model's own input transforms: what torchvision's weights and timm's data config would do to an image."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from lakelens.operators.lens.codec import encode_png
from lakelens.operators.lens.compat import import_torchvision
from lakelens.operators.lens.models import create_model, to_tensor
from lakelens.operators.lens.preprocess import model_input


def _photo(width: int, height: int, seed: int = 0) -> bytes:
    """A smooth random image (resampling differences show on smooth content as well as on noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    from PIL import Image

    big = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    noisy = np.clip(np.asarray(big, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3)), 0, 255)
    return encode_png(noisy.astype(np.uint8))


def _pil(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


@pytest.mark.parametrize("size", [(300, 260), (260, 333)])
def test_torchvision_weights_transforms_are_applied_as_torchvision_applies_them(size):
    tv = import_torchvision()
    model = create_model("torchvision:resnet18", 10)
    inputs = model_input("torchvision:ResNet18_Weights.IMAGENET1K_V1", model)
    assert (inputs.size, inputs.resize, inputs.interpolation) == (224, 256, "bilinear")
    data = _photo(*size)
    expected = tv.models.get_weight("ResNet18_Weights.IMAGENET1K_V1").transforms()(_pil(data))
    ours = inputs.tensor(inputs.view(data)[None])[0]
    assert ours.shape == expected.shape == (3, 224, 224)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_a_timm_vit_at_224_pixels_gets_its_data_configs_crop_interpolation_and_normalisation():
    import_torchvision()
    from timm.data import create_transform, resolve_data_config

    model = create_model("timm:vit_tiny_patch16_224", 10)
    inputs = model_input("timm", model)
    assert (inputs.size, inputs.interpolation) == (224, "bicubic") and inputs.resize == 248  # crop_pct 0.9
    data = _photo(320, 240, seed=2)
    expected = create_transform(**resolve_data_config({}, model=model))(_pil(data))
    ours = inputs.tensor(inputs.view(data)[None])[0]
    assert torch.allclose(ours, expected, atol=1e-5)
    with torch.no_grad():
        assert model(ours[None]).shape == (1, 10)


def test_without_a_model_transform_images_are_squashed_to_image_size_in_unit_range_as_before():
    model = create_model("tiny-cnn", 4)
    data = _photo(40, 30, seed=3)
    inputs = model_input("", model, 32)
    before = np.asarray(_pil(data).resize((32, 32)))  # what the job did before: PIL's default resampling
    assert torch.equal(inputs.tensor(inputs.view(data)[None]), to_tensor(before[None]))
    as_stored = model_input("", model, 0)
    assert as_stored.view(data).shape == (30, 40, 3)


def test_wrong_preprocess_settings_are_errors_that_say_what_is_known():
    model = create_model("tiny-cnn", 4)
    with pytest.raises(ValueError, match="unknown preprocess 'imagenet'"):
        model_input("imagenet", model)
    with pytest.raises(ValueError, match="no torchvision weights named 'ResNet18_Weights.NOPE'"):
        model_input("torchvision:ResNet18_Weights.NOPE", model)
    with pytest.raises(ValueError, match="leave image_size 0"):
        model_input("torchvision:ResNet18_Weights.IMAGENET1K_V1", model, 64)
    with pytest.raises(ValueError, match="undecodable image"):
        model_input("", model).view(b"not an image")

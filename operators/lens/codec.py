"""Image bytes in the lake: PNG out, any PIL-readable format in."""

from __future__ import annotations

import io
from typing import Callable

import numpy as np


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data: bytes, geometry: Callable | None = None) -> np.ndarray:
    """uint8 RGB array (writable), reshaped by `geometry` (PIL image -> PIL image) when given; raises
    ValueError for bytes that are not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
            return np.array(geometry(rgb) if geometry is not None else rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"undecodable image: {exc}") from exc

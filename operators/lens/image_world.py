"""A synthetic image world with known concepts, for testing what a lens finds.

Each 32x32 image holds one shape (the class) in one colour with one texture on a noisy grey
background. A small white marker in the top-left corner is spurious: it appears in most images
of one class and few of the others, so a classifier can learn to lean on it. Every image has a
caption naming its concepts, which is what a tiny CLIP is trained on.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
TEXTURES = ("plain", "striped", "dotted")
MARKER = "corner marker"


@dataclass(frozen=True)
class ImageWorldParams:
    size: int = 32
    spurious_class: str = "triangle"
    marker_rate_in_class: float = 0.9
    marker_rate_elsewhere: float = 0.05
    seed: int = 0


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    scale = rng.uniform(0.55, 0.8) * size / 2
    cy, cx = size / 2 + rng.uniform(-2, 2, 2)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = y - cy, x - cx
    if shape == "circle":
        return dy**2 + dx**2 <= scale**2
    if shape == "square":
        return (np.abs(dy) <= scale * 0.8) & (np.abs(dx) <= scale * 0.8)
    if shape == "triangle":
        return (dy <= scale * 0.7) & (dy >= -scale) & (np.abs(dx) <= (dy + scale) * 0.6)
    if shape == "cross":
        arm = scale * 0.3
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= scale)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= scale))
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """1 where the shape keeps its colour, 0 where the texture darkens it."""
    y, x = np.mgrid[0:size, 0:size]
    if texture == "plain":
        return np.ones((size, size))
    if texture == "striped":
        return ((x + y + rng.integers(0, 4)) // 2 % 2 == 0).astype(np.float64)
    if texture == "dotted":
        return 1.0 - (((y + 1) % 4 < 2) & ((x + 1) % 4 < 2)).astype(np.float64)
    raise ValueError(f"unknown texture {texture!r}")


def render(shape: str, colour: str, texture: str, marker: bool, params: ImageWorldParams,
           rng: np.random.Generator) -> np.ndarray:
    """One uint8 image (size, size, 3)."""
    size = params.size
    image = rng.normal(110, 12, (size, size, 3))
    mask = _shape_mask(shape, size, rng)
    shade = 0.35 + 0.65 * _texture(texture, size, rng)
    rgb = np.asarray(COLOURS[colour], dtype=np.float64)
    image[mask] = (rgb[None, :] * shade[mask][:, None]) + rng.normal(0, 6, (int(mask.sum()), 3))
    if marker:
        image[1:5, 1:5] = 250
    return np.clip(image, 0, 255).astype(np.uint8)


def caption(shape: str, colour: str, texture: str, marker: bool) -> str:
    text = f"a {colour} {texture} {shape}"
    return text + f" with a {MARKER}" if marker else text


def concepts_of(shape: str, colour: str, texture: str, marker: bool) -> frozenset[str]:
    return frozenset({shape, colour, texture} | ({MARKER} if marker else set()))


def partial_caption(concepts: frozenset[str], rng: np.random.Generator) -> tuple[str, frozenset[str]]:
    """A caption naming a random non-empty subset of an image's concepts, and that subset.

    Training on partial captions teaches a contrastive model single concepts ("a striped object"),
    which is what labels and searches ask about.
    """
    names = sorted(concepts)
    keep = [c for c in names if rng.random() < 0.5] or [names[rng.integers(len(names))]]
    colour = next((c for c in keep if c in COLOURS), "")
    texture = next((c for c in keep if c in TEXTURES), "")
    shape = next((c for c in keep if c in SHAPES), "object")
    text = " ".join(w for w in ("a", colour, texture, shape) if w)
    if MARKER in keep:
        text += f" with a {MARKER}"
    return text, frozenset(keep)


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
    """uint8 RGB array; raises ValueError for bytes that are not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size))
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"undecodable image: {exc}") from exc


def generate_images(n: int, params: ImageWorldParams = ImageWorldParams(), offset: int = 0) -> pa.Table:
    """`n` images as a table: sample_id, image (PNG bytes), label (class index), and the truth columns
    shape, colour, texture, marker, caption."""
    rng = np.random.default_rng([params.seed, offset])
    rows = []
    colours = tuple(COLOURS)
    for i in range(n):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = colours[rng.integers(len(colours))]
        texture = TEXTURES[rng.integers(len(TEXTURES))]
        rate = params.marker_rate_in_class if shape == params.spurious_class else params.marker_rate_elsewhere
        marker = bool(rng.random() < rate)
        image = render(shape, colour, texture, marker, params, rng)
        rows.append({"sample_id": f"img-{offset + i:07d}", "image": encode_png(image), "label": SHAPES.index(shape),
                     "shape": shape, "colour": colour, "texture": texture, "marker": marker,
                     "caption": caption(shape, colour, texture, marker)})
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("sample_id", pa.string()), ("image", pa.binary()), ("label", pa.int64()), ("shape", pa.string()),
        ("colour", pa.string()), ("texture", pa.string()), ("marker", pa.bool_()), ("caption", pa.string())]))

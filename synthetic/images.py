"""A synthetic image world with known concepts, for testing what a lens finds.

Each 32x32 image holds one shape (the class) in one colour with one texture on a noisy grey
background. A small white marker in the top-left corner is spurious: it appears in most images
of one class and few of the others, so a classifier can learn to lean on it. Every image has a
caption naming its concepts, which is what a tiny CLIP is trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lakelens.operators.lens.codec import decode_image, encode_png

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
TEXTURES = ("plain", "striped", "dotted")
MARKER = "corner marker"
MARKER_BOX = (1, 1, 5, 5)  # y0, x0, y1, x1


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
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 image (size, size, 3) and the shape's mask (size, size)."""
    size = params.size
    image = rng.normal(110, 12, (size, size, 3))
    mask = _shape_mask(shape, size, rng)
    shade = 0.35 + 0.65 * _texture(texture, size, rng)
    rgb = np.asarray(COLOURS[colour], dtype=np.float64)
    image[mask] = (rgb[None, :] * shade[mask][:, None]) + rng.normal(0, 6, (int(mask.sum()), 3))
    if marker:
        y0, x0, y1, x1 = MARKER_BOX
        image[y0:y1, x0:x1] = 250
    return np.clip(image, 0, 255).astype(np.uint8), mask


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
        image, mask = render(shape, colour, texture, marker, params, rng)
        rows.append({"sample_id": f"img-{offset + i:07d}", "image": encode_png(image), "label": SHAPES.index(shape),
                     "shape": shape, "colour": colour, "texture": texture, "marker": marker,
                     "caption": caption(shape, colour, texture, marker), "shape_mask": np.packbits(mask).tobytes()})
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("sample_id", pa.string()), ("image", pa.binary()), ("label", pa.int64()), ("shape", pa.string()),
        ("colour", pa.string()), ("texture", pa.string()), ("marker", pa.bool_()), ("caption", pa.string()),
        ("shape_mask", pa.binary())]))


def unpack_mask(packed: bytes, size: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(packed, np.uint8), count=size * size).reshape(size, size).astype(bool)


def visible_concepts(box: tuple[int, int, int, int], mask: np.ndarray, shape: str, colour: str, texture: str,
                     marker: bool) -> frozenset[str]:
    """The concepts a viewer can tell from the box of an image: the marker when the box holds all of
    it, the colour and texture when the box holds half the shape or the shape fills enough of the
    box, the shape when the box holds nearly all of it."""
    y0, x0, y1, x1 = box
    seen = set()
    my0, mx0, my1, mx1 = MARKER_BOX
    if marker and y0 <= my0 and x0 <= mx0 and y1 >= my1 and x1 >= mx1:
        seen.add(MARKER)
    inside = int(mask[y0:y1, x0:x1].sum())
    if inside >= 12 and (inside >= 0.5 * mask.sum() or inside >= 0.15 * (y1 - y0) * (x1 - x0)):
        seen.update((colour, texture))
    if inside >= 0.85 * mask.sum():
        seen.add(shape)
    return frozenset(seen)


class TrainingViews:
    """Whole images and random crops of them with the concepts each view shows, for contrastive training.

    A foundation model that later embeds relevance crops must have seen crops: 60 % of the views are
    squares of a quarter to three quarters of the side, a third of those over the marker's corner.
    """

    def __init__(self, table: pa.Table, size: int = 32, crop_rate: float = 0.6) -> None:
        self.images = np.stack([decode_image(b) for b in table.column("image").to_pylist()])
        self.masks = [unpack_mask(m, self.images.shape[1]) for m in table.column("shape_mask").to_pylist()]
        self.truth = table.select(["shape", "colour", "texture", "marker"]).to_pylist()
        self.size, self.crop_rate = size, crop_rate

    def __len__(self) -> int:
        return len(self.images)

    def draw(self, indices: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[frozenset[str]]]:
        from lakelens.operators.lens.crops import crop_resized

        side = self.images.shape[1]
        views, concepts = [], []
        for i in np.asarray(indices).tolist():
            truth = self.truth[i]
            box = (0, 0, side, side)
            if rng.random() < self.crop_rate:
                crop = int(rng.integers(side // 4, 3 * side // 4 + 1))
                if truth["marker"] and rng.random() < 1 / 3:
                    y0, x0 = rng.integers(0, MARKER_BOX[0] + 1, 2)
                else:
                    y0, x0 = rng.integers(0, side - crop + 1, 2)
                box = (int(y0), int(x0), int(y0) + crop, int(x0) + crop)
            seen = visible_concepts(box, self.masks[i], **truth)
            if not seen:
                box, seen = (0, 0, side, side), concepts_of(**truth)
            views.append(crop_resized(self.images[i], box, self.size))
            concepts.append(seen)
        return np.stack(views), concepts

"""Concept examples cropped to where a component's relevance lies (CRP-style), as pure array functions.

A component's top images often show several concepts at once (a triangle that also carries a
corner marker). Cropping each example to the region its channel-conditioned heatmap points at
lets the foundation model see the part that component responds to, not the whole scene.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive)


def relevant_box(heatmap: np.ndarray, threshold: float = 0.3, min_side: float = 0.25, context: float = 1.0
                 ) -> Box:
    """The square around the most relevant region of a (height, width) heatmap.

    Positive relevance is smoothed, the pixels above `threshold` x its maximum that connect to the
    maximum form the region, and the box is that region's bounding square grown `context` times
    around its centre (at least `min_side` of the image's shorter side), kept inside the image.
    No positive relevance: the whole image.
    """
    height, width = heatmap.shape
    positive = np.maximum(np.asarray(heatmap, dtype=np.float64), 0)
    kernel = max(3, (min(height, width) // 10) | 1)
    smooth = ndimage.uniform_filter(positive, size=kernel, mode="constant")
    peak = smooth.max()
    if not np.isfinite(peak) or peak <= 0:
        return 0, 0, height, width
    regions, _ = ndimage.label(smooth >= threshold * peak)
    at_peak = regions[np.unravel_index(int(np.argmax(smooth)), smooth.shape)]
    rows, cols = np.nonzero(regions == at_peak)
    extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    side = max(int(round(extent * context)), int(round(min_side * min(height, width))))
    side = min(side, height, width)
    centre_y, centre_x = (rows.min() + rows.max() + 1) / 2, (cols.min() + cols.max() + 1) / 2
    y0 = int(np.clip(round(centre_y - side / 2), 0, height - side))
    x0 = int(np.clip(round(centre_x - side / 2), 0, width - side))
    return y0, x0, y0 + side, x0 + side


def crop_resized(image_uint8: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The box of an (h, w, 3) uint8 image, resized to (size, size, 3) uint8 (bicubic, antialiased)."""
    y0, x0, y1, x1 = box
    patch = torch.from_numpy(np.array(image_uint8[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()  # a writable copy
    if patch.shape[-2:] != (size, size):
        patch = torch.nn.functional.interpolate(patch, size=(size, size), mode="bicubic", align_corners=False,
                                                antialias=True)
    return patch[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

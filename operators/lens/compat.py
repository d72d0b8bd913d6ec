"""torchvision's Python parts (models, transforms) beside the CPU build of torch.

PyPI's torchvision wheel is built against CUDA torch; with the CPU build its C extension does
not load, and `import torchvision` then fails while registering fake kernels for two detection
ops (nms, qnms) whose schemas the extension would have defined. Defining those two schemas first
lets the import finish; the ops themselves stay unavailable, and nothing here uses them.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_MISSING_OP_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def import_torchvision() -> ModuleType:
    """`import torchvision`, working around the missing C extension when it cannot load."""
    import torch

    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name, schema in _MISSING_OP_SCHEMAS.items():
        try:
            torch.library.define(f"torchvision::{name}", schema)
        except RuntimeError:  # already defined (a second call, or the extension did load it)
            pass
    for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[module]  # the failed import left half-initialised modules behind
    return importlib.import_module("torchvision")

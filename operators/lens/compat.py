"""`import torchvision` beside the CPU build of torch, for lakelens and for users' own scripts.

PyPI's torchvision wheel is built against CUDA torch; with the CPU build its C extension does
not load, and `import torchvision` then fails while registering fake kernels for two detection
ops (nms, qnms) whose schemas the extension would have defined. Defining those two schemas first
lets the import finish; the ops themselves stay unavailable (no model, transform or zennit
canonizer the lens uses calls them). Where the extension does load (a CUDA torch), nothing is
defined and torchvision is untouched.

Three ways in:
- `import_torchvision()`: what lakelens's own code calls;
- `install_import_hook()`: from then on a plain `import torchvision` (or timm, open_clip) works in
  this interpreter; `lakelens.pipelines.semantic_lens` installs it, so a notebook that imports the
  lens API first can import torchvision after;
- `python -m lakelens.operators.lens.compat --install`: writes a `.pth` file into the
  environment's site-packages that installs the hook at every interpreter start (a few
  microseconds; torch is only imported when torchvision is), so every script in the environment
  can `import torchvision`. `--uninstall` removes it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_MISSING_OP_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
PTH_NAME = "lakelens_torchvision.pth"


def _extension_loads() -> bool:
    """Whether torchvision's compiled ops load into this torch (checked without importing torchvision)."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: nothing to fix
    for folder in spec.submodule_search_locations:
        for library in Path(folder).glob("_C*.so"):
            try:
                torch.ops.load_library(str(library))
                return True
            except OSError:
                return False
    return False


def define_missing_schemas() -> None:
    """Give the two detection ops a schema when torchvision's extension cannot provide them."""
    import torch

    if _extension_loads():
        return
    for name, schema in _MISSING_OP_SCHEMAS.items():
        try:
            torch.library.define(f"torchvision::{name}", schema)
        except RuntimeError:  # already defined (a second call)
            pass


class _SchemasBeforeTorchvision(importlib.abc.MetaPathFinder):
    """On the first `import torchvision`, defines the missing schemas, then lets the normal import run."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 (importlib's protocol)
        if name == "torchvision":
            uninstall_import_hook()
            define_missing_schemas()
        return None


_HOOK = _SchemasBeforeTorchvision()


def install_import_hook() -> None:
    """Make a later plain `import torchvision` work in this interpreter."""
    if "torchvision" not in sys.modules and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def uninstall_import_hook() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def import_torchvision() -> ModuleType:
    """`import torchvision`, working around the missing C extension when it cannot load."""
    if "torchvision" not in sys.modules:
        uninstall_import_hook()
        define_missing_schemas()
    return importlib.import_module("torchvision")


def pth_path() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def write_pth() -> Path:
    """Installs the hook at every start of this environment's interpreter."""
    path = pth_path()
    path.write_text("import lakelens.operators.lens.compat as _lakelens_compat; _lakelens_compat.install_import_hook()\n")
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lakelens.operators.lens.compat", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--install", action="store_true", help=f"write {PTH_NAME} into site-packages")
    group.add_argument("--uninstall", action="store_true", help=f"remove {PTH_NAME}")
    args = parser.parse_args(argv)
    if args.install:
        print(f"wrote {write_pth()}: `import torchvision` works in every script of this environment")
    else:
        pth_path().unlink(missing_ok=True)
        print(f"removed {pth_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The semantic lens from Python, for auditors in a notebook: an in-memory model, a dataset path, results back.

    from lakelens.pipelines.lens_api import audit_model

    result = audit_model(model, "/data/my-images", lake="/tmp/audit", layers=["layer3", "layer4"],
                         foundation="ViT-B-32", foundation_weights="/models/clip/vit-b-32.bin",
                         vocabulary=["dog", "grass", "watermark"], class_names=classes,
                         spurious={"dog": ["watermark"]})
    result.components            # pyarrow tables: components, concept_labels, audits, spurious_samples, ...
    result.sql("SELECT * FROM audits WHERE flagged")
    result.search("watermark")
    result.report                # path of the HTML report

The same job as `lakelens run semantic-lens` (same run ids, same lake layout, same published
tables), with the config built from keyword arguments (any field of `LensConfig`, validated)
instead of a TOML file. The model is saved whole into the lake (cloudpickle, so a class defined in
the notebook travels with it); torchvision/timm models can instead be named with
`architecture="torchvision:resnet50"` and a state dict path as `weights`.

Importing this module installs the torchvision import hook (operators/lens/compat.py), so a
notebook can `import torchvision` after it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from lakelens.infra.config import LakelensConfig, LensConfig, RayConfig
from lakelens.infra.storage import Lake
from lakelens.operators.lens.compat import install_import_hook

install_import_hook()

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass
class LensResult:
    """A published semantic-lens run: its manifest and its tables, read through the lake's catalog."""

    lake: Lake
    model_id: str
    manifest: dict[str, Any]

    def table(self, name: str) -> pa.Table:
        """One published table of this run (e.g. "components", "audits", "spurious_samples")."""
        files = self.manifest["outputs"][name]["files"]
        return pa.concat_tables([self.lake.read_table(f["path"]) for f in files])

    def sql(self, query: str) -> pa.Table:
        """A DuckDB query over the lake's catalog (every published table is a view)."""
        from lakelens.infra.catalog import open_catalog

        return open_catalog(self.lake).execute(query).to_arrow_table()

    def search(self, text: str, top: int = 10) -> pa.Table:
        from lakelens.pipelines.search_components import search_components

        return search_components(self.lake, text, self.model_id, top)

    @property
    def components(self) -> pa.Table:
        return self.table("components")

    @property
    def audits(self) -> pa.Table:
        return self.table("audits")

    @property
    def spurious_samples(self) -> pa.Table:
        return self.table("spurious_samples")

    @property
    def report(self) -> str:
        return self.lake.uri(self.manifest["metrics"]["report"])


def audit_model(model: Any, dataset: str | Path, *, lake: str | Path | None = None, model_id: str = "notebook-model",
                ray: RayConfig | None = None, force: bool = False, **lens: Any) -> LensResult:
    """Runs the semantic lens on `model` (a `torch.nn.Module`, or None with `architecture`/`weights` in
    `lens`) over the images at `dataset` and returns the published result.

    `dataset` is a folder in the lake, or a local folder of Parquet files with the images contract
    (sample_id, image bytes, label), or a local folder of image files (class sub-folders give labels,
    in sorted order, as torchvision's ImageFolder); the last two are copied into the lake under
    `datasets/<folder name>`. `lake` defaults to a new temporary folder. `lens` holds `LensConfig`
    fields: layers, foundation, foundation_weights, vocabulary, num_classes, class_names, ...
    """
    from lakelens.operators.lens.models import PICKLED_MODULE, pickle_module
    from lakelens.pipelines.semantic_lens import run_semantic_lens

    target = Lake(Path(lake) if lake else Path(tempfile.mkdtemp(prefix="lakelens-audit-")))
    name = _dataset_in_lake(target, dataset)
    if model is not None:
        weights = f"models/lens/{model_id}.pkl"
        target.write_bytes(weights, pickle_module(model))
        lens = {"architecture": PICKLED_MODULE, "weights": weights, **lens}
    if not lens.get("num_classes") and lens.get("class_names"):
        lens["num_classes"] = len(lens["class_names"])
    config = LakelensConfig(ray=ray or RayConfig(show_progress=False),
                            lens=dataclasses.replace(LensConfig(), model_id=model_id, **lens))
    manifest = run_semantic_lens(target, name, config, force=force)
    return LensResult(target, model_id, manifest)


def _dataset_in_lake(lake: Lake, dataset: str | Path) -> str:
    """The dataset's folder inside the lake, copying or converting a local folder there first."""
    if not Path(dataset).is_absolute() and lake.list_files(str(dataset), suffix=".parquet"):
        return str(dataset)
    folder = Path(dataset)
    if not folder.is_dir():
        raise FileNotFoundError(f"no dataset at {dataset} (a lake folder, or a local folder of Parquet or image files)")
    name = f"datasets/{folder.name}"
    parquet = sorted(folder.rglob("*.parquet"))
    if parquet:
        for i, path in enumerate(parquet):
            lake.write_bytes(f"{name}/part-{i:05d}.parquet", path.read_bytes())
        return name
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder} holds no Parquet or image files")
    classes = sorted({p.parent.name for p in files if p.parent != folder})
    per_part = 2000
    for start in range(0, len(files), per_part):
        chunk = files[start:start + per_part]
        lake.write_table(f"{name}/part-{start // per_part:05d}.parquet", pa.table({
            "sample_id": [str(p.relative_to(folder)) for p in chunk],
            "image": [p.read_bytes() for p in chunk],
            "label": pa.array([classes.index(p.parent.name) if p.parent != folder else None for p in chunk],
                              pa.int64())}))
    return name


__all__ = ["LensResult", "audit_model"]

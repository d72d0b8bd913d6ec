"""`lakelens generate-images`: a synthetic image world for the semantic lens, with the two models it needs.

Writes the images (`images/part-*.parquet`: sample_id, PNG bytes, label), their concepts under
`truth/images/` (tests and demo only), and trains on them a small CNN classifier and a tiny
open_clip model on the captions, saved under `models/lens/`. Real deployments bring their own
model and foundation weights; this exists so tests and the demo run offline.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from lakelens.infra.storage import Lake
from lakelens.operators.lens.codec import decode_image
from lakelens.synthetic.images import (
    COLOURS, MARKER, SHAPES, TEXTURES, ImageWorldParams, TrainingViews, generate_images,
)
from lakelens.synthetic.training import train_classifier, train_tiny_clip

IMAGES_DIR = "images"
CLASSIFIER_PATH = "models/lens/tiny-cnn.pt"
FOUNDATION_PATH = "models/lens/tiny-clip.pt"
VOCABULARY = [*SHAPES, *COLOURS, *TEXTURES, MARKER]


def generate_lens_world(lake: Lake, n: int = 2000, seed: int = 0, classifier_epochs: int = 6,
                        clip_epochs: int = 60, files: int = 4) -> dict[str, Any]:
    lake.ensure_root()
    started = time.perf_counter()
    table = generate_images(n, ImageWorldParams(seed=seed))
    write_images(lake, table, IMAGES_DIR, files)
    classifier_loss = train_world_classifier(lake, table, CLASSIFIER_PATH, classifier_epochs, seed)
    local = lake.uri(FOUNDATION_PATH) if lake.scheme != "s3" else "/tmp/lakelens-tiny-clip.pt"
    clip_losses = train_tiny_clip(TrainingViews(table), local, epochs=clip_epochs, seed=seed)
    if lake.scheme == "s3":
        with open(local, "rb") as handle:
            lake.write_bytes(FOUNDATION_PATH, handle.read())
    return {"images": n, "classifier_loss": classifier_loss, "clip_loss": clip_losses[-1],
            "seconds": round(time.perf_counter() - started, 1)}


def write_images(lake: Lake, table: pa.Table, dataset: str, files: int = 4) -> None:
    """The images as the job reads them (`dataset/part-*.parquet`) and their concepts under `truth/`."""
    per_file = -(-table.num_rows // files)
    for part in range(files):
        chunk = table.slice(part * per_file, per_file)
        lake.write_table(f"{dataset}/part-{part:05d}.parquet", chunk.select(["sample_id", "image", "label"]))
        lake.write_table(f"truth/{dataset}/part-{part:05d}.parquet", chunk.drop_columns(["image"]))


def train_world_classifier(lake: Lake, table: pa.Table, path: str, epochs: int = 6, seed: int = 0) -> float:
    """Trains the world's small CNN on its shapes, saves the state dict at `path`, returns the last loss."""
    from lakelens.operators.lens.models import create_model, to_tensor

    images = np.stack([decode_image(b) for b in table.column("image").to_pylist()])
    torch.manual_seed(seed)
    classifier = create_model("tiny-cnn", len(SHAPES))
    losses = train_classifier(classifier, to_tensor(images), torch.as_tensor(table.column("label").to_pylist()),
                              epochs=epochs, seed=seed)
    buffer = io.BytesIO()
    torch.save(classifier.state_dict(), buffer)
    lake.write_bytes(path, buffer.getvalue())
    return losses[-1]


def lens_config_for_world(model_id: str = "tiny-cnn-world") -> dict[str, Any]:
    """The [lens] settings that analyse the world's classifier (as a TOML-able dict)."""
    return {"model_id": model_id, "architecture": "tiny-cnn", "weights": CLASSIFIER_PATH, "num_classes": len(SHAPES),
            "class_names": list(SHAPES), "layers": ["block2", "block3"], "foundation": "lakelens-tiny-clip",
            "foundation_weights": FOUNDATION_PATH, "vocabulary": VOCABULARY,
            "expected": {"triangle": ["triangle"]}, "spurious": {"triangle": [MARKER]}}


def truth(lake: Lake, dataset: str = IMAGES_DIR) -> pa.Table:
    return pa.concat_tables([lake.read_table(f.path) for f in lake.list_files(f"truth/{dataset}", suffix=".parquet")])

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
from lakelens.operators.lens.image_world import (
    COLOURS, MARKER, SHAPES, TEXTURES, ImageWorldParams, concepts_of, decode_image, generate_images,
)

IMAGES_DIR = "images"
CLASSIFIER_PATH = "models/lens/tiny-cnn.pt"
FOUNDATION_PATH = "models/lens/tiny-clip.pt"
VOCABULARY = [*SHAPES, *COLOURS, *TEXTURES, MARKER]


def generate_lens_world(lake: Lake, n: int = 2000, seed: int = 0, classifier_epochs: int = 6,
                        clip_epochs: int = 30, files: int = 4) -> dict[str, Any]:
    from lakelens.operators.lens.foundation import train_tiny_clip
    from lakelens.operators.lens.models import create_model, to_tensor, train_classifier

    lake.ensure_root()
    started = time.perf_counter()
    table = generate_images(n, ImageWorldParams(seed=seed))
    per_file = -(-n // files)
    for part in range(files):
        chunk = table.slice(part * per_file, per_file)
        lake.write_table(f"{IMAGES_DIR}/part-{part:05d}.parquet", chunk.select(["sample_id", "image", "label"]))
        lake.write_table(f"truth/images/part-{part:05d}.parquet", chunk.drop_columns(["image"]))
    images = np.stack([decode_image(b) for b in table.column("image").to_pylist()])
    labels = torch.as_tensor(table.column("label").to_pylist())
    torch.manual_seed(seed)
    classifier = create_model("tiny-cnn", len(SHAPES))
    losses = train_classifier(classifier, to_tensor(images), labels, epochs=classifier_epochs, seed=seed)
    buffer = io.BytesIO()
    torch.save(classifier.state_dict(), buffer)
    lake.write_bytes(CLASSIFIER_PATH, buffer.getvalue())
    local = lake.uri(FOUNDATION_PATH) if lake.scheme != "s3" else "/tmp/lakelens-tiny-clip.pt"
    concepts = [concepts_of(r["shape"], r["colour"], r["texture"], r["marker"])
                for r in table.select(["shape", "colour", "texture", "marker"]).to_pylist()]
    clip_losses = train_tiny_clip(images, concepts, local, epochs=clip_epochs, seed=seed)
    if lake.scheme == "s3":
        with open(local, "rb") as handle:
            lake.write_bytes(FOUNDATION_PATH, handle.read())
    return {"images": n, "classifier_loss": losses[-1], "clip_loss": clip_losses[-1],
            "seconds": round(time.perf_counter() - started, 1)}


def lens_config_for_world(model_id: str = "tiny-cnn-world") -> dict[str, Any]:
    """The [lens] settings that analyse the world's classifier (as a TOML-able dict)."""
    return {"model_id": model_id, "architecture": "tiny-cnn", "weights": CLASSIFIER_PATH, "num_classes": len(SHAPES),
            "class_names": list(SHAPES), "layers": ["block2", "block3"], "foundation": "lakelens-tiny-clip",
            "foundation_weights": FOUNDATION_PATH, "vocabulary": VOCABULARY,
            "expected": {"triangle": ["triangle"]}, "spurious": {"triangle": [MARKER]}}


def truth(lake: Lake) -> pa.Table:
    return pa.concat_tables([lake.read_table(f.path) for f in lake.list_files("truth/images", suffix=".parquet")])

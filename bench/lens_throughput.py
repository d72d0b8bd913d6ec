"""Semantic lens throughput: stage 1 against a plain forward pass, images/s per stage, and the
`semanticlens` package end to end on the same model, data and foundation model, in one run.

Stage 1 is one forward and one LRP backward per batch with hooks on the analysed layers; its
target is at most 3x a plain forward pass of the same model over the same images.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import PeakRSS, machine, stamp

from lakelens.infra.config import LakelensConfig, LensConfig, RayConfig
from lakelens.infra.storage import Lake
from lakelens.operators.lens.components import ComponentRecorder
from lakelens.operators.lens.compat import import_torchvision
from lakelens.operators.lens.foundation import load_foundation
from lakelens.operators.lens.image_world import decode_image
from lakelens.operators.lens.models import create_model, to_tensor
from lakelens.pipelines.lens_world import generate_lens_world, lens_config_for_world
from lakelens.pipelines.semantic_lens import run_semantic_lens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lake", default=None)
    args = parser.parse_args()
    root = Path(args.lake) if args.lake else Path(tempfile.mkdtemp(prefix="lakelens-lens-"))
    lake = Lake(root)
    print(f"# lens_throughput | {machine()} | {stamp()} | torch threads {torch.get_num_threads()}")
    if not lake.list_files("images", suffix=".parquet"):
        print("setup:", generate_lens_world(lake, n=args.images, seed=1))
    world = lens_config_for_world("bench")
    table = __import__("pyarrow").concat_tables([lake.read_table(f.path) for f in lake.list_files("images", ".parquet")])
    images = np.stack([decode_image(b) for b in table.column("image").to_pylist()])
    x = to_tensor(images)
    model = create_model("tiny-cnn", 4, lake.read_bytes(world["weights"]))

    def timed(fn) -> float:
        began = time.perf_counter()
        fn()
        return time.perf_counter() - began

    def plain():
        with torch.inference_mode():
            for start in range(0, len(x), args.batch):
                model(x[start:start + args.batch])

    def stage1():
        recorder = ComponentRecorder(model, world["layers"], 4, k=20)
        for start in range(0, len(x), args.batch):
            rows = np.arange(start, min(start + args.batch, len(x)))
            recorder.record(x[rows], rows, [str(i) for i in rows])

    plain(), stage1()  # warm-up
    forward_s, stage1_s = timed(plain), timed(stage1)
    foundation = load_foundation(world["foundation"], str(lake.uri(world["foundation_weights"])))
    clip_s = timed(lambda: foundation.embed_images(images[:2000]))
    print(f"| step | wall | images/s |\n|---|---|---|")
    print(f"| plain forward | {forward_s:.2f} s | {len(x) / forward_s:,.0f} |")
    print(f"| stage 1 (forward + LRP backward + top-k, 2 layers) | {stage1_s:.2f} s | {len(x) / stage1_s:,.0f} |")
    print(f"| foundation embedding (2,000 images) | {clip_s:.2f} s | {2000 / clip_s:,.0f} |")
    print(f"stage 1 / plain forward = {stage1_s / forward_s:.2f}x (target <= 3x)")

    config = LakelensConfig(ray=RayConfig(show_progress=False), lens=LensConfig(**world))
    with PeakRSS() as rss:
        began = time.perf_counter()
        manifest = run_semantic_lens(lake, "images", config, force=True)
        ours = time.perf_counter() - began
    print(f"lakelens semantic-lens job (cold Ray, {len(x):,} images): {ours:.1f} s, peak RSS {rss.gib:.2f} GiB, "
          f"stages {manifest['timings_s']}, embedded {manifest['metrics']['embed_examples']['embedded_views']:,} crops "
          f"of {manifest['metrics']['embed_examples']['embedded_samples']:,} example images")

    import_torchvision()
    from semanticlens.component_visualization.activation_based import ActivationComponentVisualizer

    dataset = torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    with PeakRSS() as rss:
        began = time.perf_counter()
        visualizer = ActivationComponentVisualizer(model, dataset, dataset, world["layers"], num_samples=20, device="cpu")
        visualizer.run(batch_size=args.batch)
        embedded = foundation.embed_images(images)  # the package embeds the whole dataset
        theirs = time.perf_counter() - began
    print(f"semanticlens 0.2.1 (activation mode; embeds all {len(embedded):,} images): {theirs:.1f} s, "
          f"peak RSS {rss.gib:.2f} GiB; lakelens / semanticlens wall = {ours / theirs:.2f}")


if __name__ == "__main__":
    main()

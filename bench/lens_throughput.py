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
from lakelens.operators.lens.codec import decode_image
from lakelens.operators.lens.models import create_model, to_tensor
from lakelens.synthetic.lens_world import generate_lens_world, lens_config_for_world
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
        with ComponentRecorder(model, world["layers"], 4, k=20) as recorder:
            for start in range(0, len(x), args.batch):
                rows = np.arange(start, min(start + args.batch, len(x)))
                recorder.record(x[rows], rows, [str(i) for i in rows])

    plain(), stage1()  # warm-up
    # interleaved pairs: this machine's speed drifts between runs, so the ratio is taken pair by pair
    pairs = [(timed(plain), timed(stage1)) for _ in range(5)]
    ratios = sorted(s / p for p, s in pairs)
    forward_s, stage1_s = (float(np.median([p[i] for p in pairs])) for i in (0, 1))
    foundation = load_foundation(world["foundation"], str(lake.uri(world["foundation_weights"])))
    clip_s = timed(lambda: foundation.embed_images(images[:2000]))
    print("| step | wall | images/s |\n|---|---|---|")
    print(f"| plain forward | {forward_s:.2f} s | {len(x) / forward_s:,.0f} |")
    print(f"| stage 1 (forward + LRP backward + top-k, 2 layers) | {stage1_s:.2f} s | {len(x) / stage1_s:,.0f} |")
    print(f"| foundation embedding (2,000 images) | {clip_s:.2f} s | {2000 / clip_s:,.0f} |")
    print(f"stage 1 / plain forward = {ratios[2]:.2f}x, median of 5 interleaved pairs (range {ratios[0]:.2f}x to "
          f"{ratios[-1]:.2f}x; target <= 3x)")

    for label, overrides in (("relevance mode, CRP crops (default)", {}),
                             ("activation mode, whole images (as the package)",
                              {"examples_mode": "activation", "crop_examples": False, "model_id": "bench-activation"})):
        config = LakelensConfig(ray=RayConfig(show_progress=False), lens=LensConfig(**{**world, **overrides}))
        with PeakRSS() as rss:
            began = time.perf_counter()
            manifest = run_semantic_lens(lake, "images", config, force=True)
            ours = time.perf_counter() - began
        embedded = manifest["metrics"]["embed_examples"]
        print(f"lakelens semantic-lens, {label} ({len(x):,} images, Ray already up after the first): {ours:.1f} s, "
              f"peak RSS {rss.gib:.2f} GiB, stages {manifest['timings_s']}, embedded {embedded['embedded_views']:,} "
              f"views of {embedded['embedded_samples']:,} example images")

    import_torchvision()
    from semanticlens.component_visualization.activation_based import ActivationComponentVisualizer

    with PeakRSS() as rss:
        began = time.perf_counter()
        # the package takes tensors: reading and decoding the lake's images is part of its run too
        parts = [lake.read_table(f.path, columns=["image"]) for f in lake.list_files("images", ".parquet")]
        decoded = to_tensor(np.stack([decode_image(b) for p in parts for b in p.column("image").to_pylist()]))
        dataset = torch.utils.data.TensorDataset(decoded, torch.zeros(len(decoded), dtype=torch.long))
        visualizer = ActivationComponentVisualizer(model, dataset, dataset, world["layers"], num_samples=20, device="cpu")
        visualizer.run(batch_size=args.batch)
        embedded = foundation.embed_images(images)  # the package embeds the whole dataset
        theirs = time.perf_counter() - began
    print(f"semanticlens 0.2.1 (activation mode; reads and decodes the images, embeds all {len(embedded):,}): "
          f"{theirs:.1f} s, "
          f"peak RSS {rss.gib:.2f} GiB; lakelens / semanticlens wall = {ours / theirs:.2f}")


if __name__ == "__main__":
    main()

"""Semantic lens throughput against the `semanticlens` package, end to end on the same model, data and
foundation model, in one run.

`--config realistic` (the default): torchvision resnet50 (layers 3 and 4) and an open_clip ViT-B-32, both
with random weights saved to paths and loaded through the same code as real weights, on 224-pixel
images (the synthetic world drawn at 224 px; default 5,000). Three runs: lakelens in the package's
mode (activations only, whole images), lakelens's default mode (relevance, CRP crops), and the
package's own pipeline (ActivationComponentVisualizer + Lens.compute_concept_db + eval_clarity,
reading and decoding the same images). Reports walls, the ratio, where the time goes, and whether
the top-k and clarity agree.

`--config tiny`: the synthetic 32-pixel world with its tiny CNN and tiny CLIP; stage 1 against a
plain forward pass (target at most 3x), then the same three-way comparison.
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["realistic", "tiny"], default="realistic")
    parser.add_argument("--images", type=int, default=None, help="default: 5,000 (realistic), 8,000 (tiny)")
    parser.add_argument("--batch", type=int, default=None, help="default: 32 (realistic), 128 (tiny)")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--lake", default=None)
    parser.add_argument("--modes", nargs="+", choices=["activation", "default"], default=["activation", "default"],
                        help="lakelens runs (realistic): the package's mode, our default mode (CRP crops)")
    args = parser.parse_args()
    if args.config == "realistic":
        realistic(args)
    else:
        args.images, args.batch = args.images or 8000, args.batch or 128
        tiny(args)


def tiny(args: argparse.Namespace) -> None:
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


def realistic(args: argparse.Namespace) -> None:
    tv = import_torchvision()  # before open_clip, which imports torchvision
    import open_clip
    import pyarrow as pa
    from PIL import Image

    from lakelens.synthetic.images import ImageWorldParams, generate_images
    from lakelens.synthetic.lens_world import VOCABULARY, write_images

    n, batch, k = args.images or 5000, args.batch or 32, args.top_k
    root = Path(args.lake) if args.lake else Path(tempfile.mkdtemp(prefix="lakelens-lens-224-"))
    lake = Lake(root)
    print(f"# lens_throughput --config realistic | {machine()} | {stamp()} | {n:,} images at 224 px, k = {k}, "
          f"batch {batch}, torch threads {torch.get_num_threads()}")
    began = time.perf_counter()
    if sum(f.rows for f in describe_images(lake)) != n:
        lake.delete_dir("images")
        write_images(lake, generate_images(n, ImageWorldParams(size=224, seed=1)), "images", files=max(1, n // 500))
    weights, clip_weights = "models/bench/resnet50.pt", root / "models/bench/vit-b-32.pt"
    if not clip_weights.exists():
        torch.manual_seed(0)
        buffer = __import__("io").BytesIO()
        torch.save(tv.models.resnet50(weights=None).state_dict(), buffer)
        lake.write_bytes(weights, buffer.getvalue())
        torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), clip_weights)
    print(f"setup (images, random resnet50 and ViT-B-32 saved to paths): {time.perf_counter() - began:.0f} s")

    base = {"architecture": "torchvision:resnet50", "weights": weights, "num_classes": 1000,
            "layers": ["layer3", "layer4"], "image_size": 224, "foundation": "ViT-B-32",
            "foundation_weights": str(clip_weights), "vocabulary": VOCABULARY, "top_k": k, "batch_size": batch}
    runs = {}
    modes = {"activation": ("package's mode: activations only, whole images",
                            {"model_id": "rn50-activation", "examples_mode": "activation", "crop_examples": False,
                             "relevance": False}),
             "default": ("default mode: relevance, CRP crops", {"model_id": "rn50-relevance"})}
    for label, overrides in (modes[m] for m in args.modes):
        config = LakelensConfig(ray=RayConfig(show_progress=False), lens=LensConfig(**{**base, **overrides}))
        with PeakRSS() as rss:
            began = time.perf_counter()
            manifest = run_semantic_lens(lake, "images", config, force=True)
            runs[label] = time.perf_counter() - began
        e, c = manifest["metrics"]["embed_examples"], manifest["metrics"]["components"]
        print(f"lakelens, {label}: {runs[label]:.1f} s, peak RSS {rss.gib:.2f} GiB, stages {manifest['timings_s']}, "
              f"{c['actors']} actor(s) x {c['threads_per_actor']} threads, embedded {e['embedded_views']:,} views of "
              f"{e['embedded_samples']:,} images, relevance conservation {c['relevance_conservation']}")

    from semanticlens import Lens
    from semanticlens.component_visualization.activation_based import ActivationComponentVisualizer
    from semanticlens.foundation_models import OpenClip

    class LakeImages(torch.utils.data.Dataset):
        """The lake's images as the package reads them: decoded per item, for the model or as PILs for the FM."""

        def __init__(self, for_model: bool) -> None:
            parts = [lake.read_table(f.path, columns=["image"]) for f in lake.list_files("images", ".parquet")]
            self.data = pa.concat_tables(parts).column("image").to_pylist()
            self.for_model = for_model

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, i: int):
            image = decode_image(self.data[i])
            return (to_tensor(image[None])[0], 0) if self.for_model else Image.fromarray(image)

    with PeakRSS() as rss:
        began = time.perf_counter()
        model = create_model("torchvision:resnet50", 1000, lake.read_bytes(weights))
        fm = OpenClip("ViT-B-32", pretrained=str(clip_weights))
        dataset = LakeImages(for_model=True)
        visualizer = ActivationComponentVisualizer(model, dataset, LakeImages(for_model=False), base["layers"],
                                                   num_samples=k, device="cpu")
        lens = Lens(fm, device="cpu")
        concept_db = lens.compute_concept_db(visualizer, batch_size=batch)
        clarity = lens.eval_clarity(concept_db)
        theirs = time.perf_counter() - began
    print(f"semanticlens 0.2.1 (ActivationComponentVisualizer + Lens.compute_concept_db + eval_clarity; decodes the "
          f"images, embeds all {len(dataset):,}): {theirs:.1f} s, peak RSS {rss.gib:.2f} GiB")
    for label, wall in runs.items():
        print(f"lakelens {label} / semanticlens wall = {wall / theirs:.2f}")

    # agreement, package's mode: the same top-k samples per component, and the clarity of those examples
    from lakelens.infra.catalog import open_catalog

    con = open_catalog(lake)
    ids = [r for p in lake.list_files("images", ".parquet") for r in lake.read_table(p.path, ["sample_id"])
           .column("sample_id").to_pylist()]
    for layer in base["layers"] if "activation" in args.modes else []:
        ours = {}
        for unit, sample in con.execute("""SELECT unit, sample_id FROM component_examples WHERE model_id = 'rn50-activation'
                AND layer = ? AND mode = 'activation' ORDER BY unit, rank""", [layer]).fetchall():
            ours.setdefault(unit, []).append(sample)
        reference = visualizer.get_max_reference(layer).numpy()
        same = sum(ours.get(u, []) == [ids[i] for i in reference[u]] for u in range(len(reference)))
        same_set = sum(set(ours.get(u, [])) == {ids[i] for i in reference[u]} for u in range(len(reference)))
        mine = np.array([r[0] for r in con.execute("""SELECT clarity FROM components WHERE model_id = 'rn50-activation'
                AND layer = ? ORDER BY unit""", [layer]).fetchall()])
        diff = np.abs(mine - clarity[layer].numpy())
        print(f"{layer}: top-{k} identical in rank order for {same}/{len(reference)} components, as sets for "
              f"{same_set}/{len(reference)} (the package keeps activations in bfloat16, so near-ties may swap); "
              f"clarity |ours - package| max {diff.max():.2e}, median {np.median(diff):.2e}")


def describe_images(lake: Lake) -> list:
    from lakelens.infra.runs import describe_inputs

    return describe_inputs(lake, "images", ["images"])


if __name__ == "__main__":
    main()

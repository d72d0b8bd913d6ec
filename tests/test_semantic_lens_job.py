"""semantic-lens end to end on the synthetic image world: search, labels, audit, bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pytest

from lakelens.infra.catalog import open_catalog
from lakelens.infra.config import LakelensConfig, LensConfig, RayConfig
from lakelens.infra.storage import Lake
from lakelens.synthetic.images import MARKER
from lakelens.synthetic.lens_world import generate_lens_world, lens_config_for_world, truth
from lakelens.pipelines.search_components import search_components
from lakelens.pipelines.semantic_lens import run_semantic_lens

MODEL = "tiny-cnn-world"


def _config(**lens) -> LakelensConfig:
    return LakelensConfig(ray=RayConfig(show_progress=False),
                          lens=dataclasses.replace(LensConfig(**lens_config_for_world(MODEL)), **lens))


@pytest.fixture(scope="module")
def lens_lake(tmp_path_factory, ray_local):
    lake = Lake(tmp_path_factory.mktemp("lens") / "lake")
    generate_lens_world(lake, n=1600, seed=5)
    return lake, run_semantic_lens(lake, "images", _config())


def _examples_with(lake: Lake, layer: str, unit: int, column: str) -> list:
    con = open_catalog(lake)
    con.register("truth_images", truth(lake))
    return [r[0] for r in con.execute(f"""
        SELECT t.{column} FROM component_examples e JOIN truth_images t USING (sample_id)
        WHERE e.model_id = ? AND e.layer = ? AND e.unit = ? AND e.mode = 'relevance'""",
                                      [MODEL, layer, unit]).fetchall()]


def _concept_column(concept: str) -> str:
    from lakelens.synthetic.images import COLOURS, SHAPES

    return "shape" if concept in SHAPES else "colour" if concept in COLOURS else "texture"


@pytest.mark.parametrize("concept", ["red", "blue", "striped", "dotted", "circle", "cross", "triangle", "square"])
def test_search_finds_components_whose_examples_show_the_planted_concept(lens_lake, concept):
    lake, _ = lens_lake
    found = search_components(lake, concept, MODEL, top=3).to_pylist()
    column = _concept_column(concept)
    shares = []
    for row in found:
        values = _examples_with(lake, row["layer"], row["unit"], column)
        shares.append(sum(v == concept for v in values) / len(values))
    assert max(shares) >= 0.6, (concept, found, shares)


def test_components_whose_crops_share_a_concept_are_labelled_with_it(lens_lake):
    from lakelens.synthetic.images import unpack_mask, visible_concepts

    lake, _ = lens_lake
    con = open_catalog(lake)
    con.register("truth_images", truth(lake))
    rows = con.execute("""
        SELECT c.layer, c.unit, c.label, list(e.crop_box), list(t.shape_mask), list(t.shape), list(t.colour),
               list(t.texture), list(t.marker)
        FROM components c JOIN component_examples e USING (model_id, layer, unit) JOIN truth_images t USING (sample_id)
        WHERE c.model_id = ? AND e.mode = 'relevance' GROUP BY ALL""", [MODEL]).fetchall()
    pure, agreeing = 0, 0
    for _, _, label, boxes, masks, shapes, colours, textures, markers in rows:
        shown = [visible_concepts(tuple(b), unpack_mask(m, 32), s, c, t, k)
                 for b, m, s, c, t, k in zip(boxes, masks, shapes, colours, textures, markers)]
        common = {x for x in set().union(*shown) if sum(x in v for v in shown) >= 0.8 * len(shown)}
        if common:
            pure += 1
            agreeing += label in common
    assert pure >= 5 and agreeing / pure >= 0.5, (pure, agreeing)


def test_the_audit_flags_the_spurious_marker(lens_lake):
    lake, _ = lens_lake
    audits = {(r["class_name"], r["kind"]): r for r in open_catalog(lake).execute(
        "SELECT * FROM audits WHERE model_id = ?", [MODEL]).to_arrow_table().to_pylist()}
    spurious = audits[("triangle", "spurious")]
    assert spurious["flagged"] and spurious["components"], spurious
    assert "corner marker" in spurious["finding"]


def test_the_audit_finds_most_of_the_class_relevance_on_components_encoding_its_shape(lens_lake):
    lake, _ = lens_lake
    con = open_catalog(lake)
    expected, spurious = (con.execute("SELECT relevance_share, components FROM audits WHERE model_id = ? AND kind = ?",
                                      [MODEL, kind]).fetchone() for kind in ("expected", "spurious"))
    assert expected[0] >= 0.4 and expected[0] > spurious[0], (expected, spurious)
    for name in expected[1]:
        layer, unit = name.split(":")
        shapes = _examples_with(lake, layer, int(unit), "shape")
        assert shapes.count("triangle") >= 0.8 * len(shapes), (name, shapes)


def test_marker_components_are_found_through_crops_of_the_marker_corner(lens_lake):
    lake, _ = lens_lake
    found = search_components(lake, MARKER, MODEL, top=2).to_pylist()
    con = open_catalog(lake)
    for row in found:
        boxes = [r[0] for r in con.execute("""SELECT crop_box FROM component_examples
            WHERE model_id = ? AND layer = ? AND unit = ? AND mode = 'relevance'""",
                                           [MODEL, row["layer"], row["unit"]]).fetchall()]
        corner = [b for b in boxes if b[0] <= 1 and b[1] <= 1 and b[2] <= 16 and b[3] <= 16]
        assert len(corner) >= 0.6 * len(boxes), (row, boxes)
        assert row["label"] == MARKER


def test_a_model_trained_without_the_spurious_correlation_is_not_flagged(lens_lake):
    from lakelens.synthetic.images import ImageWorldParams, generate_images
    from lakelens.synthetic.lens_world import train_world_classifier, write_images

    lake, _ = lens_lake
    table = generate_images(1600, ImageWorldParams(seed=6, marker_rate_in_class=0.05))  # marker as common anywhere
    write_images(lake, table, "images-uncorrelated")
    train_world_classifier(lake, table, "models/lens/tiny-cnn-uncorrelated.pt", seed=6)
    run_semantic_lens(lake, "images-uncorrelated",
                      _config(model_id="uncorrelated", weights="models/lens/tiny-cnn-uncorrelated.pt"))
    spurious = open_catalog(lake).execute("""SELECT flagged, relevance_share FROM audits
        WHERE model_id = 'uncorrelated' AND kind = 'spurious'""").fetchone()
    flagged_share = open_catalog(lake).execute("""SELECT relevance_share FROM audits
        WHERE model_id = ? AND kind = 'spurious'""", [MODEL]).fetchone()[0]
    assert spurious[0] is False and spurious[1] < flagged_share / 2, (spurious, flagged_share)


def test_only_the_concept_examples_are_embedded_by_the_foundation_model(lens_lake):
    _, manifest = lens_lake
    embedded = manifest["metrics"]["embed_examples"]
    assert 0 < embedded["embedded_samples"] < embedded["dataset_samples"] == 1600
    assert set(manifest["outputs"]) >= {"components", "component_examples", "concept_labels", "audits"}


def test_an_undecodable_image_is_quarantined_and_the_run_continues(lens_lake):
    lake, _ = lens_lake
    good = lake.read_table(lake.list_files("images", suffix=".parquet")[0].path).slice(0, 300)
    broken = pa.table({"sample_id": ["broken-1"], "image": [b"\x89PNG but not really"], "label": [0]},
                      schema=good.schema)
    lake.write_table("images-with-a-broken-file/part-00000.parquet", pa.concat_tables([good, broken]))
    manifest = run_semantic_lens(lake, "images-with-a-broken-file", _config(model_id="broken-input", top_k=5))
    assert manifest["quarantine"]["images"]["rows"] == 1
    reasons = manifest["quarantine"]["images"]["by_reason"]
    assert list(reasons)[0].startswith("undecodable:image")
    assert manifest["metrics"]["components"]["images"] == 300


def test_bad_settings_are_clear_errors_before_any_work(lens_lake, tmp_path):
    lake, _ = lens_lake
    with pytest.raises(ValueError, match="vocabulary is empty"):
        run_semantic_lens(lake, "images", _config(vocabulary=[]))
    with pytest.raises(ValueError, match="no layer named 'block7'.*valid layers"):
        run_semantic_lens(lake, "images", _config(layers=["block7"]))
    lake.write_bytes("models/lens/wrong.pt", b"not weights")
    with pytest.raises(ValueError, match="cannot read the weights for 'tiny-cnn'"):
        run_semantic_lens(lake, "images", _config(weights="models/lens/wrong.pt", model_id="wrong"))


def test_comparing_a_model_with_one_of_its_layers_finds_every_concept_of_the_layer_shared(lens_lake):
    from lakelens.pipelines.compare_models import run_compare_models

    lake, _ = lens_lake
    run_semantic_lens(lake, "images", _config(model_id="block3-only", layers=["block3"]))
    manifest = run_compare_models(lake, MODEL, "block3-only")
    rows = open_catalog(lake).execute("SELECT * FROM model_comparisons").to_arrow_table().to_pylist()
    assert rows and manifest["outputs"]["model_comparisons"]["rows"] == len(rows)
    assert all(r["status"] in ("shared", "only_a") for r in rows)  # B's components are A's block3
    assert {r["matched_share_b"] for r in rows} == {1.0}
    assert any(r["status"] == "shared" for r in rows)


def test_the_report_opens_in_a_browser_with_the_flagged_audit_and_every_example_crop_decoded(lens_lake):
    from playwright.sync_api import sync_playwright

    lake, manifest = lens_lake
    report = lake.uri(manifest["metrics"]["report"])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(f"file://{report}")
            flagged = page.locator("#audits tr.flag").all_inner_texts()
            sizes = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            layers = page.locator("table.components").count()
            spurious_rows = page.locator("#spurious-samples tr").count() - 1  # the header row
            first_spurious = page.locator("#spurious-samples tr").nth(1).inner_text() if spurious_rows > 0 else ""
            title = page.title()
        finally:
            browser.close()
    assert len(flagged) == 1 and "triangle" in flagged[0] and MARKER in flagged[0], flagged
    assert spurious_rows >= 1 and "triangle" in first_spurious, first_spurious
    assert len(sizes) >= 2 * 8 * 3 and all(s == [True, 32, 32] for s in sizes), sizes[:5]
    assert layers == 2 and MODEL in title


def test_spurious_samples_rank_the_flagged_class_by_its_marker_components_and_carry_the_marker_first(lens_lake):
    lake, _ = lens_lake
    con = open_catalog(lake)
    con.register("truth_images", truth(lake))
    rows = con.execute("""SELECT s.rank, s.sample_id, s.relevance, s.share, t.marker, t.shape FROM spurious_samples s
        JOIN truth_images t USING (sample_id) WHERE s.model_id = ? AND s.class_name = 'triangle' ORDER BY s.rank""",
                       [MODEL]).fetchall()
    assert rows and [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert all(a[2] >= b[2] for a, b in zip(rows, rows[1:]))  # ranked by the spurious components' relevance
    quarter = max(10, len(rows) // 4)
    top, bottom = rows[:quarter], rows[-quarter:]
    marker_top = sum(r[4] for r in top) / len(top)
    marker_bottom = sum(r[4] for r in bottom) / len(bottom)
    assert marker_top >= 0.9 and marker_top > marker_bottom, (marker_top, marker_bottom)
    flagged = {r[0] for r in con.execute("SELECT class_name FROM audits WHERE model_id = ? AND flagged", [MODEL]).fetchall()}
    assert {r[0] for r in con.execute("SELECT DISTINCT class_name FROM spurious_samples WHERE model_id = ?",
                                      [MODEL]).fetchall()} == flagged


def test_a_killed_run_resumes_from_its_block_checkpoints_with_the_uninterrupted_result(lens_lake, tmp_path):
    """Stage 1 checkpoints each block; a second attempt of the same run restores the finished blocks (and the
    quarantine they wrote) instead of recomputing them, and publishes what an uninterrupted run publishes."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import ray

    lake, _ = lens_lake
    parts = lake.list_files("images", suffix=".parquet")
    for i, part in enumerate(parts):
        table = lake.read_table(part.path)
        if i == 0:  # an undecodable image in the first block: its quarantine must survive the resume
            table = pa.concat_tables([table, pa.table({"sample_id": ["broken-2"], "image": [b"no image"], "label": [0]},
                                                      schema=table.schema)])
        lake.write_table(f"images-resume/part-{i:05d}.parquet", table)
    lens = {**dataclasses.asdict(_config().lens), "model_id": "resumed", "checkpoint_rows": 401}
    script = ("import json, sys\nfrom lakelens.infra.config import LakelensConfig, LensConfig, RayConfig\n"
              "from lakelens.infra.storage import Lake\nfrom lakelens.pipelines.semantic_lens import run_semantic_lens\n"
              "run_semantic_lens(Lake(sys.argv[1]), 'images-resume', LakelensConfig(ray=RayConfig(show_progress=False, "
              "address=sys.argv[2]), lens=LensConfig(**json.loads(sys.argv[3]))))\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(lake.uri()), ray.get_runtime_context().gcs_address,
                              json.dumps(lens)], start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    checkpoints = Path(lake.uri("runs/semantic-lens/model=resumed"))
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("*/_checkpoints/components/*.pkl")) and time.monotonic() < deadline:
        assert child.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)  # killed mid-run, as a preempted node would be
    child.wait()
    done = len(list(checkpoints.glob("*/_checkpoints/components/*.pkl")))
    assert 1 <= done < 4

    manifest = run_semantic_lens(lake, "images-resume", _config(**{k: lens[k] for k in ("model_id", "checkpoint_rows")}))
    assert manifest["metrics"]["components"]["blocks"] == {"total": 4, "resumed": done}
    assert manifest["quarantine"]["images"]["rows"] == 1
    assert manifest["metrics"]["components"]["images"] == 1600
    assert not list(checkpoints.glob("*/_checkpoints/components/*.pkl"))  # removed once the run is written
    # the same work uninterrupted (another model id, so another run, with the same blocks)
    run_semantic_lens(lake, "images-resume", _config(model_id="uninterrupted", checkpoint_rows=401))
    con = open_catalog(lake)
    for table, order in (("component_examples", "layer, unit, mode, rank"), ("components", "layer, unit"),
                         ("audits", "class_name, kind"), ("spurious_samples", "class_name, rank")):
        ours, reference = (con.execute(f"SELECT * EXCLUDE (model_id) FROM {table} WHERE model_id = ? ORDER BY {order}",
                                       [m]).to_arrow_table().to_pylist() for m in ("resumed", "uninterrupted"))
        assert len(ours) == len(reference) > 0
        # stage 1 is bit-identical; stage 2's embeddings may differ in the last bits with Ray's batching
        assert all(_same(a, b) for a, b in zip(ours, reference)), table


def _same(a, b) -> bool:
    """Rows equal, floats (also inside lists and structs) to 1e-6."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == pytest.approx(b, rel=1e-6, abs=1e-9)
    return a == b


def test_an_auditor_runs_the_lens_from_python_on_an_in_memory_model_and_a_folder_of_images(lens_lake, tmp_path):
    """No TOML: an nn.Module defined here (not importable by Ray's workers) and a folder of PNG files."""
    import torch

    from lakelens.operators.lens.models import create_model
    from lakelens.pipelines.lens_api import audit_model

    lake, _ = lens_lake
    world = lens_config_for_world(MODEL)

    class Wrapped(torch.nn.Module):  # a notebook's own class around the world's trained CNN
        def __init__(self) -> None:
            super().__init__()
            self.net = create_model("tiny-cnn", 4, lake.read_bytes(world["weights"]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    folder = tmp_path / "pngs"
    table = lake.read_table(lake.list_files("images", suffix=".parquet")[0].path).slice(0, 200)
    names = [f"{i}-{shape}" for i, shape in enumerate(world["class_names"])]  # sorted folders = the model's classes
    for sample, image, label in zip(*(table.column(c).to_pylist() for c in ("sample_id", "image", "label"))):
        (folder / names[label]).mkdir(parents=True, exist_ok=True)
        (folder / names[label] / f"{sample}.png").write_bytes(image)
    result = audit_model(Wrapped(), folder, lake=tmp_path / "audit", model_id="from-python",
                         layers=["net.block3"], class_names=names, top_k=5,
                         foundation=world["foundation"], foundation_weights=str(lake.uri(world["foundation_weights"])),
                         vocabulary=world["vocabulary"], crop_examples=False)
    components = result.components
    assert components.num_rows == 32 and set(components.column("layer").to_pylist()) == {"net.block3"}
    assert result.manifest["metrics"]["components"]["images"] == 200
    assert result.manifest["metrics"]["components"]["accuracy"] > 0.9  # labels from the class folders
    assert result.sql("SELECT count(*) AS n FROM components WHERE model_id = 'from-python'").column("n")[0].as_py() == 32
    assert result.search("red", top=3).num_rows == 3
    assert Path(result.report).exists()


def test_a_timm_vit_runs_end_to_end_at_224_pixels_with_its_own_transforms_and_attn_lrp_crops(lens_lake, tmp_path):
    """The job's actors on a transformer: timm's data config takes the 32-pixel images to 224, MLP neurons
    are the components, AttnLRP gives their relevance, and CRP crops come from neuron-conditioned heatmaps."""
    import timm
    import torch

    from lakelens.pipelines.lens_api import audit_model

    lake, _ = lens_lake
    world = lens_config_for_world(MODEL)
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, patch_size=32, depth=2,
                            embed_dim=48, num_heads=3).eval()
    table = lake.read_table(lake.list_files("images", suffix=".parquet")[0].path).slice(0, 96)
    lake.write_table("vit-images/part-0.parquet", table)
    result = audit_model(vit, "vit-images", lake=lake.root_uri, model_id="vit-224", layers=["blocks.1.mlp.act"],
                         class_names=world["class_names"], top_k=3, preprocess="timm",
                         foundation=world["foundation"], foundation_weights=world["foundation_weights"],
                         vocabulary=world["vocabulary"])
    metrics = result.manifest["metrics"]
    assert result.components.num_rows == 4 * 48
    assert metrics["components"]["images"] == 96
    # the MLP neurons carry part of the relevance; the residual stream carries the rest around them
    assert 0 < abs(metrics["components"]["relevance_conservation"]["blocks.1.mlp.act"]) < 1.5
    boxes = result.sql("SELECT crop_box FROM component_examples WHERE model_id = 'vit-224' AND crop_box IS NOT NULL")
    assert boxes.num_rows > 0
    assert all(0 <= b[0] < b[2] <= 224 and 0 <= b[1] < b[3] <= 224 for b in boxes.column("crop_box").to_pylist())

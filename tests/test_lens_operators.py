"""Semantic-lens operators on small arrays and a tiny trained CNN, checked against the semanticlens package."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lakelens.operators.lens import measures
from lakelens.operators.lens.compat import import_torchvision
from lakelens.operators.lens.components import ComponentRecorder
from lakelens.operators.lens.codec import decode_image
from lakelens.operators.lens.models import create_model, resolve_layers, to_tensor
from lakelens.synthetic.images import ImageWorldParams, generate_images
from lakelens.synthetic.training import train_classifier
from lakelens.operators.lens.topk import TopK


def _semanticlens():
    import_torchvision()  # the package imports open_clip, which imports torchvision
    import semanticlens

    return semanticlens


def test_streaming_topk_merged_from_many_parts_equals_the_global_topk():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(500, 7))
    scores[::50, 3] = 10.0  # ties: the lower sample index wins
    index = np.arange(500) * 3 + 11
    parts = []
    for actor in range(3):
        top = TopK.empty(5, 7)
        for start in range(actor * 40, 500, 120):  # interleaved batches per actor
            top = top.update(scores[start:start + 40], index[start:start + 40])
        parts.append(top)
    merged = parts[2].merge(parts[0]).merge(parts[1])
    for c in range(7):
        expected = sorted(range(500), key=lambda i: (-scores[i, c], index[i]))[:5]
        assert merged.samples[:, c].tolist() == index[expected].tolist()
        assert np.allclose(merged.scores[:, c], scores[expected, c])


def test_fewer_samples_than_k_leave_empty_slots_last():
    top = TopK.empty(4, 2).update(np.array([[1.0, 2.0], [3.0, 0.5]]), np.array([7, 9]))
    assert top.samples[:, 0].tolist() == [9, 7, -1, -1] and np.isinf(top.scores[2:, 0]).all()


def test_clarity_polysemanticity_and_redundancy_equal_the_semanticlens_definitions():
    """Polysemanticity is one batched 2-means over all components; it must give the package's
    per-component scikit-learn fits exactly, on clear, two-group, noisy and degenerate components."""
    scores = _semanticlens().scores
    rng = np.random.default_rng(1)
    examples = rng.normal(size=(24, 20, 16))
    examples[0] = rng.normal(size=16) + 0.05 * rng.normal(size=(20, 16))  # one clear component
    examples[4:8] = rng.normal(size=(4, 1, 16)) + 0.3 * rng.normal(size=(4, 20, 16))  # clear but spread
    examples[1, :6] += 4.0  # one with two distinct groups of examples
    examples[8:12, :7] += 3 * rng.normal(size=(4, 1, 16))  # more of those, groups of unequal size
    examples[2, 1:] = examples[2, 0]  # one whose 2-means split is degenerate
    examples[12, 1:] = examples[12, 0]
    examples[12, 0] += 1.0  # one example apart from 19 equal ones: a group of one
    examples = measures.normalise(examples)  # embeddings are unit vectors
    reference = torch.as_tensor(examples)
    assert np.allclose(measures.clarity(examples), scores.clarity_score(reference).numpy())
    ours, theirs = measures.polysemanticity(examples), scores.polysemanticity_score(reference).numpy()
    assert np.allclose(ours, theirs, rtol=0, atol=1e-9), np.abs(ours - theirs).max()
    vectors = measures.component_embeddings(examples)
    assert measures.redundancy(vectors) == pytest.approx(float(scores.redundancy_score(torch.as_tensor(vectors))))
    assert measures.clarity(examples)[0] > 0.9 > measures.clarity(examples)[3]
    assert ours[1] > ours[0]  # two groups are more polysemantic than one


def test_alignment_is_the_cosine_to_a_label_minus_the_cosine_to_the_empty_prompt():
    v = np.array([[1.0, 0.0, 0.0]])
    labels = np.array([[[1.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]])  # 2 labels x 1 template
    empty = np.array([[0.0, 1.0, 0.0]])
    aligned = measures.alignment(v, labels, empty)
    assert aligned.shape == (1, 2)
    assert aligned[0, 0] == pytest.approx(np.sqrt(0.5) - 0.0) and aligned[0, 1] == pytest.approx(0.0)


@pytest.fixture(scope="module")
def tiny_world():
    table = generate_images(600, ImageWorldParams(seed=3))
    images = np.stack([decode_image(b) for b in table.column("image").to_pylist()])
    labels = np.asarray(table.column("label").to_pylist())
    torch.manual_seed(0)
    model = create_model("tiny-cnn", 4)
    train_classifier(model, to_tensor(images), torch.as_tensor(labels), epochs=4)
    return table, images, labels, model


def test_activation_topk_equals_the_semanticlens_visualizer_on_the_same_model_and_data(tiny_world, tmp_path):
    sl = _semanticlens()
    from semanticlens.component_visualization.activation_based import ActivationComponentVisualizer

    table, images, labels, model = tiny_world
    x = to_tensor(images)
    with ComponentRecorder(model, ["block2", "block3"], num_classes=4, k=8) as recorder:
        for start in range(0, len(x), 100):
            rows = np.arange(start, min(start + 100, len(x)))
            recorder.record(x[rows], rows, [str(i) for i in rows], labels[rows])
    dataset = torch.utils.data.TensorDataset(x, torch.as_tensor(labels))
    visualizer = ActivationComponentVisualizer(model, dataset, dataset, ["block2", "block3"], num_samples=8,
                                               device="cpu")
    visualizer.run(batch_size=64)
    plain = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda _m, _i, out, name=name: plain.setdefault(name, []).append(out.detach().flatten(2).mean(-1)))
        for name in ("block2", "block3")]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    for layer in ("block2", "block3"):
        theirs = visualizer.get_max_reference(layer).numpy()  # (components, k)
        ours = recorder.stats.layers[layer].by_activation
        activation = torch.cat(plain[layer]).numpy()  # (samples, components), plain forward
        live = ours.scores[-1] > 0  # dead units tie at 0, where any order is right
        assert live.sum() >= 4
        for unit in np.flatnonzero(live):
            mine, reference = ours.samples[:, unit], theirs[unit]
            # the same samples rank by rank; semanticlens stores activations in bfloat16, so two samples
            # whose activations round to the same bfloat16 may come in either order
            rounded = torch.as_tensor(activation[:, unit]).to(torch.bfloat16).float().numpy()
            same_score = rounded[mine] == rounded[reference]
            assert ((mine == reference) | same_score).all(), (layer, unit, mine, reference)
    assert sl is not None


def test_relevance_flows_to_every_component_in_one_backward_pass_and_sums_per_class(tiny_world):
    table, images, labels, model = tiny_world
    x = to_tensor(images[:64])
    with ComponentRecorder(model, ["block3"], num_classes=4, k=5) as recorder:
        recorder.record(x, np.arange(64), [str(i) for i in range(64)], labels[:64])
    stats = recorder.stats.layers["block3"]
    assert stats.class_relevance.shape == (4, 32)
    assert np.isfinite(stats.class_relevance).all() and np.abs(stats.class_relevance).sum() > 0
    assert recorder.stats.class_counts.sum() == 64
    assert (stats.by_relevance.samples >= 0).all()


def test_a_missing_layer_name_lists_the_valid_ones_and_mismatched_weights_are_refused(tmp_path):
    model = create_model("tiny-cnn", 4)
    with pytest.raises(ValueError, match="no layer named 'block9'.*valid layers: block1"):
        resolve_layers(model, ["block9"])
    path = tmp_path / "wide.pt"
    torch.save(create_model("tiny-cnn-wide", 4).state_dict(), path)
    with pytest.raises(ValueError, match="do not match architecture 'tiny-cnn'"):
        create_model("tiny-cnn", 4, str(path))


def test_undecodable_bytes_are_a_clear_error():
    with pytest.raises(ValueError, match="undecodable image"):
        decode_image(b"not an image")


def test_channel_conditioned_heatmaps_add_up_to_the_unconditioned_input_relevance(tiny_world):
    _, images, labels, model = tiny_world
    x = to_tensor(images[:3])
    channels = 32
    with ComponentRecorder(model, ["block2"], num_classes=4) as recorder:
        per_channel = recorder.channel_heatmaps(x.repeat_interleave(channels, 0), "block2",
                                                np.tile(np.arange(channels), 3), np.repeat(labels[:3], channels))
        everything = recorder.channel_heatmaps(x, "block2", np.zeros(3, int), labels[:3])  # one channel only
        whole = recorder.input_relevance(x, labels[:3]).sum(1).numpy()
    summed = per_channel.reshape(3, channels, 32, 32).sum(1)
    assert np.allclose(summed, whole, atol=1e-5 * np.abs(whole).max())
    assert not np.allclose(everything, whole)


def test_the_relevant_box_frames_the_compact_peak_and_keeps_a_minimum_square_inside_the_image():
    from lakelens.operators.lens.crops import crop_resized, relevant_box

    heatmap = np.zeros((32, 32))
    heatmap[1:5, 1:5] = 5.0  # a strong compact spot in the corner
    heatmap[12:28, 10:26] = 0.2  # weak relevance spread over a large region
    y0, x0, y1, x1 = relevant_box(heatmap)
    assert (y0, x0) == (0, 0) and y1 - y0 == x1 - x0 == 8  # the minimum side, a quarter of 32
    heatmap[1:5, 1:5] = 0.0
    assert relevant_box(heatmap) == (11, 9, 29, 27)  # the spread region, framed as a square
    assert relevant_box(-np.ones((32, 32))) == (0, 0, 32, 32)  # nothing positive: the whole image
    assert relevant_box(heatmap, context=1.5) == (5, 4, 32, 31)  # grown 1.5x around the region, moved inside
    assert relevant_box(heatmap, context=3.0) == (0, 0, 32, 32)  # never larger than the image
    image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    assert crop_resized(image, (0, 0, 8, 8), 32).shape == (32, 32, 3)
    assert (crop_resized(image, (0, 0, 32, 32), 32) == image).all()


def test_training_views_name_only_the_concepts_a_crop_shows():
    from lakelens.synthetic.images import MARKER, TrainingViews, unpack_mask, visible_concepts

    table = generate_images(40, ImageWorldParams(seed=4))
    row = next(r for r in table.to_pylist() if r["marker"])
    mask = unpack_mask(row["shape_mask"], 32)
    truth = {k: row[k] for k in ("shape", "colour", "texture", "marker")}
    assert visible_concepts((0, 0, 32, 32), mask, **truth) == {row["shape"], row["colour"], row["texture"], MARKER}
    assert visible_concepts((0, 0, 8, 8), mask, **truth) == {MARKER}
    assert row["shape"] not in visible_concepts((12, 12, 20, 20), mask, **truth)
    views, concepts = TrainingViews(table).draw(np.arange(40), np.random.default_rng(0))
    assert views.shape == (40, 32, 32, 3) and all(concepts)


def test_stopping_the_backward_pass_at_the_first_analysed_layer_leaves_layer_relevances_unchanged(tiny_world):
    _, images, labels, model = tiny_world
    x = to_tensor(images[:16])
    grads = {}
    recorder = ComponentRecorder(model, ["block2", "block3"], num_classes=4)
    for to_input in (False, True):
        logits, target, _, outputs = recorder._forward(x, labels[:16], ["block2", "block3"], input_relevance=to_input)
        relevances = torch.autograd.grad(logits, list(outputs.values()), recorder.attribution.start(logits, target))
        grads[to_input] = dict(zip(outputs, relevances))
    recorder.close()
    for name in ("block2", "block3"):
        assert torch.allclose(grads[False][name], grads[True][name], rtol=1e-5, atol=1e-7)


def test_a_recorder_leaves_the_model_as_it_found_it_once_closed(tiny_world):
    _, images, _, model = tiny_world
    x = to_tensor(images[:8])
    with torch.no_grad():
        before = model(x)
    with ComponentRecorder(model, ["block2"], num_classes=4):
        with pytest.raises(RuntimeError, match="already has a ComponentRecorder"):
            ComponentRecorder(model, ["block3"], num_classes=4)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert all(p.requires_grad for p in model.parameters())

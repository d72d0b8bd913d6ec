"""Relevance on the architectures auditors bring: torchvision ResNets and VGGs and timm ResNets, random weights.

Conservation is checked against what zennit's own canonizers reach on the same model, and the
channel relevances and conditional heatmaps against zennit-crp's `CondAttribution`.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from lakelens.operators.lens.canonizers import family_of
from lakelens.operators.lens.compat import import_torchvision
from lakelens.operators.lens.components import ComponentRecorder

# (architecture, analysed layers, a layer inside a residual block for conditional heatmaps)
MODELS = [
    ("resnet18", ["layer3", "layer4"], "layer3.1.conv2"),
    ("resnet50", ["layer3", "layer4"], "layer4.0.conv2"),
    ("vgg11_bn", ["features.14", "features.21"], "features.18"),
]
SIZE = 64  # small inputs keep resnet50 quick; the rules do not depend on the size


def _random_batch_norms(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Fresh batch norms are the identity, which would hide a canonizer that does not merge them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


@functools.lru_cache(maxsize=None)  # a closed recorder leaves the model as it found it, so tests share them
def _torchvision(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return _random_batch_norms(import_torchvision().models.get_model(name, weights=None, num_classes=10))


def _zennit_composite(name: str):
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    return EpsilonPlusFlat(canonizers=[ResNetCanonizer() if name.startswith("resnet") else VGGCanonizer()])


@pytest.mark.parametrize("name,layers,inner", MODELS)
def test_relevance_is_conserved_as_zennits_canonizers_conserve_it_and_equals_zennit_crp(name, layers, inner):
    """Conservation: the relevance at each analysed layer and at the input, over the target logit, is
    what zennit's own canonizer reaches on the same model (through zennit-crp), and near 1 at the layers.
    Agreement: channel relevances and conditional heatmaps, at a stage's output and inside a block
    (where a shortcut runs in parallel), equal zennit-crp's CondAttribution."""
    from crp.attribution import CondAttribution

    model = _torchvision(name)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    channels = np.array([3, 7])
    with ComponentRecorder(model, layers, 10) as recorder:
        logits, target, per_layer = recorder.layer_relevances(x)
        start = logits.detach()[torch.arange(2), torch.as_tensor(target)].numpy()
        relevance = {n: rel.flatten(2).sum(2).numpy() for n, (_, rel) in per_layer.items()}
        heatmap = recorder.input_relevance(x).sum(1).numpy()
        conditional = {layer: recorder.channel_heatmaps(x, layer, channels) for layer in (layers[0], inner)}
    attribution = CondAttribution(model)
    theirs = attribution(x.clone().requires_grad_(True), [{"y": [int(t)]} for t in target], _zennit_composite(name),
                         record_layer=layers)
    for layer in layers:
        reference = theirs.relevances[layer].flatten(2).sum(2).numpy()
        assert np.allclose(relevance[layer], reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max()), layer
        ratio = relevance[layer].sum(1) / start
        assert np.allclose(ratio, reference.sum(1) / start, rtol=1e-4), (layer, ratio)
        assert np.all(np.abs(ratio - 1) < 0.1), (layer, ratio)  # what reaches a layer is the logit
    reference = theirs.heatmap.numpy()
    assert np.allclose(heatmap, reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max())
    ratio = heatmap.reshape(2, -1).sum(1) / start
    assert np.all((ratio > 0.5) & (ratio < 1.05)), ratio  # the biases absorb some, nothing is created
    for layer, mine in conditional.items():
        conditions = [{layer: [int(c)], "y": [int(t)]} for c, t in zip(channels, target)]
        reference = attribution(x.clone().requires_grad_(True), conditions, _zennit_composite(name)).heatmap.numpy()
        assert np.abs(reference).max() > 0
        assert np.allclose(mine, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max()), layer


def test_without_the_residual_canonizer_relevance_grows_through_a_resnet():
    """The test above can fail: batch-norm merging alone (the lens's old default) is far from conserved."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    model = _torchvision("resnet18")
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        target = model(x).argmax(1)
    from crp.attribution import CondAttribution

    result = CondAttribution(model)(x.clone().requires_grad_(True), [{"y": [int(t)]} for t in target],
                                    EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]), record_layer=["layer3"])
    start = result.prediction.detach()[torch.arange(2), target].numpy()
    assert np.all(result.relevances["layer3"].flatten(1).sum(1).numpy() / start > 1.5)


def test_each_architecture_family_gets_its_own_canonizers():
    import timm

    assert family_of(_torchvision("resnet18")).name == "torchvision-resnet"
    assert family_of(_torchvision("vgg11_bn")).name == "torchvision-vgg"
    assert family_of(timm.create_model("resnet18", pretrained=False, num_classes=10)).name == "timm-resnet"
    assert family_of(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())).name == "sequential-cnn"


def test_a_timm_resnet_has_the_relevances_of_the_torchvision_resnet_with_the_same_weights():
    """timm's blocks get their own residual canonizer; with torchvision's weights (the same module names)
    every channel's relevance equals zennit's ResNetCanonizer on the torchvision model."""
    import timm

    reference_model = _torchvision("resnet18")
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    model.load_state_dict(reference_model.state_dict())
    model.eval()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = model(x)
    results = []
    for m in (model, reference_model):
        with ComponentRecorder(m, ["layer2", "layer4"], 10) as recorder:
            _, _, per_layer = recorder.layer_relevances(x)
            results.append({n: rel.numpy() for n, (_, rel) in per_layer.items()} |
                           {"input": recorder.input_relevance(x).numpy()})
    for key, theirs in results[1].items():
        assert np.allclose(results[0][key], theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max()), key
    with torch.no_grad():
        assert torch.equal(model(x), before)  # the canonizer is undone on close

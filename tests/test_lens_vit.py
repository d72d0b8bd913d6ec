"""Vision transformers through AttnLRP: a small random timm ViT, checked against lxt's own attributions.

lxt's reference map for vision transformers patches torchvision's classes, so the timm ViT's weights
are copied into a torchvision ViT of the same shape (the two compute the same logits) and lxt explains
that one. lxt 2.1's package `__init__` imports its language-model patches, which need an older
transformers; only its ViT map and rules are loaded here, from the installed package.
"""

from __future__ import annotations

import functools
import os
import sys
import types

import numpy as np
import pytest
import torch

from lakelens.operators.lens.canonizers import family_of
from lakelens.operators.lens.compat import import_torchvision
from lakelens.operators.lens.components import ComponentRecorder

LAYERS = ["blocks.1.mlp.act", "blocks.2.mlp.act"]
BLOCKS = ["blocks.0", "blocks.1", "blocks.2"]
SHAPE = dict(img_size=32, patch_size=8, depth=3, embed_dim=48, num_heads=3)


@functools.lru_cache(maxsize=None)
def _timm_vit() -> torch.nn.Module:
    import_torchvision()
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **SHAPE)
    with torch.no_grad():  # fresh layer norms are the identity, which would hide a wrong layer-norm rule
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def _same_torchvision_vit(model: torch.nn.Module) -> torch.nn.Module:
    tv = import_torchvision().models.VisionTransformer(
        image_size=SHAPE["img_size"], patch_size=SHAPE["patch_size"], num_layers=SHAPE["depth"],
        num_heads=SHAPE["num_heads"], hidden_dim=SHAPE["embed_dim"], mlp_dim=4 * SHAPE["embed_dim"], num_classes=5)
    pairs = [(tv.conv_proj, model.patch_embed.proj), (tv.encoder.ln, model.norm), (tv.heads.head, model.head)]
    for layer, block in zip(tv.encoder.layers, model.blocks):
        pairs += [(layer.ln_1, block.norm1), (layer.ln_2, block.norm2), (layer.self_attention.out_proj, block.attn.proj),
                  (layer.mlp[0], block.mlp.fc1), (layer.mlp[3], block.mlp.fc2)]
    with torch.no_grad():
        for target, source in pairs:
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
        for layer, block in zip(tv.encoder.layers, model.blocks):
            layer.self_attention.in_proj_weight.copy_(block.attn.qkv.weight)  # q, k, v stacked the same way
            layer.self_attention.in_proj_bias.copy_(block.attn.qkv.bias)
        tv.class_token.copy_(model.cls_token)
        tv.encoder.pos_embedding.copy_(model.pos_embed)
    return tv.eval()


@pytest.fixture
def lxt_vit_map():
    """lxt's CP-LRP map for torchvision ViTs, applied to the classes; the classes are restored afterwards."""
    import lxt

    root = os.path.join(os.path.dirname(lxt.__file__), "efficient")
    saved_modules = {name: sys.modules.get(name) for name in ("lxt.efficient", "lxt.efficient.models")}
    for name, path in (("lxt.efficient", root), ("lxt.efficient.models", os.path.join(root, "models"))):
        package = types.ModuleType(name)
        package.__path__ = [path]
        sys.modules[name] = package
    from lxt.efficient.models import vit_torch

    saved = {cls: {k: cls.__dict__[k] for k in ("forward", "original_forward") if k in cls.__dict__}
             for cls in vit_torch.cp_LRP}
    for cls, patch in vit_torch.cp_LRP.items():
        patch(cls)
    try:
        yield
    finally:
        for cls, attributes in saved.items():
            for name in ("forward", "original_forward"):
                if name in cls.__dict__ and name not in attributes:
                    delattr(cls, name)
            for name, value in attributes.items():
                setattr(cls, name, value)
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _lxt_relevances(tv: torch.nn.Module, x: torch.Tensor, channels: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Under lxt's map: input relevance, each block's MLP-neuron relevance, and the input relevance
    conditioned on one neuron of block 1 per image (relevance masked at the neurons, as CRP)."""
    kept = {}
    handles = [layer.mlp[1].register_forward_hook(lambda _m, _i, out, i=i: kept.__setitem__(i, out))
               for i, layer in enumerate(tv.encoder.layers)]
    x = x.clone().requires_grad_(True)
    logits = tv(x)
    for handle in handles:
        handle.remove()
    start = torch.zeros_like(logits)
    start[torch.arange(len(x)), logits.argmax(1)] = 1.0
    grads = torch.autograd.grad(logits, [x, kept[1], kept[2]], grad_outputs=start, retain_graph=True)
    neurons = [(kept[i] * g).sum(1) for i, g in zip((1, 2), grads[1:])]
    mask = torch.zeros_like(kept[1])
    mask[torch.arange(len(x)), :, torch.as_tensor(channels)] = 1
    (conditional,) = torch.autograd.grad(kept[1], x, grad_outputs=grads[1] * mask)
    return (x * grads[0]).detach(), *[n.detach() for n in neurons], (x * conditional).sum(1).detach()


def test_a_timm_vit_gets_attn_lrp_and_reads_its_mlp_neurons_as_components():
    model = _timm_vit()
    assert family_of(model).name == "timm-vit" and family_of(model).method == "attn-lrp"
    with ComponentRecorder(model, LAYERS, 5, k=3) as recorder:
        recorder.record(torch.rand(6, 3, 32, 32), np.arange(6), [f"s{i}" for i in range(6)])
        assert recorder.stats.layers[LAYERS[0]].by_relevance.samples.shape == (3, 4 * SHAPE["embed_dim"])
    with pytest.raises(ValueError, match="does not apply to a timm-vit model"):
        ComponentRecorder(model, LAYERS, 5, composite="epsilon-plus-flat")


def test_attn_lrp_on_a_timm_vit_equals_lxts_attributions_of_the_same_weights(lxt_vit_map):
    """Input relevance, MLP-neuron relevances and neuron-conditioned heatmaps, against lxt's own CP-LRP map."""
    model = _timm_vit()
    tv = _same_torchvision_vit(model)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(tv(x), model(x), atol=1e-5)
    channels = np.array([0, 7, 50, 191])
    with ComponentRecorder(model, LAYERS, 5) as recorder:
        ours_input = recorder.input_relevance(x)
        _logits, _target, per_layer = recorder.layer_relevances(x)
        ours_neurons = [per_layer[name][1].sum(1) for name in LAYERS]
        ours_conditional = recorder.channel_heatmaps(x, LAYERS[0], channels)
    lxt_input, *lxt_neurons, lxt_conditional = _lxt_relevances(tv, x, channels)
    scale = lxt_input.abs().max()
    assert (ours_input - lxt_input).abs().max() <= 1e-4 * scale
    for ours, theirs in zip(ours_neurons, lxt_neurons):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * theirs.abs().max())
    assert np.allclose(ours_conditional, lxt_conditional.double().numpy(), rtol=1e-4,
                       atol=1e-5 * float(lxt_conditional.abs().max()))


def test_attn_lrp_conserves_relevance_along_the_residual_stream_as_lxt_does(lxt_vit_map):
    """Relevance at each block's output (the residual stream) and at the input, over the target logit:
    near 1 (biases take a little), and what lxt reaches on the same weights."""
    model = _timm_vit()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with ComponentRecorder(model, BLOCKS, 5) as recorder:
        logits, target, per_layer = recorder.layer_relevances(x)
        start = logits.detach()[torch.arange(len(x)), torch.as_tensor(target)]
        at_blocks = [float(per_layer[b][1].sum() / start.sum()) for b in BLOCKS]
        at_input = float(recorder.input_relevance(x).sum() / start.sum())
    lxt_input = _lxt_relevances(_same_torchvision_vit(model), x, np.zeros(len(x), dtype=int))[0]
    assert at_input == pytest.approx(float(lxt_input.sum() / start.sum()), rel=1e-4)
    for ratio in [*at_blocks, at_input]:
        assert 0.75 <= ratio <= 1.35, (at_blocks, at_input)


def test_a_recorder_restores_the_vit_it_rewrote():
    model = _timm_vit()
    x = torch.rand(2, 3, 32, 32)
    before = model(x)
    forwards = {name: m.__dict__.get("forward") for name, m in model.named_modules()}
    with ComponentRecorder(model, LAYERS, 5) as recorder:
        recorder.input_relevance(x)
    assert {name: m.__dict__.get("forward") for name, m in model.named_modules()} == forwards
    assert torch.equal(model(x), before)

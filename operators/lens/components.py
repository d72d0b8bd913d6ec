"""Stage 1: every component's activation and relevance, from one forward and one backward per batch.

Under a zennit composite (EpsilonPlusFlat with a batch-norm canonizer by default) the gradient
that reaches a layer's output is its LRP relevance, so hooks that keep each chosen layer's output
give, for all of its channels at once, the aggregated activation (spatial mean, as SemanticLens's
default) and the channel relevance (spatial sum: CRP's relevance of the channel as a concept).
The backward pass starts from the target logit (predicted class, or the true label when asked).
Vision transformers get AttnLRP instead (operators/lens/attnlrp.py), where relevance is a tensor
times its gradient; their components are the channels (e.g. MLP neurons) of token-major layers.

`ComponentStats` holds what one actor saw: streaming top-k per component by activation and by
relevance, and per-class relevance sums for audits. Stats from many actors merge exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from lakelens.operators.lens.canonizers import family_of
from lakelens.operators.lens.models import resolve_layers
from lakelens.operators.lens.topk import TopK

def _zennit_composite(class_name: str) -> Callable[[list], object]:
    def make(canonizers: list):
        import zennit.composites

        return getattr(zennit.composites, class_name)(canonizers=canonizers)
    return make


# name -> composite given the model's canonizers; "gradient" is plain autograd (no rules, no canonizers)
COMPOSITE_MAKERS: dict[str, Callable[[list], object] | None] = {
    "epsilon-plus-flat": _zennit_composite("EpsilonPlusFlat"),
    "epsilon-plus": _zennit_composite("EpsilonPlus"),
    "epsilon-alpha2-beta1-flat": _zennit_composite("EpsilonAlpha2Beta1Flat"),
    "gradient": None,
}
ATTN_LRP, AUTO = "attn-lrp", "auto"
COMPOSITES = (AUTO, *COMPOSITE_MAKERS, ATTN_LRP)
DEFAULT_COMPOSITE = {"lrp": "epsilon-plus-flat", ATTN_LRP: ATTN_LRP}  # per family method, for "auto"


class Attribution:
    """How a backward pass yields relevance: what enters at the logits, and how a tensor's gradient reads
    as relevance. `register` rewrites the model for it; `remove` restores the model."""

    name: str

    def register(self, model: nn.Module) -> None: ...

    def remove(self) -> None: ...

    def start(self, logits: torch.Tensor, target: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def relevance(self, tensor: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _at_target(logits: torch.Tensor, target: np.ndarray, values: torch.Tensor) -> torch.Tensor:
    start = torch.zeros_like(logits)
    rows = torch.arange(len(target), device=logits.device)
    columns = torch.as_tensor(target, device=logits.device)
    start[rows, columns] = values[rows, columns]
    return start


class ZennitRules(Attribution):
    """A zennit composite (or none: plain gradient): its rules make the gradient itself the relevance,
    which enters at the target logit with the logit's value, as CRP starts it."""

    def __init__(self, name: str, composite: object | None) -> None:
        self.name, self.composite = name, composite

    def register(self, model: nn.Module) -> None:
        if self.composite is not None:
            self.composite.register(model)

    def remove(self) -> None:
        if self.composite is not None:
            self.composite.remove()

    def start(self, logits: torch.Tensor, target: np.ndarray) -> torch.Tensor:
        return _at_target(logits, target, logits.detach())

    def relevance(self, tensor: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad


class GradientTimesInput(Attribution):
    """AttnLRP: the rewritten forward makes tensor x gradient the relevance; a unit gradient at the target
    logit puts the logit's value in."""

    name = ATTN_LRP

    def __init__(self) -> None:
        from lakelens.operators.lens.attnlrp import AttnLRP

        self.rewrite = AttnLRP()

    def register(self, model: nn.Module) -> None:
        self.rewrite.register(model)

    def remove(self) -> None:
        self.rewrite.remove()

    def start(self, logits: torch.Tensor, target: np.ndarray) -> torch.Tensor:
        return _at_target(logits, target, torch.ones_like(logits))

    def relevance(self, tensor: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return tensor.detach() * grad


def make_attribution(name: str, model: nn.Module) -> Attribution:
    """The named method for the model's architecture family (operators/lens/canonizers.py); "auto" picks the
    family's own: zennit's EpsilonPlusFlat for CNNs, AttnLRP for vision transformers."""
    if name not in COMPOSITES:
        raise ValueError(f"unknown composite {name!r}; known: {', '.join(COMPOSITES)}")
    family = family_of(model)
    name = DEFAULT_COMPOSITE[family.method] if name == AUTO else name
    if name == "gradient":
        return ZennitRules(name, None)
    if (name == ATTN_LRP) != (family.method == ATTN_LRP):
        raise ValueError(f"composite {name!r} does not apply to a {family.name} model; use {DEFAULT_COMPOSITE[family.method]!r}, "
                         "'gradient' or 'auto'")
    if name == ATTN_LRP:
        return GradientTimesInput()
    return ZennitRules(name, COMPOSITE_MAKERS[name](family.canonizers()))


@dataclass
class LayerStats:
    by_activation: TopK
    by_relevance: TopK
    class_relevance: np.ndarray  # (classes, components): summed relevance over samples of that target
    class_positive: np.ndarray  # (classes, components): summed positive relevance
    activation_sum: np.ndarray  # (components,)

    def __getstate__(self) -> dict:
        """Pickled with only the class rows that hold relevance: a batch of 32 images touches at most 32 of a
        1,000-class model's rows, and each actor's batch travels to the driver pickled (dense: 49 MB a
        batch for resnet50's layer3 + layer4, which made 5,000 images peak at 19 GiB)."""
        state = dict(self.__dict__)
        rows = np.flatnonzero(self.class_relevance.any(axis=1) | self.class_positive.any(axis=1))
        state["class_relevance"] = (self.class_relevance.shape, rows, self.class_relevance[rows])
        state["class_positive"] = (self.class_positive.shape, rows, self.class_positive[rows])
        return state

    def __setstate__(self, state: dict) -> None:
        for name in ("class_relevance", "class_positive"):
            shape, rows, values = state[name]
            dense = np.zeros(shape)
            dense[rows] = values
            state[name] = dense
        self.__dict__.update(state)

    def merge(self, other: "LayerStats") -> "LayerStats":
        return LayerStats(self.by_activation.merge(other.by_activation), self.by_relevance.merge(other.by_relevance),
                          self.class_relevance + other.class_relevance, self.class_positive + other.class_positive,
                          self.activation_sum + other.activation_sum)


@dataclass
class ComponentStats:
    layers: dict[str, LayerStats]
    class_counts: np.ndarray  # (classes,) samples whose relevance started at that class
    samples: int = 0
    correct: int = 0  # predictions equal to the label, where labels were given
    labelled: int = 0
    sample_ids: dict[int, str] = field(default_factory=dict)  # global index -> sample id, for the top-k only
    start_total: float = 0.0  # the relevance put in at the target logits, summed over samples

    def conservation(self) -> dict[str, float]:
        """Per layer: the relevance that reached it over the relevance put in (1.0 when LRP conserves it)."""
        if not self.start_total:
            return {}  # activations only: no relevance was put in
        return {name: float(s.class_relevance.sum() / self.start_total) for name, s in self.layers.items()}

    def merge(self, other: "ComponentStats") -> "ComponentStats":
        return ComponentStats({n: s.merge(other.layers[n]) for n, s in self.layers.items()},
                              self.class_counts + other.class_counts, self.samples + other.samples,
                              self.correct + other.correct, self.labelled + other.labelled,
                              {**self.sample_ids, **other.sample_ids}, self.start_total + other.start_total)

    def prune_ids(self) -> None:
        """Keep only the ids that some top-k still refers to."""
        keep = set()
        for stats in self.layers.values():
            keep.update(stats.by_activation.samples.ravel().tolist())
            keep.update(stats.by_relevance.samples.ravel().tolist())
        self.sample_ids = {i: s for i, s in self.sample_ids.items() if i in keep}


class ComponentRecorder:
    """Hooks the chosen layers of a model and folds batches into `ComponentStats`."""

    def __init__(self, model: nn.Module, layers: list[str], num_classes: int, k: int = 20,
                 composite: str = AUTO, target: str = "predicted", relevance: bool = True) -> None:
        """`relevance=False`: activations only, one plain forward per batch (the semanticlens package's
        mode); no relevance top-k, class relevance stays zero."""
        if target not in ("predicted", "label"):
            raise ValueError("target must be 'predicted' or 'label'")
        self.model = model.eval()
        self._trainable = [p for p in model.parameters() if p.requires_grad]
        for parameter in self._trainable:  # only relevances are wanted: no weight gradients to compute
            parameter.requires_grad_(False)
        self.layers = resolve_layers(model, layers)
        self.num_classes = num_classes
        self.k = k
        self.target = target
        self.stats: ComponentStats | None = None
        # registered once for the recorder's life (per batch it cost ~10 % of stage 1); `close()` undoes it
        if getattr(model, "_lakelens_recorder", None) is not None:
            raise RuntimeError("this model already has a ComponentRecorder; close() it first")
        self.relevance = relevance
        self.token_major = family_of(model).token_major
        self.attribution = make_attribution(composite, model) if relevance else None
        if self.attribution is not None:
            self.attribution.register(self.model)
        model._lakelens_recorder = self

    def close(self) -> None:
        """Restores the model: removes the composite's rules and undoes its canonizers."""
        if getattr(self.model, "_lakelens_recorder", None) is self:
            if self.attribution is not None:
                self.attribution.remove()
            for parameter in self._trainable:
                parameter.requires_grad_(True)
            self.model._lakelens_recorder = None

    def __enter__(self) -> "ComponentRecorder":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _empty(self, widths: dict[str, int]) -> ComponentStats:
        return ComponentStats(
            {name: LayerStats(TopK.empty(self.k, c), TopK.empty(self.k, c), np.zeros((self.num_classes, c)),
                              np.zeros((self.num_classes, c)), np.zeros(c)) for name, c in widths.items()},
            np.zeros(self.num_classes, dtype=np.int64))

    def layer_relevances(self, images: torch.Tensor, labels: np.ndarray | None = None
                         ) -> tuple[torch.Tensor, np.ndarray, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """One forward and one modified backward: logits, targets and, per analysed layer, its output
        (activation) and the relevance at it, both (n, channels, ...)."""
        logits, target, _, outputs = self._forward(images, labels, list(self.layers), input_relevance=False)
        grads = torch.autograd.grad(logits, list(outputs.values()), grad_outputs=self.attribution.start(logits, target))
        return logits, target, {n: (o.detach(), self.attribution.relevance(o, g)) for (n, o), g in zip(outputs.items(), grads)}

    def record(self, images: torch.Tensor, sample_index: np.ndarray, sample_ids: list[str],
               labels: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Folds a batch into `self.stats`; returns the targets and each layer's channel relevances (n, channels)."""
        if self.relevance:
            logits, target, per_layer = self.layer_relevances(images, labels)
        else:
            with torch.inference_mode():
                logits, target, _, outputs = self._forward(images, labels, list(self.layers), input_relevance=False)
            per_layer = {n: (o, None) for n, o in outputs.items()}
        channel_relevance = {}
        if self.stats is None:
            self.stats = self._empty({n: int(self._channels_first(o).shape[1]) for n, (o, _) in per_layer.items()})
        stats = self.stats
        for name, (output, relevance) in per_layer.items():
            act = _aggregate(self._channels_first(output), "mean")
            layer = stats.layers[name]
            layer.by_activation = layer.by_activation.update(act, sample_index)
            layer.activation_sum += act.sum(axis=0)
            if relevance is None:
                continue
            rel = channel_relevance[name] = _aggregate(self._channels_first(relevance), "sum")
            layer.by_relevance = layer.by_relevance.update(rel, sample_index)
            np.add.at(layer.class_relevance, target, rel)
            np.add.at(layer.class_positive, target, np.maximum(rel, 0))
        np.add.at(stats.class_counts, target, 1)
        stats.samples += len(sample_index)
        stats.start_total += float(_at_target(logits, target, logits.detach()).sum()) if self.relevance else 0.0
        if labels is not None:
            predicted = logits.detach().argmax(1).cpu().numpy()
            known = labels >= 0
            stats.correct += int((predicted[known] == labels[known]).sum())
            stats.labelled += int(known.sum())
        stats.sample_ids.update(zip(np.asarray(sample_index).tolist(), sample_ids))
        stats.prune_ids()
        return target, channel_relevance

    def channel_heatmaps(self, images: torch.Tensor, layer: str, channels: np.ndarray,
                         labels: np.ndarray | None = None) -> np.ndarray:
        """CRP: each image's input relevance conditioned on one channel of `layer` (row i on channels[i]).

        The backward runs in two steps, as zennit-crp's CondAttribution with `exclude_parallel`:
        from the target logit to the layer's output, where the relevance is masked to the chosen
        channel, then from that output to the pixels. Relevance that reaches the input through a
        path around the layer (a residual shortcut parallel to a layer inside a block) is left
        out, so the heatmap is the channel's share only. Returns (n, height, width): relevance
        summed over colour channels.
        """
        logits, target, x, outputs = self._forward(images, labels, [layer], input_relevance=True)
        output = outputs[layer]
        (grad,) = torch.autograd.grad(logits, output, grad_outputs=self.attribution.start(logits, target),
                                      retain_graph=True)
        # the mask is 0/1 per channel, so masking the gradient masks the relevance under either method
        mask = torch.zeros_like(self._channels_first(grad))
        rows = torch.arange(len(channels), device=grad.device)
        mask[rows, torch.as_tensor(np.asarray(channels), dtype=torch.long, device=grad.device)] = 1
        mask = mask.transpose(1, 2) if self.token_major and mask.ndim == 3 else mask
        (heatmap,) = torch.autograd.grad(output, x, grad_outputs=grad * mask)
        return self.attribution.relevance(x, heatmap).sum(1).cpu().double().numpy()

    def input_relevance(self, images: torch.Tensor, labels: np.ndarray | None = None) -> torch.Tensor:
        """The unconditioned LRP heatmap: (n, colours, height, width) relevance at the pixels."""
        logits, target, x, _ = self._forward(images, labels, [], input_relevance=True)
        (grad,) = torch.autograd.grad(logits, x, grad_outputs=self.attribution.start(logits, target))
        return self.attribution.relevance(x, grad).detach()

    def _channels_first(self, tensor: torch.Tensor) -> torch.Tensor:
        """A transformer's (batch, tokens, channels) as (batch, channels, tokens); other layouts as they are."""
        return tensor.transpose(1, 2) if self.token_major and tensor.ndim == 3 else tensor

    def _forward(self, images: torch.Tensor, labels: np.ndarray | None, layers: list[str], input_relevance: bool
                 ) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, dict[str, torch.Tensor]]:
        """A forward under the composite that keeps the named layers' outputs. Returns logits,
        targets, the input (asking for relevance when `input_relevance`) and the outputs, in
        the order asked for."""
        outputs: dict[str, torch.Tensor] = {}

        def hook_for(name):
            def hook(_module, _inputs, output):
                tensor = output[0] if isinstance(output, tuple) else output
                if not tensor.requires_grad and torch.is_grad_enabled():
                    # nothing below needs relevance (the input does not ask for it): the backward
                    # pass stops at the first hooked layer
                    tensor = tensor.detach().requires_grad_(True)
                    output = (tensor, *output[1:]) if isinstance(output, tuple) else tensor
                outputs[name] = tensor
                return output
            return hook

        modules = {**resolve_layers(self.model, [n for n in layers if n not in self.layers]), **self.layers}
        handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
        try:
            x = images.clone().requires_grad_(input_relevance)
            logits = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        return logits, self._targets(logits, labels), x, {name: outputs[name] for name in layers}

    def _targets(self, logits: torch.Tensor, labels: np.ndarray | None) -> np.ndarray:
        predicted = logits.detach().argmax(1).cpu().numpy()
        if self.target == "label" and labels is not None:
            return np.where(labels >= 0, labels, predicted)
        return predicted


def _aggregate(tensor: torch.Tensor, how: str) -> np.ndarray:
    """(batch, channels, ...) -> (batch, channels) over the spatial or token axes (activation: their mean, as
    SemanticLens's default; relevance: their sum, CRP's relevance of the channel)."""
    flat = tensor.flatten(2) if tensor.ndim > 2 else tensor[..., None]
    return (flat.mean(-1) if how == "mean" else flat.sum(-1)).double().cpu().numpy()

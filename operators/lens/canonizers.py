"""Canonizers per architecture family: the model rewritten so LRP rules conserve relevance.

LRP's rules assume a chain of linear layers and activations. Two things in real vision models
break that assumption:

- batch norms, which are affine maps of their own: merged into the convolution before them;
- residual additions, which autograd differentiates as a plain `+`: the full relevance would go
  down both branches, so relevance grows at every block (4.5x at a resnet18's layer3). The
  addition becomes a `Sum` module, to which composites map the proportional (Norm) rule.

Vision transformers (timm, torchvision) are a family of their own: their relevance comes from
AttnLRP (operators/lens/attnlrp.py), which rewrites the forward pass instead of mapping rules.

`FAMILIES` is a registry, searched in order: the first family whose `detect` accepts the model
supplies its canonizers. The last entry, plain sequential CNNs, accepts anything, so a model
from an unknown family gets batch-norm merging only; `relevance_conservation` in stage 1's
metrics then shows whether that was enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Family:
    name: str
    detect: Callable[[nn.Module], bool]
    canonizers: Callable[[], list]  # fresh zennit Canonizer instances
    # how relevance is computed: zennit rules over a composite ("lrp") or AttnLRP's rewritten forward
    method: str = "lrp"
    # layer outputs are (batch, tokens, channels), not (batch, channels, ...)
    token_major: bool = False


FAMILIES: list[Family] = []


def register_family(name: str, detect: Callable[[nn.Module], bool], method: str = "lrp",
                    token_major: bool = False) -> Callable[[Callable[[], list]], Callable[[], list]]:
    """Decorator: `canonizers()` of a family, tried before every family registered after it."""
    def wrapped(canonizers: Callable[[], list]) -> Callable[[], list]:
        FAMILIES.append(Family(name, detect, canonizers, method, token_major))
        return canonizers
    return wrapped


def _has_module_of(type_names: Callable[[], tuple[type, ...]]) -> Callable[[nn.Module], bool]:
    """A detector for models containing a module of one of the types (imported lazily: timm is optional)."""
    def detect(model: nn.Module) -> bool:
        try:
            types = type_names()
        except ImportError:
            return False
        return any(isinstance(m, types) for m in model.modules())
    return detect


def _torchvision_resnet_blocks() -> tuple[type, ...]:
    from lakelens.operators.lens.compat import import_torchvision

    resnet = import_torchvision().models.resnet
    return resnet.BasicBlock, resnet.Bottleneck


def _timm_resnet_blocks() -> tuple[type, ...]:
    from lakelens.operators.lens.compat import import_torchvision

    import_torchvision()  # timm imports torchvision
    from timm.models import resnet

    return resnet.BasicBlock, resnet.Bottleneck


def _torchvision_vgg() -> tuple[type, ...]:
    from lakelens.operators.lens.compat import import_torchvision

    return (import_torchvision().models.VGG,)


def _timm_vit() -> tuple[type, ...]:
    from lakelens.operators.lens.compat import import_torchvision

    import_torchvision()  # timm imports torchvision
    from timm.models.vision_transformer import VisionTransformer

    return (VisionTransformer,)


def _torchvision_vit() -> tuple[type, ...]:
    from lakelens.operators.lens.compat import import_torchvision

    return (import_torchvision().models.VisionTransformer,)


@register_family("timm-vit", _has_module_of(_timm_vit), method="attn-lrp", token_major=True)
@register_family("torchvision-vit", _has_module_of(_torchvision_vit), method="attn-lrp", token_major=True)
def _vit() -> list:
    return []  # AttnLRP rewrites the forward itself (operators/lens/attnlrp.py)


@register_family("torchvision-resnet", _has_module_of(_torchvision_resnet_blocks))
def _torchvision_resnet() -> list:
    from lakelens.operators.lens.compat import import_torchvision

    import_torchvision()  # zennit.torchvision imports torchvision
    from zennit.torchvision import ResNetCanonizer

    return [ResNetCanonizer()]


@register_family("timm-resnet", _has_module_of(_timm_resnet_blocks))
def _timm_resnet() -> list:
    from zennit.canonizers import SequentialMergeBatchNorm

    return [SequentialMergeBatchNorm(), TimmResidualSum()]


@register_family("torchvision-vgg", _has_module_of(_torchvision_vgg))
def _vgg() -> list:
    from zennit.canonizers import SequentialMergeBatchNorm

    return [SequentialMergeBatchNorm()]  # VGG has no parallel paths: merging its batch norms is all it needs


@register_family("sequential-cnn", lambda model: True)
def _sequential() -> list:
    from zennit.canonizers import SequentialMergeBatchNorm

    return [SequentialMergeBatchNorm()]


def family_of(model: nn.Module) -> Family:
    return next(f for f in FAMILIES if f.detect(model))


def _timm_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """timm's BasicBlock / Bottleneck with the residual addition done by a `Sum` module."""
    branch = self.act1(self.drop_block(self.bn1(self.conv1(x)))) if self._lakelens_basic else self.act1(
        self.bn1(self.conv1(x)))
    if self._lakelens_basic:
        branch = self.bn2(self.conv2(self.aa(branch)))
    else:
        branch = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(branch)))))
        branch = self.bn3(self.conv3(branch))
    if self.se is not None:
        branch = self.se(branch)
    if self.drop_path is not None:
        branch = self.drop_path(branch)
    shortcut = x if self.downsample is None else self.downsample(x)
    out = self.canonizer_sum(torch.stack([shortcut, branch], dim=-1))
    return (self.act2 if self._lakelens_basic else self.act3)(out)


class TimmResidualSum:
    """Canonizer (zennit's protocol: apply / register / remove) for timm's ResNet blocks: the
    residual `+=` becomes a `Sum` module. The block's own layers and order are kept."""

    def __new__(cls):
        from zennit.canonizers import AttributeCanonizer
        from zennit.layer import Sum

        def attributes(_name: str, module: nn.Module) -> dict | None:
            blocks = _timm_resnet_blocks()
            if not isinstance(module, blocks):
                return None
            return {"forward": _timm_block_forward.__get__(module), "canonizer_sum": Sum(),
                    "_lakelens_basic": isinstance(module, blocks[0])}

        return AttributeCanonizer(attributes)

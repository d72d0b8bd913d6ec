"""AttnLRP for vision transformers (Achtibat et al., ICML 2024) in its gradient x input form.

Once the forward is rewritten as below, relevance at any tensor is the tensor times its gradient:

- linear layers and the patch projection: the plain gradient (LRP-0);
- residual additions: unchanged; under gradient x input a sum splits relevance in proportion to its terms;
- element-wise nonlinearities (GELU, SiLU, ...): the identity rule, relevance passes through unchanged;
- layer norms: the standard deviation is held constant (the identity rule on the normalisation);
- attention: query and key are held constant (CP-LRP inside attention, as lxt's default map for vision
  transformers), so relevance reaches the tokens through the values only.

`AttnLRP` rewrites a model in place on `register(model)` and restores it on `remove()`, the protocol
of zennit's canonizers. It touches instances, never classes, so other models in the process keep
their own forward passes. timm and torchvision vision transformers are covered.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ELEMENTWISE = (nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ReLU)


class _IdentityRule(torch.autograd.Function):
    """y = f(x) with d(relevance) passed through unchanged: the gradient becomes f(x) / x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        y = fn(x)
        safe = torch.where(x.abs() > 1e-12, x, torch.full_like(x, 1e-12))
        ctx.save_for_backward(y / safe)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


def _elementwise_forward(module: nn.Module, original: Callable) -> Callable:
    return lambda x: _IdentityRule.apply(x, original)


def _layer_norm_forward(module: nn.LayerNorm, _original: Callable) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(-len(module.normalized_shape), 0))
        centred = x - x.mean(dim=dims, keepdim=True)
        std = (centred.pow(2).mean(dim=dims, keepdim=True) + module.eps).sqrt()
        y = centred / std.detach()
        if module.weight is not None:
            y = y * module.weight
        if module.bias is not None:
            y = y + module.bias
        return y
    return forward


def _query_key_constant_qkv(module: nn.Linear, original: Callable) -> Callable:
    """timm's fused qkv projection: its query and key thirds leave the graph."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = original(x)
        third = out.shape[-1] // 3
        return torch.cat([out[..., :2 * third].detach(), out[..., 2 * third:]], dim=-1)
    return forward


def _query_key_constant_mha(module: nn.MultiheadAttention, original: Callable) -> Callable:
    """torchvision's attention: query and key inputs leave the graph, values keep it."""
    def forward(query, key, value, *args, **kwargs):
        return original(query.detach(), key.detach(), value, *args, **kwargs)
    return forward


def _timm_attention_types() -> tuple[type, ...]:
    try:
        from timm.models.vision_transformer import Attention
    except ImportError:
        return ()
    return (Attention,)


class AttnLRP:
    """Rewrites a vision transformer's forward for AttnLRP (see the module note); `remove()` restores it."""

    def __init__(self) -> None:
        self._patched: list[tuple[nn.Module, object]] = []

    def _plan(self, model: nn.Module) -> list[tuple[nn.Module, Callable]]:
        attention = _timm_attention_types()
        plan: list[tuple[nn.Module, Callable]] = []
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                plan.append((module, _layer_norm_forward))
            elif isinstance(module, ELEMENTWISE):
                plan.append((module, _elementwise_forward))
            elif isinstance(module, nn.MultiheadAttention):
                plan.append((module, _query_key_constant_mha))
            elif attention and isinstance(module, attention):
                plan.append((module.qkv, _query_key_constant_qkv))
        return plan

    def register(self, model: nn.Module) -> None:
        if self._patched:
            raise RuntimeError("this AttnLRP is already registered; remove() it first")
        for module, rewrite in self._plan(model):
            # an instance attribute shadows the class's forward; remembering what was there restores it exactly
            self._patched.append((module, module.__dict__.get("forward")))
            module.forward = rewrite(module, module.forward)

    def remove(self) -> None:
        for module, before in reversed(self._patched):
            if before is None:
                del module.forward
            else:
                module.forward = before
        self._patched = []

"""The self-supervised objective: two augmented views of each sequence, no labels.

* Contrastive (NT-Xent): the two views of one sequence must embed closer to each other than to
  any other sequence in the batch. Views crop the sequence, mask events and jitter time, so the
  embedding has to capture the kind of behaviour rather than one exact event string.
* Composition: from the embedding alone, predict the mix of event types in the whole window and
  in the last half hour, and the typical pacing. This is the summary part of a sequence
  autoencoder without its slow step-by-step decoder; it keeps what a behaviour is made of.
* Masked event prediction: the Bi-LSTM state at a masked position must predict the event type
  there from its context, which teaches the per-event states the grammar of click-streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lakelens.operators.encoder.batching import N_SESSION_FEATURES, TIME_SCALE
from lakelens.operators.encoder.model import TimeAttentionBiLSTM
from lakelens.operators.encoder.vocabulary import MASK_ID, OOV_ID, PAD_ID


@dataclass(frozen=True)
class ObjectiveParams:
    temperature: float = 0.1
    mask_prob: float = 0.15
    # events a view shows as "never seen" (the OOV id): an app release renames events, and the embedding
    # of a flow with a few unknown steps should stay near the same flow with known ones
    oov_prob: float = 0.0
    min_crop: float = 0.6  # a view keeps at least this share of the events
    time_noise: float = 0.05  # std of the jitter on (scaled) time features
    masked_event_weight: float = 1.0
    composition_weight: float = 1.0
    recent_s: float = 1800.0  # "recent" events for the composition target


@dataclass
class View:
    tokens: torch.Tensor
    times: torch.Tensor
    lengths: torch.Tensor
    masked: torch.Tensor  # bool (n, T): positions whose token was replaced by MASK
    targets: torch.Tensor  # original tokens


def augment(tokens: torch.Tensor, times: torch.Tensor, lengths: torch.Tensor, params: ObjectiveParams,
            generator: torch.Generator) -> View:
    """A random contiguous crop with masked events and jittered times."""
    n, width = tokens.shape
    device = tokens.device
    keep = torch.rand(n, generator=generator, device=device) * (1 - params.min_crop) + params.min_crop
    crop = torch.clamp(torch.ceil(lengths.float() * keep).long(), min=1)
    crop = torch.minimum(crop, lengths)
    start = (torch.rand(n, generator=generator, device=device) * (lengths - crop + 1).float()).long()
    index = torch.clamp(start[:, None] + torch.arange(width, device=device)[None, :], max=width - 1)
    valid = torch.arange(width, device=device)[None, :] < crop[:, None]
    targets = torch.where(valid, torch.gather(tokens, 1, index), torch.full_like(tokens, PAD_ID))
    new_times = torch.gather(times, 1, index[..., None].expand(-1, -1, times.shape[-1])) * valid[..., None]
    noise = torch.randn(new_times.shape, generator=generator, device=device) * params.time_noise
    noise[..., -1] = 0  # the dwell-missing flag stays a flag
    new_times = new_times + noise * valid[..., None]
    masked = valid & (torch.rand(n, width, generator=generator, device=device) < params.mask_prob)
    new_tokens = torch.where(masked, torch.full_like(targets, MASK_ID), targets)
    if params.oov_prob > 0:
        unseen = valid & ~masked & (torch.rand(n, width, generator=generator, device=device) < params.oov_prob)
        new_tokens = torch.where(unseen, torch.full_like(targets, OOV_ID), new_tokens)
    return View(new_tokens, new_times, crop, masked, targets)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over 2n unit vectors: each view's positive is its partner; every other row is a negative."""
    z = torch.cat([a, b])
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return nn.functional.cross_entropy(logits, partner)


class Pretraining(nn.Module):
    """Encoder plus the masked-event head: one module, so data-parallel wrappers see one forward."""

    def __init__(self, encoder: TimeAttentionBiLSTM, params: ObjectiveParams) -> None:
        super().__init__()
        self.encoder = encoder
        self.params = params
        self.predict_event = nn.Linear(2 * encoder.config.hidden_dim, encoder.config.vocab_size)
        dim, vocab = encoder.config.embedding_dim, encoder.config.vocab_size
        self.predict_composition = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(),
                                                 nn.Linear(4 * dim, 2 * vocab + 1 + N_SESSION_FEATURES))

    def forward(self, first: View, second: View, composition: torch.Tensor) -> dict[str, torch.Tensor]:
        out_a = self.encoder(first.tokens, first.times, first.lengths)
        out_b = self.encoder(second.tokens, second.times, second.lengths)
        contrastive = nt_xent(out_a.embedding, out_b.embedding, self.params.temperature)
        composed = self.composition_loss(torch.cat([out_a.embedding, out_b.embedding]), composition.repeat(2, 1))
        hidden = torch.cat([out_a.hidden[first.masked], out_b.hidden[second.masked]])
        targets = torch.cat([first.targets[first.masked], second.targets[second.masked]])
        if targets.numel():
            masked_event = nn.functional.cross_entropy(self.predict_event(hidden), targets)
        else:
            masked_event = hidden.sum() * 0.0
        total = (contrastive + self.params.masked_event_weight * masked_event
                 + self.params.composition_weight * composed)
        return {"loss": total, "contrastive": contrastive.detach(), "masked_event": masked_event.detach(),
                "composition": composed.detach()}

    def composition_loss(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        vocab = self.encoder.config.vocab_size
        predicted = self.predict_composition(embedding)
        whole = -(target[:, :vocab] * predicted[:, :vocab].log_softmax(-1)).sum(-1)
        recent = -(target[:, vocab:2 * vocab] * predicted[:, vocab:2 * vocab].log_softmax(-1)).sum(-1)
        pacing = ((predicted[:, 2 * vocab:] - target[:, 2 * vocab:]) ** 2).sum(-1)
        return (whole + recent).mean() + pacing.mean()


def composition_targets(tokens: torch.Tensor, times: torch.Tensor, lengths: torch.Tensor, vocab_size: int,
                        recent_s: float, session: torch.Tensor | None = None) -> torch.Tensor:
    """(n, 2 * vocab + 1 + 4): event-type shares over the window and over recent events, the mean gap, and
    the session's timing regularity (operators/timing.py; zeros when not given)."""
    n, width = tokens.shape
    valid = torch.arange(width, device=tokens.device)[None, :] < lengths[:, None]
    recent = valid & (times[..., 1] <= math.log1p(recent_s) / TIME_SCALE)
    out = torch.zeros(n, 2 * vocab_size + 1 + N_SESSION_FEATURES, device=tokens.device)
    out[:, :vocab_size].scatter_add_(1, tokens, valid.float())
    out[:, vocab_size:2 * vocab_size].scatter_add_(1, tokens, recent.float())
    out[:, :vocab_size] /= out[:, :vocab_size].sum(1, keepdim=True).clamp(min=1)
    out[:, vocab_size:2 * vocab_size] /= out[:, vocab_size:2 * vocab_size].sum(1, keepdim=True).clamp(min=1)
    out[:, 2 * vocab_size] = (times[..., 0] * valid).sum(1) / lengths.clamp(min=1) * 4  # scaled log-gap, near unit range
    if session is not None:
        out[:, 2 * vocab_size + 1:] = session
    return out

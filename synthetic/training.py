"""Training of the synthetic worlds' tiny models (the classifier and the tiny CLIP), with one minibatch loop."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from lakelens.operators.lens.foundation import TINY_CLIP, load_foundation


class Views(Protocol):
    """Training data for a contrastive model: images (or crops) with the concepts each one shows."""

    def __len__(self) -> int: ...

    def draw(self, indices: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[frozenset[str]]]: ...


def fit_minibatches(parameters, samples: int, batch_loss: Callable[[torch.Tensor], torch.Tensor], epochs: int,
                    batch_size: int, optimiser: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
                    seed: int = 0, **optimiser_args) -> list[float]:
    """Shuffled minibatches of sample indices, `epochs` times; returns the mean loss per epoch.

    `batch_loss(indices)` computes one batch's loss; batches of one sample are skipped because
    contrastive losses need at least two.
    """
    generator = torch.Generator().manual_seed(seed)
    opt = optimiser(parameters, **optimiser_args)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(samples, generator=generator)
        total, seen = 0.0, 0
        for start in range(0, samples, batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            loss = batch_loss(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        losses.append(total / max(seen, 1))
    return losses


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int = 8,
                     batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Plain supervised training (for the synthetic world); returns the loss per epoch."""
    torch.manual_seed(seed)
    model.train()
    losses = fit_minibatches(model.parameters(), len(images),
                             lambda idx: nn.functional.cross_entropy(model(images[idx]), labels[idx]),
                             epochs, batch_size, torch.optim.Adam, seed, lr=lr)
    model.eval()
    return losses


def train_tiny_clip(views: Views, out_path: str | Path, epochs: int = 30, batch_size: int = 128, lr: float = 2e-3,
                    seed: int = 0) -> list[float]:
    """Contrastive training of `lakelens-tiny-clip` on views and partial captions of their concepts.

    Each batch draws fresh views (an image or a crop of it) and, per view, a caption naming a
    random subset of the concepts it shows; a caption matches every view in the batch that shows
    all the concepts it names (multi-positive InfoNCE). Saves a state dict to `out_path`, which
    `load_foundation` reads back like any weights file.
    """
    from lakelens.synthetic.images import partial_caption

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    foundation = load_foundation(TINY_CLIP, None)
    model = foundation.model.train()
    soft_ce = torch.nn.functional.cross_entropy

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        images, shown = views.draw(idx.numpy(), rng)
        drawn = [partial_caption(concepts, rng) for concepts in shown]
        tokens = foundation.tokenizer([text for text, _ in drawn])
        matches = torch.as_tensor([[named <= concepts for _, named in drawn] for concepts in shown],
                                  dtype=torch.float32)
        image_features = torch.nn.functional.normalize(model.encode_image(foundation.preprocess(images)), dim=-1)
        text_features = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        return (soft_ce(logits, matches / matches.sum(1, keepdim=True))
                + soft_ce(logits.T, (matches / matches.sum(0, keepdim=True)).T)) / 2

    losses = fit_minibatches(model.parameters(), len(views), batch_loss, epochs, batch_size, torch.optim.AdamW, seed,
                             lr=lr, weight_decay=0.1)
    model.eval()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_path)
    return losses

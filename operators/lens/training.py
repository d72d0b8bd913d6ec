"""One minibatch training loop for the small models the tests and the demo train (classifier, tiny CLIP)."""

from __future__ import annotations

from typing import Callable

import torch


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

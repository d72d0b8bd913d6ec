"""The foundation model: an open_clip architecture with weights from a local path, never a hub.

`load_foundation("ViT-B-32", "/models/clip/vit-b-32.bin")` and
`load_foundation("lakelens-tiny-clip", "LAKE/models/tiny-clip.pt")` take the same path-loading
route through `open_clip.create_model(name, pretrained=path)`. `lakelens-tiny-clip` is a config
shipped here (configs/), registered with open_clip on first use; tests and the demo train it on
the synthetic world's captions (`train_tiny_clip`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

CONFIGS = Path(__file__).parent / "configs"
TINY_CLIP = "lakelens-tiny-clip"


def _open_clip():
    from lakelens.operators.lens.compat import import_torchvision

    import_torchvision()  # open_clip imports torchvision; see compat.py
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        open_clip.add_model_config(CONFIGS)
    return open_clip


@dataclass
class Foundation:
    """Embeds images and texts into one space (unit vectors)."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: str = "cpu"

    @torch.inference_mode()
    def embed_images(self, images_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        out = []
        for start in range(0, len(images_uint8), batch_size):
            x = self.preprocess(images_uint8[start:start + batch_size]).to(self.device)
            out.append(torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy()

    def preprocess(self, images_uint8: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images_uint8)).permute(0, 3, 1, 2).float().div(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                                                align_corners=False).clamp(0, 1)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    @property
    def dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if hasattr(self.model, "text_projection") else 0


def load_foundation(architecture: str, weights: str | Path | None, device: str = "cpu") -> Foundation:
    """An open_clip model from local weights; `weights=None` only for a freshly initialised model."""
    open_clip = _open_clip()
    if weights is not None and not Path(weights).exists():
        raise FileNotFoundError(f"foundation-model weights {weights} not found (weights load from local paths only)")
    try:
        model = open_clip.create_model(architecture, pretrained=str(weights) if weights else None, device=device)
    except RuntimeError as exc:
        raise ValueError(f"weights {weights} do not match foundation model {architecture!r}: "
                         f"{str(exc).splitlines()[0]}") from exc
    model.eval()
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return Foundation(architecture, model, open_clip.get_tokenizer(architecture), int(size),
                      tuple(cfg.get("mean", open_clip.constants.OPENAI_DATASET_MEAN)),
                      tuple(cfg.get("std", open_clip.constants.OPENAI_DATASET_STD)), device)


class Views(Protocol):
    """Training data for a contrastive model: images (or crops) with the concepts each one shows."""

    def __len__(self) -> int: ...

    def draw(self, indices: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[frozenset[str]]]: ...


def train_tiny_clip(views: Views, out_path: str | Path, epochs: int = 30, batch_size: int = 128, lr: float = 2e-3,
                    seed: int = 0) -> list[float]:
    """Contrastive training of `lakelens-tiny-clip` on views and partial captions of their concepts.

    Each batch draws fresh views (an image or a crop of it) and, per view, a caption naming a
    random subset of the concepts it shows; a caption matches every view in the batch that shows
    all the concepts it names (multi-positive InfoNCE). Saves a state dict to `out_path`, which
    `load_foundation` reads back like any weights file.
    """
    from lakelens.operators.lens.image_world import partial_caption
    from lakelens.operators.lens.training import fit_minibatches

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

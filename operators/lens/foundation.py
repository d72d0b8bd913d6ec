"""The foundation model: an open_clip architecture with weights from a local path, never a hub.

`load_foundation("ViT-B-32", "/models/clip/vit-b-32.bin")` and
`load_foundation("lakelens-tiny-clip", "LAKE/models/tiny-clip.pt")` take the same path-loading
route through `open_clip.create_model(name, pretrained=path)`. `lakelens-tiny-clip` is a config
shipped here (configs/), registered with open_clip on first use; tests and the demo train it on
the synthetic world's captions (synthetic/training.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    transform: object  # PIL image -> normalised tensor, open_clip's evaluation transform for this model
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
        """The model's own evaluation transform (open_clip's: resize mode, resampling, crop, mean and std
        from the model's preprocess config), applied to each image as the model was trained to see it."""
        from PIL import Image

        return torch.stack([self.transform(Image.fromarray(np.asarray(image))) for image in images_uint8])

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
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    cfg = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(size=model.visual.image_size),
                                                getattr(model.visual, "preprocess_cfg", {}) or {}))
    size = cfg.size[0] if isinstance(cfg.size, (tuple, list)) else cfg.size
    return Foundation(architecture, model, open_clip.get_tokenizer(architecture), int(size), tuple(cfg.mean),
                      tuple(cfg.std), image_transform_v2(cfg, is_train=False), device)

"""The foundation model through the lens's loading code: a real open_clip architecture, its own preprocessing,
and `import torchvision` for users' scripts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from lakelens.operators.lens.foundation import load_foundation


@pytest.mark.slow
def test_open_clip_vit_b_32_with_random_weights_from_a_path_embeds_as_open_clip_itself_does(tmp_path):
    """ViT-B-32 saved to a path loads through `load_foundation` (the route real CLIP weights take), and an
    image of another size is embedded exactly as open_clip's own evaluation transform and encoder do."""
    from PIL import Image

    from lakelens.operators.lens.compat import import_torchvision

    import_torchvision()
    import open_clip

    torch.manual_seed(0)
    path = tmp_path / "vit-b-32.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), path)
    foundation = load_foundation("ViT-B-32", path)
    assert foundation.image_size == 224 and foundation.dim == 512
    images = np.random.default_rng(0).integers(0, 256, size=(2, 180, 300, 3), dtype=np.uint8)  # not square
    ours = foundation.embed_images(images)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(path))
    with torch.no_grad():
        x = torch.stack([preprocess(Image.fromarray(image)) for image in images])
        theirs = torch.nn.functional.normalize(model.eval().encode_image(x), dim=-1).numpy()
    assert x.shape[-2:] == (224, 224)
    assert np.allclose(ours, theirs, atol=1e-5)
    texts = foundation.embed_texts(["a dog", "a cat"])
    assert texts.shape == (2, 512) and np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)


def test_a_users_script_imports_torchvision_once_the_hook_is_installed():
    """What a notebook does: import lakelens's lens API (which installs compat's import hook), then
    torchvision, timm and open_clip as usual; without it, plain `import torchvision` fails beside the CPU
    torch build."""
    script = ("import lakelens.pipelines.lens_api\nimport torchvision, timm, open_clip\n"
              "m = torchvision.models.resnet18(weights=None); print(type(m).__name__)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ResNet", out.stderr[-2000:]

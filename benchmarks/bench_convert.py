"""Whole-conversion throughput (ReLA-D): ``rela_fast.convert`` vs the authors-style pipeline, same process.

Run: ``pytest benchmarks/bench_convert.py --benchmark-only``. Data: an ImageNet-like JPEG folder
(``make_jpeg_folder``: crops of scikit-image's sample photos, 500 x 375, quality 90) of
``RELA_BENCH_CONVERT_N`` images (default 128; 256+ when the machine is quiet). Groups
``convert: <prior> S=224 N=<n> <device>``; images/s = N / median (also stored in ``extra_info``), and
``loop_images_per_s``: the decode + encode loop alone (no model building), what a large run approaches.

* baseline ``authors``: what the authors' scripts do: a Dataset opening each file with PIL
  (``convert("RGB")``), torchvision ``Resize(S)``, ``CenterCrop(S)``, ``ToTensor``, ``Normalize``; a
  ``DataLoader`` (batch 64, one worker per core); the eager fp32 model under ``no_grad``; the features
  collected in memory, then PCA (float64 covariance, ``eigh``) and standardisation.
* ``rela_fast``: ``convert(folder, out, prior, size=224, dim=d)``: the default decoder (DALI CPU when
  installed, else Pillow threads), the fused encoder (fp32 on the CPU: the reference numerics), shards
  on disk, streaming PCA, the target store.
* ``rela_fast_bf16`` (CPU, only where the CPU has native bf16): the same with ``precision="bf16"``
  (opt-in; features within ~3e-2 relative of fp32).
* baseline ``authors_malloc`` (CPU, run last): the authors' pipeline with the same process-wide glibc
  allocator setting the engine makes on the CPU (``tune_cpu_allocator``), to separate that part of the
  speed-up from the encoder's. The setting persists in the process, so it runs after the rela_fast ones
  (and ``authors`` runs first, untuned).

Both include building the model from its spec; one-time process costs (loading DALI's libraries,
oneDNN's first primitives, torchvision's import) are paid once by an untimed 8-image warm-up of each
variant. Priors: ``timm:resnet18`` (random init) and, when its weights package is installed, the
registered ``efficientnet_lite0``. The CUDA group (adds resnet50) runs only with a GPU.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("skimage")

from rela_fast.conversion import convert  # noqa: E402
from rela_fast.encoder import REGISTRY, create_prior  # noqa: E402
from rela_fast.encoder.engine import cpu_bf16_supported, tune_cpu_allocator  # noqa: E402

N = int(os.environ.get("RELA_BENCH_CONVERT_N", "128"))
SIZE, DIM, BATCH = 224, 64, 64
ROUNDS = int(os.environ.get("RELA_BENCH_CONVERT_ROUNDS", "1"))


def _priors(device: str) -> list[str]:
    names = ["timm:resnet18"]
    if device == "cuda":
        names.append("timm:resnet50")
    if REGISTRY["efficientnet_lite0"].weights_file() is not None:
        names.append("efficientnet_lite0")
    return names


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from rela_fast.data.synthetic import make_jpeg_folder

    return make_jpeg_folder(tmp_path_factory.mktemp("imagenet_like"), N, size=(500, 375), quality=90, seed=0)


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB"))


def authors_convert(folder: Path, prior: str, size: int, dim: int, device: str, timing: dict | None = None):
    """The authors-style conversion: PIL + torchvision transforms + DataLoader + eager fp32 model + PCA.

    ``timing["loop_s"]`` receives the time of the decode + encode loop alone (model already built).
    """
    from torchvision import transforms as T

    model, cfg = create_prior(prior)
    model = model.to(device).eval()
    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    loader = torch.utils.data.DataLoader(
        _Files(paths, tf), batch_size=BATCH, shuffle=False, num_workers=os.cpu_count() or 1,
        pin_memory=device == "cuda",
    )
    feats = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in loader:
            feats.append(model(x.to(device)).float().cpu())
    if timing is not None:
        timing["loop_s"] = time.perf_counter() - t0
    y = torch.cat(feats).double()
    y = y - y.mean(dim=0)
    evals, evecs = torch.linalg.eigh(y.T @ y / (len(y) - 1))
    y = y @ evecs[:, torch.argsort(evals, descending=True)[:dim]]
    return ((y - y.mean(dim=0)) / y.std(dim=0, unbiased=False)).float()


_WARM: set[tuple[str, str, str]] = set()


def _warm_up(folder: Path, tmp_path: Path, prior: str, device: str, variant: str) -> None:
    """One untimed 8-image run of this variant: one-time process costs (library loading, oneDNN's first
    primitives for the variant's shapes and dtype) are not what a large conversion pays per image."""
    if (prior, device, variant) in _WARM:
        return
    small = tmp_path / "warm"
    small.mkdir()
    for p in sorted(folder.rglob("*.jpg"))[:8]:
        shutil.copy(p, small / p.name)
    if variant.startswith("authors"):
        authors_convert(small, prior, SIZE, 4, device)
    else:
        precision = "bf16" if variant.endswith("_bf16") else "auto"
        convert(small, tmp_path / "warm_store", prior, size=SIZE, dim=4, batch_size=BATCH, device=device,
                progress=False, precision=precision)
    _WARM.add((prior, device, variant))


def _run(benchmark, folder, tmp_path, prior, variant, device):
    _warm_up(folder, tmp_path, prior, device, variant)
    out = tmp_path / "store"

    def clean():
        shutil.rmtree(out, ignore_errors=True)
        return (), {}

    timing: dict = {}
    if variant == "authors_malloc":
        tune_cpu_allocator()
    if variant.startswith("authors"):
        fn = lambda: authors_convert(folder, prior, SIZE, DIM, device, timing)  # noqa: E731
    else:
        precision = "bf16" if variant.endswith("_bf16") else "auto"
        fn = lambda: convert(folder, out, prior, size=SIZE, dim=DIM, batch_size=BATCH, device=device,  # noqa: E731
                             progress=False, precision=precision)
    label = prior.split(":")[-1]
    benchmark.group = f"convert: {label} S={SIZE} N={N} {device}"
    benchmark.extra_info.update(suite="convert", variant=variant, baseline=variant.startswith("authors"), images=N)
    result = benchmark.pedantic(fn, setup=clean, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    benchmark.extra_info["images_per_s"] = round(N / benchmark.stats.stats.median, 2)
    # steady state (what a large conversion approaches): the decode + encode loop without model building
    if not variant.startswith("authors"):
        meta = result.meta
        t = meta["timing"]
        loop = t["decode_encode_s"] - t["encoder_build_s"]
        benchmark.extra_info.update(decoder=meta["decoder"], timing=t)
        assert result.targets.shape == (N, DIM)
    else:
        loop = timing["loop_s"]
    benchmark.extra_info["loop_images_per_s"] = round(N / loop, 2)


CPU_VARIANTS = ["authors", "rela_fast"] + (["rela_fast_bf16"] if cpu_bf16_supported() else []) + ["authors_malloc"]


@pytest.mark.parametrize("variant", CPU_VARIANTS)
@pytest.mark.parametrize("prior", _priors("cpu"))
def test_convert_cpu(benchmark, folder, tmp_path, prior, variant):
    _run(benchmark, folder, tmp_path, prior, variant, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant", ["authors", "rela_fast"])
@pytest.mark.parametrize("prior", _priors("cuda"))
def test_convert_cuda(benchmark, folder, tmp_path, prior, variant):
    _run(benchmark, folder, tmp_path, prior, variant, "cuda")

"""Linear probe on frozen backbone features (docs/ALGORITHM.md#probe-protocol, reference behaviour).

Features of the train and test splits are extracted once with the deterministic transform (shorter side
to S, centre crop, ImageNet normalisation), in eval mode, on the device, and cached there; a linear
layer is then trained on the cached features with Adam (lr 3e-4) for 100 epochs (shuffled mini-batches),
and the reported accuracy is the mean of the last three epochs' test accuracy.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rela_fast.errors import UserError


@dataclass
class ProbeResult:
    """``accuracy``: mean test accuracy of the last three epochs; per-epoch curves in the lists."""

    accuracy: float
    test_accuracies: list[float]
    train_accuracy: float
    epochs: int
    lr: float
    n_train: int
    n_test: int
    feature_dim: int
    num_classes: int
    extract_seconds: float = 0.0
    train_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _open(data: Any, split: str = "train"):
    """A Source for ``data``: a path, an array, a map-style dataset (torch / Hugging Face) or a Source."""
    from rela_fast.data import open_source

    return open_source(data, split=split)


@torch.no_grad()
def extract_features(backbone: nn.Module, data: Any, *, image_size: int | None = None, batch_size: int = 256,
                     device: str | torch.device | None = None, num_workers: int = 0, amp: bool | None = None,
                     progress: bool = False, desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (N, F) float32, labels (N,) int64)`` on ``device``, backbone in eval mode, no grad.

    ``data``: a path, an array or a Source; labels are -1 for an unlabelled source.
    """
    from torch.utils.data import DataLoader

    from rela_fast.train.loader import EvalDataset, auto_image_size

    source = _open(data)
    dev = torch.device(device) if device is not None else _module_device(backbone)
    size = image_size or auto_image_size(source)
    loader = DataLoader(EvalDataset(source, size), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    use_amp = (dev.type == "cuda") if amp is None else amp
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    it = loader
    if progress:
        from rela_fast.progress import progress_bar

        it = progress_bar(desc=desc, unit="batch", iterable=loader)
    try:
        for x, y in it:
            x = x.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16 if dev.type == "cpu" else torch.float16,
                                enabled=use_amp):
                h = backbone(x)
            feats.append(h.float())
            labels.append(y.to(dev))
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                epochs: int = 100, lr: float = 3e-4, batch_size: int = 256, seed: int = 0,
                num_classes: int | None = None, standardize: bool = False, progress: bool = False) -> ProbeResult:
    """Train ``Linear(F, C)`` on cached features with Adam; test accuracy after every epoch.

    ``standardize`` (opt-in, not the reference): scale each feature by the train split's mean and std first
    (helps features of tiny magnitude, e.g. a randomly initialised network's, reach a fair accuracy in
    the spec's 100 epochs at lr 3e-4).
    """
    if (train_y < 0).any() or (test_y < 0).any():
        raise UserError("linear probe: the data has no labels; the probe needs a labelled train and test split")
    if epochs < 3:
        raise UserError(f"probe epochs={epochs}: at least 3 (the result is the mean of the last three)")
    for split, x in (("train", train_x), ("test", test_x)):
        bad = int((~torch.isfinite(x).all(dim=1)).sum()) if x.dim() == 2 else 0
        if bad:
            raise UserError(f"linear probe: {bad} of the {x.shape[0]} {split} feature rows hold NaN or inf; the "
                            "backbone's weights are broken (a diverged run?) or the inputs are; nothing to probe")
    dev = train_x.device
    if standardize:
        mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    c = num_classes or int(max(train_y.max(), test_y.max())) + 1
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    probe = nn.Linear(train_x.shape[1], c).to(dev)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    n = train_x.shape[0]
    test_accs: list[float] = []
    train_acc = 0.0
    t0 = time.perf_counter()
    rng = range(epochs)
    if progress:
        from rela_fast.progress import progress_bar

        rng = progress_bar(desc="probe", unit="epoch", iterable=rng)
    for _ in rng:
        perm = torch.randperm(n, generator=gen).to(dev)
        correct = 0
        for s in range(0, n, batch_size):
            b = perm[s:s + batch_size]
            logits = probe(train_x[b])
            loss = F.cross_entropy(logits, train_y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == train_y[b]).sum())
        train_acc = correct / n
        with torch.no_grad():
            acc = float((probe(test_x).argmax(1) == test_y).float().mean())
        test_accs.append(acc)
        if progress:
            rng.set_postfix(test_acc=f"{acc:.4f}")
    return ProbeResult(
        accuracy=sum(test_accs[-3:]) / 3, test_accuracies=test_accs, train_accuracy=train_acc, epochs=epochs,
        lr=lr, n_train=n, n_test=int(test_x.shape[0]), feature_dim=int(train_x.shape[1]), num_classes=c,
        train_seconds=time.perf_counter() - t0, extra={"standardize": standardize},
    )


def linear_probe(backbone: nn.Module, train: Any, test: Any, *, epochs: int = 100, lr: float = 3e-4,
                 batch_size: int = 256, image_size: int | None = None, device: str | torch.device | None = None,
                 num_workers: int = 0, seed: int = 0, standardize: bool = False, progress: bool = False) -> ProbeResult:
    """Linear-probe ``backbone``: ``train``/``test`` are data (path, array, map-style dataset, Source) or
    ``(features, labels)``.

    For an IDX folder (e.g. Fashion-MNIST) ``test`` may be the same path: its ``t10k`` split is used.
    """
    dev = torch.device(device) if device is not None else _module_device(backbone)
    backbone = backbone.to(dev)
    t0 = time.perf_counter()
    if isinstance(train, tuple):
        train_x, train_y = (t.to(dev) for t in train)
    else:
        train_x, train_y = extract_features(backbone, train, image_size=image_size, batch_size=batch_size,
                                            device=dev, num_workers=num_workers, progress=progress, desc="train")
    if isinstance(test, tuple):
        test_x, test_y = (t.to(dev) for t in test)
    else:
        same_path = isinstance(test, str | os.PathLike) and isinstance(train, str | os.PathLike) \
            and os.fspath(test) == os.fspath(train)
        if test is train or same_path:
            test = _open(test, split="test") if same_path else None
            if getattr(test, "kind", None) != "idx":
                what = train if same_path else type(train).__name__
                raise UserError(f"{what}: the same data for training and testing the probe; pass a test split "
                                "(only IDX folders such as Fashion-MNIST carry their own test split)")
        test_x, test_y = extract_features(backbone, test, image_size=image_size, batch_size=batch_size,
                                          device=dev, num_workers=num_workers, progress=progress, desc="test")
    extract = time.perf_counter() - t0
    result = train_probe(train_x.float(), train_y.long(), test_x.float(), test_y.long(), epochs=epochs, lr=lr,
                         batch_size=batch_size, seed=seed, standardize=standardize, progress=progress)
    result.extract_seconds = extract
    return result

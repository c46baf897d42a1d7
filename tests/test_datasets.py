"""Map-style datasets as sources (rela_fast.data.mapped): torchvision's FashionMNIST and a Hugging Face dataset
made from the Fashion-MNIST IDX files convert to the same targets as the IDX folder itself, and train; their
fingerprints catch what the docs say they catch."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from idx_files import write_idx
from PIL import Image
from torch import nn

import rela_fast
from rela_fast.data import DatasetSource, open_source
from rela_fast.errors import UserError
from rela_fast.targets import describe_change

pytestmark = pytest.mark.usefixtures("one_thread")
datasets = pytest.importorskip("datasets")
N = 256


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="module")
def fmnist(fashion_mnist_dir, tmp_path_factory):
    """The first N training images of the IDX files three ways: an IDX folder, torchvision's FashionMNIST
    (reading its raw folder, no download) and a Hugging Face dataset of PIL images with ClassLabel labels."""
    root = tmp_path_factory.mktemp("fmnist")
    images = _read_idx(Path(fashion_mnist_dir) / "train-images-idx3-ubyte.gz")[:N].copy()
    labels = _read_idx(Path(fashion_mnist_dir) / "train-labels-idx1-ubyte.gz")[:N].copy()
    (root / "idx").mkdir()
    write_idx(root / "idx" / "train-images-idx3-ubyte.gz", images)
    write_idx(root / "idx" / "train-labels-idx1-ubyte.gz", labels)
    raw = root / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, k in (("train", N), ("t10k", 64)):
        write_idx(raw / f"{split}-images-idx3-ubyte", images[:k])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[:k])
    from torchvision.datasets import FashionMNIST

    tv = FashionMNIST(str(root / "tv"), train=True, download=False)
    names = list(tv.classes)
    hf = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a) for a in images], "label": labels.astype(int).tolist()},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}))
    return {"root": root, "images": images, "labels": labels, "tv": tv, "hf": hf,
            "tv_test": FashionMNIST(str(root / "tv"), train=False, download=False)}


def _prior() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 12, 3, stride=2), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 24, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


@pytest.fixture(scope="module")
def stores(fmnist):
    """Each source converted with the same prior; a non-writable-array warning anywhere fails the test."""
    prior, out = _prior(), {}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not writable.*")
        for name, src in (("idx", fmnist["root"] / "idx"), ("tv", fmnist["tv"]), ("hf", fmnist["hf"])):
            out[name] = rela_fast.convert(src, fmnist["root"] / f"store-{name}", prior, size=28, dim=16,
                                          batch_size=64, decoder="pil", progress=False)
    return out


@pytest.mark.parametrize("name", ["tv", "hf"])
def test_dataset_stores_equal_the_idx_folders(stores, fmnist, name):
    reference, store = stores["idx"], stores[name]
    assert store.targets.shape == reference.targets.shape == (N, 16)
    np.testing.assert_allclose(np.asarray(store.targets), np.asarray(reference.targets), rtol=1e-5, atol=1e-5)
    assert list(store.labels) == fmnist["labels"].tolist() == list(reference.labels)
    assert store.fingerprint["kind"] == "dataset" and store.fingerprint["count"] == N


@pytest.mark.parametrize("name", ["tv", "hf"])
def test_dataset_sources_train(stores, fmnist, tmp_path, name):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not writable.*")
        trainer = rela_fast.ReLATrainer("convnet-4", "byol", stores[name], budget=1.0, epochs=1, batch_size=32,
                                        max_steps=2, device="cpu", out=tmp_path / "run",
                                        method_kwargs={"hidden_dim": 16, "proj_dim": 8})
        result = trainer.fit(fmnist[name])
    assert result.steps == 2 and all(np.isfinite(r["loss"]) for r in result.history if r.get("event") == "step")


def test_probe_takes_datasets(fmnist):
    from rela_fast.eval import linear_probe

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    result = linear_probe(backbone, fmnist["hf"], fmnist["tv_test"], epochs=3, image_size=28, device="cpu")
    assert result.n_train == N and result.n_test == 64 and result.num_classes == 10
    with pytest.raises(UserError, match="same data for training and testing"):
        linear_probe(backbone, fmnist["tv"], fmnist["tv"], epochs=3, image_size=28, device="cpu")


def test_items_in_every_supported_form_read_the_same(fmnist):
    """PIL, HWC array, CHW uint8 tensor, ToTensor() floats, encoded PNG bytes and a dict: the same pixels."""
    import io

    images = fmnist["images"][:8]
    rgb = np.repeat(images[..., None], 3, axis=3)

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        return buf.getvalue()

    forms = {
        "pil": [(Image.fromarray(a), 1) for a in rgb],
        "hwc": [(a, 1) for a in rgb],
        "chw": [(torch.from_numpy(a).permute(2, 0, 1).contiguous(), torch.tensor(1)) for a in rgb],
        "float": [(torch.from_numpy(a).permute(2, 0, 1).float() / 255, np.int64(1)) for a in rgb],
        "dict": [{"image": Image.fromarray(a), "label": 1} for a in rgb],
    }
    for name, items in forms.items():
        src = open_source(items)
        assert isinstance(src, DatasetSource) and src.labels == [1] * 8, name
        for i in range(8):
            assert np.array_equal(src.read(i), rgb[i]), (name, i)
    encoded = open_source([(png(a), 0) for a in rgb])
    assert encoded.read(0) == png(rgb[0])  # bytes go to the decoders as they are


def test_bad_datasets_are_one_line_user_errors(fmnist, tmp_path):
    no_image = fmnist["hf"].rename_column("image", "picture")
    with pytest.raises(UserError, match=r"no image column 'image' \(columns: picture, label\); pass image_column="):
        rela_fast.convert(no_image, tmp_path / "store", _prior(), size=28, dim=4, progress=False)
    assert not (tmp_path / "store").exists() and list(tmp_path.iterdir()) == []
    assert open_source(no_image, image_column="picture").labels == fmnist["labels"].tolist()
    with pytest.raises(UserError, match="no label column 'class'"):
        open_source(fmnist["hf"], label_column="class")
    assert open_source(fmnist["hf"], label_column=None).labels is None
    with pytest.raises(UserError, match="holds several splits"):
        open_source(datasets.DatasetDict({"train": fmnist["hf"]}))
    normalised = [(((torch.from_numpy(a).float() - 128) / 64)[None], 0) for a in fmnist["images"][:4]]
    with pytest.raises(UserError, match=r"\[0\]: float image values outside \[0, 1\]"):
        open_source(normalised)
    with pytest.raises(UserError, match="changed between two reads"):
        open_source(_Noisy())
    with pytest.raises(UserError, match="not a source rela_fast can read"):
        open_source(object())


class _Noisy(torch.utils.data.Dataset):
    """A dataset with a random transform: items differ between reads."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8), 0


def test_fingerprint_catches_length_labels_and_sampled_items_only(fmnist, stores):
    """What docs/DATA.md promises: length, labels, any of the sampled items -> refused; an edit of a row
    outside the sample goes unnoticed unless verify_content hashes every row."""
    hf, store = fmnist["hf"], stores["hf"]
    source = open_source(hf)
    assert describe_change(store, open_source(hf)) is None
    sampled = source.sample_rows()
    assert len(sampled) == 64 and sampled[0] == 0 and sampled[-1] == N - 1
    unsampled = next(i for i in range(N) if i not in sampled)

    def edited(row):
        images = [np.asarray(im) for im in hf["image"]]
        images[row] = 255 - images[row]
        return datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in images], "label": hf["label"]},
                                          features=hf.features)

    assert describe_change(store, open_source(edited(sampled[5]))) is not None
    assert describe_change(store, open_source(hf.select(range(N - 1)))) is not None
    relabelled = hf.map(lambda row, i: {"label": (row["label"] + (i == unsampled)) % 10}, with_indices=True)
    assert describe_change(store, open_source(relabelled)) == "the labels changed"
    assert describe_change(store, open_source(edited(unsampled))) is None  # the documented blind spot
    with pytest.raises(UserError, match="different source"):
        store.check_matches(open_source(edited(sampled[5])))


def test_verify_content_catches_an_unsampled_edit(fmnist, tmp_path):
    hf = fmnist["hf"].select(range(80))
    source = open_source(hf)
    unsampled = next(i for i in range(80) if i not in source.sample_rows())
    store = rela_fast.convert(hf, tmp_path / "store", _prior(), size=28, dim=4, decoder="pil", progress=False,
                              verify_content=True)
    images = [np.asarray(im) for im in hf["image"]]
    images[unsampled] = 255 - images[unsampled]
    changed = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in images], "label": hf["label"]},
                                         features=hf.features)
    change = describe_change(store, open_source(changed))
    assert change is not None and f"#{unsampled:02d}" in change

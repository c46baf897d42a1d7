"""Shared test set-up: the gpu marker, per-test backend forcing and the Triton interpreter."""

from __future__ import annotations

import os

import pytest
import torch

FASHION_MNIST = os.environ.get("RELA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def triton_interpret(monkeypatch):
    """Run Triton kernels on CPU tensors in the interpreter, for this test only."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


@pytest.fixture
def force_backend(monkeypatch):
    """``force_backend("cpp")`` sets RELA_FAST_BACKEND for this test only (and the interpreter for triton)."""

    def force(name: str) -> None:
        monkeypatch.setenv("RELA_FAST_BACKEND", name)
        if name == "triton" and not torch.cuda.is_available():
            monkeypatch.setenv("TRITON_INTERPRET", "1")

    return force


@pytest.fixture
def one_thread():
    """One intra-op thread: on the shared 2-core CI machine two threads are many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    """The Debian package's Fashion-MNIST folder; tests that need it skip with the install command."""
    if not os.path.isdir(FASHION_MNIST):
        pytest.skip(f"Fashion-MNIST not found at {FASHION_MNIST}: `apt-get install dataset-fashion-mnist`")
    return FASHION_MNIST

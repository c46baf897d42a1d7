"""The three-backend dispatch rule, checked on the first real family (the transfer loss)."""

from __future__ import annotations

import pytest
import torch

from rela_fast.ops.backend import BackendUnavailable, choose_backend, dispatch
from rela_fast.ops.transfer_loss import transfer_loss


def inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2 * 5, 9, generator=g)
    weight = torch.randn(4, 9, generator=g) / 3
    bias = torch.randn(4, generator=g)
    targets = torch.randn(5, 4, generator=g)
    return h, weight, bias, targets


def forward_backward(h, weight, bias, targets):
    leaves = [t.clone().requires_grad_() for t in (h, weight, bias)]
    loss, per_sample = transfer_loss(*leaves, targets)
    loss.backward()
    return [loss.detach(), per_sample] + [t.grad for t in leaves]


def test_each_forced_backend_gives_the_same_answer(force_backend, monkeypatch):
    data = inputs(torch.seed() % 2**31)
    answers = {}
    for name in ("reference", "cpp", "triton"):
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        force_backend(name)
        assert choose_backend("transfer_loss", "cpu") == name
        module = {"reference": "reference", "cpp": "cpp", "triton": "triton_kernels"}[name]
        assert dispatch("transfer_loss", "cpu").__module__ == f"rela_fast.ops.transfer_loss.{module}"
        answers[name] = forward_backward(*data)
    for name in ("cpp", "triton"):
        for got, want in zip(answers[name], answers["reference"]):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), name


def test_default_rule_cpu_runs_cpp_and_meta_runs_reference(monkeypatch):
    monkeypatch.delenv("RELA_FAST_BACKEND", raising=False)
    assert choose_backend("transfer_loss", "cpu") == "cpp"
    assert choose_backend("transfer_loss", "meta") == "reference"
    h, weight, bias, targets = (t.to("meta") for t in inputs(0))
    loss, per_sample = transfer_loss(h, weight, bias, targets)  # shapes only, through the reference
    assert loss.device.type == "meta" and loss.shape == () and per_sample.shape == (5,)


def test_forcing_triton_on_a_cpu_tensor_without_the_interpreter_says_why(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("RELA_FAST_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        transfer_loss(*inputs(1))


def test_forcing_cpp_on_a_meta_tensor_says_why(monkeypatch):
    monkeypatch.setenv("RELA_FAST_BACKEND", "cpp")
    with pytest.raises(BackendUnavailable, match="CPU tensors"):
        transfer_loss(*(t.to("meta") for t in inputs(2)))


def test_explicit_backend_argument_is_checked_too():
    with pytest.raises(BackendUnavailable, match="CPU tensors"):
        transfer_loss(*(t.to("meta") for t in inputs(3)), backend="cpp")
    with pytest.raises(BackendUnavailable, match="not one of"):
        transfer_loss(*inputs(3), backend="cuda")


@pytest.mark.parametrize("value", ["tritonn", "cuda", "c++"])
def test_unknown_backend_value_is_an_error(monkeypatch, value):
    monkeypatch.setenv("RELA_FAST_BACKEND", value)
    with pytest.raises(BackendUnavailable, match="is not a backend"):
        transfer_loss(*inputs(4))


def test_auto_or_empty_means_the_default_rule(monkeypatch):
    for value in ("", "auto", "AUTO"):
        monkeypatch.setenv("RELA_FAST_BACKEND", value)
        assert choose_backend("transfer_loss", "cpu") == "cpp"


def test_forced_backend_is_honoured_inside_torch_compile(force_backend, monkeypatch):
    """Under torch.compile the choice is made once at trace time; an impossible one still raises."""
    torch._dynamo.reset()
    monkeypatch.setenv("RELA_FAST_BACKEND", "cpp")
    step = torch.compile(lambda *a: transfer_loss(*a)[0], fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="CPU tensors"):
        step(*(t.to("meta") for t in inputs(5)))
    torch._dynamo.reset()

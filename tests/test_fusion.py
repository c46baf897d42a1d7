"""Fusion passes and the inference engine: fused vs unfused agree (CPU, fp32, 1e-4 relative; the CPU bf16
path, where the CPU has native bf16, to BF16_RTOL = 3e-2 relative: bf16 keeps 8 mantissa bits).

Models: timm resnet18, timm efficientnet_lite0 (random init, BatchNorm statistics and affine parameters
randomised so that folding is not the identity), and a small custom model with a conv output that is
read twice (must not be folded) and a BatchNorm that follows an add (no conv to fold into).
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from rela_fast.encoder import build_encoder, create_prior
from rela_fast.encoder import engine as engine_module
from rela_fast.encoder.engine import cpu_bf16_supported, relative_error, resolve_precision
from rela_fast.encoder.fusion import (
    NormalizedInputConv,
    PackedConv2d,
    batchnorm_pairs,
    find_input_conv,
    fold_batchnorm,
    fold_normalization,
    mkldnn_conv_available,
    prepack_convolutions,
    to_channels_last,
)
from rela_fast.errors import UserError

timm = pytest.importorskip("timm")

RTOL = 1e-4
BF16_RTOL = 3e-2
needs_onednn = pytest.mark.skipif(not mkldnn_conv_available(), reason="needs oneDNN's inference convolution")
needs_bf16 = pytest.mark.skipif(not cpu_bf16_supported(), reason="needs a CPU with native bf16")


class SmallNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
        self.stem_bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 8, 1)  # read by branch_bn AND by the residual add: not foldable
        self.branch_bn = nn.BatchNorm2d(8)
        self.post_bn = nn.BatchNorm2d(8)  # follows an add, not a conv
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        x = self.act(self.stem_bn(self.stem(x)))
        x = self.act(self.dw_bn(self.dw(x)))
        b = self.branch(x)
        x = self.post_bn(self.branch_bn(b) + b)
        return self.head(x.mean((2, 3)))


def randomise_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model.eval()


def _timm(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_batchnorm(timm.create_model(name, pretrained=False, num_classes=0), seed)


@pytest.fixture(scope="module")
def models():
    return {
        "resnet18": (_timm("resnet18", 1), 64),
        "efficientnet_lite0": (_timm("efficientnet_lite0", 2), 64),
        "small": (randomise_batchnorm(SmallNet(), 3), 20),
    }


MODEL_NAMES = ["resnet18", "efficientnet_lite0", "small"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pixels(n: int, size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)


def _normalise(pixels: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    m = torch.tensor(mean).reshape(1, 3, 1, 1)
    s = torch.tensor(std).reshape(1, 3, 1, 1)
    return (pixels.float() / 255.0 - m) / s


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fold_batchnorm_by_dataflow_matches_unfused(models, name):
    model, size = models[name]
    x = _normalise(_pixels(2, size, seed=10))
    fused = copy.deepcopy(model)
    pairs = fold_batchnorm(fused, example=x[:1])
    assert relative_error(_run(fused, x), _run(model, x)) <= RTOL
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    if name == "small":
        assert pairs == [("stem", "stem_bn"), ("dw", "dw_bn")]  # not the twice-read branch, not post_bn
        assert left == 2
    else:
        assert len(pairs) == n_bn and left == 0  # every BN of resnet / efficientnet follows a conv


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_fold_batchnorm_by_structure_matches_unfused(models, name):
    model, size = models[name]
    x = _normalise(_pixels(2, size, seed=11))
    fused = copy.deepcopy(model)
    pairs = fold_batchnorm(fused)
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert relative_error(_run(fused, x), _run(model, x)) <= RTOL


def test_structure_alone_would_fold_a_twice_read_conv(models):
    """Why the engine uses data flow: module order pairs branch/branch_bn, which changes the output."""
    model, size = models["small"]
    x = _normalise(_pixels(2, size, seed=12))
    assert ("branch", "branch_bn") in batchnorm_pairs(model)
    assert ("branch", "branch_bn") not in batchnorm_pairs(model, x[:1])
    wrong = copy.deepcopy(model)
    fold_batchnorm(wrong)
    assert relative_error(_run(wrong, x), _run(model, x)) > 1e-3


def test_fold_keeps_batchnormact_activation(models):
    model, _ = models["efficientnet_lite0"]
    fused = copy.deepcopy(model)
    fold_batchnorm(fused, example=_normalise(_pixels(1, 32, seed=13)))
    assert type(fused.bn1).__name__ == "_ActAfterFold"
    assert isinstance(fused.bn1.act, type(model.bn1.act))
    assert fused.conv_stem.bias is not None


def test_fold_batchnorm_needs_eval_mode():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(SmallNet().train())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fold_normalization_is_exact_including_borders(models, name):
    model, size = models[name]
    pixels = _pixels(2, size, seed=14)
    want = _run(model, _normalise(pixels))
    fused = copy.deepcopy(model)
    conv_name = fold_normalization(fused, MEAN, STD, example=_normalise(pixels[:1]), size=size)
    assert isinstance(fused.get_submodule(conv_name), NormalizedInputConv)
    assert relative_error(_run(fused, pixels.float()), want) <= RTOL
    # another input size: the border map is recomputed on the fly
    other = _pixels(1, size + 6, seed=15)
    assert relative_error(_run(fused, other.float()), _run(model, _normalise(other))) <= RTOL


def test_border_map_is_needed(models):
    """Folding the mean into a plain bias is wrong at the zero-padded borders (pixel 0 != normalised 0)."""
    model, size = models["resnet18"]
    pixels = _pixels(2, size, seed=16)
    fused = copy.deepcopy(model)
    name = fold_normalization(fused, MEAN, STD, first_conv="conv1", size=size)
    layer = fused.get_submodule(name)
    h = layer.bias_map.shape[-1] // 2
    interior = layer.bias_map[..., h : h + 1, h : h + 1]
    assert not torch.allclose(layer.bias_map[..., 0, 0], interior[..., 0, 0])
    layer.bias_map = interior.expand_as(layer.bias_map).clone()  # the naive fold: one bias everywhere
    assert relative_error(_run(fused, pixels.float()), _run(model, _normalise(pixels))) > 1e-3


def test_fold_normalization_grouped_first_conv():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 6, 5, padding=2, groups=3), nn.ReLU()).eval()
    pixels = _pixels(2, 16, seed=17)
    fused = copy.deepcopy(model)
    fold_normalization(fused, MEAN, STD, example=_normalise(pixels[:1]))
    assert relative_error(_run(fused, pixels.float()), _run(model, _normalise(pixels))) <= RTOL


def test_input_read_twice_is_not_folded():
    class TwoReads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(x) + x

    x = _normalise(_pixels(1, 8, seed=18))
    assert find_input_conv(TwoReads().eval(), x) is None
    with pytest.raises(ValueError, match="normalise explicitly"):
        fold_normalization(TwoReads().eval(), MEAN, STD, example=x)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last_matches(models, name):
    model, size = models[name]
    x = _normalise(_pixels(2, size, seed=19))
    fused = to_channels_last(copy.deepcopy(model))
    conv = next(m for m in fused.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    got = _run(fused, x.contiguous(memory_format=torch.channels_last))
    assert relative_error(got, _run(model, x)) <= RTOL


# -- the engine ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_engine_matches_eager_model(models, name):
    model, size = models[name]
    m, cfg = create_prior(model, input_size=size)
    enc = build_encoder(m, cfg, "cpu", batch_size=3)
    assert enc.fusions == ["fold_batchnorm", "fold_normalization", "channels_last"], enc.skipped
    pixels = _pixels(5, size, seed=20)  # 5 = 3 + a short last chunk
    got = enc(pixels)
    want = _run(model, _normalise(pixels)).reshape(5, -1)
    assert got.dtype == torch.float32 and got.shape == (5, cfg.feature_dim)
    assert relative_error(got, want) <= RTOL
    assert isinstance(m.get_submodule(next(n for n, _ in m.named_children())), nn.Module)
    assert sum(isinstance(x, nn.BatchNorm2d) for x in model.modules()) > 0  # the caller's model untouched


def test_engine_undoes_a_pass_that_breaks_equivalence(models, monkeypatch):
    model, size = models["small"]

    def broken(module, example=None):
        with torch.no_grad():
            module.stem.weight.mul_(1.5)
        return [("stem", "stem_bn")]

    monkeypatch.setattr(engine_module, "fold_batchnorm", broken)
    m, cfg = create_prior(model, input_size=size)
    enc = build_encoder(m, cfg)
    assert "differs" in enc.skipped["fold_batchnorm"] and "fold_batchnorm" not in enc.fusions
    assert enc.fusions == ["fold_normalization", "channels_last"]
    pixels = _pixels(2, size, seed=21)
    assert relative_error(enc(pixels), _run(model, _normalise(pixels))) <= RTOL


def test_engine_lists_only_passes_that_did_something():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    m, cfg = create_prior(model, input_size=12)
    enc = build_encoder(m, cfg)
    assert enc.skipped == {"fold_batchnorm": "nothing to apply it to"}
    assert enc.fusions == ["fold_normalization", "channels_last"]


def test_engine_torchscript_is_frozen(models, tmp_path):
    model, size = models["small"]
    path = tmp_path / "small.pt"
    torch.jit.script(model).save(str(path))
    m, cfg = create_prior(f"torchscript:{path}", input_size=size)
    enc = build_encoder(m, cfg)
    assert "jit_freeze" in enc.fusions
    pixels = _pixels(3, size, seed=22)
    assert relative_error(enc(pixels), _run(model, _normalise(pixels))) <= RTOL


def test_engine_rejects_bad_arguments(models, monkeypatch):
    model, size = models["small"]
    m, cfg = create_prior(model, input_size=size)
    with pytest.raises(UserError, match="CUDA only"):
        build_encoder(m, cfg, precision="fp16")
    with monkeypatch.context() as patch:  # bf16 on a CPU without native bf16
        patch.setattr(engine_module, "cpu_bf16_supported", lambda: False)
        with pytest.raises(UserError, match="CUDA only"):
            build_encoder(m, cfg, precision="bf16")
    with pytest.raises(UserError, match="precision"):
        build_encoder(m, cfg, precision="int4")
    with pytest.raises(UserError, match="CUDA"):
        build_encoder(m, cfg, cuda_graph=True)
    enc = build_encoder(m, cfg, precision="auto")
    assert enc.dtype == torch.float32
    with pytest.raises(ValueError, match="takes"):
        enc(_pixels(1, size + 1, seed=0))
    with pytest.raises(ValueError, match="3, S, S"):
        enc(torch.zeros(1, 1, size, size, dtype=torch.uint8))


@pytest.mark.slow
def test_engine_compiled_matches(models):
    model, size = models["small"]
    m, cfg = create_prior(model, input_size=size)
    enc = build_encoder(m, cfg, compile=True)
    pixels = _pixels(4, size, seed=23)
    assert "torch_compile" in enc.fusions
    assert relative_error(enc(pixels), _run(model, _normalise(pixels))) <= RTOL


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["eager", "compile", "cuda_graph"])
def test_engine_cuda(models, mode):
    model, size = models["resnet18"]
    m, cfg = create_prior(model, input_size=size)
    enc = build_encoder(m, cfg, "cuda", compile=mode == "compile", cuda_graph=mode == "cuda_graph", batch_size=4)
    assert enc.dtype in (torch.bfloat16, torch.float16)
    pixels = _pixels(6, size, seed=24)  # the graph's last batch is padded
    got = enc(pixels)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert relative_error(got.cpu(), _run(model, _normalise(pixels))) <= 3e-2
    fp32 = build_encoder(m, cfg, "cuda", precision="fp32")
    assert relative_error(fp32(pixels.cuda()).cpu(), _run(model, _normalise(pixels))) <= 1e-3


# -- cheap building: undo without copies, checks at a small size, one check at the real size ------------


@pytest.mark.parametrize("name", ["resnet18", "small"])
def test_passes_never_write_into_existing_tensors(models, name):
    """What lets the engine undo a pass by restoring references instead of keeping deep copies."""
    model, size = models[name]
    work = copy.deepcopy(model)
    old = list(work.state_dict(keep_vars=True).values())
    versions = [t._version for t in old]
    x = _normalise(_pixels(1, size, seed=30))
    assert fold_batchnorm(work, example=x)
    fold_normalization(work, MEAN, STD, example=x, size=size)
    to_channels_last(work)
    if mkldnn_conv_available():
        prepack_convolutions(work, x.contiguous(memory_format=torch.channels_last))
    assert [t._version for t in old] == versions
    kept = {id(t) for t in work.state_dict(keep_vars=True).values()}
    assert sum(id(t) in kept for t in old) < len(old) // 2  # most tensors were replaced, not changed


def test_engine_undoes_a_failed_pass_without_copying(models, monkeypatch):
    """A pass that replaces modules and then fails its check is undone by restoring the module tree."""
    model, size = models["resnet18"]

    def wrong_layout(module):
        module.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)  # breaks equivalence, writes nothing in place
        return module

    monkeypatch.setattr(engine_module, "to_channels_last", wrong_layout)
    monkeypatch.setattr(engine_module, "_fresh_copy", _counting(engine_module._fresh_copy, calls := []))
    m, cfg = create_prior(model, input_size=size)
    enc = build_encoder(m, cfg)
    assert len(calls) == 1  # the one working copy; no rebuild
    assert "differs" in enc.skipped["channels_last"]
    assert enc.fusions == ["fold_batchnorm", "fold_normalization"]
    assert isinstance(enc.model.conv1, NormalizedInputConv)
    pixels = _pixels(2, size, seed=31)
    assert relative_error(enc(pixels), _run(model, _normalise(pixels))) <= RTOL


def test_engine_rebuilds_when_a_failed_pass_wrote_in_place(models, monkeypatch):
    """A failing pass that wrote into a tensor an earlier pass made: rebuilt from the caller's model and the
    kept passes replayed."""
    model, size = models["resnet18"]

    def corrupting_layout(module):
        with torch.no_grad():
            module.layer1[0].conv1.weight.mul_(2.0)  # the folded weight made by fold_batchnorm
        raise RuntimeError("layout failed half way")

    monkeypatch.setattr(engine_module, "to_channels_last", corrupting_layout)
    monkeypatch.setattr(engine_module, "_fresh_copy", _counting(engine_module._fresh_copy, calls := []))
    m, cfg = create_prior(model, input_size=size)
    enc = build_encoder(m, cfg)
    assert len(calls) == 2 and enc.skipped["channels_last"] == "layout failed half way"
    assert enc.fusions == ["fold_batchnorm", "fold_normalization"]
    assert not any(isinstance(x, nn.BatchNorm2d) for x in enc.model.modules())
    pixels = _pixels(2, size, seed=32)
    assert relative_error(enc(pixels), _run(model, _normalise(pixels))) <= RTOL


def _counting(fn, calls: list):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


def test_engine_final_check_at_real_size_undoes_everything(models, monkeypatch):
    """Per-pass checks run at 64 px; a fault that only shows at the real S is caught by the last check."""
    model, _ = models["resnet18"]
    size = 96
    real_prepare = NormalizedInputConv.prepare

    def bad_prepare(self, h, w):  # a wrong border map for S only (64 px recomputes its own map)
        real_prepare(self, h, w)
        self.bias_map = self.bias_map + 1.0

    monkeypatch.setattr(NormalizedInputConv, "prepare", bad_prepare)
    m, cfg = create_prior(model, input_size=size)
    enc = build_encoder(m, cfg)
    assert enc.fusions == []
    assert set(enc.skipped) == {"fold_batchnorm", "fold_normalization", "channels_last"}
    assert all("S=96" in why for why in enc.skipped.values())
    pixels = _pixels(2, size, seed=33)
    assert relative_error(enc(pixels), _run(model, _normalise(pixels))) <= RTOL


def test_engine_checks_at_real_size_when_the_model_needs_it():
    """A head with a fixed input size (flatten + linear) cannot run at 64 px: checked at S instead."""
    torch.manual_seed(6)
    model = randomise_batchnorm(
        nn.Sequential(nn.Conv2d(3, 4, 3, stride=8, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 10 * 10, 6)),
        seed=6,
    )
    m, cfg = create_prior(model, input_size=80)
    enc = build_encoder(m, cfg, prepack=True)
    assert enc.fusions[:3] == ["fold_batchnorm", "fold_normalization", "channels_last"], enc.skipped
    pixels = _pixels(3, 80, seed=34)
    assert relative_error(enc(pixels), _run(model, _normalise(pixels))) <= RTOL


# -- oneDNN prepacked convolutions (CPU) -----------------------------------------------------------------


@needs_onednn
@pytest.mark.parametrize(
    "act", [nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU6(), nn.Hardtanh(-1.0, 2.0), nn.SiLU(), nn.Hardswish()]
)
def test_packed_conv_with_fused_activation_matches(act):
    torch.manual_seed(7)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1, groups=2).eval()
    x = torch.randn(3, 6, 13, 11) * 3
    with torch.no_grad():
        want = copy.deepcopy(act)(conv(x))
        model = nn.Sequential(copy.deepcopy(conv), copy.deepcopy(act)).eval()
        done = prepack_convolutions(model, x[:1])
        assert done == [("0", "1")] and isinstance(model[0], PackedConv2d) and isinstance(model[1], nn.Identity)
        assert relative_error(model(x), want) <= RTOL
        assert relative_error(model(x[:2].contiguous(memory_format=torch.channels_last)), want[:2]) <= RTOL
        clone = copy.deepcopy(model)  # the packed weights are not copied; the copy repacks
        assert relative_error(clone(x), want) <= RTOL


class ReadTwice(nn.Module):
    """conv -> act where the raw conv output is also read elsewhere (before, or after a non-in-place act)."""

    def __init__(self, inplace: bool, read_before: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=inplace)
        self.read_before = read_before

    def forward(self, x):
        y = self.conv(x)
        if self.read_before:
            skip = y * 0.5
            return self.act(y) + skip
        return self.act(y) + y  # in place: reads the activated y; otherwise the raw one


@needs_onednn
@pytest.mark.parametrize(("inplace", "read_before", "fused"), [(True, False, True), (False, False, False),
                                                                (True, True, False), (False, True, False)])
def test_prepack_fuses_an_activation_only_when_no_one_reads_the_raw_output(inplace, read_before, fused):
    torch.manual_seed(8)
    model = ReadTwice(inplace, read_before).eval()
    x = torch.randn(2, 3, 9, 9)
    want = _run(copy.deepcopy(model), x)
    done = prepack_convolutions(model, x[:1])
    assert done == [("conv", "act" if fused else None)]
    assert relative_error(_run(model, x), want) <= RTOL


@needs_onednn
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_prepack_matches_unfused(models, name):
    model, size = models[name]
    x = _normalise(_pixels(3, size, seed=35))
    fused = copy.deepcopy(model)
    fold_batchnorm(fused, example=x[:1])
    done = prepack_convolutions(fused, x[:1])
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(done) == n_conv and not any(type(m) is nn.Conv2d for m in fused.modules())
    fused_acts = [a for _, a in done if a]
    if name == "resnet18":  # the stem and each block's first conv; the second one's ReLU follows the add
        assert len(fused_acts) == 1 + 8
    elif name == "efficientnet_lite0":  # ReLU6 after the folded BN of stem, expansions, depthwise, head
        assert len(fused_acts) > 20
    else:
        assert fused_acts == []  # SmallNet uses one ReLU module twice: not fusable
    assert relative_error(_run(fused, x), _run(model, x)) <= RTOL


@needs_onednn
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_engine_prepack_matches_eager_model(models, name):
    model, size = models[name]
    m, cfg = create_prior(model, input_size=size)
    enc = build_encoder(m, cfg, "cpu", batch_size=3, prepack=True)
    assert enc.fusions == ["fold_batchnorm", "fold_normalization", "channels_last", "mkldnn_prepack"], enc.skipped
    pixels = _pixels(5, size, seed=36)  # 3 + a short last chunk: two packed shapes
    want = _run(model, _normalise(pixels)).reshape(5, -1)
    assert relative_error(enc(pixels), want) <= RTOL
    assert relative_error(enc(pixels[:4]), want[:4]) <= RTOL


# -- bf16 on the CPU -------------------------------------------------------------------------------------


def test_cpu_precision_rules(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == torch.float32  # the reference numerics stay the default
    assert resolve_precision("fp32", cpu) == torch.float32
    monkeypatch.setattr(engine_module, "cpu_bf16_supported", lambda: True)
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(engine_module, "cpu_bf16_supported", lambda: False)
    with pytest.raises(UserError, match="no native bf16"):
        resolve_precision("bf16", cpu)


@needs_bf16
@pytest.mark.parametrize("prepack", [False, True])
@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_engine_cpu_bf16_matches_within_tolerance(models, name, prepack):
    model, size = models[name]
    m, cfg = create_prior(model, input_size=size)
    enc = build_encoder(m, cfg, "cpu", precision="bf16", batch_size=4, prepack=prepack)
    assert enc.dtype == torch.bfloat16 and "autocast_bfloat16" in enc.fusions, enc.skipped
    assert ("mkldnn_prepack" in enc.fusions) == (prepack and mkldnn_conv_available())
    pixels = _pixels(6, size, seed=37)
    got = enc(pixels)
    want = _run(model, _normalise(pixels)).reshape(6, -1)
    assert got.dtype == torch.float32
    err = relative_error(got, want)
    assert 0 < err <= BF16_RTOL  # really computed in bf16 (not exact), and close


def test_cpu_allocator_setting(models, monkeypatch):
    monkeypatch.setattr(engine_module, "_allocator_tuned", False)
    monkeypatch.setenv("RELA_FAST_MALLOPT", "0")
    assert engine_module.tune_cpu_allocator() is False
    model, size = models["small"]
    m, cfg = create_prior(model, input_size=size)
    assert build_encoder(m, cfg).allocator_tuned is False
    monkeypatch.delenv("RELA_FAST_MALLOPT")
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    enc = build_encoder(m, cfg)  # on the CPU by default
    assert enc.allocator_tuned is True and engine_module.tune_cpu_allocator() is True
    pixels = _pixels(2, size, seed=38)
    assert relative_error(enc(pixels), _run(model, _normalise(pixels))) <= RTOL

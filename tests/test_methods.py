"""Each method's loss against its direct formula on tiny inputs; momentum updates; augmentation recipes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from rela_fast.errors import UserError
from rela_fast.train import BYOL, DINO, Method, SimCLR, Supervised, create_method, two_views
from rela_fast.train.augment import build_torchvision
from rela_fast.train.methods import cosine_momentum, loss_terms

B, F = 5, 6


pytestmark = pytest.mark.usefixtures("one_thread")


def _backbone():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, F))


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    v1 = torch.randn(B, 3, 2, 2, generator=g)
    v2 = torch.randn(B, 3, 2, 2, generator=g)
    return v1, v2


def _cos(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_byol_loss_matches_formula_and_teacher_gets_no_grad():
    torch.manual_seed(0)
    backbone = _backbone()
    m = BYOL(F, proj_dim=3, hidden_dim=7)
    m.attach(backbone)
    v1, v2 = _inputs()
    h1, h2 = backbone(v1), backbone(v2)
    loss = m.loss(h1, h2, v1, v2)
    with torch.no_grad():
        p1 = m.predictor(m.projector(h1)).numpy()
        p2 = m.predictor(m.projector(h2)).numpy()
        t = m.target_backbone(torch.cat([v1, v2]))
        z1, z2 = m.target_projector(t[:B]).numpy(), m.target_projector(t[B:]).numpy()
    expected = np.mean([(2 - 2 * _cos(p1[i], z2[i])) + (2 - 2 * _cos(p2[i], z1[i])) for i in range(B)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in m.target_backbone.parameters())
    assert all(p.grad is None for p in m.target_projector.parameters())
    assert m.predictor[0].weight.grad is not None and backbone[1].weight.grad is not None
    # per-sample weights: a one-hot weight picks one sample's loss (times B / B)
    w = torch.zeros(B)
    w[2] = B
    l2 = (2 - 2 * _cos(p1[2], z2[2])) + (2 - 2 * _cos(p2[2], z1[2]))
    assert m.loss(h1.detach(), h2.detach(), v1, v2, weights=w).item() == pytest.approx(l2, rel=1e-5)


def test_byol_momentum_update_follows_cosine_schedule():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    torch.manual_seed(1)
    backbone = _backbone()
    m = BYOL(F, proj_dim=3, hidden_dim=7, base_momentum=0.9)
    m.attach(backbone)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(1.0)  # the online net moves away from the target
    old = [p.clone() for p in m.target_backbone.parameters()]
    m.on_step(25, 100)
    tau = 1 - 0.1 * (math.cos(math.pi * 0.25) + 1) / 2
    assert m.momentum == pytest.approx(tau)
    for t_new, t_old, o in zip(m.target_backbone.parameters(), old, backbone.parameters()):
        torch.testing.assert_close(t_new, tau * t_old + (1 - tau) * o)


def test_simclr_nt_xent_matches_formula():
    torch.manual_seed(2)
    m = SimCLR(F, proj_dim=4, hidden_dim=8, temperature=0.3)
    v1, v2 = _inputs(1)
    backbone = _backbone()
    h1, h2 = backbone(v1), backbone(v2)
    loss = m.loss(h1, h2)
    with torch.no_grad():
        z = torch.cat([m.projector(h1), m.projector(h2)]).double().numpy()
    n = 2 * B
    sim = [[_cos(z[a], z[k]) / 0.3 for k in range(n)] for a in range(n)]
    per_anchor = []
    for a in range(n):
        pos = (a + B) % n
        denom = sum(math.exp(sim[a][k]) for k in range(n) if k != a)
        per_anchor.append(-math.log(math.exp(sim[a][pos]) / denom))
    assert loss.item() == pytest.approx(np.mean(per_anchor), rel=1e-5)
    w = torch.zeros(B)
    w[4] = B
    assert m.loss(h1, h2, weights=w).item() == pytest.approx((per_anchor[4] + per_anchor[4 + B]) / 2, rel=1e-5)


def test_dino_loss_centering_and_temperatures():
    torch.manual_seed(3)
    backbone = _backbone()
    m = DINO(F, out_dim=9, hidden_dim=8, bottleneck_dim=4, student_temp=0.2, teacher_temp=0.05,
             center_momentum=0.8)
    m.attach(backbone)
    with torch.no_grad():
        m.center.copy_(torch.randn(9))
    center = m.center.clone().double().numpy()
    v1, v2 = _inputs(2)
    h1, h2 = backbone(v1), backbone(v2)
    loss = m.loss(h1, h2, v1, v2)
    with torch.no_grad():
        s = m.head(torch.cat([h1, h2])).double().numpy()
        t = m.teacher_head(m.teacher_backbone(torch.cat([v1, v2]))).double().numpy()

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    total = 0.0
    for i in range(B):
        pt1, pt2 = softmax((t[i] - center) / 0.05), softmax((t[B + i] - center) / 0.05)
        ls1, ls2 = np.log(softmax(s[i] / 0.2)), np.log(softmax(s[B + i] / 0.2))
        total += (-(pt2 * ls1).sum() - (pt1 * ls2).sum()) / 2
    assert loss.item() == pytest.approx(total / B, rel=1e-5)
    np.testing.assert_allclose(m.center.double().numpy(), 0.8 * center + 0.2 * t.mean(0), rtol=1e-5, atol=1e-6)
    # the head's last layer is weight-normalised (unit rows), so logits of a unit bottleneck are cosines
    assert np.abs(s).max() <= 1.0 + 1e-6
    m.eval()
    before = m.center.clone()
    m.loss(h1, h2, v1, v2)
    assert torch.equal(m.center, before)  # the centre only moves in training mode


def test_supervised_cross_entropy():
    torch.manual_seed(4)
    m = Supervised(F, num_classes=3)
    h1, h2 = torch.randn(B, F), torch.randn(B, F)
    y = torch.tensor([0, 2, 1, 1, 0])
    loss = m.loss(h1, h2, labels=y)
    with torch.no_grad():
        a, b = m.classifier(h1).double().numpy(), m.classifier(h2).double().numpy()

    def ce(logits, k):
        return -(logits[k] - math.log(np.exp(logits).sum()))

    expected = np.mean([(ce(a[i], y[i]) + ce(b[i], y[i])) / 2 for i in range(B)])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(UserError):
        m.loss(h1, h2)


# -- per-sample losses: each method against its formula, sample by sample ----------------------------------


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _byol_per_sample(m, h1, h2, v1, v2, y):
    p1, p2 = m.predictor(m.projector(h1)).double().numpy(), m.predictor(m.projector(h2)).double().numpy()
    t = m.target_backbone(torch.cat([v1, v2]))
    z1, z2 = m.target_projector(t[:B]).double().numpy(), m.target_projector(t[B:]).double().numpy()
    return [(2 - 2 * _cos(p1[i], z2[i])) + (2 - 2 * _cos(p2[i], z1[i])) for i in range(B)]


def _simclr_per_sample(m, h1, h2, v1, v2, y):
    z = torch.cat([m.projector(h1), m.projector(h2)]).double().numpy()
    n = 2 * B
    sim = [[_cos(z[a], z[k]) / m.temperature for k in range(n)] for a in range(n)]
    anchor = [-sim[a][(a + B) % n] + math.log(sum(math.exp(sim[a][k]) for k in range(n) if k != a))
              for a in range(n)]
    return [(anchor[i] + anchor[i + B]) / 2 for i in range(B)]


def _dino_per_sample(m, h1, h2, v1, v2, y):
    s = m.head(torch.cat([h1, h2])).double().numpy()
    t = m.teacher_head(m.teacher_backbone(torch.cat([v1, v2]))).double().numpy()
    c = m.center.double().numpy()
    out = []
    for i in range(B):
        pt1, pt2 = _softmax((t[i] - c) / m.teacher_temp), _softmax((t[B + i] - c) / m.teacher_temp)
        ls1, ls2 = np.log(_softmax(s[i] / m.student_temp)), np.log(_softmax(s[B + i] / m.student_temp))
        out.append((-(pt2 * ls1).sum() - (pt1 * ls2).sum()) / 2)
    return out


def _supervised_per_sample(m, h1, h2, v1, v2, y):
    a, b = m.classifier(h1).double().numpy(), m.classifier(h2).double().numpy()

    def ce(logits, k):
        return -(logits[k] - math.log(np.exp(logits).sum()))

    return [(ce(a[i], int(y[i])) + ce(b[i], int(y[i]))) / 2 for i in range(B)]


PER_SAMPLE = {
    "byol": (lambda: BYOL(F, proj_dim=3, hidden_dim=7), _byol_per_sample),
    "simclr": (lambda: SimCLR(F, proj_dim=4, hidden_dim=8, temperature=0.3), _simclr_per_sample),
    "dino": (lambda: DINO(F, out_dim=9, hidden_dim=8, bottleneck_dim=4, student_temp=0.2, teacher_temp=0.05),
             _dino_per_sample),
    "supervised": (lambda: Supervised(F, num_classes=3), _supervised_per_sample),
}


@pytest.mark.parametrize("name", sorted(PER_SAMPLE))
def test_per_sample_loss_matches_each_samples_formula_and_loss_is_its_weighted_mean(name):
    torch.manual_seed(5)
    make, formula = PER_SAMPLE[name]
    backbone = _backbone()
    m = make()
    m.attach(backbone)
    m.eval()  # DINO's centre stays put, so repeated calls see the same centre
    v1, v2 = _inputs(3)
    h1, h2 = backbone(v1), backbone(v2)
    y = torch.tensor([0, 2, 1, 1, 0])
    per = m.per_sample_loss(h1, h2, v1, v2, labels=y)
    assert per.shape == (B,) and per.dtype == torch.float32 and per.requires_grad
    with torch.no_grad():
        expected = formula(m, h1, h2, v1, v2, y)
    np.testing.assert_allclose(per.detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)
    w = torch.rand(B, generator=torch.Generator().manual_seed(1)) * 3
    assert m.loss(h1, h2, v1, v2, labels=y, weights=w).item() == pytest.approx(
        float(np.mean(np.asarray(expected) * w.double().numpy())), rel=1e-5)
    assert m.loss(h1, h2, v1, v2, labels=y).item() == pytest.approx(float(np.mean(expected)), rel=1e-5)
    loss, detached = loss_terms(m, h1, h2, v1, v2, labels=y, weights=w)
    assert torch.equal(detached, per.detach()) and not detached.requires_grad
    assert torch.equal(loss, m.loss(h1, h2, v1, v2, labels=y, weights=w)) and loss.requires_grad


def test_create_method_and_protocol():
    assert isinstance(create_method("BYOL", 8, hidden_dim=16), BYOL)
    assert isinstance(create_method("simclr", 8), SimCLR)
    assert isinstance(create_method("dino", 8, out_dim=16, hidden_dim=16), DINO)
    assert create_method("supervised", 8, num_classes=4).classifier.out_features == 4
    with pytest.raises(UserError, match="unknown"):
        create_method("mocov9", 8)
    with pytest.raises(UserError, match="labels"):
        create_method("supervised", 8)

    class Mean(Method):  # a user's own method: only loss() is required
        def loss(self, h1, h2, v1=None, v2=None, labels=None, weights=None):
            return (h1 - h2).pow(2).mean()

    m = Mean(4)
    m.attach(nn.Linear(2, 4))
    assert m.online is not None and not list(m.children())  # the backbone is not registered in the method
    assert m.loss(torch.ones(2, 4), torch.zeros(2, 4)).item() == 1.0
    assert not m.has_per_sample_loss and BYOL(F, hidden_dim=4).has_per_sample_loss
    loss, per = loss_terms(m, torch.ones(2, 4), torch.zeros(2, 4), weights=torch.ones(2))
    assert loss.item() == 1.0 and per is None  # trains; gives no per-sample scores
    with pytest.raises(NotImplementedError, match="per_sample_loss"):
        m.per_sample_loss(torch.ones(2, 4), torch.zeros(2, 4))
    assert m.augmentation(32)[0].size == 32


def test_augmentation_recipes():
    mild, _ = two_views("rela", 224)
    assert mild.scale == (0.5, 1.0) and mild.jitter == (0.8, 0.8, 0.8, 0.2) and mild.jitter_p == 0.8
    assert mild.gray_p == 0.2 and mild.blur_p == 0.0 and mild.solarize_p == 0.0
    b1, b2 = two_views("byol", 224)
    assert b1.scale == (0.08, 1.0) and b1.jitter == (0.4, 0.4, 0.2, 0.1)
    assert (b1.blur_p, b1.solarize_p, b2.blur_p, b2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    # blur sigma is in pixels at every size (PIL / torchvision semantics): the kernel spans +-3 sigma_max
    for size in (28, 32, 96, 224):
        assert two_views("byol", size)[0].blur_kernel == 13
    assert two_views("byol", 4)[0].blur_kernel == 7  # reflect padding caps it at 2 * size - 1
    d1, d2 = two_views("dino", 96)
    assert d1.scale == (0.4, 1.0) and d2.solarize_p == 0.2
    img = torch.randint(0, 256, (3, 40, 36), dtype=torch.uint8)
    for recipe in ("rela", "byol", "simclr", "dino", "supervised"):
        for spec in two_views(recipe, 24):
            t = build_torchvision(spec)
            torch.manual_seed(0)
            x = t(img)
            torch.manual_seed(0)
            assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and torch.equal(x, t(img))

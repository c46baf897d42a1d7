"""ReLAEngine on its own, driven by hand as a user's loop would: loss against the reference, the hand-over fed
the rank-averaged unweighted loss (2-process gloo), views that switch at the hand-over step, exact resume."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from rela_fast.errors import UserError
from rela_fast.ops.transfer_loss.reference import transfer_loss as transfer_loss_reference
from rela_fast.train import HandOver, ReLAEngine
from rela_fast.train.augment import two_views

F, D, N = 12, 6, 64


def _engine(**kw):
    targets = torch.randn(N, D, generator=torch.Generator().manual_seed(kw.pop("target_seed", 0)))
    return ReLAEngine.create(targets, feature_dim=F, epochs=kw.pop("epochs", 3), **kw)


def test_loss_is_the_reference_transfer_loss_and_records_scores():
    e = _engine(budget=0.5, batch_size=8)
    e.set_epoch(0)
    idx = e.shard()[:8]
    h = torch.randn(16, F, dtype=torch.float64).float().requires_grad_()
    loss = e.loss(h, idx)
    ref, per = transfer_loss_reference(h, e.head.weight, e.head.bias, e.targets[idx])
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)  # float32 kernels against the float32 spec
    out = e.step({"loss": float(loss.detach())})
    assert out["handover_loss"] == pytest.approx(float(per.mean()), rel=1e-6)
    assert e.book.seen[idx].tolist() == [1] * 8 and int(e.book.seen.sum()) == 8
    torch.testing.assert_close(e.book.score[idx], per.detach(), rtol=1e-5, atol=1e-6)


def test_targets_wider_than_the_student_keep_their_leading_components():
    wide = torch.randn(N, 40)
    e = ReLAEngine.create(wide, feature_dim=F, epochs=1)
    assert e.targets.shape == (N, F) and torch.equal(e.targets, wide[:, :F])
    assert e.head.weight.shape == (F, F)


def test_mix_computes_the_method_loss_only_when_it_counts():
    e = _engine(threshold=0.3, soft_steps=2)  # rho = e^-1 >= 0.3 at the first step: switch at once
    e.set_epoch(0)
    called = []

    def method():
        called.append(1)
        return torch.tensor(5.0)

    h = torch.randn(16, F)
    assert float(e.mix(e.loss(h, e.shard()[:8]), method)) < 2 and called == []  # phase 1: ReLA only
    assert e.step()["switched"] and e.phase == 2
    lam = e.rela_weight  # soft ramp: 1 - 1/3
    assert lam == pytest.approx(2 / 3)
    rela = e.loss(h, e.shard()[:8])
    assert float(e.mix(rela, method)) == pytest.approx(lam * float(rela) + (1 - lam) * 5.0) and called == [1]


def test_the_rule_sees_the_unweighted_loss_and_matches_a_handover_fed_by_hand():
    e = _engine(subset_policy="infobatch", batch_size=8)
    rule = HandOver()
    e.set_epoch(0)
    g = torch.Generator().manual_seed(3)
    shard = e.shard()
    for step in range(6):
        idx = shard[8 * step: 8 * step + 8]
        h = torch.randn(16, F, generator=g)
        e.loss(h, idx, weights=torch.full((8,), 7.0))  # weights scale the training loss, never the rule's input
        _, per = transfer_loss_reference(h, e.head.weight, e.head.bias, e.targets[idx])
        rule.update(float(per.mean()))
        e.step()
        assert e.handover.fast == pytest.approx(rule.fast, rel=1e-6) and e.handover.rho == pytest.approx(rule.rho)


def test_views_switch_at_the_handover_step_and_are_keyed_not_random():
    e = _engine(threshold=0.3)
    e.set_epoch(0)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    idx = e.shard()[:8]
    a1, _ = e.views(images, idx)
    torch.manual_seed(99)  # the global RNG plays no part
    a2, _ = e.views(images, idx)
    assert torch.equal(a1, a2)
    assert e.view_specs(16) == two_views("rela", 16)
    e.loss(torch.randn(16, F), idx)
    e.step()  # switches
    assert e.view_phase == 2 and e.view_specs(16) == two_views("byol", 16)
    b1, _ = e.views(images, idx)
    assert not torch.equal(a1, b1)


def test_state_dict_resumes_mid_epoch_on_the_same_subset():
    e = _engine(budget=0.5, subset_policy="topk")
    e.set_epoch(0)
    e.book.update(torch.arange(N), torch.rand(N))
    e.set_epoch(1)
    shard = e.shard().clone()
    state = e.state_dict(position=8)
    e2 = _engine(budget=0.5, subset_policy="topk")
    e2.load_state_dict(state)
    assert torch.equal(e2.shard(), shard) and e2.sampler.epoch == 1
    assert list(e2.sampler)[:3] == shard[8:11].tolist()  # iteration resumes at the saved position
    with pytest.raises(UserError, match="policy"):
        _engine(budget=0.5).load_state_dict(state)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    e = _engine(budget=1.0, threshold=0.4)
    e.set_epoch(0)
    switched_at = None
    for step in range(1, 40):
        # rank 0's loss falls fast (it would switch early on its own); rank 1's stays high
        level = 1.0 / step if rank == 0 else 1.0
        e.record(torch.arange(4) + 4 * rank, torch.full((4,), level), rela=True)
        if e.step()["switched"]:
            switched_at = step
            break
    torch.save({"rank": rank, "switch": switched_at, "fast": e.handover.fast}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_every_rank_switches_at_the_same_step_under_gloo(tmp_path):
    torch.multiprocessing.spawn(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    rule = HandOver(threshold=0.4)  # the rule fed the two ranks' mean
    expected = None
    for step in range(1, 40):
        rule.update((1.0 / step + 1.0) / 2)
        if rule.phase == 2:
            expected = step
            break
    assert r0["switch"] == r1["switch"] == expected is not None
    assert r0["fast"] == r1["fast"] == pytest.approx(rule.fast)

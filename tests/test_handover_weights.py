"""The hand-over rule sees the unweighted ReLA loss whatever the subset policy's loss weights are.

A small run of the real pieces: a ScoreBook (latest loss) and EpochSubset draw InfoBatch subsets with
weights; the fused transfer loss gives the (weighted) training loss and the per-sample losses; the
HandOver is fed :func:`handover_value` of the per-sample losses. With weights on and off the values fed are
identical, so the switch step is the same; fed the weighted loss instead, the rule would switch elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from rela_fast import EpochSubset, ScoreBook
from rela_fast.ops.transfer_loss import transfer_loss
from rela_fast.train.handover import HandOver, handover_value

N, B, D = 96, 16, 8

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(max_steps: int = 4000) -> tuple[dict[str, HandOver], int]:
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(N, D, generator=gen)
    hardness = torch.rand(N, generator=gen) * 2 + 0.2  # per-sample noise: some samples stay hard
    head_w, head_b = torch.eye(D), torch.zeros(D)

    def features(idx: torch.Tensor, step: int) -> torch.Tensor:
        noise = torch.randn(2, idx.numel(), D, generator=torch.Generator().manual_seed(step))
        scale = (hardness[idx] * (3.0 + 3.0 / (1 + step / 100)))[:, None]
        return torch.cat([targets[idx] + noise[0] * scale, targets[idx] + noise[1] * scale])

    book = ScoreBook(N, momentum=0)
    sampler = EpochSubset(book, policy="infobatch", epochs=10**6, seed=1)
    rules = {"weights on": HandOver(), "weights off": HandOver(), "weighted loss": HandOver()}
    step, epoch, weighted_steps = 0, 0, 0
    while step < max_steps and any(r.phase == 1 for r in rules.values()):
        sampler.set_epoch(epoch)
        order = sampler.shard()
        for s in range(0, order.numel() - B + 1, B):
            idx = order[s:s + B]
            w = sampler.weights_for(idx)
            weighted_steps += bool((w != 1).any())
            h = features(idx, step)
            loss_on, per_on = transfer_loss(h, head_w, head_b, targets[idx], sample_weights=w)
            loss_off, per_off = transfer_loss(h, head_w, head_b, targets[idx])
            assert torch.equal(per_on, per_off)  # the per-sample losses never carry the weights
            book.update(idx, per_on)
            fed = {"weights on": handover_value(per_on), "weights off": handover_value(per_off),
                   "weighted loss": loss_on.double()}
            for name, rule in rules.items():
                if rule.phase == 1:
                    rule.update(float(fed[name]))
            step += 1
        epoch += 1
    return rules, weighted_steps


def test_weights_do_not_move_the_switch():
    rules, weighted_steps = _run()
    on, off, weighted = rules["weights on"], rules["weights off"], rules["weighted loss"]
    assert weighted_steps > 100  # InfoBatch weights were really in play
    assert on.switch_step is not None and on.switch_step == off.switch_step
    assert (on.fast, on.slow, on.rho) == (off.fast, off.slow, off.rho)
    # the test has power: the weighted loss (mean weight > 1) would have switched far earlier
    assert weighted.switch_step is not None and weighted.switch_step < on.switch_step / 2


def test_handover_value_is_the_plain_mean_over_micro_batches():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([5.0, 7.0, 9.0])
    v = handover_value([a, b])
    assert v.dtype == torch.float64 and v.dim() == 0 and float(v) == pytest.approx((2.0 + 7.0) / 2)
    assert float(handover_value(a)) == 2.0
    with pytest.raises(ValueError, match="handover_value"):
        handover_value([])

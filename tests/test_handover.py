"""The hand-over rule against hand-computed traces (docs/ALGORITHM.md#hand-over-rule)."""

from __future__ import annotations

import math
import random

import pytest

from rela_fast.errors import UserError
from rela_fast.train import HandOver


def _trace(losses, threshold=0.995):
    """Independent plain-float implementation of the rule: (rhos, fast, slow, switch step or None)."""
    fast, slow, rhos, switch = 1.0, 2.0, [], None
    for k, loss in enumerate(losses, start=1):
        rho = math.exp(-max(slow - fast, 0.0))
        fast = 0.999 * fast + 0.001 * loss
        slow = 0.99 * slow + 0.01 * fast
        rhos.append(rho)
        if rho >= threshold:
            switch = k
            break
    return rhos, fast, slow, switch


def test_first_steps_by_hand():
    h = HandOver()
    assert (h.fast, h.slow, h.phase) == (1.0, 2.0, 1)
    # step 1 with loss 0.5: rho from the OLD values exp(-(2 - 1)); then fast, then slow with the new fast
    assert h.update(0.5) == pytest.approx(math.exp(-1.0), abs=1e-15)
    assert h.fast == pytest.approx(0.9995, abs=1e-15)
    assert h.slow == pytest.approx(1.98 + 0.009995, abs=1e-15)
    # step 2 with loss 0.25
    assert h.update(0.25) == pytest.approx(math.exp(-(1.989995 - 0.9995)), abs=1e-15)
    assert h.fast == pytest.approx(0.999 * 0.9995 + 0.00025, abs=1e-15)
    assert h.slow == pytest.approx(0.99 * 1.989995 + 0.01 * (0.999 * 0.9995 + 0.00025), abs=1e-15)
    assert h.phase == 1 and h.step == 2


def test_constant_loss_switches_at_step_528():
    # loss 1 keeps fast = 1, so slow - fast = 0.99^k after k steps; rho at step k+1 is exp(-0.99^k) >= 0.995
    # first when 0.99^k <= -ln(0.995), i.e. k >= 526.9 -> k = 527 -> the switch comes at update 528.
    h = HandOver()
    for _ in range(527):
        h.update(1.0)
    assert h.phase == 1
    assert h.rho == pytest.approx(math.exp(-(0.99**526)), rel=1e-12)
    rho = h.update(1.0)
    assert rho == pytest.approx(math.exp(-(0.99**527)), rel=1e-12) and rho >= 0.995
    assert h.phase == 2 and h.switch_step == 528


def test_random_losses_match_independent_trace():
    rnd = random.Random(1234)
    losses = [0.9 * math.exp(-k / 300) + 0.05 * rnd.random() for k in range(5000)]
    rhos, fast, slow, switch = _trace(losses)
    assert switch is not None
    h = HandOver()
    got = []
    for loss in losses:
        got.append(h.update(loss))
        if h.phase == 2:
            break
    assert len(got) == switch == h.switch_step
    assert got == pytest.approx(rhos, abs=1e-12)
    assert (h.fast, h.slow) == pytest.approx((fast, slow), abs=1e-12)


def test_rising_loss_clamps_at_rho_one():
    # a rising loss pushes fast above slow: max(slow - fast, 0) = 0 -> rho = 1 -> switch
    losses = [50.0] * 200
    _, _, _, switch = _trace(losses)
    h = HandOver()
    for loss in losses:
        rho = h.update(loss)
        if h.phase == 2:
            break
    assert rho == 1.0 and h.switch_step == switch


def test_permanent_and_phase2_updates_freeze_state():
    h = HandOver(threshold=0.3)  # first rho is exp(-1) = 0.368: switch at once
    h.update(0.7)
    assert h.phase == 2
    fast, slow, rho = h.fast, h.slow, h.rho
    for loss in (5.0, None, 0.0):
        assert h.update(loss) == rho
    h.start_epoch(0)
    assert (h.phase, h.fast, h.slow, h.step) == (2, fast, slow, 4)


def test_phase1_needs_a_loss():
    with pytest.raises(ValueError):
        HandOver().update(None)


def test_constant_mode_epochs():
    h = HandOver("constant", epochs=10, lambda_const=0.25)  # phase 1 while epoch < 2.5
    phases = []
    for epoch in range(10):
        phases.append(h.start_epoch(epoch))
        for _ in range(3):
            h.update(0.1)  # never switches by itself in constant mode
    assert phases == [1, 1, 1] + [2] * 7
    assert h.switch_epoch == 3 and h.switch_step == 9
    # it still tracks rho for monitoring while in phase 1
    assert h.fast < 1.0


def test_off_mode_and_errors():
    assert HandOver("off").phase == 2 and HandOver("off").rela_weight == 0.0
    with pytest.raises(UserError):
        HandOver("sometimes")
    with pytest.raises(UserError):
        HandOver("constant", epochs=10)
    with pytest.raises(UserError):
        HandOver("constant", epochs=10, lambda_const=1.5)


def test_soft_schedule_ramps_to_zero():
    h = HandOver(threshold=0.3, soft_steps=4)
    assert h.rela_weight == 1.0
    h.update(0.5)  # switches
    weights = []
    for _ in range(6):
        weights.append(h.rela_weight)
        h.update(None)
    assert weights == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0, 0.0])
    assert HandOver(threshold=0.3).rela_weight == 1.0
    hard = HandOver(threshold=0.3)
    hard.update(0.5)
    assert hard.rela_weight == 0.0


def test_state_dict_round_trip_continues_identically():
    rnd = random.Random(7)
    losses = [rnd.uniform(0.2, 0.8) for _ in range(400)]
    a = HandOver()
    for loss in losses[:150]:
        a.update(loss)
    b = HandOver()
    b.load_state_dict(a.state_dict())
    assert repr(a) == repr(b)
    assert [a.update(x) for x in losses[150:]] == [b.update(x) for x in losses[150:]]
    assert a.state_dict() == b.state_dict()
    with pytest.raises(UserError):
        HandOver("constant", epochs=3, lambda_const=0.5).load_state_dict(a.state_dict())


def test_floor_keeps_a_small_rela_term_after_the_switch():
    h = HandOver("constant", epochs=4, lambda_const=0.5, floor=0.1)
    assert h.start_epoch(0) == 1 and h.rela_weight == 1.0
    h.start_epoch(2)
    assert h.phase == 2 and h.rela_weight == pytest.approx(0.1)
    soft = HandOver("constant", epochs=4, lambda_const=0.5, soft_steps=3, floor=0.3)
    soft.start_epoch(2)
    weights = []
    for _ in range(5):
        weights.append(soft.rela_weight)
        soft.update(None)
    assert weights == pytest.approx([0.75, 0.5, 0.3, 0.3, 0.3])
    with pytest.raises(UserError):
        HandOver(floor=1.0)
    restored = HandOver("constant", epochs=4, lambda_const=0.5)
    restored.load_state_dict(h.state_dict())
    assert restored.rela_weight == pytest.approx(0.1)


def test_warm_heads_freeze_the_first_n_steps_after_the_switch_only():
    h = HandOver(threshold=0.3, warm_heads=2)
    frozen = []
    for _ in range(5):
        frozen.append(h.backbone_frozen)  # for the coming step
        h.update(1.0 if h.phase == 1 else None)
    assert h.switch_step == 1 and frozen == [False, True, True, False, False]  # steps 2 and 3
    again = HandOver(threshold=0.3, warm_heads=2)
    again.load_state_dict(HandOver(threshold=0.3, warm_heads=2).state_dict())
    assert again.warm_heads == 2 and not HandOver("off", warm_heads=5).backbone_frozen
    with pytest.raises(UserError):
        HandOver(warm_heads=-1)

"""The authors' recipe (docs/ALGORITHM.md): each point is its own trainer / CLI option, and `--recipe authors` groups
them. Checked on a tiny real run: what the optimiser receives, the learning rates it used, BYOL's momentum,
the batch; plus target truncation to min(F, d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rela_fast.cli import main
from rela_fast.data import open_source
from rela_fast.errors import UserError
from rela_fast.train import ReLATrainer, resolve_recipe
from rela_fast.train.optim import lr_at

SMALL = dict(hidden_dim=16, proj_dim=8)
pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return open_source(rng.integers(0, 256, (n, 12, 12), dtype=np.uint8), labels=(np.arange(n) % 4).tolist())


def _fit(**kw):
    targets = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    t = ReLATrainer("convnet-4", "byol", targets, budget=1.0, epochs=2, method_kwargs=dict(SMALL), device="cpu",
                    handover="constant", lambda_const=1.0, **kw)
    head0 = None

    class Grab:
        def on_fit_start(self, trainer, state):
            nonlocal head0
            head0 = {k: v.clone() for k, v in trainer.student.head.state_dict().items()}

    t.callbacks.callbacks.append(Grab())
    result = t.fit(_data())
    return t, result, head0


def test_authors_recipe_freezes_the_head_and_keeps_it_out_of_the_optimiser():
    t, result, head0 = _fit(recipe="authors", batch_size=16)
    in_opt = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert all(id(p) not in in_opt for p in t.student.head.parameters())
    for k, v in t.student.head.state_dict().items():
        assert torch.equal(v, head0[k])  # a fixed random projection, as in their code
    t2, _, head1 = _fit(recipe="default", batch_size=16)
    assert any(id(p) in {id(q) for g in t2.optimizer.param_groups for q in g["params"]}
               for p in t2.student.head.parameters())
    assert not all(torch.equal(v, head1[k]) for k, v in t2.student.head.state_dict().items())


def test_authors_recipe_constant_lr_decay_on_all_parameters_fixed_momentum():
    t, result, _ = _fit(recipe="authors", batch_size=16)
    lrs = [r["lr"] for r in result.history if r.get("event") == "step"]
    assert lrs == [1e-3] * len(lrs) and len(lrs) == 8
    assert all(g["weight_decay"] == 0.01 for g in t.optimizer.param_groups)
    n_params = sum(1 for p in t.student.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in t.optimizer.param_groups) == n_params  # biases and norms included
    moms = [r["momentum"] for r in result.history if r.get("event") == "step"]
    assert moms == pytest.approx([0.99] * len(moms))
    # the default recipe: cosine decay, no decay on biases / norms, BYOL momentum rising to 1
    d, res_d, _ = _fit(recipe="default", batch_size=16)
    lr_d = [r["lr"] for r in res_d.history if r.get("event") == "step"]
    assert lr_d == pytest.approx([lr_at(s, 8, 1e-3, 0) for s in range(8)]) and lr_d[-1] < lr_d[0]
    assert {g["weight_decay"] for g in d.optimizer.param_groups} == {1e-6, 0.0}
    mom_d = [r["momentum"] for r in res_d.history if r.get("event") == "step"]
    assert mom_d[-1] > mom_d[0]


def test_each_point_overrides_the_recipe_and_batch_defaults():
    r = resolve_recipe("authors")
    assert (r.batch_size, r.lr, r.weight_decay, r.schedule, r.freeze_head, r.decay_all) == (
        128, 1e-3, 0.01, "constant", True, True)
    assert resolve_recipe("authors", lr=2e-3, weight_decay=1e-4).lr == 2e-3  # given choices win
    r = resolve_recipe("authors", freeze_head=False, schedule="cosine", batch_size=32, method="byol")
    assert (r.freeze_head, r.schedule, r.batch_size) == (False, "cosine", 32)
    assert r.method_kwargs == {"base_momentum": 0.99, "final_momentum": 0.99}
    assert resolve_recipe("default").batch_size == 256
    with pytest.raises(UserError):
        resolve_recipe("mine")
    with pytest.raises(UserError):
        resolve_recipe("default", schedule="linear")


def test_targets_wider_than_the_student_are_truncated_to_min_f_d():
    wide = torch.randn(64, 300, generator=torch.Generator().manual_seed(1))  # convnet-4: F = 32
    t = ReLATrainer("convnet-4", "byol", wide, budget=1.0, epochs=1, batch_size=16, method_kwargs=dict(SMALL),
                    max_steps=1, device="cpu")
    t.fit(_data())
    assert t.feature_dim == 32 and t.engine.targets.shape[1] == 32 and t.student.head.weight.shape == (32, 32)
    torch.testing.assert_close(t.engine.targets, wide[:, :32])


def test_cli_recipe_authors(tmp_path, capsys):
    arr = np.random.default_rng(0).integers(0, 256, (64, 12, 12), dtype=np.uint8)
    np.save(tmp_path / "x.npy", arr)
    import rela_fast
    from rela_fast.train import ConvNet

    src = tmp_path / "imgs"
    src.mkdir()
    from PIL import Image

    for i, a in enumerate(arr):
        Image.fromarray(a).save(src / f"{i:03d}.png")
    rela_fast.convert(str(src), tmp_path / "store", ConvNet(4), size=12, dim=8, progress=False, device="cpu")
    assert main(["train", str(src), "--targets", str(tmp_path / "store"), "--arch", "convnet-4", "--epochs", "1",
                 "--recipe", "authors", "--batch-size", "16", "--out", str(tmp_path / "run"), "--no-progress",
                 "--method-arg", "hidden_dim=16", "--method-arg", "proj_dim=8"]) == 0
    import json

    cfg = json.loads((tmp_path / "run" / "summary.json").read_text())["recipe"]  # the recipe as resolved
    assert (cfg["name"], cfg["schedule"], cfg["freeze_head"], cfg["decay_all"], cfg["weight_decay"]) == \
        ("authors", "constant", True, True, 0.01)

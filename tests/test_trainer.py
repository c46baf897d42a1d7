"""ReLATrainer on real Fashion-MNIST images: the ReLA loss falls, the hand-over happens, budgets, resume
after SIGKILL, AMP, gradient accumulation, DALI (CPU pipeline), clear errors; checkpoints and metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import rela_fast
from rela_fast.data import open_source
from rela_fast.errors import UserError
from rela_fast.models.checkpoint import check_plain, load_checkpoint
from rela_fast.train import Callback, ReLATrainer, Supervised, two_views
from rela_fast.train.checkpoint import save_checkpoint
from rela_fast.train.loader import DaliTwoViewLoader, TwoViewDataset, dali_available
from rela_fast.train.metrics import read_metrics

N = 240
SMALL = dict(hidden_dim=32, proj_dim=16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fmnist(fashion_mnist_dir):
    """N real Fashion-MNIST training images (uint8 28x28) and their labels."""
    src = open_source(fashion_mnist_dir)
    take = np.arange(0, 60000, 60000 // N)[:N]
    return np.stack([src.read(int(i)) for i in take]), [src.labels[i] for i in take]


@pytest.fixture(scope="module")
def store_dir(fmnist, tmp_path_factory):
    """Targets made by the converter with a small random-init prior (the cheap prior of the paper)."""
    from rela_fast.train import ConvNet

    out = tmp_path_factory.mktemp("targets") / "store"
    torch.manual_seed(123)
    rela_fast.convert(open_source(fmnist[0], labels=fmnist[1]), out, prior=ConvNet(16), size=28, dim=16,
                      progress=False, device="cpu")
    return out


def _data(fmnist):
    return open_source(fmnist[0], labels=fmnist[1])


def _steps(result):
    return [r for r in result.history if r.get("event") == "step"]


def test_rela_loss_falls_on_fashion_mnist(fmnist, store_dir, tmp_path):
    trainer = ReLATrainer("convnet-8", "byol", store_dir, budget=1.0, epochs=3, batch_size=40, lr=3e-3,
                          method_kwargs=SMALL, out=tmp_path / "run", seed=0)
    result = trainer.fit(_data(fmnist))
    steps = _steps(result)
    assert len(steps) == result.steps == 18 and all(r["phase"] == 1 for r in steps)
    rela = [r["rela_loss"] for r in steps]
    assert np.mean(rela[-4:]) < np.mean(rela[:3]) - 0.15, rela
    # docs/ALGORITHM.md#hand-over-rule: rho from the old fast/slow, first step exp(-1)
    assert steps[0]["rho"] == pytest.approx(np.exp(-1.0))
    assert all(r["method_loss"] is None for r in steps) and steps[-1]["online_acc"] is not None
    assert 0.99 < steps[0]["momentum"] < steps[-1]["momentum"] <= 1.0  # BYOL's hook runs in phase 1 too
    # per-sample losses reached the ScoreBook: every sample seen once per epoch (budget 1)
    assert trainer.engine.book.seen.tolist() == [3] * N
    # files: metrics JSONL with the documented fields, a PNG plot, a weights_only checkpoint
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for key in ("loss", "rho", "phase", "lr", "step_time", "images_per_s", "online_acc", "wall_time"):
        assert key in rows[0]
    assert [r["epoch"] for r in rows if r["event"] == "epoch"] == [0, 1, 2]
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 10_000
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["train_state"]["step"] == 18 and state["engine"]["handover"]["phase"] == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 18


class SpyViews:
    """A ViewPipeline (the public protocol) that records which views and phase each request asked for."""

    def __init__(self, images, labels):
        from rela_fast.train import TensorViews

        self.inner = TensorViews(torch.from_numpy(images)[:, None], labels, torch.device("cpu"))
        self.calls = []

    def batches(self, views, indices, *, epoch, phase, batch_size):
        self.calls.append((views, phase, epoch, len(indices)))
        return self.inner.batches(views, indices, epoch=epoch, phase=phase, batch_size=batch_size)


def test_handover_switches_to_method_loss_and_augmentation(fmnist, store_dir):
    data = _data(fmnist)
    spy = SpyViews(*fmnist)
    trainer = ReLATrainer("convnet-4", "byol", store_dir, budget=0.5, epochs=2, batch_size=20, views=spy,
                          threshold=0.3, method_kwargs=SMALL)  # rho = e^-1 >= 0.3 at step 1
    result = trainer.fit(data)
    steps = _steps(result)
    assert result.switch_step == 1 and [r["phase"] for r in steps] == [1] + [2] * 11
    assert steps[0]["rela_loss"] is not None and steps[0]["method_loss"] is None
    assert all(r["method_loss"] is not None and r["rela_loss"] is None for r in steps[1:])
    assert 0 < steps[1]["method_loss"] < 8  # BYOL's symmetric 2 - 2cos, summed over the two directions
    # phase 2 scores come from BYOL's own per-sample loss (the book was reset at the switch): 11 batches of 20
    assert int(trainer.engine.book.seen.sum()) == 11 * 20
    # after the switch the loader serves the method's (BYOL) augmentation
    assert spy.calls[0][:3] == (two_views("rela", 28), 1, 0)
    assert spy.calls[1][:3] == (two_views("byol", 28), 2, 0) and spy.calls[1][3] == 120 - 20  # from the same spot
    assert spy.calls[-1][:3] == (two_views("byol", 28), 2, 1)
    # soft schedule: the losses are blended over 3 steps
    soft = ReLATrainer("convnet-4", "simclr", store_dir, budget=0.5, epochs=1, batch_size=20,
                       threshold=0.3, soft_steps=3, method_kwargs=SMALL).fit(data)
    lam = [r["rela_weight"] for r in _steps(soft)]
    assert lam == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    assert all(r["rela_loss"] is not None and r["method_loss"] is not None for r in _steps(soft)[1:4])


def test_budget_is_subset_ratio_and_constant_handover(fmnist, store_dir):
    trainer = ReLATrainer("convnet-4", "byol", store_dir, budget=0.25, epochs=4, batch_size=15,
                          handover="constant", lambda_const=0.5, method_kwargs=SMALL)
    result = trainer.fit(_data(fmnist))
    epochs = [r for r in result.history if r["event"] == "epoch"]
    assert [r["subset_size"] for r in epochs] == [60] * 4 and result.steps == 16  # 60 / 15 = 4 steps per epoch
    assert len({r["subset_digest"] for r in epochs}) == 4  # redrawn every epoch
    assert [r["phase"] for r in _steps(result)] == [1] * 8 + [2] * 8
    assert int((trainer.engine.book.seen > 0).sum()) <= 120


def test_errors(fmnist, store_dir, tmp_path):
    for bad in (0, 0.0, -0.5, 1.01, 2):
        with pytest.raises(UserError, match="budget"):
            ReLATrainer("convnet-4", "byol", store_dir, budget=bad)
    with pytest.raises(UserError, match="unknown"):
        ReLATrainer("convnet-4", "barlow", store_dir)
    with pytest.raises(UserError, match="lambda_const"):
        ReLATrainer("convnet-4", "byol", store_dir, handover="constant")
    data = _data(fmnist)
    with pytest.raises(UserError, match="rows"):  # a target tensor with the wrong row count
        ReLATrainer("convnet-4", "byol", torch.randn(N - 1, 8), epochs=1, batch_size=8).fit(data)
    # a store made from other images (same count): the fingerprint does not match
    other = open_source(255 - fmnist[0], labels=fmnist[1])
    with pytest.raises(UserError, match="different source"):
        ReLATrainer("convnet-4", "byol", store_dir, epochs=1, batch_size=8).fit(other)
    # and a store made from fewer images
    with pytest.raises(UserError, match="different source"):
        ReLATrainer("convnet-4", "byol", store_dir, epochs=1, batch_size=8).fit(
            open_source(fmnist[0][:100], labels=fmnist[1][:100]))
    with pytest.raises(UserError, match="labels"):
        ReLATrainer("convnet-4", "supervised", None, epochs=1, batch_size=8).fit(open_source(fmnist[0]))
    with pytest.raises(UserError, match="smaller batch"):
        ReLATrainer("convnet-4", "byol", store_dir, budget=0.1, epochs=1, batch_size=64).fit(data)


_RESUME_SCRIPT = """
import sys, numpy as np, torch
from rela_fast.data import open_source
from rela_fast.train import ReLATrainer

def run(arr, labels, store, out):
    t = ReLATrainer("convnet-4", "byol", store, budget=0.5, epochs=3, batch_size=20, subset_policy="topk",
                    method_kwargs=dict(hidden_dim=32, proj_dim=16), out=out, checkpoint_every=2, lr=3e-3)
    r = t.fit(open_source(arr, labels=labels))
    t.engine.sampler.set_epoch(3)
    return {"handover": r.handover, "scores": t.engine.book.state_dict(), "next": t.engine.sampler.indices(),
            "backbone": t.backbone_module.state_dict()}

if __name__ == "__main__":
    torch.set_num_threads(1)
    run(np.load(sys.argv[1]), np.load(sys.argv[2]).tolist(), sys.argv[3], sys.argv[4])
"""


def test_resume_after_sigkill_gives_the_same_subsets_and_state(fmnist, store_dir, tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(_RESUME_SCRIPT)
    np.save(tmp_path / "x.npy", fmnist[0])
    np.save(tmp_path / "y.npy", np.asarray(fmnist[1]))
    # killed right after step 9; the last checkpoint is from step 8, mid-epoch 1 (2 of its 6 steps done)
    env = dict(os.environ, RELA_FAST_TRAIN_KILL_AFTER_STEP="9")
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
                             str(store_dir), str(tmp_path / "cut")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr
    progress = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["train_state"]
    assert (progress["step"], progress["epoch"], progress["pos"]) == (8, 1, 40)
    ns: dict = {}
    exec(compile(_RESUME_SCRIPT, str(script), "exec"), ns)
    b = ns["run"](fmnist[0], fmnist[1], store_dir, tmp_path / "cut")  # resumed
    a = ns["run"](fmnist[0], fmnist[1], store_dir, tmp_path / "full")  # uninterrupted
    assert torch.equal(a["next"], b["next"])  # the next epoch's subset (topk: depends on every score)
    assert a["handover"] == b["handover"]
    for key in ("score", "seen", "last_epoch"):
        torch.testing.assert_close(a["scores"][key], b["scores"][key])
    for key, value in a["backbone"].items():
        torch.testing.assert_close(value, b["backbone"][key])
    # every epoch iterated the same subset, and the metrics read as one run (no duplicated steps)
    rows_a, rows_b = read_metrics(tmp_path / "full" / "metrics.jsonl"), read_metrics(tmp_path / "cut" / "metrics.jsonl")
    digest = [[r["subset_digest"] for r in rows if r["event"] == "epoch"] for rows in (rows_a, rows_b)]
    assert digest[0] == digest[1] and len(digest[0]) == 3
    assert [r["step"] for r in rows_b if r["event"] == "step"] == list(range(1, 19))


def test_grad_accumulation_matches_one_big_batch(fmnist, store_dir):
    data = _data(fmnist)

    def run(batch, accumulate):
        torch.manual_seed(0)
        backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 12))  # no BatchNorm: exact equivalence
        t = ReLATrainer(backbone, Supervised(12, 10), store_dir, budget=0.25, epochs=1, batch_size=batch,
                        accumulate=accumulate, max_steps=2, batched_augment=False, online_classifier=False)
        t.fit(data)
        return t, backbone

    t1, a = run(20, 1)
    t2, b = run(10, 2)
    assert t1.plan.total_steps == t2.plan.total_steps == 2
    torch.testing.assert_close(a[1].weight, b[1].weight, rtol=1e-5, atol=1e-6)
    h1, h2 = t1.engine.handover, t2.engine.handover
    assert (h1.fast, h1.slow) == pytest.approx((h2.fast, h2.slow), rel=1e-6)


def test_autocast_and_other_methods(fmnist, store_dir):
    data = _data(fmnist)
    for amp in ("bf16", "fp16"):  # fp16 goes through a GradScaler (on CPU too)
        t = ReLATrainer("convnet-4", "byol", store_dir, budget=0.25, epochs=1, batch_size=20, amp=amp,
                        max_steps=2, method_kwargs=SMALL)
        r = t.fit(data)
        assert all(np.isfinite(s["rela_loss"]) for s in _steps(r)) and (t.scaler is not None) == (amp == "fp16")
        assert torch.isfinite(t.engine.book.score[t.engine.book.seen > 0]).all()
    for opt in ("sgd", "lars"):
        t = ReLATrainer("convnet-4", "byol", store_dir, budget=0.25, epochs=1, batch_size=20, max_steps=2,
                        optimizer=opt, lr=0.1, method_kwargs=SMALL)
        r = t.fit(data)
        assert r.steps == 2 and all(np.isfinite(s["rela_loss"]) for s in _steps(r))
        assert t.optimizer.state_dict()["state"]  # the optimiser really stepped (momentum buffers exist)
    with pytest.raises(UserError, match="optimizer"):
        ReLATrainer("convnet-4", "byol", store_dir, epochs=1, batch_size=20, optimizer="adagrad")
    for name, kw in (("simclr", SMALL), ("dino", dict(out_dim=32, hidden_dim=32, bottleneck_dim=8)),
                     ("supervised", {})):
        r = ReLATrainer("convnet-4", name, None, budget=0.25, epochs=1, batch_size=20, max_steps=2,
                        method_kwargs=kw).fit(data)
        steps = _steps(r)
        assert r.handover["mode"] == "off" and all(s["phase"] == 2 and np.isfinite(s["method_loss"]) for s in steps)


def test_score_policies_without_targets_score_by_the_method_loss(fmnist):
    """No targets: the method's own per-sample losses score the samples (BYOL here), so score policies apply."""
    trainer = ReLATrainer("convnet-4", "byol", None, budget=0.5, epochs=2, batch_size=20, subset_policy="topk",
                          method_kwargs=SMALL)
    trainer.fit(_data(fmnist))
    seen = trainer.engine.book.seen > 0
    assert int(trainer.engine.book.seen.sum()) == 2 * 120 and torch.isfinite(trainer.engine.book.score[seen]).all()


def test_infobatch_weights_reach_the_loss(fmnist, store_dir):
    torch.manual_seed(0)
    h, w, b, y = torch.randn(6, 5), torch.randn(4, 5), torch.randn(4), torch.randn(3, 4)
    from rela_fast.ops.transfer_loss import transfer_loss
    from rela_fast.ops.transfer_loss.reference import transfer_loss as reference

    ref, per = reference(h, w, b, y)
    got, got_per = transfer_loss(h, w, b, y, sample_weights=torch.ones(3))
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(got_per, per)
    got2, _ = transfer_loss(h, w, b, y, sample_weights=torch.tensor([0.0, 3.0, 0.0]))
    torch.testing.assert_close(got2, per[1])
    # infobatch as published has no budget: epoch 0 sees every (still unseen) sample, epoch 1 a pruned subset
    trainer = ReLATrainer("convnet-4", "byol", store_dir, budget=0.5, epochs=2, batch_size=20,
                          subset_policy="infobatch", method_kwargs=SMALL)
    result = trainer.fit(_data(fmnist))
    sizes = [r["subset_size"] for r in result.history if r.get("event") == "epoch"]
    assert trainer.engine.book.momentum == 0.0 and sizes[0] == trainer.n and sizes[1] < trainer.n
    assert trainer.steps_per_epoch == trainer.n // 20 and trainer.state.step == trainer.n // 20 + sizes[1] // 20


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "ck" / "checkpoint.pt"
    save_checkpoint({"a": torch.arange(3), "b": {"c": [1, 2.5, "x", None, (True,)]}}, path)
    (tmp_path / "ck" / "checkpoint.pt.tmp").write_bytes(b"torn half-written file")  # a kill mid-write
    state = load_checkpoint(tmp_path / "ck")
    assert state["b"]["c"][1] == 2.5 and torch.equal(state["a"], torch.arange(3))
    with pytest.raises(TypeError, match="object"):
        check_plain({"x": object()})
    path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot be loaded"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nothing")


def test_resume_refuses_other_settings(fmnist, store_dir, tmp_path):
    data = _data(fmnist)
    ReLATrainer("convnet-4", "byol", store_dir, budget=0.25, epochs=1, batch_size=20, out=tmp_path,
                method_kwargs=SMALL).fit(data)
    with pytest.raises(UserError, match="budget"):
        ReLATrainer("convnet-4", "byol", store_dir, budget=0.5, epochs=1, batch_size=20, out=tmp_path,
                    method_kwargs=SMALL).fit(data)
    # a finished run resumes to its end (no further steps)
    again = ReLATrainer("convnet-4", "byol", store_dir, budget=0.25, epochs=1, batch_size=20, out=tmp_path,
                        method_kwargs=SMALL).fit(data)
    assert again.steps == 3 and len(_steps(again)) == 3


@pytest.mark.skipif(not dali_available(), reason="DALI is not installed")
def test_dali_pipeline_on_cpu(fmnist, tmp_path):
    from PIL import Image

    data = _data(fmnist)
    # an identity view (full-image crop, no flip, no colour ops) equals the normalised pixels
    spec = two_views("supervised", 28)[0]
    from dataclasses import replace

    ident = replace(spec, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    loader = DaliTwoViewLoader(data, (ident, ident), list(range(8)), 4, device="cpu", num_threads=1)
    v1, v2, idx, label = next(iter(loader))
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    pixels = torch.from_numpy(fmnist[0][:4]).float().div(255).unsqueeze(1).expand(4, 3, 28, 28)
    torch.testing.assert_close(v1, (pixels - mean) / std, atol=2e-2, rtol=0)
    assert idx.tolist() == [0, 1, 2, 3] and label.tolist() == fmnist[1][:4]
    # encoded JPEG files are decoded by DALI, and every recipe's ops build and run
    for i in range(6):
        Image.fromarray(fmnist[0][i]).convert("RGB").save(tmp_path / f"{i}.jpg", quality=95)
    folder = open_source(str(tmp_path))
    for recipe in ("rela", "byol", "simclr", "dino"):
        out = list(DaliTwoViewLoader(folder, two_views(recipe, 24), [5, 3, 1, 0], 2, device="cpu", num_threads=1))
        assert len(out) == 2 and out[0][0].shape == (2, 3, 24, 24) and out[1][2].tolist() == [1, 0]
        assert all(torch.isfinite(b[0]).all() and torch.isfinite(b[1]).all() for b in out)
    # and the trainer trains through it
    r = ReLATrainer("convnet-4", "byol", torch.randn(N, 8), budget=0.25, epochs=1, batch_size=20, loader="dali",
                    max_steps=2, method_kwargs=SMALL).fit(data)
    assert r.steps == 2


def test_batched_photometric_matches_torchvision_ops():
    from torchvision.transforms.v2 import functional as TF

    from rela_fast.train import augment as A

    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 9, 7, generator=g)
    f = torch.rand(5, generator=g) * 1.5 + 0.2
    for ours, theirs in ((A.adjust_brightness, TF.adjust_brightness), (A.adjust_contrast, TF.adjust_contrast),
                         (A.adjust_saturation, TF.adjust_saturation)):
        expected = torch.stack([theirs(x[i], float(f[i])) for i in range(5)])
        torch.testing.assert_close(ours(x.clone(), f), expected, atol=1e-6, rtol=0)
    hue = torch.rand(5, generator=g) - 0.5
    expected = torch.stack([TF.adjust_hue(x[i], float(hue[i])) for i in range(5)])
    torch.testing.assert_close(A.adjust_hue(x, hue), expected, atol=1e-5, rtol=0)
    sigma = torch.rand(5, generator=g) * 1.9 + 0.1
    torch.testing.assert_close(A.gaussian_blur(x, 5, sigma),
                               torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2) for i in range(5)]),
                               atol=1e-6, rtol=0)
    # a whole batch: shapes, determinism by key, and the normalisation of an untouched view
    imgs = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8, generator=g)
    ds = TwoViewDataset(open_source(np.zeros((2, 4, 4), np.uint8)), two_views("byol", 12))
    a1, a2 = ds.finish(imgs, imgs, torch.arange(6))
    b1, _ = ds.finish(imgs, imgs, torch.arange(6))
    assert a1.shape == (6, 3, 12, 12) and torch.equal(a1, b1) and not torch.equal(a1, a2)
    plain = A.BatchPhotometric(two_views("supervised", 12)[0])(imgs, torch.Generator())
    mean, std = torch.tensor(A.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(A.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(plain, (imgs.float() / 255 - mean) / std)


def _compiled_vs_eager(fmnist, compile):
    data = _data(fmnist)
    targets = torch.randn(N, 8, generator=torch.Generator().manual_seed(0))

    def losses(compile):
        r = ReLATrainer("convnet-4", "byol", targets, budget=0.25, epochs=1, batch_size=20, max_steps=2,
                        compile=compile, method_kwargs=SMALL).fit(data)
        return [s["rela_loss"] for s in _steps(r)]

    assert losses(compile) == pytest.approx(losses(False), rel=1e-4)


def test_compile_wiring_matches_eager(fmnist):
    _compiled_vs_eager(fmnist, "aot_eager")  # dynamo capture + AOT autograd, no code generation: fast


@pytest.mark.slow
def test_compile_inductor_matches_eager(fmnist):
    _compiled_vs_eager(fmnist, True)  # ~50 s on 2 cores with a cold inductor cache


def test_cli_train_and_eval(fmnist, tmp_path, capsys):
    from PIL import Image

    from rela_fast.cli import main
    from rela_fast.train import ConvNet

    for split, rows in (("train", range(0, 80)), ("test", range(80, 120))):
        for i in rows:
            folder = tmp_path / split / f"class{fmnist[1][i] % 2}"  # two classes: even / odd labels
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(fmnist[0][i]).save(folder / f"{i:03d}.png")
    torch.manual_seed(0)
    rela_fast.convert(str(tmp_path / "train"), tmp_path / "store", prior=ConvNet(8), size=28, dim=8,
                      progress=False, device="cpu")
    run = tmp_path / "run"
    argv = ["train", str(tmp_path / "train"), "--targets", str(tmp_path / "store"), "--arch", "convnet-4",
            "--epochs", "2", "--budget", "0.5", "--batch-size", "20", "--out", str(run), "--no-progress",
            "--method-arg", "hidden_dim=32", "--method-arg", "proj_dim=16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 steps" in out and "hand-over" in out and "online acc" in out
    assert main(["eval", str(run), "--data", str(tmp_path / "train"), "--test-data", str(tmp_path / "test"),
                 "--epochs", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    probe = json.loads((run / "probe.json").read_text())
    assert f"{probe['accuracy']:.4f}" in out and probe["n_train"] == 80 and probe["n_test"] == 40
    assert [r["event"] for r in read_metrics(run / "metrics.jsonl")].count("probe") == 1
    # bad input: one line on stderr, exit code 2
    assert main([*argv, "--budget", "1.5"]) == 2
    assert "budget" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere"), "--data", str(tmp_path / "train")]) == 2


def test_loader_workers_do_not_change_the_run(fmnist, store_dir):
    """Augmentation randomness is keyed by (seed, epoch, phase, sample), not by worker or global RNG."""
    data = _data(fmnist)

    def losses(workers):
        r = ReLATrainer("convnet-4", "byol", store_dir, budget=0.25, epochs=1, batch_size=20, max_steps=2,
                        num_workers=workers, method_kwargs=SMALL).fit(data)
        return [s["rela_loss"] for s in _steps(r)]

    assert losses(2) == losses(0)


def test_warm_heads_leave_the_backbone_unchanged_for_n_steps_after_the_switch(fmnist, store_dir):
    """``warm_heads=3``: the 3 steps after the switch move BYOL's heads but not the backbone; later steps move both
    (and a run without it moves the backbone on every step)."""

    class Moves(Callback):  # which parts changed in each optimiser step
        def __init__(self):
            self.rows, self.before = [], None

        @staticmethod
        def snap(trainer):
            flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()]).clone()  # noqa: E731
            return flat(trainer.backbone_module), flat(trainer.method_module.predictor)

        def on_fit_start(self, trainer, state):
            self.before = self.snap(trainer)

        def on_step_end(self, trainer, state):
            now = self.snap(trainer)
            self.rows.append((state.step, not torch.equal(now[0], self.before[0]),
                              not torch.equal(now[1], self.before[1])))
            self.before = now

    moved = {}
    for warm in (3, 0):
        moves = Moves()
        trainer = ReLATrainer("convnet-4", "byol", store_dir, budget=0.5, epochs=1, batch_size=20,
                              threshold=0.3, warm_heads=warm, method_kwargs=SMALL,
                              callbacks=[moves])  # rho = e^-1 >= 0.3: switches after step 1
        trainer.fit(_data(fmnist))
        assert trainer.engine.handover.switch_step == 1
        moved[warm] = [b for _, b, _ in moves.rows]
        assert [h for step, _, h in moves.rows if step > 1] == [True] * 5  # the heads learn in every phase-2 step
    assert moved[3] == [True, False, False, False, True, True]  # steps 2-4 are the warm-up
    assert moved[0] == [True] * 6

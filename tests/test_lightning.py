"""The Lightning driver (rela_fast.lightning.ReLACallback) against ReLATrainer, under 2-process DDP, and resumed.

Real Lightning, real Fashion-MNIST slices, no mocks. The harness below is a LightningModule doing exactly what
ReLATrainer's Student does (rela_fast's BYOL, the engine's views, transfer loss and phase-2 scores), so the two
drivers must draw the same subsets, switch at the same step and compute the same losses. The DDP and resume
tests run this file as a script in subprocesses (``python tests/test_lightning.py ddp|full|kill|resume OUT``):
Lightning's DDP launcher starts the second rank by running the same command again.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from rela_fast import IndexedDataset, ReLACallback, ReLAEngine, ReLATrainer
from rela_fast.errors import UserError
from rela_fast.models.backbones import create_backbone
from rela_fast.train.methods import create_method, loss_terms
from rela_fast.train.optim import build_optimizer

FASHION = os.environ.get("RELA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
HERE = Path(__file__).resolve()
N, DIM, BATCH, ARCH = 256, 16, 32, "convnet-8"
# topk: every epoch's subset depends on every score, so equal subsets mean equal books; threshold 0.4: rho
# (from exp(-1) = 0.37 upwards) reaches it after about 10 steps, inside these short runs
SETTINGS = dict(budget=0.5, subset_policy="topk", threshold=0.4, lr=1e-3, schedule="constant",
                online_classifier=False, seed=3, method_kwargs={"hidden_dim": 64, "proj_dim": 32}, views="tensor")


def slice_data() -> tuple[np.ndarray, torch.Tensor]:
    """N Fashion-MNIST train images (uint8 N x 28 x 28) and fixed random N x DIM targets."""
    from rela_fast.data import open_source

    images = np.ascontiguousarray(open_source(FASHION).array()[:N])
    return images, torch.randn(N, DIM, generator=torch.Generator().manual_seed(7))


def digest(indices: torch.Tensor) -> str:
    """The subset digest ReLATrainer logs per epoch."""
    return hashlib.sha1(indices.numpy().tobytes()).hexdigest()[:16]


class Student(L.LightningModule):
    """ReLATrainer's Student as a LightningModule: backbone + rela_fast BYOL; the engine is ``self.rela``."""

    def __init__(self, backbone: nn.Module, method: nn.Module, total_steps: int, lr: float, weight_decay: float):
        super().__init__()
        self.backbone, self.method = backbone, method
        self.total_steps, self.lr, self.weight_decay = total_steps, lr, weight_decay

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step:  # the teacher's momentum update after the last step (ReLATrainer's order);
            self.method.on_step(self.trainer.global_step, self.total_steps)  # here, so checkpoints include it
        images, _, idx = batch
        v1, v2 = self.rela.views(images, idx)
        h = self.backbone(torch.cat([v1, v2]))
        rela = self.rela.loss(h, idx)
        method_loss = None
        if self.rela.rela_weight < 1:
            b = v1.shape[0]
            method_loss, per_sample = loss_terms(self.method, h[:b], h[b:], v1, v2)
            if rela is None:  # phase 2 scores samples by the method's own loss, as ReLATrainer does
                self.rela.record(idx, per_sample)
            method_loss = method_loss.float()
        return self.rela.mix(rela, method_loss)

    def configure_optimizers(self):
        return build_optimizer("adamw", self, self.lr, self.weight_decay)


class Recorder(L.Callback):
    """Per step: loss and phase (from the ReLACallback that runs before it); per epoch: the subset and shard."""

    def __init__(self, rela: ReLACallback) -> None:
        self.rela, self.steps, self.epochs = rela, {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[trainer.global_step] = {"loss": self.rela.last["loss"], "phase": self.rela.last["phase"],
                                           "local": float(outputs["loss"])}  # this rank's own loss

    def on_train_epoch_end(self, trainer, pl_module):
        sampler = self.rela.engine.sampler
        self.epochs[trainer.current_epoch] = {"digest": digest(sampler.indices()), "shard": sampler.shard().tolist()}

    def result(self) -> dict:
        return {"steps": self.steps, "epochs": self.epochs, "switch_step": self.rela.engine.handover.switch_step}


def lightning_run(config, images, targets, epochs: int, total_steps: int, *, trainer_kw: dict, fit_kw=None,
                  callbacks=(), log: bool = False, batch: int = BATCH) -> tuple[L.Trainer, Recorder]:
    """Build the run in ReLATrainer's order (seed, backbone, method, engine's head) and fit it with Lightning."""
    from rela_fast.train.recipes import resolve_recipe

    recipe = resolve_recipe(config.optim.recipe, lr=config.optim.lr, schedule=config.optim.schedule,
                            method=config.method, method_kwargs=config.method_kwargs)
    torch.manual_seed(config.seed)
    backbone, f, _ = create_backbone(ARCH, 28)
    method = create_method(config.method, f, **recipe.method_kwargs)
    method.attach(backbone)
    engine = ReLAEngine(config, n=len(images), targets=targets, feature_dim=f, method_views=method.augmentation(28))
    module = Student(backbone, method, total_steps, recipe.lr, recipe.weight_decay)
    rela = ReLACallback(engine, log=log)
    recorder = Recorder(rela)
    loader = DataLoader(IndexedDataset(images), batch_size=batch, sampler=rela.sampler, drop_last=True)
    trainer = L.Trainer(max_epochs=epochs, callbacks=[rela, recorder, *callbacks], accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False, **trainer_kw)
    trainer.fit(module, loader, **(fit_kw or {}))
    return trainer, recorder


# -- same result whichever driver -------------------------------------------------------------------------
@pytest.mark.slow
def test_lightning_and_relatrainer_draw_the_same_subsets_and_switch_at_the_same_step(tmp_path, one_thread):
    images, targets = slice_data()
    epochs = 3
    trainer = ReLATrainer(ARCH, "byol", targets, epochs=epochs, batch_size=BATCH, **SETTINGS)
    result = trainer.fit(images)
    steps = [r for r in result.history if r["event"] == "step"]
    assert result.switch_step is not None and 1 < result.switch_step < result.steps  # a real mid-run hand-over

    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="run")
    lt, rec = lightning_run(trainer.config, images, targets, epochs, result.steps, log=True,
                            trainer_kw={"logger": logger, "enable_checkpointing": False, "log_every_n_steps": 1})
    got = rec.result()
    assert got["switch_step"] == result.switch_step
    want_digests = [r["subset_digest"] for r in result.history if r["event"] == "epoch"]
    assert [got["epochs"][e]["digest"] for e in range(epochs)] == want_digests
    assert sorted(got["steps"]) == [r["step"] for r in steps]
    # Both drivers run the same float32 CPU kernels on the same tensors in the same order (same views, same
    # init, same optimiser maths), so the losses agree to rounding: 1e-5 relative leaves room for a kernel
    # that reassociates a sum, far below the step-to-step change of the loss (> 1e-3).
    want = torch.tensor([r["loss"] for r in steps], dtype=torch.float64)
    have = torch.tensor([got["steps"][r["step"]]["loss"] for r in steps], dtype=torch.float64)
    torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-7)
    assert [got["steps"][r["step"]]["phase"] for r in steps] == [  # the phase after each step
        1 if r["step"] < result.switch_step else 2 for r in steps]
    # every Lightning logger gets the engine's numbers
    logged = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"rela/rho", "rela/phase", "rela/loss", "rela/subset_size", "rela/rela_weight"} <= set(logged)
    assert "rela_head.weight" in lt.lightning_module.state_dict()  # registered: optimised and checkpointed


class _Snapshots(L.Callback):
    def __init__(self) -> None:
        self.weights = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(next(pl_module.backbone.parameters()).detach().float().clone())


def test_mixed_precision_accumulation_and_warm_heads(tmp_path):
    """bf16 autocast and 2-batch accumulation work as Lightning documents them: the engine steps once per
    optimiser step; threshold 0.3 switches at step 1, and warm_heads=1 then leaves the backbone alone at step 2."""
    images, targets = slice_data()
    engine = ReLAEngine.create(targets, feature_dim=64, budget=0.5, epochs=1, threshold=0.3, warm_heads=1, seed=0)
    torch.manual_seed(0)
    backbone, f, _ = create_backbone(ARCH, 28)
    method = create_method("byol", f, hidden_dim=32, proj_dim=16)
    method.attach(backbone)
    rela, snaps = ReLACallback(engine), _Snapshots()
    loader = DataLoader(IndexedDataset(images), batch_size=BATCH, sampler=rela.sampler, drop_last=True)
    trainer = L.Trainer(max_epochs=1, callbacks=[rela, snaps], accelerator="cpu", precision="bf16-mixed",
                        accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Student(backbone, method, 2, 1e-2, 0.0), loader)
    assert trainer.global_step == engine.handover.step == 2 and engine.handover.switch_step == 1
    assert np.isfinite(rela.last["loss"]) and rela.last["phase"] == 2
    before, after_1, after_2 = snaps.weights[0], snaps.weights[1], snaps.weights[3]
    assert not torch.equal(before, after_1)  # step 1 (batches 1-2) moved the backbone
    assert torch.equal(after_1, after_2)  # step 2, the warm-heads step, did not


# -- errors: one line that says what to set ----------------------------------------------------------------
def _tiny(tmp_path):
    images, targets = slice_data()
    engine = ReLAEngine.create(targets, feature_dim=64, budget=0.5, epochs=1, seed=0)
    torch.manual_seed(0)
    backbone, f, _ = create_backbone(ARCH, 28)
    method = create_method("byol", f, hidden_dim=32, proj_dim=16)
    method.attach(backbone)
    return images, engine, Student(backbone, method, 4, 1e-3, 0.0)


def test_a_loader_without_the_callbacks_sampler_is_refused(tmp_path):
    images, engine, module = _tiny(tmp_path)
    rela = ReLACallback(engine)
    loader = DataLoader(IndexedDataset(images), batch_size=BATCH, shuffle=True)
    trainer = L.Trainer(max_epochs=1, callbacks=[rela], accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(UserError, match=r"sampler=callback\.sampler") as e:
        trainer.fit(module, loader)
    assert "\n" not in str(e.value)


def test_ddp_without_unused_parameters_and_a_missing_backbone_are_refused(tmp_path):
    images, engine, module = _tiny(tmp_path)
    from rela_fast.lightning import _check_strategy

    ddp = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(UserError, match="ddp_find_unused_parameters_true"):
        _check_strategy(ddp)
    _check_strategy(L.Trainer(accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", logger=False))
    rela = ReLACallback(engine, backbone="encoder")
    with pytest.raises(UserError, match="backbone='encoder'"):
        rela.setup(L.Trainer(accelerator="cpu", logger=False), module, "fit")
    with pytest.raises(UserError, match="ReLAEngine"):
        ReLACallback(object())


# -- 2-process DDP: the same switch step on every rank -----------------------------------------------------
def _script(mode: str, out: Path, timeout: int = 540) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(HERE), mode, str(out)], cwd=HERE.parent.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_gloo_ranks_switch_at_the_same_step(tmp_path):
    done = _script("ddp", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["switch_step"] is not None and ranks[0]["switch_step"] == ranks[1]["switch_step"]
    for epoch, info in ranks[0]["epochs"].items():
        other = ranks[1]["epochs"][epoch]
        assert info["digest"] == other["digest"]  # one global subset ...
        assert not set(info["shard"]) & set(other["shard"])  # ... split into disjoint shards
        assert len(info["shard"]) == len(other["shard"]) == N // 2 // 2
    assert sorted(map(int, ranks[0]["steps"])) == list(range(1, 4 * N // 2 // (2 * DDP_BATCH) + 1))
    # each rank trained on its own shard, so their own losses differ; the rule saw one averaged loss
    losses = [[s["loss"] for _, s in sorted(r["steps"].items(), key=lambda kv: int(kv[0]))] for r in ranks]
    assert losses[0] == losses[1]  # rela.last["loss"]: engine.step's all-reduced mean
    local = [[s["local"] for _, s in sorted(r["steps"].items(), key=lambda kv: int(kv[0]))] for r in ranks]
    assert local[0] != local[1]  # without the all-reduce each rank's rule would have watched another loss


# -- killed after its first checkpoint, resumed with ckpt_path ---------------------------------------------
@pytest.mark.slow
def test_a_killed_fit_resumes_with_the_same_subsets_and_switch_step(tmp_path):
    full = _script("full", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _script("kill", tmp_path / "cut")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpts = sorted((tmp_path / "cut" / "ckpt").glob("*.ckpt"))
    assert [c.name for c in ckpts] == [f"epoch=1-step={KILL_STEP}.ckpt"]  # mid-epoch 1
    saved = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if "ReLACallback" in k)
    assert state["position"] == (KILL_STEP - STEPS_PER_EPOCH) * BATCH and state["engine"]["sampler"] is not None
    resumed = _script("resume", tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "full" / "rank0.json").read_text())
    b = json.loads((tmp_path / "cut" / "rank0.json").read_text())
    assert b["switch_step"] == a["switch_step"] and a["switch_step"] > KILL_STEP  # switched after the resume
    assert {e: v["digest"] for e, v in b["epochs"].items()} == {e: a["epochs"][e]["digest"] for e in b["epochs"]}
    assert sorted(b["epochs"], key=int) == ["1", "2", "3"]  # the resumed epoch 1 and the two after it
    assert b["epochs"]["1"]["shard"] == a["epochs"]["1"]["shard"]
    assert sorted(map(int, b["steps"])) == list(range(KILL_STEP + 1, 4 * STEPS_PER_EPOCH + 1))
    for step, row in b["steps"].items():  # the rest of the run is the uninterrupted run's, step for step
        assert row["phase"] == a["steps"][step]["phase"]
        assert row["loss"] == pytest.approx(a["steps"][step]["loss"], rel=1e-5, abs=1e-7)


STEPS_PER_EPOCH = N // 2 // BATCH  # budget 0.5
DDP_BATCH = 16  # per rank: 4 steps per epoch, as one process at BATCH
KILL_STEP = STEPS_PER_EPOCH + 2


class _KillAfterCheckpoint(L.Callback):
    """SIGKILL this process at the first batch after a checkpoint was written (no clean-up, like a crash)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if any(self.folder.glob("*.ckpt")):
            os.kill(os.getpid(), signal.SIGKILL)


def _worker(mode: str, out: Path) -> None:
    """The subprocess side of the DDP and resume tests: fit, then write this rank's record to ``out``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    images, targets = slice_data()
    epochs = 4
    batch = DDP_BATCH if mode == "ddp" else BATCH
    probe = ReLATrainer(ARCH, "byol", targets, epochs=epochs, batch_size=batch, **SETTINGS)  # only its config is used
    kw: dict = {"logger": False, "enable_checkpointing": mode != "ddp"}
    callbacks: list = []
    fit_kw = {}
    if mode == "ddp":
        kw.update(devices=2, strategy="ddp_find_unused_parameters_true")
    else:
        ckpt = out / "ckpt"
        callbacks.append(ModelCheckpoint(dirpath=ckpt, every_n_train_steps=KILL_STEP, save_top_k=-1))
        if mode == "kill":
            callbacks.append(_KillAfterCheckpoint(ckpt))
        if mode == "resume":
            fit_kw["ckpt_path"] = str(next(ckpt.glob("*.ckpt")))
    total = epochs * N // 2 // (2 * DDP_BATCH if mode == "ddp" else BATCH)
    trainer, rec = lightning_run(probe.config, images, targets, epochs, total, trainer_kw=kw, fit_kw=fit_kw,
                                 callbacks=callbacks, batch=batch)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(rec.result()))


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))

"""Training, checkpoints, the transfer loss and the probe under hostile inputs: crafted checkpoints,
non-finite targets and losses, tensors on two devices, a second run on one folder, a stale tmp file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rela_fast.errors import UserError
from rela_fast.models import create_backbone, load_backbone, load_checkpoint
from rela_fast.train import ReLATrainer
from rela_fast.train.checkpoint import save_checkpoint

N = 32


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (N, 16, 16), dtype=np.uint8)


def _trainer(targets, **kw):
    kw = {"budget": 1.0, "epochs": 1, "batch_size": 8, "device": "cpu",
          "method_kwargs": {"hidden_dim": 16, "proj_dim": 8}, **kw}
    return ReLATrainer(kw.pop("backbone", "convnet-4"), "byol", targets, **kw)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------------------------------------ checkpoints


def _checkpoint(path, arch: dict, weights: dict | None = None):
    if weights is None:
        weights = create_backbone("convnet-4", 16)[0].state_dict()
    torch.save({"format": "rela_fast.train/1", "config": {"backbone": arch}, "backbone": weights}, path)
    return path


@pytest.mark.parametrize("arch, words", [
    ({"arch": "convnet-100000", "image_size": 16, "small_stem": False}, ["convnet width"]),
    ({"arch": "convnet-4", "image_size": 10**9, "small_stem": False}, ["image_size"]),
    ({"arch": "convnet-4", "image_size": 16, "width": 10**6}, ["backbone config"]),
    ({"arch": ["convnet"], "image_size": 16}, ["backbone name"]),
    ({"arch": "convnet-4", "image_size": "16"}, ["image_size"]),
])
def test_absurd_checkpoint_configs_are_refused_before_building(tmp_path, monkeypatch, arch, words):
    import rela_fast.models.backbones as backbones

    def never(*args, **kwargs):
        raise AssertionError("a model was built from an unchecked config")

    monkeypatch.setattr(backbones, "create_backbone", never)
    path = _checkpoint(tmp_path / "checkpoint.pt", arch)
    with pytest.raises(UserError) as info:
        load_backbone(path)
    for word in words:
        assert word in _one_line(info.value)


def test_checkpoint_weights_of_the_wrong_shape_are_one_line(tmp_path):
    weights = create_backbone("convnet-8", 16)[0].state_dict()
    path = _checkpoint(tmp_path / "checkpoint.pt", {"arch": "convnet-4", "image_size": 16, "small_stem": False},
                       weights)
    with pytest.raises(UserError, match="has shape") as info:
        load_backbone(path)
    _one_line(info.value)
    del weights["features.0.weight"]
    _checkpoint(path, {"arch": "convnet-8", "image_size": 16, "small_stem": False}, weights)
    with pytest.raises(UserError, match="1 missing") as info:
        load_backbone(path)
    _one_line(info.value)


def test_a_checkpoint_with_pickled_objects_never_suggests_loading_it_unsafely(tmp_path, capsys):
    from rela_fast.cli import main

    path = tmp_path / "checkpoint.pt"
    torch.save({"config": {"backbone": {"arch": "convnet-4"}}, "evil": nn.ReLU()}, path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    text = _one_line(info.value)
    assert "weights_only" not in text and "never loaded" in text
    for garbage in (b"", b"PK\x03\x04 torn", torch.zeros(3).numpy().tobytes()):
        path.write_bytes(garbage)
        with pytest.raises(UserError, match="damaged or not a checkpoint") as info:
            load_checkpoint(path)
        assert "weights_only" not in _one_line(info.value)
    torch.save([1, 2, 3], path)
    assert main(["eval", str(path), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path) in err


def test_non_finite_weights_never_overwrite_a_good_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    good = {"backbone": {"w": torch.ones(3)}, "scores": torch.full((4,), float("inf"))}  # inf scores are fine
    save_checkpoint(good, path)
    before = path.read_bytes()
    with pytest.raises(UserError, match="backbone.w holds NaN") as info:
        save_checkpoint({"backbone": {"w": torch.tensor([1.0, float("nan"), 0.0])}}, path)
    _one_line(info.value)
    assert path.read_bytes() == before and not (tmp_path / "checkpoint.pt.tmp").exists()


# ------------------------------------------------------------------------------------------- the trainer


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_targets_with_non_finite_rows_do_not_train(tmp_path, images, bad):
    targets = torch.randn(N, 8)
    targets[17, 3] = bad
    with pytest.raises(UserError, match="row 17") as info:
        _trainer(targets, out=tmp_path / "run").fit(images)
    _one_line(info.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    with pytest.raises(UserError, match="row 17"):
        _trainer(targets.numpy()).fit(images)


class _Poisoned(nn.Module):
    """A convnet whose output turns NaN from its ``after``-th training forward on: a diverging run."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.net = create_backbone("convnet-4", 16)[0]
        self.num_features = self.net.num_features
        self.calls, self.after = 0, after

    def forward(self, x):
        h = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.after:
                h = h * float("nan")
        return h


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, images):
    out = tmp_path / "run"
    trainer = _trainer(torch.randn(N, 8), backbone=_Poisoned(after=3), out=out, checkpoint_every=1)
    with pytest.raises(UserError, match="loss became nan at step 3 .epoch 0.") as info:
        trainer.fit(images)
    assert "--lr" in _one_line(info.value)
    state = load_checkpoint(out)
    progress = state.get("progress") or state.get("train_state")  # the key of the trainer's progress record
    assert progress["step"] == 2
    assert all(bool(torch.isfinite(t).all()) for t in state["backbone"].values() if t.is_floating_point())


@pytest.mark.parametrize("kw, word", [
    ({"lr": float("nan")}, "lr"), ({"lr": -1.0}, "lr"), ({"warmup": 5.0}, "warmup"),
    ({"image_size": 0}, "image_size"), ({"num_workers": -1}, "num_workers"), ({"max_steps": -1}, "max_steps"),
    ({"device": "tpu"}, "device"), ({"weight_decay": float("inf")}, "weight_decay"),
])
def test_bad_trainer_settings_are_refused(kw, word):
    with pytest.raises(UserError, match=word) as info:
        _trainer(None, **kw)
    _one_line(info.value)


def test_stratify_without_labels_and_huge_labels_are_refused(images):
    with pytest.raises(UserError, match="stratify"):
        _trainer(None, stratify=True).fit(images)
    from rela_fast.data import open_source

    src = open_source(images, labels=np.arange(N) % 2)
    src.labels[5] = 10**9  # a Source built by the user's own code
    with pytest.raises(UserError, match="1000000000 is not a class id"):
        _trainer(None).fit(src)


def test_one_run_per_folder_and_a_stale_tmp_is_removed(tmp_path, images):
    import json
    import socket

    from rela_fast.outputs import MANIFEST
    from rela_fast.runlock import RUN_MARKER, RunLock
    from rela_fast.train.guards import claim_run_dir

    out = tmp_path / "run"
    _trainer(None, out=out, max_steps=1).fit(images)
    stale = out / ".checkpoint.pt.rela-tmp-999999-0123abcd"  # what a SIGKILL during a save leaves ...
    manifest = json.loads((out / MANIFEST).read_text())  # ... listed as pending by the killed process
    manifest["pending"][stale.name] = {"name": "checkpoint.pt", "pid": 999999, "host": socket.gethostname()}
    (out / MANIFEST).write_text(json.dumps(manifest))
    stale.write_bytes(b"x" * 1000)
    with RunLock(out / RUN_MARKER, "busy"):
        with pytest.raises(UserError, match="another rela-fast train"):
            _trainer(None, out=out, max_steps=1).fit(images)
        assert stale.exists()  # nothing is touched while another run holds the folder
    with claim_run_dir(out) as run_dir:
        assert not stale.exists() and run_dir is not None and "checkpoint.pt" in run_dir.files
        with pytest.raises(UserError, match="another rela-fast train"), claim_run_dir(out):  # held meanwhile
            pass
    with claim_run_dir(out):  # released afterwards
        pass
    # two trainers on one folder, one after the other: both fine
    _trainer(None, out=out, max_steps=1).fit(images)
    _trainer(None, out=out, max_steps=2).fit(images, resume=False)
    (out / "notes.tmp").write_text("the user's")  # a file rela_fast did not write: the folder is not ours now
    with pytest.raises(UserError, match="notes.tmp"):
        _trainer(None, out=out, max_steps=2).fit(images)
    assert (out / "notes.tmp").read_text() == "the user's"


# ------------------------------------------------------------------------------------- the transfer loss


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("where", ["targets", "weight", "bias", "sample_weights"])
def test_transfer_loss_refuses_tensors_on_another_device(backend, where):
    from rela_fast.ops.transfer_loss import transfer_loss

    args = {"h": torch.randn(8, 5), "weight": torch.randn(3, 5), "bias": torch.randn(3),
            "targets": torch.randn(4, 3), "sample_weights": torch.rand(4)}
    args[where] = args[where].to("meta")
    with pytest.raises(UserError, match=f"different devices.*{where} on meta") as info:
        transfer_loss(args["h"], args["weight"], args["bias"], args["targets"],
                      sample_weights=args["sample_weights"], backend=backend)
    _one_line(info.value)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_transfer_loss_refuses_cpu_targets_next_to_cuda_features(backend):
    from rela_fast.ops.transfer_loss import transfer_loss
    from rela_fast.ops.transfer_loss.triton_kernels import rows

    h, w, b = torch.randn(8, 5, device="cuda"), torch.randn(3, 5, device="cuda"), torch.randn(3, device="cuda")
    with pytest.raises(UserError, match="targets on cpu"):
        transfer_loss(h, w, b, torch.randn(4, 3), backend=backend)
    with pytest.raises(UserError, match="targets on cpu"):
        rows(torch.randn(8, 3, device="cuda"), torch.randn(4, 3))


def test_transfer_loss_backend_entry_points_check_their_inputs():
    from rela_fast.ops.transfer_loss import cpp, reference
    from rela_fast.ops.transfer_loss.fused import fused_transfer_loss

    h, w, b, y = torch.randn(8, 5), torch.randn(3, 5), torch.randn(3), torch.randn(4, 3)
    for call in (lambda: cpp.transfer_loss(h, w, b, y.to("meta")), lambda: reference.transfer_loss(h, w, b, y[:3]),
                 lambda: fused_transfer_loss(h, w.to("meta"), b, y, "cpp"),
                 lambda: cpp.rows(torch.randn(8, 3), torch.randn(4, 3).to("meta")),
                 lambda: cpp.rows(torch.randn(8, 3), torch.randn(3, 3)),
                 lambda: cpp.rows(torch.randn(8, 3), torch.randn(4, 2)),
                 lambda: cpp.rows(torch.randn(8, 3), torch.randn(4, 3).int()),
                 lambda: cpp.scale_rows_(torch.randn(8, 3), torch.ones(7), True)):
        with pytest.raises(UserError):
            call()
    loss, per = cpp.transfer_loss(h, w, b, y)  # and the valid call still agrees with the reference
    ref_loss, ref_per = reference.transfer_loss(h, w, b, y)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(per, ref_per)


# ------------------------------------------------------------------------------------------------ probe


def test_the_probe_refuses_non_finite_features():
    from rela_fast.eval.probe import train_probe

    x, y = torch.randn(20, 4), torch.arange(20) % 2
    bad = x.clone()
    bad[3, 1] = float("nan")
    for train_x, test_x, split in ((bad, x, "train"), (x, bad * float("inf"), "test")):
        with pytest.raises(UserError, match=f"{split} feature rows hold NaN or inf") as info:
            train_probe(train_x, y, test_x, y, epochs=3)
        _one_line(info.value)

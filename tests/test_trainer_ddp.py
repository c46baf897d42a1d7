"""ReLATrainer under torchrun with 2 CPU processes (gloo): disjoint shards, identical weights and state."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import rela_fast
from rela_fast.data import open_source
from rela_fast.train import ConvNet

_SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(1)
import torch.distributed as dist
from rela_fast.data import open_source
from rela_fast.train import ReLATrainer

arr, labels = np.load(sys.argv[1]), np.load(sys.argv[2]).tolist()
t = ReLATrainer("convnet-4", "byol", sys.argv[3], budget=0.5, epochs=2, batch_size=10, lr=3e-3,
                method_kwargs=dict(hidden_dim=32, proj_dim=16), out=sys.argv[4], seed=0)
r = t.fit(open_source(arr, labels=labels))
rank = dist.get_rank()
shards = []
for epoch in range(2):
    t.engine.sampler.set_epoch(epoch)
    shards.append((t.engine.sampler.shard().clone(), t.engine.sampler.indices().clone()))
params = {k: v.detach().clone() for k, v in t.student.named_parameters()}
torch.save({"shards": shards, "params": params, "scores": t.engine.book.state_dict(), "handover": r.handover,
            "steps": r.steps, "world": t.world, "history": len(r.history)}, f"{sys.argv[4]}/rank{rank}.pt")
dist.destroy_process_group()
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def test_ddp_two_cpu_processes(fashion_mnist_dir, tmp_path):
    src = open_source(fashion_mnist_dir)
    take = np.arange(0, 60000, 250)[:240]
    arr, labels = np.stack([src.read(int(i)) for i in take]), np.asarray([src.labels[i] for i in take])
    torch.manual_seed(0)
    rela_fast.convert(open_source(arr, labels=labels.tolist()), tmp_path / "store", prior=ConvNet(8), size=28,
                      dim=16, progress=False, device="cpu")
    np.save(tmp_path / "x.npy", arr)
    np.save(tmp_path / "y.npy", labels)
    (tmp_path / "ddp.py").write_text(_SCRIPT)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(tmp_path / "ddp.py"),
         str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), str(tmp_path / "store"), str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    # 240 samples, budget 0.5 -> 120 per epoch -> 60 per rank -> 6 steps of 10 per epoch
    assert r0["steps"] == r1["steps"] == 12
    for (s0, g0), (s1, g1) in zip(r0["shards"], r1["shards"]):
        assert torch.equal(g0, g1) and len(g0) == 120  # the same global subset on both ranks
        assert len(s0) == len(s1) == 60 and not set(s0.tolist()) & set(s1.tolist())  # disjoint shards
        assert sorted(s0.tolist() + s1.tolist()) == sorted(g0.tolist())
    assert not torch.equal(r0["shards"][0][1], r0["shards"][1][1])  # a new subset each epoch
    # DDP kept the weights identical; the ScoreBooks were merged; the hand-over saw the same averaged loss
    for name, value in r0["params"].items():
        torch.testing.assert_close(value, r1["params"][name], rtol=0, atol=0)
    for key in ("score", "seen", "last_epoch"):
        assert torch.equal(r0["scores"][key], r1["scores"][key])
    assert int(r0["scores"]["seen"].sum()) == 2 * 120  # phase 1 throughout: every subset sample scored once
    assert r0["handover"] == r1["handover"]
    # only rank 0 writes the run directory
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["identity"]["world"] == 2 and state["train_state"]["step"] == 12
    rows = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert len([r for r in rows if '"event": "step"' in r]) == 12

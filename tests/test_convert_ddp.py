"""``torchrun --nproc_per_node=2 rela-fast convert`` (gloo, CPU) gives the same store as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rela_fast.conversion import convert
from rela_fast.data.synthetic import make_jpeg_folder

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The .grad attribute:UserWarning")


class _Prior(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 20, 5, stride=2)
        self.bn = nn.BatchNorm2d(20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).amax(dim=(2, 3))


def test_two_gloo_ranks_match_one_process(tmp_path):
    pytest.importorskip("skimage")
    src = make_jpeg_folder(tmp_path / "data", 37, size=(56, 44), seed=1, classes=2)
    (src / "class_001" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    torch.manual_seed(0)
    prior = tmp_path / "prior.pt"
    torch.jit.script(_Prior().eval()).save(str(prior))
    common = ["--prior", f"torchscript:{prior}", "--size", "32", "--dim", "6", "--batch-size", "4",
              "--shard-size", "8", "--decoder", "pil", "--quiet"]

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "rela_fast",
           "convert", str(src), "--out", str(tmp_path / "ddp"), "--keep-features", *common]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = convert(src, tmp_path / "one", f"torchscript:{prior}", size=32, dim=6, batch_size=4, shard_size=8,
                     decoder="pil", progress=False)
    from rela_fast.targets import load_targets

    ddp = load_targets(tmp_path / "ddp")
    assert ddp.meta["settings"]["world_size"] == 2 and single.meta["settings"]["world_size"] == 1
    ranks = {json.loads((p / "info.json").read_text())["rank"] for p in (tmp_path / "ddp.work").glob("shard-*")}
    assert ranks == {0, 1}  # both ranks did work
    assert ddp.paths == single.paths and ddp.skipped == single.skipped == [("class_001/broken.jpg", ddp.skipped[0][1])]
    assert ddp.labels.tolist() == single.labels.tolist()
    assert ddp.meta["timing"]["processed_this_run"] == 38
    torch.testing.assert_close(ddp.targets, single.targets, rtol=0, atol=1e-6)
    assert ddp.meta["eigenvalues"] == pytest.approx(single.meta["eigenvalues"], rel=1e-9)

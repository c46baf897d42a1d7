"""rela_fast.malloc: freed CPU memory stays in the process, measured by the kernel's page-fault counter.

Each case runs in a child process: the setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux)")

_FAULTS = r"""
import json, resource, sys, torch
from rela_fast import malloc
if sys.argv[1] == "keep":
    assert malloc.keep_freed_memory() and malloc.keep_freed_memory() and malloc.kept()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1))
x = torch.randn(32, 3, 64, 64)
def step():  # a training step's pattern: activations and gradients of ~16 MiB made and freed
    net.zero_grad(set_to_none=True)
    net(x).square().mean().backward()
for _ in range(3):  # warm: the first steps take new memory either way
    step()
before = faults()
for _ in range(5):
    step()
print(json.dumps({"faults_per_step": (faults() - before) / 5, "kept": malloc.kept()}))
"""


def _child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kept_memory_is_not_faulted_in_again():
    plain = _child(_FAULTS, "plain")
    kept = _child(_FAULTS, "keep")
    assert not plain["kept"] and kept["kept"]
    assert plain["faults_per_step"] > 1000  # glibc maps and unmaps the large blocks each step
    assert kept["faults_per_step"] < 0.25 * plain["faults_per_step"]  # mostly served again from the heap


_TRAINER = r"""
import json, sys, numpy as np, torch
from rela_fast import malloc
from rela_fast.train import ReLATrainer
keep = {"default": None, "off": False}[sys.argv[1]]
imgs = np.random.default_rng(0).integers(0, 256, (40, 12, 12), dtype=np.uint8)
ReLATrainer("convnet-4", "byol", None, epochs=1, batch_size=20, max_steps=1, device="cpu", keep_memory=keep,
            method_kwargs={"hidden_dim": 16, "proj_dim": 8}).fit(imgs)
print(json.dumps({"kept": malloc.kept()}))
"""


@pytest.mark.parametrize(("setting", "expected"), [("default", True), ("off", False)])
def test_trainer_keeps_memory_on_cpu_unless_told_not_to(setting, expected):
    assert _child(_TRAINER, setting)["kept"] is expected


def test_keep_memory_is_a_setting_with_a_flag():
    import argparse

    from rela_fast.train.config import ReLAConfig, add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert ReLAConfig().runtime.keep_memory is True
    assert config_from_args(parser.parse_args(["--no-keep-memory"]), ReLAConfig()).runtime.keep_memory is False

"""A trained student as the next prior: train -> convert with ``run:DIR`` -> train again on the new store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rela_fast.cli import main as cli_main
from rela_fast.conversion import convert
from rela_fast.data import open_source
from rela_fast.encoder import create_prior, hash_state_dict
from rela_fast.errors import UserError
from rela_fast.pca import pca_reference
from rela_fast.targets import load_targets
from rela_fast.train import ConvNet, ReLATrainer

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The .grad attribute:UserWarning"),
              pytest.mark.usefixtures("one_thread")]
N, SIZE, SMALL = 64, 28, dict(hidden_dim=32, proj_dim=16)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(N, 1, 1, 3))
    images = (base + rng.normal(0, 40, size=(N, SIZE, SIZE, 3))).clip(0, 255).astype(np.uint8)
    return images, [i % 4 for i in range(N)]


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory):
    """Targets from a random ConvNet, then a short ReLA run that saves its checkpoint."""
    root = tmp_path_factory.mktemp("run_prior")
    torch.manual_seed(0)
    store = convert(open_source(data[0], labels=data[1]), root / "t0", ConvNet(8), size=SIZE, dim=8,
                    progress=False, device="cpu")
    trainer = ReLATrainer("convnet-4", "byol", store.root, budget=1.0, epochs=1, batch_size=16,
                          method_kwargs=SMALL, out=root / "run1", seed=0)
    trainer.fit(open_source(data[0], labels=data[1]))
    return root, trainer


def test_run_dir_is_a_prior_with_the_trained_weights(first_run, data):
    root, trainer = first_run
    model, cfg = create_prior(f"run:{root / 'run1'}")
    assert cfg.name == "run:run1" and cfg.input_size == SIZE and cfg.feature_dim == trainer.feature_dim
    assert cfg.weights_hash == hash_state_dict(trainer.backbone_module.state_dict())
    model_file, cfg_file = create_prior(f"run:{root / 'run1' / 'checkpoint.pt'}")
    assert cfg_file.weights_hash == cfg.weights_hash

    # the store equals an independent reference: the trained backbone, eval mode, ImageNet-normalised pixels
    store = convert(open_source(data[0]), root / "t1", f"run:{root / 'run1'}", size=SIZE, dim=3, progress=False,
                    device="cpu", decoder="pil")
    backbone = trainer.backbone_module.eval()
    x = torch.from_numpy(data[0]).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = backbone((x - mean) / std)
    ref = pca_reference(feats, 3).double().numpy()
    y = store.targets.double().numpy()
    proj, proj_ref = y @ y.T / N, ref @ ref.T / N  # the same target subspace (signs are arbitrary)
    assert np.linalg.norm(proj - proj_ref) < 1e-3 * np.linalg.norm(proj_ref)

    # and a second run trains on it
    again = ReLATrainer("convnet-4", "byol", store.root, budget=1.0, epochs=1, batch_size=16, method_kwargs=SMALL,
                        seed=1).fit(open_source(data[0]))
    assert again.steps > 0


def test_run_prior_from_the_cli(first_run, data, tmp_path, capsys):
    root, _ = first_run
    src = tmp_path / "imgs"
    src.mkdir()
    from PIL import Image

    for i, image in enumerate(data[0][:20]):
        Image.fromarray(image).save(src / f"{i:02d}.png")
    code = cli_main(["convert", str(src), "--out", str(tmp_path / "s"), "--prior", f"run:{root / 'run1'}",
                     "--dim", "4", "--decoder", "pil", "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert load_targets(tmp_path / "s").meta["prior"]["name"] == "run:run1"
    code = cli_main(["convert", str(src), "--out", str(tmp_path / "s2"), "--prior", f"run:{tmp_path / 'nope'}",
                     "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no checkpoint.pt" in err


def test_run_prior_errors(first_run, tmp_path):
    root, _ = first_run
    with pytest.raises(UserError, match="drop --weights"):
        create_prior(f"run:{root / 'run1'}", weights=tmp_path / "w.pt")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="checkpoint"):
        create_prior(f"run:{tmp_path / 'junk'}")

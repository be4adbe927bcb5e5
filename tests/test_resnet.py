"""Convolutional ResNets: the layer list composes to the model, blocks expose their residual
branch, option-A shortcuts have no parameters, the split into modules is balanced, and
backprop trains, saves and resumes a ResNet through the shared loop."""

import os

import h5py
import numpy as np
import pytest
import torch

from radmm_hpc.config import Config, validate
from radmm_hpc.data import load_dataset
from radmm_hpc.errors import ConfigError
from radmm_hpc.models import build_model
from radmm_hpc.models.resnet import AuxHead, ShortcutA, balanced_split, parse_arch, split_modules
from tests.support import runtime


@pytest.fixture(scope="module")
def digits():
    cfg = Config()
    cfg.data.name, cfg.data.train_subset = "digits", 200
    return load_dataset(cfg.data)


def _model(ds, arch="resnet8", block="post", shortcut="A", norm="batch", width=4, seed=0):
    cfg = Config()
    cfg.model.arch, cfg.model.block, cfg.model.shortcut, cfg.model.norm = arch, block, shortcut, norm
    cfg.model.base_width = width
    validate(cfg)
    return build_model(cfg, ds, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch,block,shortcut,norm", [("resnet8", "post", "A", "batch"),
                                                      ("resnet14", "pre", "B", "batch"),
                                                      ("resnet11b", "post", "B", "none"),
                                                      ("resnet11b", "pre", "A", "batch")])
def test_layers_compose_to_the_model(digits, arch, block, shortcut, norm):
    m = _model(digits, arch, block, shortcut, norm).eval()
    X = torch.as_tensor(digits.X_train[:6], dtype=torch.float32)
    x = X
    for layer in m.layers():
        x = layer(x)
    assert torch.equal(x, m(X)) and x.shape == (6, 10)
    z = m.layers()[0](X)
    for b in m.blocks:   # block(x) == post(shortcut(x) + branch(x))
        s = b.shortcut(z) + b.branch(z)
        assert torch.allclose(b(z), torch.relu(s) if b.post_act else s)
        assert b.post_act == (block == "post")
        z = b(z)
    kinds = {type(b.shortcut).__name__ for b in m.blocks}
    assert ("ShortcutA" in kinds) == (shortcut == "A") and ("Sequential" in kinds) == (shortcut == "B")
    assert len(m.blocks) == 3 * parse_arch(arch)[1]


def test_option_a_is_parameter_free_and_pads():
    sc = ShortcutA(2, 4, 2)
    x = torch.randn(3, 2, 6, 6)
    y = sc(x)
    assert y.shape == (3, 4, 3, 3) and not list(sc.parameters())
    assert torch.equal(y[:, :2], x[:, :, ::2, ::2]) and not y[:, 2:].any()


def test_same_seed_same_model_and_names(digits):
    a, b, c = _model(digits, seed=3), _model(digits, seed=3), _model(digits, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert parse_arch("resnet20") == ("basic", 3) and parse_arch("resnet110") == ("basic", 18)
    assert parse_arch("resnet164b") == ("bottleneck", 18)
    assert parse_arch("resnet21") is None and parse_arch("resnet2") is None


def test_balanced_split():
    assert balanced_split([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert balanced_split([5, 1, 1, 1, 1, 1], 2) == [(0, 1), (1, 6)]
    parts = balanced_split([3, 1, 4, 1, 5, 9, 2, 6], 3)
    assert [p[0] for p in parts] == [0, 4, 6] and parts[-1][1] == 8   # max part 14 (optimal)
    with pytest.raises(ValueError):
        balanced_split([1, 2], 3)


def test_split_modules(digits):
    m = _model(digits, "resnet20")   # 9 blocks, stem 0, head 10
    for k in (1, 2, 4, 9):
        for by in ("compute", "params"):
            mods = split_modules(m, k, by)
            assert len(mods) == k and sum(mods, []) == list(range(11))
            assert all(any(1 <= i <= 9 for i in mod) for mod in mods)
    by_params = split_modules(m, 3, "params")
    by_compute = split_modules(m, 3, "compute")
    assert by_params != by_compute   # later stages: fewer pixels, more parameters


def test_aux_head_shapes():
    head = AuxHead(8, 10)
    assert head(torch.randn(5, 8, 7, 7)).shape == (5, 10)
    assert head(torch.randn(5, 8, 1, 1)).shape == (5, 10)   # pools up to a 2x2 map


def test_config_errors():
    cfg = Config()
    cfg.model.arch = "resnet21"
    with pytest.raises(ConfigError, match="model.arch must be"):
        validate(cfg)
    cfg.model.arch, cfg.model.shortcut = "resnet20", "C"
    with pytest.raises(ConfigError, match="model.shortcut must be one of A, B"):
        validate(cfg)
    cfg.model.shortcut = "A"
    validate(cfg)
    with pytest.raises(ConfigError, match="needs image data"):
        build_model(cfg, load_dataset(cfg.data), torch.Generator())   # wine is tabular


def _cfg(run_dir, iters, every=0):
    cfg = Config()
    cfg.train.algo, cfg.train.iters, cfg.train.dtype = "backprop", iters, "float64"
    cfg.train.run_dir, cfg.train.compare, cfg.train.log_every = str(run_dir), False, 3
    cfg.train.progress_seconds = 1e9
    cfg.model.arch, cfg.model.base_width = "resnet8", 4
    cfg.data.name, cfg.data.train_subset = "digits", 128
    cfg.backprop.batch_size, cfg.backprop.optimizer, cfg.backprop.lr = 32, "sgd", 0.05
    cfg.checkpoint.every = every
    return cfg


def test_backprop_resnet_resume_and_model_file(tmp_path):
    from radmm_hpc.loop import train
    from radmm_hpc.modelio import load_named_params
    a, b = tmp_path / "a", tmp_path / "b"
    sa = train(_cfg(a, 6), runtime())
    train(_cfg(b, 3, every=3), runtime())
    sb = train(_cfg(b, 6), runtime(), resume="auto")
    pa, attrs = load_named_params(os.path.join(a, "model.h5"))
    pb, _ = load_named_params(os.path.join(b, "model.h5"))
    assert attrs["arch"] == "resnet8" and tuple(attrs["image_shape"]) == (1, 8, 8)
    assert pa.keys() == pb.keys() and any("running_mean" in k for k in pa)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert sa["test_accuracy"] == sb["test_accuracy"]
    # the file holds the model: loading it back reproduces the scores
    ds = load_dataset(_cfg(a, 1).data)
    m = build_model(_cfg(a, 1), ds, torch.Generator(), torch.float64)
    m.load_state_dict({k: torch.as_tensor(v) for k, v in pa.items()})
    from radmm_hpc.scoring import score_model
    assert score_model(m, ds)["test_accuracy"] == sa["test_accuracy"]
    with h5py.File(os.path.join(a, "model.h5")) as fh:
        assert fh["preprocess/x_mean"].shape == (64,)

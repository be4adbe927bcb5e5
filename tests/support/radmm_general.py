"""Small convolutional residual networks (made here, independent of models/resnet.py) and
problems for the general RADMM tests."""

import torch
from torch import nn

from radmm_hpc.algos.radmm.engine import Chunks, Engine, Layer, Params


class Stem(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(1, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x.view(x.shape[0], 1, 8, 8)))


class Branch(nn.Module):
    def __init__(self, cin, cout, stride=1, bn=False):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        if bn:   # fixed, non-trivial statistics (eval mode)
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        h = self.c2(torch.relu(self.c1(x)))
        return self.bn(h) if self.bn is not None else h


def option_a(cout):
    """Fixed downsampling shortcut: subsample by 2 and zero-pad the channels."""
    def f(x):
        y = x[:, :, ::2, ::2]
        return torch.cat([y, torch.zeros(y.shape[0], cout - y.shape[1], *y.shape[2:], dtype=y.dtype,
                                         device=y.device)], dim=1)
    return f


class Head(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.fc = nn.Linear(c, k)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


def conv_layers(k=3, c=3, seed=0, dtype=torch.float64, post="relu_sum", blocks=3):
    """stem, `blocks` residual blocks (the second with fixed BN, the last downsampling by option A),
    head: blocks + 2 layers."""
    torch.manual_seed(seed)
    mods = [Stem(c)] + [Branch(c, c, bn=(i == 1)) for i in range(blocks - 1)]
    mods += [Branch(c, 2 * c, stride=2), Head(2 * c, k)]
    for m in mods:
        m.to(dtype)
        for p in m.parameters():      # small residual branches: a well-behaved start
            p.data.mul_(0.5)
    layers = [Layer(mods[0], "linear")]
    layers += [Layer(m, post, lambda x: x) for m in mods[1:-2]]
    return layers + [Layer(mods[-2], post, option_a(2 * c)), Layer(mods[-1], "linear")]


def _digits_raw():
    """scikit-learn's digits file read directly (importing sklearn costs seconds per rank)."""
    import importlib.util
    import os

    import numpy as np
    spec = importlib.util.find_spec("sklearn")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    a = np.loadtxt(path, delimiter=",")
    return a[:, :-1], a[:, -1].astype(np.int64)


def digits(n=48, k=3, dtype=torch.float64):
    """The first n digits of classes 0..k-1 (8×8 images, flat, standardised) and one-hot targets."""
    data, target = _digits_raw()
    keep = target < k
    X = torch.as_tensor(data[keep][:n], dtype=dtype)
    X = (X - X.mean(0)) / (X.std(0) + 1.0)
    y = torch.as_tensor(target[keep][:n])
    Y = torch.zeros(n, k, dtype=dtype)
    Y[torch.arange(n), y] = 1
    return X, Y, y


def engine(layers, X, Y, p, chunk=0, s=1, e=None, head=True):
    L = len(layers)
    eng = Engine(layers, p, Chunks(X.shape[0], chunk, "cpu", "cpu", X.dtype), s, e or L - 1, head)
    eng.Y = Y
    eng.forward_init(X)
    return eng


def params(**kw):
    base = dict(gamma=1.0, rho=1.0, beta=2.0, omega=0.05, lam=1e-4, beta_b=1.0, loss="xent")
    base.update(kw)
    return Params(**base)


def conv_dataset(n=32, n_test=16, k=3):
    """A radmm_hpc Dataset of the first digits of classes 0..k-1 (flat 8×8 images)."""
    from radmm_hpc.data import Dataset
    X, _, y = digits(n + n_test, k)
    return Dataset("digits-small", "classification", X[:n].numpy(), y[:n].numpy(), X[n:].numpy(),
                   y[n:].numpy(), n_classes=k)


def conv_trainer(monkeypatch, schedule, mpi_comm=None, blocks=3, chunk=0, regions=0, splitting="three"):
    """A GeneralRadmmTrainer on conv_layers(blocks) (patched in for models/resnet.py)."""
    from radmm_hpc.algos.radmm import general
    from radmm_hpc.config import Config
    from tests.support.mpi import runtime
    cfg = Config()
    cfg.train.dtype = "float64"
    cfg.model.arch = "test-conv"
    cfg.radmm.variant, cfg.radmm.splitting, cfg.radmm.schedule = "linearized", splitting, schedule
    cfg.radmm.regions = regions
    for kk, v in dict(lam=1e-4, gamma=1.0, rho=1.0, beta=2.0, omega=0.05).items():
        setattr(cfg.radmmconv, kk, v)
    cfg.radmm.beta_b = 1.0
    cfg.radmmconv.chunk = chunk
    monkeypatch.setattr(general, "build_layers",
                        lambda cfg, ds, dtype, device: (conv_layers(blocks=blocks), False, None))
    return general.GeneralRadmmTrainer(cfg, runtime(mpi_comm), conv_dataset())

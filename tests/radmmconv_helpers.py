"""Small convolutional residual networks (made here, independent of models/resnet.py) and
problems for the general RADMM tests."""

import torch
from torch import nn

from radmm_hpc.algos.radmm_general import Chunks, Engine, Layer, Params


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


def conv_layers(k=3, c=3, seed=0, dtype=torch.float64, post="relu_sum"):
    """stem, two blocks (one with fixed BN), a downsampling block (option A), head: 5 layers."""
    torch.manual_seed(seed)
    mods = [Stem(c), Branch(c, c), Branch(c, c, bn=True), Branch(c, 2 * c, stride=2), Head(2 * c, k)]
    for m in mods:
        m.to(dtype)
        for p in m.parameters():      # small residual branches: a well-behaved start
            p.data.mul_(0.5)
    return [Layer(mods[0], "linear"), Layer(mods[1], post, lambda x: x),
            Layer(mods[2], post, lambda x: x), Layer(mods[3], post, option_a(2 * c)),
            Layer(mods[4], "linear")]


def digits(n=48, k=3, dtype=torch.float64):
    """The first n digits of classes 0..k-1 (8×8 images, flat, standardised) and one-hot targets."""
    from sklearn.datasets import load_digits
    d = load_digits()
    keep = d.target < k
    X = torch.as_tensor(d.data[keep][:n], dtype=dtype)
    X = (X - X.mean(0)) / (X.std(0) + 1.0)
    y = torch.as_tensor(d.target[keep][:n])
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

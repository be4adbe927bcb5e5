"""CIFAR-style convolutional ResNets (He et al. 2016): depth 6n+2 with basic blocks
(`resnet20`, `resnet56`, ...) and 9n+2 with bottleneck blocks (`resnet29b`, `resnet164b`, ...).

The network is a flat list of layers, [stem, block_1, ..., block_n, head] (`model.layers()`),
each mapping the previous activation to the next, so that module-wise methods can own a
contiguous slice and composing the slice's layers equals running that part of the model.

    stem    flat X (N, C·H·W) → reshape (N, C, H, W) → conv3×3 → [BN → ReLU]  (post-activation)
    block   post(shortcut(x) + branch(x)), post = ReLU for post-activation blocks, identity for
            pre-activation blocks (whose branch starts with BN → ReLU)
    head    [BN → ReLU] (pre-activation) → global average pool → linear

Shortcuts: option A (parameter-free: stride-2 subsample and zero-padded channels), option B
(1×1 convolution + BN projection where the shape changes), identity otherwise.
Three stages of widths base_width·(1, 2, 4) (bottleneck: ·4 at the output), stride 2 between stages.
"""

from __future__ import annotations

import math
import re
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCH_RE = re.compile(r"^resnet(\d+)(b?)$")


def parse_arch(arch: str):
    """'resnet20' -> ('basic', 3), 'resnet29b' -> ('bottleneck', 3); None when not a valid name."""
    m = ARCH_RE.match(arch)
    if not m:
        return None
    depth, bottleneck = int(m.group(1)), bool(m.group(2))
    per = 9 if bottleneck else 6
    if depth < per + 2 or (depth - 2) % per:
        return None
    return ("bottleneck" if bottleneck else "basic"), (depth - 2) // per


def _norm(c: int, norm: str) -> nn.Module:
    return nn.BatchNorm2d(c) if norm == "batch" else nn.Identity()


def _conv(cin, cout, k=3, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class ShortcutA(nn.Module):
    """Option A: x[:, :, ::s, ::s] with zero channels appended (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride

    def forward(self, x):
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.cout > self.cin:
            x = F.pad(x, (0, 0, 0, 0, 0, self.cout - self.cin))
        return x


def _shortcut(cin, cout, stride, kind, norm) -> nn.Module:
    if cin == cout and stride == 1:
        return nn.Identity()
    if kind == "A":
        if cout < cin:
            raise ValueError("option-A shortcuts cannot reduce channels")
        return ShortcutA(cin, cout, stride)
    return nn.Sequential(_conv(cin, cout, 1, stride), _norm(cout, norm))


class Block(nn.Module):
    """block(x) = post(shortcut(x) + branch(x)); `branch` is the residual branch f_l."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module, post_act: bool):
        super().__init__()
        self.branch, self.shortcut, self.post_act = branch, shortcut, post_act

    def forward(self, x):
        out = self.shortcut(x) + self.branch(x)
        return torch.relu(out) if self.post_act else out

    def forward_with_branch(self, x):
        """(output, residual-branch output r) for penalties on the branch."""
        r = self.branch(x)
        out = self.shortcut(x) + r
        return (torch.relu(out) if self.post_act else out), r


def basic_block(cin, cout, stride, block, shortcut, norm) -> Block:
    if block == "post":
        branch = nn.Sequential(_conv(cin, cout, 3, stride), _norm(cout, norm), nn.ReLU(),
                               _conv(cout, cout), _norm(cout, norm))
    else:
        branch = nn.Sequential(_norm(cin, norm), nn.ReLU(), _conv(cin, cout, 3, stride),
                               _norm(cout, norm), nn.ReLU(), _conv(cout, cout))
    return Block(branch, _shortcut(cin, cout, stride, shortcut, norm), block == "post")


def bottleneck_block(cin, mid, stride, block, shortcut, norm) -> Block:
    cout = 4 * mid
    if block == "post":
        branch = nn.Sequential(_conv(cin, mid, 1), _norm(mid, norm), nn.ReLU(),
                               _conv(mid, mid, 3, stride), _norm(mid, norm), nn.ReLU(),
                               _conv(mid, cout, 1), _norm(cout, norm))
    else:
        branch = nn.Sequential(_norm(cin, norm), nn.ReLU(), _conv(cin, mid, 1),
                               _norm(mid, norm), nn.ReLU(), _conv(mid, mid, 3, stride),
                               _norm(mid, norm), nn.ReLU(), _conv(mid, cout, 1))
    return Block(branch, _shortcut(cin, cout, stride, shortcut, norm), block == "post")


class Stem(nn.Module):
    def __init__(self, image_shape, width, block, norm):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.conv = _conv(image_shape[0], width)
        self.post = nn.Sequential(_norm(width, norm), nn.ReLU()) if block == "post" else nn.Identity()

    def forward(self, X):
        return self.post(self.conv(X.reshape(-1, *self.image_shape)))


class Head(nn.Module):
    def __init__(self, width, n_out, block, norm):
        super().__init__()
        self.pre = nn.Sequential(_norm(width, norm), nn.ReLU()) if block == "pre" else nn.Identity()
        self.fc = nn.Linear(width, n_out)

    def forward(self, x):
        return self.fc(self.pre(x).mean(dim=(2, 3)))


class AuxHead(nn.Module):
    """TRGL's auxiliary classifier (docs/trgl.md): conv3×3 (C→C, no bias) → ReLU →
    average pool to a `pool`×`pool` map → BatchNorm → flatten → linear."""

    def __init__(self, width, n_out, pool=2, norm="batch"):
        super().__init__()
        self.conv = _conv(width, width)
        self.pool = pool
        self.bn = nn.BatchNorm2d(width) if norm == "batch" else nn.Identity()
        self.fc = nn.Linear(width * pool * pool, n_out)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(torch.relu(self.conv(x)), self.pool)
        return self.fc(self.bn(x).flatten(1))


class ResNet(nn.Module):
    def __init__(self, image_shape: Sequence[int], n_out: int, kind: str, n: int, block="post",
                 shortcut="A", norm="batch", base_width=16):
        super().__init__()
        self.image_shape, self.kind, self.n = tuple(image_shape), kind, n
        self.stem = Stem(image_shape, base_width, block, norm)
        blocks, cin = [], base_width
        for stage in range(3):
            w = base_width * 2 ** stage
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                if kind == "basic":
                    b = basic_block(cin, w, stride, block, shortcut, norm)
                    cin = w
                else:
                    b = bottleneck_block(cin, w, stride, block, shortcut, norm)
                    cin = 4 * w
                blocks.append(b)
        self.blocks = nn.ModuleList(blocks)
        self.out_width = cin
        self.head = Head(cin, n_out, block, norm)

    def layers(self) -> List[nn.Module]:
        return [self.stem, *self.blocks, self.head]

    def forward(self, X):
        x = X
        for layer in self.layers():
            x = layer(x)
        return x

    def widths(self) -> List[int]:
        """Channels of each layer's output (the stem's and every block's)."""
        out = [self.stem.conv.out_channels]
        for b in self.blocks:
            out.append(_block_out_channels(b))
        return out


def _block_out_channels(b: Block) -> int:
    convs = [m for m in b.branch.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


@torch.no_grad()
def init_resnet(model: nn.Module, generator: torch.Generator, gain: float = 1.0) -> None:
    """He-normal convolutions, uniform(±1/sqrt(fan_in)) linear layers, BN = (1, 0), all drawn
    from `generator` so the same seed gives the same network on every rank."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (gain * math.sqrt(2.0 / fan_in)))
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features)
            m.weight.copy_((torch.rand(m.weight.shape, generator=generator) * 2 - 1) * bound)
            m.bias.copy_((torch.rand(m.bias.shape, generator=generator) * 2 - 1) * bound)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.fill_(1.0)
            m.bias.zero_()


def build_resnet(mcfg, ds, generator, dtype=torch.float32, device="cpu") -> ResNet:
    from radmm_hpc.errors import ConfigError
    parsed = parse_arch(mcfg.arch)
    if parsed is None:
        raise ConfigError(f"model.arch {mcfg.arch!r}: expected resnet<6n+2> or resnet<9n+2>b")
    shape = getattr(ds, "image_shape", None)
    if not shape:
        raise ConfigError(f"model.arch = {mcfg.arch} needs image data (digits, mnist:DIR, cifar10:DIR, "
                          f"hdf5:PATH with 3-D/4-D X); data '{ds.name}' is tabular")
    if ds.task != "classification":
        raise ConfigError(f"model.arch = {mcfg.arch} is a classifier; data '{ds.name}' is regression")
    kind, n = parsed
    model = ResNet(shape, ds.d_out, kind, n, mcfg.block, mcfg.shortcut, mcfg.norm, mcfg.base_width)
    init_resnet(model, generator)
    return model.to(device=device, dtype=dtype)


# ---- the split into modules --------------------------------------------------------------------
def block_costs(model: ResNet, by: str = "compute") -> List[float]:
    """Per-block cost: multiply-accumulates of one sample's forward ('compute') or parameter count
    ('params'). The stem is counted with the first block, the head with the last."""
    if by == "params":
        costs = [float(sum(p.numel() for p in b.parameters())) for b in model.blocks]
        costs[0] += sum(p.numel() for p in model.stem.parameters())
        costs[-1] += sum(p.numel() for p in model.head.parameters())
        return costs
    macs = {}

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            macs[id(mod)] = out[0].numel() * mod.weight[0].numel()
        elif isinstance(mod, nn.Linear):
            macs[id(mod)] = mod.weight.numel()
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    p = next(model.parameters())
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, math.prod(model.image_shape), dtype=p.dtype, device=p.device))
    model.train(was)
    for h in handles:
        h.remove()

    def total(mod):
        return float(sum(macs.get(id(m), 0) for m in mod.modules()))
    costs = [total(b) for b in model.blocks]
    costs[0] += total(model.stem)
    costs[-1] += total(model.head)
    return costs


def balanced_split(costs: Sequence[float], k: int) -> List[tuple]:
    """Contiguous split of len(costs) items into k non-empty parts minimising the largest part's
    cost (exact dynamic programme); returns [(start, stop)) index ranges."""
    n = len(costs)
    if not 1 <= k <= n:
        raise ValueError(f"cannot split {n} blocks into {k} modules")
    pre = [0.0]
    for c in costs:
        pre.append(pre[-1] + c)
    INF = float("inf")
    best = [[INF] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for j in range(1, k + 1):
        for i in range(j, n - (k - j) + 1):
            for s in range(j - 1, i):
                v = max(best[j - 1][s], pre[i] - pre[s])
                if v < best[j][i] - 1e-9 * abs(v):
                    best[j][i], cut[j][i] = v, s
    out, i = [], n
    for j in range(k, 0, -1):
        s = cut[j][i]
        out.append((s, i))
        i = s
    return out[::-1]


def split_modules(model: ResNet, k: int, by: str = "compute") -> List[List[int]]:
    """Indices into model.layers() for each of k modules: module 1 starts with the stem, module
    k ends with the head (its classifier), every module holds at least one residual block."""
    parts = balanced_split(block_costs(model, by), k)
    n = len(model.blocks)
    out = []
    for (s, e) in parts:
        idx = list(range(1 + s, 1 + e))
        if s == 0:
            idx = [0] + idx
        if e == n:
            idx = idx + [n + 1]
        out.append(idx)
    return out

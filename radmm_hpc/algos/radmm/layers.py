"""Networks as lists of engine.Layer: the FCResNet (weight matrices) and the convolutional
ResNets of models/resnet.py (model.layers(): stem, blocks, head)."""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from radmm_hpc.algos.radmm.engine import Layer


class MatMul(nn.Module):
    """x ↦ x Wᵀ (samples as rows): one FCResNet layer's linear map."""

    def __init__(self, W: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(W.clone())

    def forward(self, x):
        return x @ self.weight.T


class _SumWithParamShortcut(nn.Module):
    """A block whose shortcut has parameters (option B): its branch and shortcut form f_l."""

    def __init__(self, branch, shortcut):
        super().__init__()
        self.branch, self.shortcut = branch, shortcut

    def forward(self, x):
        return self.shortcut(x) + self.branch(x)


def fc_layers(weights) -> List[Layer]:
    """The FCResNet (models/fcresnet.py; input with its ones column appended by the caller)."""
    L = len(weights)
    out = [Layer(MatMul(weights[0]), "relu", None)]
    out += [Layer(MatMul(w), "relu", lambda x: x) for w in weights[1:L - 1]]
    out.append(Layer(MatMul(weights[L - 1]), "linear", None))
    for lay, w in zip(out, weights):
        lay.dense = tuple(w.shape)
    return out


def _has_params(m) -> bool:
    return any(True for _ in m.parameters())


def module_layers(model: nn.Module) -> List[Layer]:
    """Layers of a network with the models/resnet.py contract: model.layers() = [stem, block_1..,
    head]; a block has .branch, .shortcut and .post_act; the stem and head are plain maps."""
    mods = list(model.layers())
    out = [Layer(mods[0], "linear", None)]
    for b in mods[1:-1]:
        post = "relu_sum" if getattr(b, "post_act", False) else "linear"
        sc = getattr(b, "shortcut", None)
        if sc is None or isinstance(sc, nn.Identity):
            out.append(Layer(b.branch, post, lambda x: x))
        elif _has_params(sc):
            out.append(Layer(_SumWithParamShortcut(b.branch, sc), post, None))
        else:       # fixed parameter-free map (option A subsample + zero pad)
            out.append(Layer(b.branch, post, sc))
    out.append(Layer(mods[-1], "linear", None))
    return out


@torch.no_grad()
def forward_layers(layers: List[Layer], x: torch.Tensor) -> torch.Tensor:
    for lay in layers:
        x = lay.g(x)
    return x

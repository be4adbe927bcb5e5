"""The fully connected residual network (FCResNet; docs/radmm.md, "Model and problem").

    V_1 = σ(W_1 [X; 1])            input layer (d_in + 1 → width), input bias as a ones row
    V_l = V_{l-1} + σ(W_l V_{l-1})  l = 2..L-1, residual (width → width)
    V_L = W_L V_{L-1}              linear output layer (width → d_out)

Weights are a list of L matrices (index i is layer i+1) so that algorithms that own a region of
layers can hold only their slice. In this module samples are rows (batch × features), the
PyTorch convention; RADMM works with the transposes (samples as columns), the same matrices.
"""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": F.gelu}


def activation_fn(name: str):
    return ACTIVATIONS[name]


def layer_shapes(d_in: int, width: int, depth: int, d_out: int, input_bias: bool = True):
    """Shapes (out, in) of W_1..W_L for `depth` hidden layers (L = depth + 1)."""
    return [(width, d_in + int(input_bias))] + [(width, width)] * (depth - 1) + [(d_out, width)]


def init_weights(d_in: int, width: int, depth: int, d_out: int, input_bias: bool = True,
                 init_scale: float = 1.0, generator: torch.Generator | None = None,
                 dtype=torch.float64, device="cpu") -> List[torch.Tensor]:
    """Gaussian weights: He scale for the input layer, `init_scale`·sqrt(2/width) for the residual
    and output layers. The same seed gives the same network on every rank and device."""
    shapes = layer_shapes(d_in, width, depth, d_out, input_bias)
    weights = []
    for i, (o, n) in enumerate(shapes):
        std = math.sqrt(2.0 / n) * (1.0 if i == 0 else init_scale)
        w = torch.randn(o, n, generator=generator, dtype=torch.float64) * std
        weights.append(w.to(dtype=dtype, device=device))
    return weights


def forward(weights, X: torch.Tensor, activation: str = "relu", input_bias: bool = True,
            return_hidden: bool = False, residual: bool = True):
    """Forward pass with samples as rows. Returns the output (and the hidden states if asked).
    residual = False: the plain MLP (model.arch = mlp), V_l = σ(W_l V_{l-1})."""
    act = ACTIVATIONS[activation]
    if input_bias:
        X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], dim=1)
    h = act(X @ weights[0].T)
    hidden = [h]
    for W in weights[1:-1]:
        h = h + act(h @ W.T) if residual else act(h @ W.T)
        hidden.append(h)
    out = h @ weights[-1].T
    return (out, hidden) if return_hidden else out


class FCResNet(torch.nn.Module):
    """nn.Module view of the weight list (used by backpropagation and for evaluation)."""

    def __init__(self, weights, activation: str = "relu", input_bias: bool = True, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(w.clone()) for w in weights])
        self.activation = activation
        self.input_bias = input_bias

    def forward(self, X):
        return forward(list(self.weights), X, self.activation, self.input_bias, residual=self.residual)


def split_layers(n_layers: int, parts: int) -> List[tuple]:
    """Balanced contiguous split of layers 1..n_layers into `parts` regions [(start, stop)),
    1-based and inclusive-exclusive: region sizes differ by at most one (earlier ones larger)."""
    if not 1 <= parts <= n_layers:
        raise ValueError(f"cannot split {n_layers} layers into {parts} regions")
    base, extra = divmod(n_layers, parts)
    out, start = [], 1
    for r in range(parts):
        stop = start + base + (1 if r < extra else 0)
        out.append((start, stop))
        start = stop
    return out

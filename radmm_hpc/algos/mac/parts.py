"""MAC building blocks (docs/mac.md), samples as rows, no communication here.

The nested model is the FCResNet (models/fcresnet.py) or a plain MLP (residual = False):
    f_1(z_0) = σ(z_0 W_1ᵀ), z_0 = [x, 1]       input layer
    f_k(z)   = z + σ(z W_kᵀ)   (MLP: σ(z W_kᵀ))  k = 2..K
    f_{K+1}(z) = z W_{K+1}ᵀ                      linear output layer
Auxiliary coordinates Z[k-1] = z_k (k = 1..K) per point. With multipliers Λ (augmented
Lagrangian) every penalty target is shifted by Λ/μ, so both variants share these functions:
    e_n = loss(y_n, f_{K+1}(z_K)) + (μ/2) Σ_k ‖z_k − f_k(z_{k−1}) − λ_k/μ‖².
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import numpy as np
import torch
import torch.nn.functional as F

from radmm_hpc.models.fcresnet import activation_fn


@dataclass(frozen=True)
class Submodel:
    """A parameter block that travels the ring: rows [r0, r1) of weight matrix `layer` (0-based).
    Hidden layers split into row groups (output units are independent in the W-step)."""
    index: int
    layer: int
    r0: int
    r1: int


def make_submodels(shapes, groups: int) -> List[Submodel]:
    """Each hidden layer in `groups` balanced row groups, the output layer whole (its loss may
    couple the outputs, e.g. cross-entropy)."""
    out = []
    for i, (rows, _) in enumerate(shapes[:-1]):
        g = min(groups, rows)
        base, extra = divmod(rows, g)
        r = 0
        for j in range(g):
            n = base + (1 if j < extra else 0)
            out.append(Submodel(len(out), i, r, r + n))
            r += n
    out.append(Submodel(len(out), len(shapes) - 1, 0, shapes[-1][0]))
    return out


def auto_groups(n_hidden: int, width: int, shards: int) -> int:
    """Row groups per hidden layer so that there are at least as many submodels as shards."""
    return max(1, min(width, math.ceil((shards - 1) / n_hidden)))


class Nested:
    """Layer functions of the nested model and the per-point MAC objective."""

    def __init__(self, activation: str, input_bias: bool, residual: bool, task: str):
        self.act = activation_fn(activation)
        self.input_bias, self.residual, self.task = input_bias, residual, task

    def z0(self, X: torch.Tensor) -> torch.Tensor:
        if not self.input_bias:
            return X
        return torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], dim=1)

    def layer(self, i: int, W: torch.Tensor, zin: torch.Tensor) -> torch.Tensor:
        """f_{i+1}(zin) for a hidden layer i (0-based) with (a row block of) its weights."""
        return self.act(zin @ W.T)

    def skip(self, i: int, zin: torch.Tensor) -> bool:
        return self.residual and i > 0

    def f(self, i: int, W: torch.Tensor, zin: torch.Tensor) -> torch.Tensor:
        out = self.layer(i, W, zin)
        return zin + out if self.skip(i, zin) else out

    def loss_rows(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-point loss (the training loss of scoring.loss_fn, not averaged)."""
        if self.task == "classification":
            return F.cross_entropy(out, y, reduction="none")
        return 0.5 * ((out - y) ** 2).sum(dim=1)

    def forward(self, weights, X: torch.Tensor):
        """Nested forward pass: (output, [z_1..z_K])."""
        z = self.z0(X)
        hidden = []
        for i, W in enumerate(weights[:-1]):
            z = self.f(i, W, z)
            hidden.append(z)
        return z @ weights[-1].T, hidden

    # ---- the MAC objective ---------------------------------------------------------------------
    def residuals(self, weights, z0, Z, Lam, mu):
        """Per layer: z_k − f_k(z_{k−1}) − λ_k/μ (Λ may be None)."""
        out, prev = [], z0
        for i, z in enumerate(Z):
            r = z - self.f(i, weights[i], prev)
            if Lam is not None:
                r = r - Lam[i] / mu
            out.append(r)
            prev = z
        return out

    def point_terms(self, weights, z0, Z, y, Lam, mu):
        """(loss_n, penalty_n = ½Σ_k‖r_k‖²) per point."""
        res = self.residuals(weights, z0, Z, Lam, mu)
        pen = 0.5 * sum((r ** 2).sum(dim=1) for r in res)
        return self.loss_rows(Z[-1] @ weights[-1].T, y), pen

    def objective(self, weights, z0, Z, y, Lam, mu):
        loss, pen = self.point_terms(weights, z0, Z, y, Lam, mu)
        return loss + mu * pen

    # ---- W-step: the fit of one submodel -------------------------------------------------------
    def fit_inputs(self, sm: Submodel, z0, Z, Lam, mu):
        """(input, target) of a submodel's single-layer fit on some points."""
        i = sm.layer
        zin = z0 if i == 0 else Z[i - 1]
        if i == len(Z):
            return zin, None
        t = Z[i] - zin if self.skip(i, zin) else Z[i]
        if Lam is not None:
            t = t - Lam[i] / mu
        return zin, t[:, sm.r0:sm.r1]

    def fit_loss(self, sm: Submodel, W_rows, zin, t, y):
        """Sum over points of the submodel's term of E_Q (without the μ factor for hidden rows)."""
        if t is None:
            return self.loss_rows(zin @ W_rows.T, y).sum()
        return 0.5 * ((t - self.layer(sm.layer, W_rows, zin)) ** 2).sum()


def adam_update(p, g, m, v, step: float, lr: float, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam step on a row block (in place); `step` is the step count after this update."""
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    mhat = m / (1 - b1 ** step)
    vhat = v / (1 - b2 ** step)
    p.sub_(lr * mhat / (vhat.sqrt() + eps))


def visit_train(nested: Nested, sm: Submodel, W, Mom, Var, steps, z0, Z, y, Lam, mu,
                lr: float, batch: int, rng: np.random.Generator) -> None:
    """Stochastic Adam updates of one submodel over one shard's points (one pass, minibatches
    in a seeded order). W, Mom, Var are whole matrices; the row block is updated in place."""
    n = z0.shape[0]
    if n == 0:
        return
    order = torch.as_tensor(rng.permutation(n), device=z0.device)
    zin_all, t_all = nested.fit_inputs(sm, z0, Z, Lam, mu)
    rows = slice(sm.r0, sm.r1)
    for s in range(0, n, batch):
        idx = order[s:s + batch]
        Wr = W[sm.layer][rows].detach().clone().requires_grad_(True)
        t = None if t_all is None else t_all[idx]
        loss = nested.fit_loss(sm, Wr, zin_all[idx], t, y[idx]) / len(idx)
        (g,) = torch.autograd.grad(loss, Wr)
        steps[sm.index] += 1
        with torch.no_grad():
            adam_update(W[sm.layer][rows], g, Mom[sm.layer][rows], Var[sm.layer][rows],
                        float(steps[sm.index]), lr)


# ---- Z-step ------------------------------------------------------------------------------------
def z_step(nested: Nested, weights, z0, Z, y, Lam, mu, alpha, n_steps: int, max_halvings: int = 30):
    """Gradient steps on each point's own problem, batched over the points of one shard, with a
    per-point Armijo backtracking step size: no point's objective ever increases, and each point's
    computation does not depend on the others (the same result in any batching by shards).
    Z (list of K tensors) and alpha (per-point step sizes) are updated in place."""
    if z0.shape[0] == 0:
        return
    for _ in range(n_steps):
        Zv = [z.detach().clone().requires_grad_(True) for z in Z]
        e0 = nested.objective(weights, z0, Zv, y, Lam, mu)
        grads = torch.autograd.grad(e0.sum(), Zv)
        with torch.no_grad():
            e0 = e0.detach()
            gn2 = sum((g ** 2).sum(dim=1) for g in grads)
            a = alpha.clone()
            todo = gn2 > 0
            for _ in range(max_halvings):
                trial = [z - a[:, None] * g for z, g in zip(Z, grads)]
                e1 = nested.objective(weights, z0, trial, y, Lam, mu)
                ok = todo & (e1 <= e0 - 0.5 * a * gn2)
                for z, tz in zip(Z, trial):
                    z[ok] = tz[ok]
                alpha[ok] = torch.clamp(a[ok] * 2.0, max=1e3)
                todo = todo & ~ok
                if not bool(todo.any()):
                    break
                a = torch.where(todo, a * 0.5, a)
            alpha[todo] = a[todo]   # no step found at this size: start smaller next time

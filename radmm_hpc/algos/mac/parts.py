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

    def __init__(self, activation: str, input_bias: bool, residual: bool, task: str, n_hidden: int):
        self.act = activation_fn(activation)
        self.input_bias, self.residual, self.task = input_bias, residual, task
        self.n_hidden = n_hidden

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
        return self.fit_terms(sm, W_rows, zin, t, y).sum()

    def fit_terms(self, sm: Submodel, W_rows, zin, t, y):
        """The submodel's term of E_Q split into independent parts, summed over points: one per
        row of a hidden block (rows are separate fits), one for the output layer."""
        if t is None:
            return self.loss_rows(zin @ W_rows.T, y).sum().reshape(1)
        return 0.5 * ((t - self.layer(sm.layer, W_rows, zin)) ** 2).sum(dim=0)

    # ---- W-step: Gauss–Newton / Levenberg–Marquardt fits ---------------------------------------
    def is_output(self, sm: Submodel) -> bool:
        return sm.layer == self.n_hidden

    def gn_shapes(self, sm: Submodel, n_in: int):
        """Shapes of a submodel's normal-equation statistics [A, b] (gn_stats)."""
        g = sm.r1 - sm.r0
        if not self.is_output(sm):
            return [(g, n_in, n_in), (g, n_in)]
        if self.task == "classification":
            return [(g * n_in, g * n_in), (g, n_in)]
        return [(n_in, n_in), (g, n_in)]

    def gn_stats(self, sm: Submodel, W_rows, zin, t, y):
        """[A, b]: the Gauss–Newton normal equations A δ = b of the submodel's fit, summed over
        the given points and linearised at its current rows (a step is W ← W + δ):
          hidden rows u:   A_u = Σ σ'(p_nu)² z_n z_nᵀ, b_u = Σ σ'(p_nu) r_nu z_n, r = t − σ(p),
                           p = z W_uᵀ (ReLU: a linear least-squares fit on the row's active points);
          linear output:   A = Σ z_n z_nᵀ (one Gram for all rows), b = Σ r_n z_nᵀ, r = y − W z
                           (one step solves the least-squares fit exactly);
          softmax output:  Newton's system, A = Σ (diag(p_n) − p_n p_nᵀ) ⊗ z_n z_nᵀ,
                           b = Σ (onehot(y_n) − p_n) z_nᵀ.
        The sums run over chunks of points in order: a shard's statistics never depend on others."""
        A, b = (torch.zeros(sh, dtype=zin.dtype, device=zin.device)
                for sh in self.gn_shapes(sm, zin.shape[1]))
        chunk = max(1, 2 ** 24 // (zin.shape[1] * (sm.r1 - sm.r0)))   # bounds the temporaries
        for s in range(0, zin.shape[0], chunk):
            z = zin[s:s + chunk]
            if not self.is_output(sm):
                out, slope = act_and_slope(self.act, z @ W_rows.T)
                A += ((slope ** 2).T[:, :, None] * z[None]).transpose(1, 2) @ z
                b += (slope * (t[s:s + chunk] - out)).T @ z
            elif self.task == "classification":
                p = torch.softmax(z @ W_rows.T, dim=1)
                q = (p[:, :, None] * z[:, None, :]).reshape(len(z), -1)
                A += torch.block_diag(*torch.einsum("na,ni,nj->aij", p, z, z)) - q.T @ q
                b += (F.one_hot(y[s:s + chunk], p.shape[1]).to(z.dtype) - p).T @ z
            else:
                A += z.T @ z
                b += (y[s:s + chunk] - z @ W_rows.T).T @ z
        return [A, b]

    def gn_step(self, sm: Submodel, W_rows, stats, damping: torch.Tensor, ridge: float = 0.0):
        """New rows W + δ from summed statistics, for the fit plus (ridge/2)‖W‖²:
        (A + ridge·I + λ(diag A + ε)) δ = b − ridge·W, Levenberg–Marquardt damping λ per row of a
        hidden block and one λ for a softmax output layer; ε (about 1e-6 of the mean diagonal)
        keeps rows with no active point, and inputs that never vary, finite (δ = 0 there). A
        linear output layer gets its exact (ridge) least-squares fit, no damping. The small
        systems are solved in float64 whatever the training precision."""
        A, b = (x.double() for x in stats)
        W = W_rows.double()
        if self.is_output(sm) and self.task != "classification":
            M = A + (ridge + 1e-12 * float(A.diagonal().mean()) + 1e-30) * _eye(A)
            delta = torch.linalg.solve(M, (b - ridge * W).T).T
        elif self.is_output(sm):
            M = _damped(A, float(damping[0]), ridge)
            delta = torch.linalg.solve(M, (b - ridge * W).reshape(-1)).reshape(b.shape)
        else:
            M = _damped(A, damping.double()[:, None, None], ridge)
            delta = torch.linalg.solve(M, (b - ridge * W)[:, :, None])[:, :, 0]
        return (W + delta).to(W_rows.dtype)


def _eye(A: torch.Tensor) -> torch.Tensor:
    return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def _damped(A: torch.Tensor, lam, ridge: float) -> torch.Tensor:
    """A + ridge·I + λ(diag A + ε I) for one matrix or a batch (λ broadcast per matrix), with
    ε = 1e-6 of the matrix's mean diagonal plus 1e-9 of the batch's (a row with no data)."""
    diag = A.diagonal(dim1=-2, dim2=-1)
    eps = (1e-6 * diag.mean(dim=-1) + 1e-9 * diag.mean() + 1e-30)[..., None, None]
    return A + ridge * _eye(A) + lam * (torch.diag_embed(diag) + eps * _eye(A))


def act_and_slope(act, pre: torch.Tensor):
    """σ(pre) and σ'(pre), by autograd so that any activation works (ReLU: σ'(0) = 0)."""
    with torch.enable_grad():
        p = pre.detach().requires_grad_(True)
        out = act(p)
        (slope,) = torch.autograd.grad(out.sum(), p)
    return out.detach(), slope


# ---- Z-step ------------------------------------------------------------------------------------
def chain(nested: Nested, weights, z0, U):
    """Z from the violations U: z_k = f_k(z_{k−1}) + u_k (U = 0 is the forward pass)."""
    Z, prev = [], z0
    for i, u in enumerate(U):
        prev = nested.f(i, weights[i], prev) + u
        Z.append(prev)
    return Z


def _u_objective(nested, weights, z0, U, y, Lam, mu):
    """Each point's E_Q as a function of its violations u_k = z_k − f_k(z_{k−1})."""
    Z = chain(nested, weights, z0, U)
    pen = 0.5 * sum((((u - lam / mu) if Lam is not None else u) ** 2).sum(dim=1)
                    for u, lam in zip(U, Lam if Lam is not None else U))
    return nested.loss_rows(Z[-1] @ weights[-1].T, y) + mu * pen


def _rows(ts, idx):
    return None if ts is None else [t[idx] for t in ts]


def _armijo(evaluate, V, grads, e0, gn2, alpha, max_halvings: int) -> None:
    """One gradient step per point with per-point Armijo backtracking: V ← V − a·grad where
    evaluate(idx, trial) (each point's objective at the trial values of the points idx) falls by
    at least a·‖grad‖²/2; a starts at the point's alpha, halves on failure; alpha doubles after a
    success (at most 1e3) and keeps the last halved size after a failure. Only the points still
    searching are evaluated again; a point stops searching (no step) once the decrease asked of
    it is below its objective's rounding. V and alpha are updated in place."""
    # a decrease below the objective's rounding cannot be tested: such a point takes no step
    tiny = 4 * torch.finfo(e0.dtype).eps * e0.abs()
    idx = torch.nonzero(gn2 > 0).squeeze(1)
    a = alpha[idx].clone()
    for _ in range(max_halvings):
        if idx.numel() == 0:
            break
        trial = [v[idx] - a[:, None] * g[idx] for v, g in zip(V, grads)]
        ok = evaluate(idx, trial) <= e0[idx] - 0.5 * a * gn2[idx]
        done = idx[ok]
        for v, tv in zip(V, trial):
            v[done] = tv[ok]
        alpha[done] = torch.clamp(a[ok] * 2.0, max=1e3)
        a = a[~ok] * 0.5
        idx = idx[~ok]
        alpha[idx] = a     # no step found yet: start smaller next time
        keep = 0.5 * a * gn2[idx] > tiny[idx]
        idx, a = idx[keep], a[keep]


def z_step_u(nested: Nested, weights, z0, Z, y, Lam, mu, alpha, n_steps: int, max_halvings: int = 30):
    """The Z-step in violation coordinates: the same per-point problem as z_step, with the
    unknowns u_k = z_k − f_k(z_{k−1}) instead of z_k. A gradient step then moves every layer at
    once (the gradient reaches layer k through the chain, like backpropagation), where a step in
    z reaches one layer further down per step. Per-point Armijo backtracking as in z_step."""
    if z0.shape[0] == 0:
        return
    with torch.no_grad():
        U = [r.clone() for r in nested.residuals(weights, z0, Z, None, mu)]

    def evaluate(idx, trial):
        return _u_objective(nested, weights, z0[idx], trial, y[idx], _rows(Lam, idx), mu)
    for _ in range(n_steps):
        Uv = [u.detach().clone().requires_grad_(True) for u in U]
        e0 = _u_objective(nested, weights, z0, Uv, y, Lam, mu)
        grads = torch.autograd.grad(e0.sum(), Uv)
        with torch.no_grad():
            _armijo(evaluate, U, grads, e0.detach(), sum((g ** 2).sum(dim=1) for g in grads), alpha, max_halvings)
    with torch.no_grad():
        for z, new in zip(Z, chain(nested, weights, z0, U)):
            z.copy_(new)


def z_step(nested: Nested, weights, z0, Z, y, Lam, mu, alpha, n_steps: int, max_halvings: int = 30):
    """Gradient steps on each point's own problem, batched over the points of one shard, with a
    per-point Armijo backtracking step size (_armijo): no point's objective ever increases, and
    each point's step does not depend on the others'. Z (list of K tensors) and alpha (per-point
    step sizes) are updated in place."""
    if z0.shape[0] == 0:
        return

    def evaluate(idx, trial):
        return nested.objective(weights, z0[idx], trial, y[idx], _rows(Lam, idx), mu)
    for _ in range(n_steps):
        Zv = [z.detach().clone().requires_grad_(True) for z in Z]
        e0 = nested.objective(weights, z0, Zv, y, Lam, mu)
        grads = torch.autograd.grad(e0.sum(), Zv)
        with torch.no_grad():
            _armijo(evaluate, Z, grads, e0.detach(), sum((g ** 2).sum(dim=1) for g in grads), alpha, max_halvings)

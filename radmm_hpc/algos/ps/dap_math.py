"""Elastic-net logistic regression in float64 numpy (the DAP modes' numerics).

P(x) = (1/n) Σ_i Σ_k log(1 + exp(−y_ik a_iᵀ x_k)) + λ1‖x‖₁ + (λ2/2)‖x‖²,  y ∈ {−1, +1}
x is (p+1) × K: K = 1 for a binary task, K classes one-vs-rest otherwise; the last row (bias)
is not penalised. Losses use log1p(exp(−|z|)) and the sigmoid is evaluated without overflow.
"""

from __future__ import annotations

import numpy as np


def sigmoid(t: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(t))
    return np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def loss_sum(A: np.ndarray, Y: np.ndarray, x: np.ndarray) -> float:
    z = Y * (A @ x)
    return float((np.maximum(-z, 0.0) + np.log1p(np.exp(-np.abs(z)))).sum())


def grad_sum(A: np.ndarray, Y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Σ_i ∇f_i(x) over the rows of A."""
    z = Y * (A @ x)
    return A.T @ (-Y * sigmoid(-z))


def penalty(x: np.ndarray, lam1: float, lam2: float) -> float:
    w = x[:-1]
    return float(lam1 * np.abs(w).sum() + 0.5 * lam2 * (w * w).sum())


def prox(z: np.ndarray, eta: float, lam1: float, lam2: float) -> np.ndarray:
    """prox of η·h: soft-threshold by ηλ1, then divide by (1 + ηλ2); the bias row passes."""
    out = z.copy()
    w = z[:-1]
    out[:-1] = np.sign(w) * np.maximum(np.abs(w) - eta * lam1, 0.0) / (1.0 + eta * lam2)
    return out


def objective(A, Y, x, lam1, lam2) -> float:
    return loss_sum(A, Y, x) / len(A) + penalty(x, lam1, lam2)


def max_smoothness(A: np.ndarray) -> float:
    """L = max_i ‖a_i‖²/4: every f_i (and any mini-batch mean) is L-smooth."""
    return float((A * A).sum(axis=1).max()) / 4.0


def reference_solution(A, Y, lam1, lam2, tol=1e-13, max_iter=100000):
    """P* by accelerated proximal gradient (FISTA with adaptive restart), serial, float64."""
    n = len(A)
    L = float(np.linalg.norm(A, 2) ** 2) / (4.0 * n)
    x = np.zeros((A.shape[1], Y.shape[1]))
    yk, t = x.copy(), 1.0
    for _ in range(max_iter):
        x_new = prox(yk - grad_sum(A, Y, yk) / (n * L), 1.0 / L, lam1, lam2)
        if np.max(np.abs(x_new - x)) <= tol * max(1.0, np.max(np.abs(x))):
            x = x_new
            break
        if np.sum((yk - x_new) * (x_new - x)) > 0:   # restart when momentum points uphill
            t = 1.0
        t_new = 0.5 * (1 + np.sqrt(1 + 4 * t * t))
        yk = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
    return x, objective(A, Y, x, lam1, lam2)


def problem(ds, threshold: float):
    """(A, Y, A_test, Y_test, classes): A = [X, 1]; labels ±1 (binary) or one-vs-rest columns."""
    def labels(split):
        y = getattr(ds, f"y_{split}")
        if ds.task == "regression":   # e.g. Wine Quality: good (quality >= threshold) or not
            raw = y[:, 0] * ds.y_std[0] + ds.y_mean[0]
            return np.where(raw >= threshold, 1.0, -1.0)[:, None]
        if ds.n_classes == 2:
            return np.where(y == 1, 1.0, -1.0)[:, None]
        return np.where(y[:, None] == np.arange(ds.n_classes)[None, :], 1.0, -1.0)

    def design(split):
        X = getattr(ds, f"X_{split}")
        return np.hstack([X, np.ones((len(X), 1))])
    K = labels("train").shape[1]
    return design("train"), labels("train"), design("test"), labels("test"), K


def accuracy(A, Y, x) -> float:
    s = A @ x
    if Y.shape[1] == 1:
        return float(((s[:, 0] >= 0) == (Y[:, 0] > 0)).mean())
    return float((s.argmax(1) == Y.argmax(1)).mean())


def write_sparse_problem(path: str, n: int = 2000, p: int = 100, density: float = 0.1,
                         support: int = 10, seed: int = 0) -> None:
    """A generated sparse problem as an HDF5 data file (--data hdf5:PATH): sparse features
    (a fraction `density` non-zero), a true weight vector with `support` non-zeros, labels
    0/1 drawn from the logistic model (a two-class classification task)."""
    import h5py
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) * (rng.random((n, p)) < density)
    w = np.zeros(p)
    w[rng.choice(p, support, replace=False)] = rng.standard_normal(support) * 3.0
    y = (rng.random(n) < sigmoid(X @ w)).astype(np.int64)
    with h5py.File(path, "w") as fh:
        fh["X"], fh["y"] = X, y

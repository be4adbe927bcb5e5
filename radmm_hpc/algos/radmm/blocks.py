"""Pure-math core of RADMM (ADMM training of fully connected residual networks).

Formulation: docs/radmm.md (three-splitting, proximal point, proximal linearized,
two-splitting, Parallel Regional Update with boundary consensus; after Xu, Li, Xing, arXiv
2310.15334).

Conventions (fixed throughout this module)
------------------------------------------
* Samples are columns. ``X`` is (d0+1) x N with a final row of ones (bias of layer 1),
  ``Y`` is dy x N (squared loss: targets; cross-entropy: one-hot columns).
* ``W`` is a python list, ``W[i]`` is layer ``i+1``: W_1 is d x (d0+1), W_2..W_{L-1} are d x d,
  W_L is dy x d. ``L = len(W)``; there are ``L-1`` hidden layers.
* ``U[i]`` / ``V[i]`` are the pre-activation / output of layer ``i+1`` (U has L-1 entries,
  V has L entries, ``V[L-1]`` is the auxiliary output V_L). ``X`` plays the role of V_0.
* R_1 = 0 (no skip), R_l = I for 2 <= l <= L-1.  sigma = ReLU.
* Mean convention: every term of the objective is divided by N,

      L_beta = l(V_L) + (lam/2) sum ||W_l||^2 + (gamma/2N) sum ||U_l - W_l V_{l-1}||^2
             + (rho/2N) sum ||V_l - R_l V_{l-1} - sigma(U_l)||^2
             + (1/N) <Lam, V_L - W_L V_{L-1}> + (beta/2N) ||V_L - W_L V_{L-1}||^2,

  with l(V) = ||V - Y||^2 / (2N) (squared) or the mean softmax cross-entropy.  Each block update
  also adds the proximal term (omega/2N)||Z - Z^k||^2.  Multiplying a block subproblem by N gives
  the closed forms below (that is why ``N * lam`` appears next to ``omega``).
* All block updates are stateless functions of the tensors they need, so a distributed driver can
  call them for its own layers with boundary data received from neighbours.  They work for
  float32/float64 on any device.  Linear systems are solved by Cholesky (never an inverse).

Block orders
------------
``serial_sweep`` takes an optional ``order``: a list of 1-based layer numbers.  A hidden layer
``l`` (1 <= l <= L-1) means "W_l, U_l, V_l"; ``l = L`` means "W_L, V_L, Lambda".  The default is
``[1, 2, ..., L]`` (forward Gauss-Seidel sweep).  ``red_black_order(L, P)`` returns the order that
the two-colour PRU schedule reproduces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


# ---------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------
@dataclass
class RADMMParams:
    """Penalty / proximal parameters (mean convention).

    variant: 'prox' (exact proximal point blocks), 'linear' (proximal linearized W and V blocks,
    power-iteration step sizes), 'two_split' (no U; W and V blocks by one backtracked
    prox-gradient step).  loss: 'squared' or 'xent'.
    """
    gamma: float = 1.0
    rho: float = 1.0
    beta: float = 2.0
    omega: float = 1e-2
    lam: float = 0.0
    beta_b: float = 1.0          # boundary-consensus penalty (Jacobi PRU)
    omega_b: Optional[float] = None  # proximal weight of the Jacobi boundary blocks (region-last V
                                     # and Q); None -> omega + beta_b/2.  Observed: Jacobi diverges
                                     # (2-cycle between Q_r and V_{s_r-1}) when omega_b < ~beta_b/2.
    variant: str = "prox"
    loss: str = "squared"
    power_iters: int = 20        # power iteration steps for spectral bounds
    tau_safety: float = 1.05     # multiplier on the power-iteration estimate
    xent_tol: float = 1e-10
    xent_max_iter: int = 50


def _omb(p: "RADMMParams") -> float:
    return p.omega + 0.5 * p.beta_b if p.omega_b is None else p.omega_b


def sigma(x: Tensor) -> Tensor:
    return torch.relu(x)


def dsigma(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


def _sym_eye(n: int, ref: Tensor) -> Tensor:
    return torch.eye(n, dtype=ref.dtype, device=ref.device)


def _chol(G: Tensor) -> Tensor:
    """Cholesky factor of an SPD matrix. In float32 a large γVVᵀ (deep nets, large activations)
    can swamp the diagonal so that the rounded matrix is no longer positive definite: then factor
    in float64, adding the smallest diagonal shift that works (from 1e-7 of the mean diagonal,
    doubling), i.e. a slightly larger proximal weight for that one solve."""
    Lc, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0:
        return Lc
    G64 = 0.5 * (G + G.T).double()
    eye = torch.eye(G.shape[0], dtype=G64.dtype, device=G.device)
    shift = 0.0
    step = 1e-7 * float(G64.diagonal().abs().mean()) + 1e-300
    for _ in range(60):
        Lc, info = torch.linalg.cholesky_ex(G64 + shift * eye)
        if int(info) == 0:
            return Lc
        shift = step if shift == 0.0 else 2 * shift
    raise torch.linalg.LinAlgError("RADMM solve: matrix is not positive definite even with a diagonal shift")


def _cholesky_solve(B: Tensor, Lc: Tensor) -> Tensor:
    """Solve with the factor's precision, return in B's dtype."""
    if Lc.dtype == B.dtype:
        return torch.cholesky_solve(B, Lc)
    return torch.cholesky_solve(B.to(Lc.dtype), Lc).to(B.dtype)


def _solve_right_spd(B: Tensor, G: Tensor) -> Tensor:
    """Return Z with Z G = B, G symmetric positive definite (Cholesky)."""
    return _cholesky_solve(B.T.contiguous(), _chol(G)).T


def _solve_left_spd(G: Tensor, B: Tensor) -> Tensor:
    """Return Z with G Z = B, G symmetric positive definite (Cholesky)."""
    return _cholesky_solve(B, _chol(G))


# ---------------------------------------------------------------------------------------------
# exact proximal-point block updates (three-splitting, ReLU)
# ---------------------------------------------------------------------------------------------
def update_W_hidden(U: Tensor, Vprev: Tensor, Wk: Tensor, gamma: float, lam: float,
                    omega: float, N: int) -> Tensor:
    """W_l = (gamma U V^T + omega W^k)(gamma V V^T + (N lam + omega) I)^{-1},  V = V_{l-1}.

    Minimises (lam/2)||W||^2 + (gamma/2N)||U - W V||^2 + (omega/2N)||W - W^k||^2.
    Vprev may be the layer input (X for l = 1) or a boundary copy Q.
    """
    n_in = Vprev.shape[0]
    G = gamma * (Vprev @ Vprev.T) + (N * lam + omega) * _sym_eye(n_in, Vprev)
    B = gamma * (U @ Vprev.T) + omega * Wk
    return _solve_right_spd(B, G)


def update_W_out(VL: Tensor, Lam: Tensor, Vprev: Tensor, Wk: Tensor, beta: float, lam: float,
                 omega: float, N: int) -> Tensor:
    """W_L = ((beta V_L + Lam) V^T + omega W^k)(beta V V^T + (N lam + omega) I)^{-1}, V = V_{L-1}."""
    n_in = Vprev.shape[0]
    G = beta * (Vprev @ Vprev.T) + (N * lam + omega) * _sym_eye(n_in, Vprev)
    B = (beta * VL + Lam) @ Vprev.T + omega * Wk
    return _solve_right_spd(B, G)


def update_U(a: Tensor, b: Tensor, Uk: Tensor, gamma: float, rho: float, omega: float) -> Tensor:
    """Elementwise argmin_u (gamma/2)(u-a)^2 + (rho/2)(b - relu(u))^2 + (omega/2)(u - c)^2.

    a = W_l V_{l-1}, b = V_l - R_l V_{l-1}, c = U_l^k.  With m = (gamma a + omega c)/(gamma+omega):
    u+ = max(0, ((gamma+omega) m + rho b)/(gamma+omega+rho)), u- = min(0, m); keep the candidate
    with the smaller (gamma+omega)/2 (u-m)^2 + rho/2 (b - relu(u))^2 (not a clip).
    """
    go = gamma + omega
    m = (gamma * a + omega * Uk) / go if omega != 0 else a
    up = torch.clamp((go * m + rho * b) / (go + rho), min=0.0)
    um = torch.clamp(m, max=0.0)
    fp = 0.5 * go * (up - m) ** 2 + 0.5 * rho * (b - up) ** 2
    fm = 0.5 * go * (um - m) ** 2 + 0.5 * rho * b ** 2
    return torch.where(fp <= fm, up, um)


def update_V_hidden(P: Tensor, Wn: Tensor, Un: Tensor, Vn: Tensor, Vk: Tensor, gamma: float,
                    rho: float, omega: float) -> Tensor:
    """V_l for l <= L-2 (next layer is residual, R_{l+1} = I).

    (gamma Wn^T Wn + (2 rho + omega) I) V = rho P + gamma Wn^T Un + rho (Vn - sigma(Un)) + omega V^k,
    with P = R_l V_{l-1} + sigma(U_l) and (Wn, Un, Vn) the layer-(l+1) values.
    """
    d = Wn.shape[1]
    G = gamma * (Wn.T @ Wn) + (2.0 * rho + omega) * _sym_eye(d, Wn)
    rhs = rho * P + gamma * (Wn.T @ Un) + rho * (Vn - sigma(Un)) + omega * Vk
    return _solve_left_spd(G, rhs)


def update_V_last_hidden(P: Tensor, WL: Tensor, VL: Tensor, Lam: Tensor, Vk: Tensor, beta: float,
                         rho: float, omega: float) -> Tensor:
    """V_{L-1}: (beta W_L^T W_L + (rho + omega) I) V = rho P + W_L^T (beta V_L + Lam) + omega V^k."""
    d = WL.shape[1]
    G = beta * (WL.T @ WL) + (rho + omega) * _sym_eye(d, WL)
    rhs = rho * P + WL.T @ (beta * VL + Lam) + omega * Vk
    return _solve_left_spd(G, rhs)


def update_V_out_squared(Y: Tensor, Lam: Tensor, WL: Tensor, Vprev: Tensor, beta: float) -> Tensor:
    """V_L = (Y - Lam + beta W_L V_{L-1}) / (1 + beta)   (squared loss, exact minimiser)."""
    return (Y - Lam + beta * (WL @ Vprev)) / (1.0 + beta)


def update_V_out_xent(Y: Tensor, Lam: Tensor, WL: Tensor, Vprev: Tensor, beta: float,
                      V0: Optional[Tensor] = None, tol: float = 1e-10,
                      max_iter: int = 50) -> Tensor:
    """V_L = argmin_V CE(V;Y)·N + <Lam, V> + (beta/2)||V - W_L V_{L-1}||^2 (column separable).

    Damped Newton per column (Hessian diag(p) - p p^T + beta I, a dy x dy batched solve).  Stops
    when max_j ||grad_j||_2 <= tol * max(1, max_j ||Y_j - Lam_j||) or after max_iter steps.
    The Hessian satisfies beta I <= H <= (beta + 1/2) I, so Newton converges in a few steps.
    """
    T = WL @ Vprev
    V = (T.clone() if V0 is None else V0.clone())
    dy = V.shape[0]
    scale = max(1.0, float(torch.linalg.vector_norm(Y - Lam, dim=0).max()))
    eye = _sym_eye(dy, V)

    def colobj(Vc: Tensor) -> Tensor:
        return (torch.logsumexp(Vc, dim=0) - (Y * Vc).sum(0) + (Lam * Vc).sum(0)
                + 0.5 * beta * ((Vc - T) ** 2).sum(0))

    for _ in range(max_iter):
        p = torch.softmax(V, dim=0)
        g = p - Y + Lam + beta * (V - T)
        if float(torch.linalg.vector_norm(g, dim=0).max()) <= tol * scale:
            break
        Pt = p.T                                                     # N x dy
        H = torch.diag_embed(Pt) - Pt.unsqueeze(2) * Pt.unsqueeze(1) + beta * eye
        step = torch.linalg.solve(H, g.T.unsqueeze(2)).squeeze(2).T  # dy x N
        f0 = colobj(V)
        t = torch.ones_like(f0)
        for _ls in range(30):                                        # per-column Armijo backtracking
            Vn = V - t.unsqueeze(0) * step
            slack = 1e-12 * (1.0 + f0.abs())                        # round-off slack
            bad = colobj(Vn) > f0 - 1e-4 * t * (g * step).sum(0) + slack
            if not bool(bad.any()):
                break
            t = torch.where(bad, 0.5 * t, t)
        V = V - t.unsqueeze(0) * step
    return V


def update_V_out(Y: Tensor, Lam: Tensor, WL: Tensor, Vprev: Tensor, beta: float,
                 loss: str = "squared", V0: Optional[Tensor] = None, tol: float = 1e-10,
                 max_iter: int = 50) -> Tensor:
    if loss == "squared":
        return update_V_out_squared(Y, Lam, WL, Vprev, beta)
    if loss == "xent":
        return update_V_out_xent(Y, Lam, WL, Vprev, beta, V0=V0, tol=tol, max_iter=max_iter)
    raise ValueError(f"unknown loss {loss!r}")


def update_Lam(Lam: Tensor, VL: Tensor, WL: Tensor, Vprev: Tensor, beta: float) -> Tensor:
    """Lam <- Lam + beta (V_L - W_L V_{L-1})."""
    return Lam + beta * (VL - WL @ Vprev)


# ---------------------------------------------------------------------------------------------
# Jacobi PRU boundary blocks (exact)
# ---------------------------------------------------------------------------------------------
def update_V_region_last(P: Tensor, Qn: Tensor, Mn: Tensor, Vk: Tensor, rho: float,
                         beta_b: float, omega: float) -> Tensor:
    """Last V of a non-final region: V = (rho P + beta_b Q_next + M_next + omega V^k)/(rho+beta_b+omega).

    Minimises (rho/2)||V - P||^2 - <M_next, V> + (beta_b/2)||Q_next - V||^2 + (omega/2)||V - V^k||^2.
    """
    return (rho * P + beta_b * Qn + Mn + omega * Vk) / (rho + beta_b + omega)


def update_Q(W: Tensor, U: Tensor, Vs: Tensor, Us: Tensor, M: Tensor, Vb: Tensor, Qk: Tensor,
             gamma: float, rho: float, beta_b: float, omega: float) -> Tensor:
    """Boundary copy Q_r of V_{s_r - 1} (W, U = W_s, U_s; Vs, Us = V_s, U_s of layer s_r; Vb = V_{s_r-1}).

    (gamma W^T W + (rho + beta_b + omega) I) Q = gamma W^T U + rho (V_s - sigma(U_s)) - M
                                                 + beta_b V_b + omega Q^k.
    (U and Us are the same tensor; both are accepted to keep the formula's reading.)
    """
    d = W.shape[1]
    G = gamma * (W.T @ W) + (rho + beta_b + omega) * _sym_eye(d, W)
    rhs = gamma * (W.T @ U) + rho * (Vs - sigma(Us)) - M + beta_b * Vb + omega * Qk
    return _solve_left_spd(G, rhs)


def update_M(M: Tensor, Q: Tensor, Vb: Tensor, beta_b: float) -> Tensor:
    """M_r <- M_r + beta_b (Q_r - V_{s_r - 1})."""
    return M + beta_b * (Q - Vb)


# ---------------------------------------------------------------------------------------------
# proximal linearized blocks (one prox-gradient step, power-iteration step size)
# ---------------------------------------------------------------------------------------------
def spectral_norm_sq(A: Tensor, iters: int = 20, safety: float = 1.0) -> float:
    """Estimate ||A||_2^2 by power iteration on A A^T (implicit, O(iters * size(A)))."""
    m, n = A.shape
    if m <= n:
        x = torch.ones(m, 1, dtype=A.dtype, device=A.device)
        x = x + 1e-3 * torch.arange(m, dtype=A.dtype, device=A.device).unsqueeze(1) / max(m, 1)
        apply = lambda z: A @ (A.T @ z)  # noqa: E731
    else:
        x = torch.ones(n, 1, dtype=A.dtype, device=A.device)
        x = x + 1e-3 * torch.arange(n, dtype=A.dtype, device=A.device).unsqueeze(1) / max(n, 1)
        apply = lambda z: A.T @ (A @ z)  # noqa: E731
    lam_est = 0.0
    for _ in range(iters):
        nx = torch.linalg.vector_norm(x)
        if float(nx) == 0.0:
            return 0.0
        x = x / nx
        y = apply(x)
        lam_est = float((x * y).sum())
        x = y
    return safety * lam_est


def update_W_hidden_lin(U: Tensor, Vprev: Tensor, Wk: Tensor, gamma: float, lam: float,
                        omega: float, N: int, tau: Optional[float] = None, iters: int = 20,
                        safety: float = 1.05) -> Tensor:
    """W+ = (tau W^k - grad h(W^k)) / (tau + N lam),  h(W) = (gamma/2)||U - W V||^2.

    tau = safety * gamma ||V||_2^2 + omega (power iteration) unless given.  O(d^2 N), no solve.
    """
    if tau is None:
        tau = safety * gamma * spectral_norm_sq(Vprev, iters) + omega
    grad = -gamma * ((U - Wk @ Vprev) @ Vprev.T)
    return (tau * Wk - grad) / (tau + N * lam)


def update_W_out_lin(VL: Tensor, Lam: Tensor, Vprev: Tensor, Wk: Tensor, beta: float, lam: float,
                     omega: float, N: int, tau: Optional[float] = None, iters: int = 20,
                     safety: float = 1.05) -> Tensor:
    """Linearized W_L: h(W) = <Lam, V_L - W V> + (beta/2)||V_L - W V||^2, tau >= beta||V||^2 + omega."""
    if tau is None:
        tau = safety * beta * spectral_norm_sq(Vprev, iters) + omega
    grad = -((Lam + beta * (VL - Wk @ Vprev)) @ Vprev.T)
    return (tau * Wk - grad) / (tau + N * lam)


def update_V_hidden_lin(P: Tensor, Wn: Tensor, Un: Tensor, Vn: Tensor, Vk: Tensor, gamma: float,
                        rho: float, omega: float, tau: Optional[float] = None, iters: int = 20,
                        safety: float = 1.05) -> Tensor:
    """Linearized V_l (l <= L-2): coupling h(V) = (gamma/2)||Un - Wn V||^2 + (rho/2)||Vn - V - sigma(Un)||^2
    is linearized, the separable (rho/2)||V - P||^2 kept exact:
        V+ = (tau V^k - grad h(V^k) + rho P) / (tau + rho),  tau = safety*gamma||Wn||^2 + rho + omega.
    """
    if tau is None:
        tau = safety * gamma * spectral_norm_sq(Wn, iters) + rho + omega
    grad = -gamma * (Wn.T @ (Un - Wn @ Vk)) - rho * (Vn - Vk - sigma(Un))
    return (tau * Vk - grad + rho * P) / (tau + rho)


def update_V_last_hidden_lin(P: Tensor, WL: Tensor, VL: Tensor, Lam: Tensor, Vk: Tensor,
                             beta: float, rho: float, omega: float, tau: Optional[float] = None,
                             iters: int = 20, safety: float = 1.05) -> Tensor:
    """Linearized V_{L-1}: h(V) = -<Lam, W_L V> + (beta/2)||V_L - W_L V||^2, tau >= beta||W_L||^2 + omega."""
    if tau is None:
        tau = safety * beta * spectral_norm_sq(WL, iters) + omega
    grad = -(WL.T @ (Lam + beta * (VL - WL @ Vk)))
    return (tau * Vk - grad + rho * P) / (tau + rho)


def update_Q_lin(W: Tensor, U: Tensor, Vs: Tensor, Us: Tensor, M: Tensor, Vb: Tensor, Qk: Tensor,
                 gamma: float, rho: float, beta_b: float, omega: float,
                 tau: Optional[float] = None, iters: int = 20, safety: float = 1.05) -> Tensor:
    """Linearized boundary copy: h(Q) = (gamma/2)||U - W Q||^2 linearized, the rest exact."""
    if tau is None:
        tau = safety * gamma * spectral_norm_sq(W, iters) + omega
    grad = -gamma * (W.T @ (U - W @ Qk))
    return (tau * Qk - grad + rho * (Vs - sigma(Us)) - M + beta_b * Vb) / (tau + rho + beta_b)


# ---------------------------------------------------------------------------------------------
# two-splitting blocks (no U; ReLU inside the penalty -> backtracking prox-gradient)
# ---------------------------------------------------------------------------------------------
def _backtracked_step(xk: Tensor, grad: Tensor, h, candidate, tau0: float,
                      max_backtracks: int) -> Tuple[Tensor, float]:
    """One proximal-gradient step: tau doubles from tau0 until the descent-lemma inequality
    h(x+) <= h(x^k) + <grad, x+ - x^k> + (tau/2)||x+ - x^k||^2 holds; candidate(tau) gives x+.
    Returns (x+, tau)."""
    h0 = h(xk)
    tau = max(float(tau0), 1e-12)
    for _ in range(max_backtracks):
        x = candidate(tau)
        D = x - xk
        if h(x) <= h0 + float((grad * D).sum()) + 0.5 * tau * float((D * D).sum()) + 1e-12 * max(1.0, abs(h0)):
            return x, tau
        tau *= 2.0
    return x, tau


def update_W_hidden_2s(B: Tensor, Vprev: Tensor, Wk: Tensor, rho: float, lam: float,
                       omega: float, N: int, tau0: float = 1.0,
                       max_backtracks: int = 60) -> Tuple[Tensor, float]:
    """Two-splitting W_l: one prox-gradient step on h(W) = (rho/2)||B - sigma(W V)||^2, B = V_l - R_l V_{l-1}.

    W+ = ((tau+omega) W^k - grad h) / (tau + omega + N lam), tau by backtracking.  Returns (W+, tau).
    """
    def h(W):
        r = B - sigma(W @ Vprev)
        return 0.5 * rho * float((r * r).sum())
    Z = Wk @ Vprev
    grad = -rho * (((B - sigma(Z)) * dsigma(Z)) @ Vprev.T)
    return _backtracked_step(Wk, grad, h, lambda tau: ((tau + omega) * Wk - grad) / (tau + omega + N * lam),
                             tau0, max_backtracks)


def update_V_hidden_2s(P: Tensor, Wn: Tensor, Vn: Tensor, Vk: Tensor, rho: float, omega: float,
                       tau0: float = 1.0, max_backtracks: int = 60) -> Tuple[Tensor, float]:
    """Two-splitting V_l (l <= L-2): coupling h(V) = (rho/2)||Vn - V - sigma(Wn V)||^2 (backtracked),
    (rho/2)||V - P||^2 exact with P = R_l V_{l-1} + sigma(W_l V_{l-1}).  Returns (V+, tau)."""
    def h(V):
        r = Vn - V - sigma(Wn @ V)
        return 0.5 * rho * float((r * r).sum())
    Z = Wn @ Vk
    r = Vn - Vk - sigma(Z)
    grad = -rho * (r + Wn.T @ (r * dsigma(Z)))
    return _backtracked_step(Vk, grad, h, lambda tau: ((tau + omega) * Vk - grad + rho * P) / (tau + omega + rho),
                             tau0, max_backtracks)


def update_Q_2s(W: Tensor, Vs: Tensor, M: Tensor, Vb: Tensor, Qk: Tensor, rho: float,
                beta_b: float, omega: float, tau0: float = 1.0,
                max_backtracks: int = 60) -> Tuple[Tensor, float]:
    """Two-splitting boundary copy: h(Q) = (rho/2)||V_s - Q - sigma(W Q)||^2 backtracked,
    <M, Q> + (beta_b/2)||Q - V_b||^2 exact."""
    def h(Q):
        r = Vs - Q - sigma(W @ Q)
        return 0.5 * rho * float((r * r).sum())
    Z = W @ Qk
    r = Vs - Qk - sigma(Z)
    grad = -rho * (r + W.T @ (r * dsigma(Z)))
    return _backtracked_step(
        Qk, grad, h, lambda tau: ((tau + omega) * Qk - grad - M + beta_b * Vb) / (tau + omega + beta_b),
        tau0, max_backtracks)


# ---------------------------------------------------------------------------------------------
# merit terms (local contributions; a distributed driver sums them with one Allreduce)
# ---------------------------------------------------------------------------------------------
def loss_value(V: Tensor, Y: Tensor, loss: str = "squared") -> float:
    """l(V): squared ||V - Y||^2/(2N) or mean softmax cross-entropy (Y one-hot)."""
    N = V.shape[1]
    if loss == "squared":
        return 0.5 * float(((V - Y) ** 2).sum()) / N
    if loss == "xent":
        return float((torch.logsumexp(V, dim=0) - (Y * V).sum(0)).sum()) / N
    raise ValueError(f"unknown loss {loss!r}")


def lagrange_multiplier_from_loss(VL: Tensor, Y: Tensor, loss: str = "squared") -> Tensor:
    """Lam = -N grad l(V_L)  (squared: Y - V_L; cross-entropy: Y - softmax(V_L))."""
    if loss == "squared":
        return Y - VL
    if loss == "xent":
        return Y - torch.softmax(VL, dim=0)
    raise ValueError(f"unknown loss {loss!r}")


def merit_hidden(W: Tensor, U: Tensor, V: Tensor, Vprev: Tensor, residual: bool, gamma: float,
                 rho: float, lam: float, N: int) -> float:
    """Layer-l contribution (three-splitting):
    (lam/2)||W||^2 + (gamma/2N)||U - W Vprev||^2 + (rho/2N)||V - R Vprev - sigma(U)||^2.
    ``residual`` is False for layer 1 (R_1 = 0), True otherwise; Vprev may be a boundary copy Q."""
    r1 = U - W @ Vprev
    r2 = V - sigma(U) - (Vprev if residual else 0.0)
    return (0.5 * lam * float((W * W).sum()) + 0.5 * gamma * float((r1 * r1).sum()) / N
            + 0.5 * rho * float((r2 * r2).sum()) / N)


def merit_hidden_2s(W: Tensor, V: Tensor, Vprev: Tensor, residual: bool, rho: float, lam: float,
                    N: int) -> float:
    """Layer-l contribution (two-splitting): (lam/2)||W||^2 + (rho/2N)||V - R Vprev - sigma(W Vprev)||^2."""
    r2 = V - sigma(W @ Vprev) - (Vprev if residual else 0.0)
    return 0.5 * lam * float((W * W).sum()) + 0.5 * rho * float((r2 * r2).sum()) / N


def merit_out(Y: Tensor, VL: Tensor, Lam: Tensor, WL: Tensor, Vprev: Tensor, beta: float,
              lam: float, N: int, loss: str = "squared", with_dual: bool = True) -> float:
    """Output contribution: l(V_L) + (lam/2)||W_L||^2 [+ (1/N)<Lam, C> + (beta/2N)||C||^2],
    C = V_L - W_L V_{L-1}.  with_dual=False gives the relaxed-objective contribution (no
    constraint terms; the relaxed problem enforces C = 0)."""
    val = loss_value(VL, Y, loss) + 0.5 * lam * float((WL * WL).sum())
    if with_dual:
        C = VL - WL @ Vprev
        val += float((Lam * C).sum()) / N + 0.5 * beta * float((C * C).sum()) / N
    return val


def merit_boundary(Q: Tensor, M: Tensor, Vb: Tensor, beta_b: float, N: int) -> float:
    """Jacobi PRU boundary contribution (1/N)<M, Q - V_b> + (beta_b/2N)||Q - V_b||^2."""
    C = Q - Vb
    return float((M * C).sum()) / N + 0.5 * beta_b * float((C * C).sum()) / N


# ---------------------------------------------------------------------------------------------
# model helpers
# ---------------------------------------------------------------------------------------------
def add_bias_row(X: Tensor) -> Tensor:
    """Append the constant row of ones (bias of layer 1)."""
    return torch.cat([X, torch.ones(1, X.shape[1], dtype=X.dtype, device=X.device)], dim=0)


# ---------------------------------------------------------------------------------------------
# serial driver
# ---------------------------------------------------------------------------------------------
def _hidden_block(st: Dict, p: RADMMParams, l: int, Vprev: Tensor,
                  next_override: Optional[Tuple[Tensor, Tensor]] = None) -> None:
    """Update W_l, U_l, V_l (1-based l, hidden).  ``Vprev`` is V_{l-1} (or a boundary copy).
    next_override = (Q_next, M_next): use the Jacobi region-last V formula instead of layer l+1."""
    W, U, V = st["W"], st["U"], st["V"]
    L = len(W)
    i = l - 1
    N = Vprev.shape[1]
    res = l > 1
    variant = p.variant
    if variant == "two_split":
        B = V[i] - Vprev if res else V[i]
        tau0 = 0.5 * st["tau"].get(("W", l), 1.0)
        W[i], st["tau"][("W", l)] = update_W_hidden_2s(B, Vprev, W[i], p.rho, p.lam, p.omega, N, tau0)
        Pm = (Vprev if res else 0.0) + sigma(W[i] @ Vprev)
        if next_override is not None:
            V[i] = update_V_region_last(Pm, next_override[0], next_override[1], V[i], p.rho, p.beta_b, _omb(p))
        elif l <= L - 2:
            tau0 = 0.5 * st["tau"].get(("V", l), 1.0)
            V[i], st["tau"][("V", l)] = update_V_hidden_2s(Pm, W[i + 1], V[i + 1], V[i], p.rho, p.omega, tau0)
        else:
            V[i] = update_V_last_hidden(Pm, W[L - 1], V[L - 1], st["Lam"], V[i], p.beta, p.rho, p.omega)
        return
    lin = variant == "linear"
    if lin:
        W[i] = update_W_hidden_lin(U[i], Vprev, W[i], p.gamma, p.lam, p.omega, N,
                                   iters=p.power_iters, safety=p.tau_safety)
    else:
        W[i] = update_W_hidden(U[i], Vprev, W[i], p.gamma, p.lam, p.omega, N)
    b = V[i] - Vprev if res else V[i]
    U[i] = update_U(W[i] @ Vprev, b, U[i], p.gamma, p.rho, p.omega)
    Pm = (Vprev + sigma(U[i])) if res else sigma(U[i])
    if next_override is not None:
        V[i] = update_V_region_last(Pm, next_override[0], next_override[1], V[i], p.rho, p.beta_b, _omb(p))
    elif l <= L - 2:
        if lin:
            V[i] = update_V_hidden_lin(Pm, W[i + 1], U[i + 1], V[i + 1], V[i], p.gamma, p.rho, p.omega,
                                       iters=p.power_iters, safety=p.tau_safety)
        else:
            V[i] = update_V_hidden(Pm, W[i + 1], U[i + 1], V[i + 1], V[i], p.gamma, p.rho, p.omega)
    else:
        if lin:
            V[i] = update_V_last_hidden_lin(Pm, W[L - 1], V[L - 1], st["Lam"], V[i], p.beta, p.rho,
                                            p.omega, iters=p.power_iters, safety=p.tau_safety)
        else:
            V[i] = update_V_last_hidden(Pm, W[L - 1], V[L - 1], st["Lam"], V[i], p.beta, p.rho, p.omega)


def _output_block(st: Dict, p: RADMMParams) -> None:
    """W_L, V_L, Lam."""
    W, V = st["W"], st["V"]
    L = len(W)
    Vprev = V[L - 2]
    N = Vprev.shape[1]
    if p.variant == "linear":
        W[L - 1] = update_W_out_lin(V[L - 1], st["Lam"], Vprev, W[L - 1], p.beta, p.lam, p.omega, N,
                                    iters=p.power_iters, safety=p.tau_safety)
    else:
        W[L - 1] = update_W_out(V[L - 1], st["Lam"], Vprev, W[L - 1], p.beta, p.lam, p.omega, N)
    V[L - 1] = update_V_out(st["Y"], st["Lam"], W[L - 1], Vprev, p.beta, p.loss, V0=V[L - 1],
                            tol=p.xent_tol, max_iter=p.xent_max_iter)
    st["Lam"] = update_Lam(st["Lam"], V[L - 1], W[L - 1], Vprev, p.beta)


def serial_sweep(state: Dict, params: RADMMParams, order: Optional[Sequence[int]] = None) -> Dict:
    """One Gauss-Seidel RADMM iteration in place (and returned).

    order: 1-based layer numbers; hidden l -> (W_l, U_l, V_l), l = L -> (W_L, V_L, Lam).
    Default [1..L].  Every layer 1..L must appear exactly once.
    """
    L = len(state["W"])
    if order is None:
        order = range(1, L + 1)
    X = state["X"]
    for l in order:
        if l == L:
            _output_block(state, params)
        elif 1 <= l < L:
            _hidden_block(state, params, l, X if l == 1 else state["V"][l - 2])
        else:
            raise ValueError(f"layer {l} out of range 1..{L}")
    state["it"] += 1
    return state


# ---------------------------------------------------------------------------------------------
# region helpers (PRU)
# ---------------------------------------------------------------------------------------------
def partition_hidden(n_hidden: int, P: int) -> List[Tuple[int, int]]:
    """Balanced contiguous split of hidden layers 1..n_hidden into P regions [(s_r, e_r)], 1-based
    inclusive; sizes differ by at most one (the first n_hidden % P regions get the extra layer)."""
    if not 1 <= P <= n_hidden:
        raise ValueError(f"need 1 <= P <= {n_hidden}, got {P}")
    q, rem = divmod(n_hidden, P)
    out, s = [], 1
    for r in range(P):
        n = q + (1 if r < rem else 0)
        out.append((s, s + n - 1))
        s += n
    return out


def red_black_order(L: int, P: int) -> List[int]:
    """Block order equal to the two-colour PRU schedule: even regions (in order), then odd regions;
    the output group L belongs to the last region."""
    regions = partition_hidden(L - 1, P)
    def layers(r):
        s, e = regions[r]
        return list(range(s, e + 1)) + ([L] if r == P - 1 else [])
    order: List[int] = []
    for colour in (0, 1):
        for r in range(colour, P, 2):
            order += layers(r)
    return order

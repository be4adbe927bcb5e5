"""Proximal linearized RADMM (docs/radmm.md, the general path) for any residual network given as a list of layers.

A network is layers 1..L: hidden layers 1..L-1 (stem, residual blocks) and the head L. Each hidden
layer is a `Layer`: a parameterised map f_l (the residual branch, or the stem) and a fixed,
parameter-free combination φ_l with the layer input x (the shortcut S_l: identity, option-A
subsample + zero pad, or none):

    post = "linear"     V_l = S_l x + U_l            (pre-activation blocks, the stem)
    post = "relu"       V_l = S_l x + relu(U_l)       (the FCResNet: U_l = W_l x)
    post = "relu_sum"   V_l = relu(S_l x + U_l)       (post-activation ResNet blocks)

with U_l = f_l(W_l; x). Samples are rows (batch first); every auxiliary variable (U_l, V_l, V_L,
Λ) is per sample, so a sweep runs over sample chunks and any data set size fits. Block updates
(N times the mean-convention merit, as in blocks.py):

  W_l  one proximal-gradient step on its coupling h_W (three-splitting (γ/2)‖U_l − f_l(W; x)‖²,
       two-splitting (ρ/2)‖V_l − φ_l(x, f_l(W; x))‖²) through autograd, weight decay exact:
       W⁺ = ((τ+ω)W^k − ∇h)/(τ + ω + Nλ), τ by backtracking (doubling until the descent lemma holds).
  U_l  exact elementwise minimiser (three-splitting; blocks.update_U for the ReLU kinds).
  V_l  the separable (ρ/2)‖V − P_l‖² exact, the coupling with layer l+1 (or the head) linearized:
       V⁺ = ((τ+ω)V^k − ∇h + ρP)/(τ + ω + ρ), τ backtracked PER SAMPLE (chunking cannot change it).
  head W_L by the same step on ⟨Λ, V_L − f_L(V_{L−1})⟩ + (β/2)‖V_L − f_L(V_{L−1})‖²; V_L exact
       (squared loss) or by blocks.py's Newton solve (cross-entropy); Λ += β(V_L − f_L(V_{L−1})).

Normalisation layers run in eval mode (fixed statistics), so no term couples samples.
`Engine` holds one region's state (the whole network when serial); the trainer in
general.py adds ranks and exchanges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from radmm_hpc.algos.radmm import blocks as rb

POSTS = ("linear", "relu", "relu_sum")


class Layer:
    """f_l (an nn.Module whose parameters are W_l, kept as one flat vector) and φ_l."""

    def __init__(self, module: nn.Module, post: str = "linear", skip: Optional[Callable] = None):
        if post not in POSTS:
            raise ValueError(f"post must be one of {POSTS}")
        self.module = module.eval()           # eval: normalisation uses fixed statistics
        self.post, self.skip = post, skip
        named = list(module.named_parameters())
        for _, p in named:
            p.requires_grad_(False)
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.w = torch.cat([p.detach().reshape(-1) for _, p in named]).clone() if named else None
        self.dense = None                     # (out, in) when f is x ↦ x Wᵀ (set by layers.fc_layers)

    def params(self, w: Tensor) -> Dict[str, Tensor]:
        out, off = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = s.numel()
            out[n] = w[off:off + k].view(s)
            off += k
        return out

    def f(self, x: Tensor, w: Optional[Tensor] = None) -> Tensor:
        w = self.w if w is None else w
        if self.dense is not None:        # a plain matrix (the FCResNet): skip functional_call's cost
            return x @ w.view(self.dense).T
        return functional_call(self.module, self.params(w), (x,))

    def shortcut(self, x: Tensor):
        return 0.0 if self.skip is None else self.skip(x)

    def phi(self, x: Tensor, u: Tensor) -> Tensor:
        c = self.shortcut(x)
        if self.post == "linear":
            return c + u
        if self.post == "relu":
            return c + torch.relu(u)
        return torch.relu(c + u)

    def g(self, x: Tensor, w: Optional[Tensor] = None) -> Tensor:
        return self.phi(x, self.f(x, w))

    def sync_module(self) -> None:
        """Copy the flat W back into the module (export, scoring)."""
        with torch.no_grad():
            for n, t in self.params(self.w).items():
                self.module.get_parameter(n).copy_(t)


@dataclass
class Params:
    gamma: float = 1.0
    rho: float = 1.0
    beta: float = 2.0
    omega: float = 1e-2
    lam: float = 0.0
    beta_b: float = 1.0
    three: bool = True           # three-splitting (with U) or two-splitting
    loss: str = "squared"        # squared | xent
    max_backtracks: int = 40
    inner: int = 1               # proximal-gradient steps per W block and sweep (each a descent step)
    xent_tol: float = 1e-10
    xent_max_iter: int = 50

    @property
    def omega_b(self) -> float:  # Jacobi boundary blocks: ω + β_b/2, as blocks.py
        return self.omega + 0.5 * self.beta_b


def _ps(t: Tensor) -> Tensor:
    """Per-sample sum of squares (rows are samples)."""
    return (t * t).reshape(t.shape[0], -1).sum(1)


def _pdot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(1)


def _slack(t: Tensor) -> float:
    """Relative round-off allowance of the descent-lemma test: without it float32 rounding
    fails the test at every τ and the step shrinks to nothing."""
    return max(1e-12, 64 * torch.finfo(t.dtype).eps)


def _col(v: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-sample vector over a sample tensor's other dimensions."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def update_u(layer: Layer, x: Tensor, a: Tensor, v: Tensor, uk: Tensor, p: Params) -> Tensor:
    """Exact U step: argmin (γ/2)‖u − a‖² + (ρ/2)‖v − φ(x, u)‖² + (ω/2)‖u − u^k‖², elementwise."""
    c = layer.shortcut(x)
    if layer.post == "relu":
        return rb.update_U(a, v - c, uk, p.gamma, p.rho, p.omega)
    if layer.post == "relu_sum":     # t = c + u: the same 1-D problem shifted by c
        return rb.update_U(a + c, v, uk + c, p.gamma, p.rho, p.omega) - c
    go = p.gamma + p.omega
    m = (p.gamma * a + p.omega * uk) / go
    return (go * m + p.rho * (v - c)) / (go + p.rho)


class Chunks:
    """Per-sample tensors on a store device (the GPU when they fit, else host memory) and the
    slices a sweep walks through; slices move to the compute device on use."""

    def __init__(self, n: int, chunk: int, store, compute, dtype):
        self.n, self.store, self.compute, self.dtype = n, torch.device(store), torch.device(compute), dtype
        cs = chunk if chunk > 0 else n
        self.slices = [slice(i, min(i + cs, n)) for i in range(0, n, cs)]
        self.pin = self.store.type == "cpu" and self.compute.type == "cuda"

    def new(self, shape) -> Tensor:
        t = torch.zeros((self.n, *shape), dtype=self.dtype, device=self.store)
        return t.pin_memory() if self.pin else t

    def get(self, t: Optional[Tensor], sl: slice) -> Optional[Tensor]:
        return None if t is None else t[sl].to(self.compute, non_blocking=True)

    def put(self, t: Tensor, sl: slice, val: Tensor) -> None:
        t[sl].copy_(val, non_blocking=False)


class Engine:
    """Linearized RADMM state and block updates for hidden layers s..e (1-based), plus the head
    when `has_head`. Neighbour data lives in the same dicts: V[s−1] (input boundary), and for
    two-colour W/U/V of layer e+1 (ghost copies, refreshed by the trainer's exchanges)."""

    def __init__(self, layers: List[Layer], p: Params, chunks: Chunks, s: int, e: int,
                 has_head: bool):
        self.layers, self.p, self.ch = layers, p, chunks
        self.L = len(layers)
        self.s, self.e, self.has_head = s, e, has_head
        self.V: Dict[int, Tensor] = {}
        self.U: Dict[int, Tensor] = {}
        self.tauV: Dict[int, Tensor] = {}     # per-sample backtracking memory of the V steps
        self.tauW: Dict[int, float] = {}
        self.Lam = self.Y = None
        self.Q = self.M = None                # Jacobi: boundary copy of V_{s-1} and its dual
        self.Qn = self.Mn = None              # Jacobi: the next region's (Q, M)
        self.tauQ = None

    def layer(self, l: int) -> Layer:
        return self.layers[l - 1]

    def input_of(self, l: int, jacobi: bool = False) -> Tensor:
        return self.Q if (jacobi and l == self.s and self.Q is not None) else self.V[l - 1]

    # ---- start: forward pass (a feasible point) -------------------------------------------------
    @torch.no_grad()
    def forward_init(self, x_in: Tensor) -> Tensor:
        """Given V_{s-1} (X when s = 1), set U, V of layers s..e (and V_L, Λ with the head)."""
        ch = self.ch
        self.V[self.s - 1] = x_in
        for l in range(self.s, self.e + 1):
            lay, x = self.layer(l), self.V[l - 1]
            U = V = None
            for sl in ch.slices:       # chunk by chunk into the store (never all on the device)
                xc = ch.get(x, sl)
                u = lay.f(xc)
                v = lay.phi(xc, u)
                if V is None:
                    U, V = ch.new(u.shape[1:]), ch.new(v.shape[1:])
                ch.put(U, sl, u)
                ch.put(V, sl, v)
            if self.p.three:
                self.U[l] = U
            self.V[l] = V
            self.tauV[l] = torch.ones(ch.n, dtype=ch.dtype, device=ch.store)
        if self.has_head:
            head, x = self.layer(self.L), self.V[self.L - 1]
            VL = Lam = None
            for sl in ch.slices:
                o = head.f(ch.get(x, sl))
                if VL is None:
                    VL, Lam = ch.new(o.shape[1:]), ch.new(o.shape[1:])
                ch.put(VL, sl, o)
                y = ch.get(self.Y, sl)
                ch.put(Lam, sl, rb.lagrange_multiplier_from_loss(o.T, y.T, self.p.loss).T)
            self.V[self.L], self.Lam = VL, Lam
        return self.V[self.e]

    # ---- couplings (per-sample values; N·merit terms) -------------------------------------------
    def h_w(self, l: int, w: Tensor, sl: slice, jacobi: bool) -> Tensor:
        """The W_l coupling on one chunk (scalar)."""
        ch, p, lay = self.ch, self.p, self.layer(l)
        x = ch.get(self.input_of(l, jacobi), sl)
        if l == self.L:
            C = ch.get(self.V[l], sl) - lay.f(x, w)
            return (ch.get(self.Lam, sl) * C).sum() + 0.5 * p.beta * (C * C).sum()
        if p.three:
            r = ch.get(self.U[l], sl) - lay.f(x, w)
        else:
            r = ch.get(self.V[l], sl) - lay.g(x, w)
        return 0.5 * (p.gamma if p.three else p.rho) * (r * r).sum()

    def h_in(self, l: int, x: Tensor, sl: slice) -> Tensor:
        """Per-sample coupling of layer l's input x with layer l (W, U, V of layer l fixed)."""
        ch, p, lay = self.ch, self.p, self.layer(l)
        if l == self.L:
            C = ch.get(self.V[l], sl) - lay.f(x)
            return _pdot(ch.get(self.Lam, sl), C) + 0.5 * p.beta * _ps(C)
        if p.three:
            u = ch.get(self.U[l], sl)
            return 0.5 * p.gamma * _ps(u - lay.f(x)) + 0.5 * p.rho * _ps(ch.get(self.V[l], sl) - lay.phi(x, u))
        return 0.5 * p.rho * _ps(ch.get(self.V[l], sl) - lay.g(x))

    # ---- block steps ---------------------------------------------------------------------------
    def step_w(self, l: int, jacobi: bool = False) -> None:
        """One backtracked proximal-gradient step on W_l (two passes over the chunks and one more
        per doubling of τ); gradient and values summed over chunks."""
        lay, p, N = self.layer(l), self.p, self.ch.n
        if lay.w is None:
            return
        wk = lay.w
        grad = torch.zeros_like(wk)
        h0 = 0.0
        for sl in self.ch.slices:
            w = wk.detach().requires_grad_(True)
            h = self.h_w(l, w, sl, jacobi)
            grad += torch.autograd.grad(h, w)[0]
            h0 += float(h.detach())
        tau = max(0.5 * self.tauW.get(l, 1.0), 1e-12)
        with torch.no_grad():
            for _ in range(p.max_backtracks):
                cand = ((tau + p.omega) * wk - grad) / (tau + p.omega + N * p.lam)
                D = cand - wk
                h1 = sum(float(self.h_w(l, cand, sl, jacobi)) for sl in self.ch.slices)
                if h1 <= h0 + float(grad @ D) + 0.5 * tau * float(D @ D) + _slack(wk) * max(1.0, abs(h0)):
                    break
                tau *= 2.0
        lay.w, self.tauW[l] = cand, tau

    def _bt_step(self, xk: Tensor, h: Callable, exact: Callable, tau0: Tensor) -> tuple:
        """Per-sample backtracked step for an input-type variable. h(x) → per-sample coupling;
        exact(xk, grad, tau) → the candidate. Returns (x⁺, τ per sample)."""
        x = xk.detach().requires_grad_(True)
        hv = h(x)
        grad = torch.autograd.grad(hv.sum(), x)[0]
        h0 = hv.detach()
        tau = torch.clamp(0.5 * tau0, min=1e-12)
        with torch.no_grad():
            cand = exact(xk, grad, _col(tau, xk))
            for _ in range(self.p.max_backtracks):
                D = cand - xk
                bad = h(cand) > h0 + _pdot(grad, D) + 0.5 * tau * _ps(D) + _slack(xk) * torch.clamp(h0.abs(), min=1.0)
                if not bool(bad.any()):
                    break
                tau = torch.where(bad, 2.0 * tau, tau)
                cand = torch.where(_col(bad, xk), exact(xk, grad, _col(tau, xk)), cand)
        return cand, tau

    def step_uv(self, l: int, jacobi: bool = False, override=False) -> None:
        """U_l (exact) and V_l (linearized against layer l+1 or the head) chunk by chunk.
        override: Jacobi region-last V, closed form against the next region's (Q, M)."""
        ch, p, lay = self.ch, self.p, self.layer(l)
        for sl in ch.slices:
            with torch.no_grad():
                x = ch.get(self.input_of(l, jacobi), sl)
                vk = ch.get(self.V[l], sl)
                if p.three:
                    u = update_u(lay, x, lay.f(x), vk, ch.get(self.U[l], sl), p)
                    ch.put(self.U[l], sl, u)
                    P = lay.phi(x, u)
                else:
                    P = lay.g(x)
            if override:
                ob = p.omega_b
                v = ((p.rho * P + p.beta_b * ch.get(self.Qn, sl) + ch.get(self.Mn, sl) + ob * vk)
                     / (p.rho + p.beta_b + ob))
            else:
                def exact(xk, g, t, P=P):
                    return ((t + p.omega) * xk - g + p.rho * P) / (t + p.omega + p.rho)
                v, tau = self._bt_step(vk, lambda z, sl=sl: self.h_in(l + 1, z, sl), exact,
                                       ch.get(self.tauV[l], sl))
                ch.put(self.tauV[l], sl, tau)
            ch.put(self.V[l], sl, v)

    def step_q(self) -> None:
        """Jacobi boundary copy Q of V_{s−1}: coupling with layer s linearized, ⟨M, Q⟩ +
        (β_b/2)‖Q − V_b‖² exact, proximal weight ω_b."""
        ch, p = self.ch, self.p
        ob = p.omega_b
        for sl in ch.slices:
            M, Vb = ch.get(self.M, sl), ch.get(self.V[self.s - 1], sl)

            def exact(xk, g, t, M=M, Vb=Vb):
                return ((t + ob) * xk - g - M + p.beta_b * Vb) / (t + ob + p.beta_b)
            q, tau = self._bt_step(ch.get(self.Q, sl), lambda z, sl=sl: self.h_in(self.s, z, sl), exact,
                                   ch.get(self.tauQ, sl))
            ch.put(self.Q, sl, q)
            ch.put(self.tauQ, sl, tau)

    @torch.no_grad()
    def step_head_vl(self) -> None:
        """V_L and Λ (per sample), after W_L."""
        ch, p, head = self.ch, self.p, self.layer(self.L)
        for sl in ch.slices:
            Z = head.f(ch.get(self.V[self.L - 1], sl))
            Y, Lam = ch.get(self.Y, sl), ch.get(self.Lam, sl)
            if p.loss == "squared":
                VL = (Y - Lam + p.beta * Z) / (1.0 + p.beta)
            else:     # blocks.py's Newton solve with W_L = I and V_{L-1} = Z (samples as columns),
                # in float64: its small (dy per sample) and its stopping test needs the precision
                eye = torch.eye(Z.shape[1], dtype=torch.float64, device=Z.device)
                VL = rb.update_V_out_xent(Y.T.double(), Lam.T.double(), eye, Z.T.double(), p.beta,
                                          V0=ch.get(self.V[self.L], sl).T.double(), tol=p.xent_tol,
                                          max_iter=p.xent_max_iter).T.to(Z.dtype)
            ch.put(self.V[self.L], sl, VL)
            ch.put(self.Lam, sl, Lam + p.beta * (VL - Z))

    def update_layer(self, l: int, jacobi: bool = False, override: bool = False) -> None:
        """One Gauss–Seidel block group: W_l, U_l, V_l (hidden) or W_L, V_L, Λ (head)."""
        for _ in range(self.p.inner):
            self.step_w(l, jacobi)
        if l == self.L:
            self.step_head_vl()
        else:
            self.step_uv(l, jacobi, override)

    # ---- merit ---------------------------------------------------------------------------------
    @torch.no_grad()
    def merit_terms(self, jacobi: bool = False) -> dict:
        """This region's N·(merit) contributions: lagrangian, relaxed objective, primal residual²."""
        ch, p = self.ch, self.p
        out = {"lagrangian": 0.0, "relaxed_objective": 0.0, "primal_sq": 0.0}
        for l in range(self.s, self.e + 1):
            lay = self.layer(l)
            reg = 0.5 * ch.n * p.lam * float(lay.w @ lay.w) if lay.w is not None else 0.0
            t = reg
            for sl in ch.slices:
                x = ch.get(self.input_of(l, jacobi), sl)
                v = ch.get(self.V[l], sl)
                if p.three:
                    u = ch.get(self.U[l], sl)
                    r1, r2 = float(_ps(u - lay.f(x)).sum()), float(_ps(v - lay.phi(x, u)).sum())
                    t += 0.5 * p.gamma * r1 + 0.5 * p.rho * r2
                    out["primal_sq"] += r1 + r2
                else:
                    r2 = float(_ps(v - lay.g(x)).sum())
                    t += 0.5 * p.rho * r2
                    out["primal_sq"] += r2
            out["lagrangian"] += t
            out["relaxed_objective"] += t
        if self.has_head:
            head = self.layer(self.L)
            t = 0.5 * ch.n * p.lam * float(head.w @ head.w)
            dual = 0.0
            for sl in ch.slices:
                VL, Y = ch.get(self.V[self.L], sl), ch.get(self.Y, sl)
                t += ch.n * rb.loss_value(VL.T, Y.T, p.loss) * (VL.shape[0] / ch.n)
                C = VL - head.f(ch.get(self.V[self.L - 1], sl))
                dual += float((ch.get(self.Lam, sl) * C).sum()) + 0.5 * p.beta * float((C * C).sum())
                out["primal_sq"] += float((C * C).sum())
            out["relaxed_objective"] += t
            out["lagrangian"] += t + dual
        if jacobi and self.Q is not None:
            for sl in ch.slices:
                C = ch.get(self.Q, sl) - ch.get(self.V[self.s - 1], sl)
                out["lagrangian"] += float((ch.get(self.M, sl) * C).sum()) + 0.5 * p.beta_b * float((C * C).sum())
        return out

    def owned(self) -> Dict[str, Tensor]:
        """This region's iterates by name (tests, successive differences, checkpoints)."""
        out = {}
        for l in range(self.s, self.e + 1):
            if self.layer(l).w is not None:
                out[f"W/{l}"] = self.layer(l).w
            if l in self.U:
                out[f"U/{l}"] = self.U[l]
            out[f"V/{l}"] = self.V[l]
        if self.has_head:
            out[f"W/{self.L}"] = self.layer(self.L).w
            out[f"V/{self.L}"] = self.V[self.L]
            out["Lam"] = self.Lam
        return out


def serial_sweep(eng: Engine, order=None) -> None:
    """One Gauss–Seidel iteration over all layers (eng must own 1..L−1 and the head)."""
    for l in (order or range(1, eng.L + 1)):
        eng.update_layer(l)

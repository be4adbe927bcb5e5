"""RADMM on the FCResNet: the closed-form and linearized block updates of blocks.py on this
rank's region (regions.py runs the schedules and exchanges).

The state uses the full-length lists of blocks.py (W, U, V) with None for layers other ranks own,
so the same block code runs serially and distributed; rank 0 also holds X, the last rank Y.
Per boundary and iteration, two-colour sends V_e forward (d×N) and (W, U, V)_s back; Jacobi
sends V_e forward (d×N) and (Q, M) back (2·d×N).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from radmm_hpc.algos.radmm import blocks as rb
from radmm_hpc.algos.radmm.regions import RegionTrainer
from radmm_hpc.models.fcresnet import init_weights
from radmm_hpc.scoring import score_predictions, tensors_for


def _params(cfg, task: str) -> rb.RADMMParams:
    r = cfg.radmm
    variant = "two_split" if r.splitting == "two" else ("linear" if r.variant == "linearized" else "prox")
    return rb.RADMMParams(gamma=r.gamma, rho=r.rho, beta=r.beta, omega=r.omega, lam=r.lam,
                          beta_b=r.beta_b, variant=variant,
                          loss="xent" if task == "classification" else "squared")


def _columns(ds, split: str, dtype, device):
    """X with the ones row (samples as columns) and Y (targets, or one-hot for classification)."""
    X, y = tensors_for(ds, split, dtype, device)
    Xc = rb.add_bias_row(X.T.contiguous())
    if ds.task == "classification":
        Y = torch.zeros(ds.n_classes, len(y), dtype=dtype, device=device)
        Y[y, torch.arange(len(y), device=device)] = 1
    else:
        Y = y.T.contiguous()
    return Xc, Y


class FcRadmmTrainer(RegionTrainer):
    copy_before_step = False     # every block update returns a new tensor

    def __init__(self, cfg, rt, ds):
        super().__init__(cfg, rt, ds)
        if not cfg.model.input_bias:
            raise NotImplementedError("RADMM uses the input-bias row (model.input_bias = true)")
        self.p = _params(cfg, ds.task)
        m = cfg.model
        self._init_regions(m.depth + 1)
        L = self.L
        # the same seeded network on every rank; each keeps only its own layers
        gen = torch.Generator().manual_seed(cfg.train.seed)
        full = init_weights(ds.d_in, m.width, m.depth, ds.d_out, True, m.init_scale, gen,
                            self.dtype, self.device)
        W = [w if self.owns(l) else None for l, w in enumerate(full, start=1)]
        del full
        X, Y = _columns(ds, "train", self.dtype, self.device)
        self.N = X.shape[1]
        self.st = {"W": W, "U": [None] * (L - 1), "V": [None] * L, "Lam": None,
                   "X": X if self.first else None, "Y": Y if self.last else None,
                   "tau": {}, "it": 0}
        # Jacobi: this boundary's copy Q of V_{s-1}, its dual M, the received V_{s-1} (Vb), and
        # the next region's (Q, M)
        self.Q = self.M = self.Vb = self.Qn = self.Mn = None
        self.jst = self
        self._remember_initial()
        self._start(self.st["X"])

    def _zeros(self, rows: int) -> torch.Tensor:
        return torch.zeros(rows, self.N, dtype=self.dtype, device=self.device)

    # ---- region hooks (regions.py) ---------------------------------------------------------------
    def _weight(self, l: int) -> torch.Tensor:
        return self.st["W"][l - 1]

    def _forward_region(self, prev) -> torch.Tensor:
        st, L = self.st, self.L
        W, U, V = st["W"], st["U"], st["V"]
        for l in range(self.s, self.e + 1):
            U[l - 1] = W[l - 1] @ prev
            V[l - 1] = rb.sigma(U[l - 1]) + (prev if l > 1 else 0)
            prev = V[l - 1]
        if self.last:
            V[L - 1] = W[L - 1] @ prev
            st["Lam"] = rb.lagrange_multiplier_from_loss(V[L - 1], st["Y"], self.p.loss)
        return prev

    def _start_jacobi(self) -> None:
        # Q_r = V_{s-1} (feasible), M_r = 0; the next region's (Q, M) start as our V_e and 0
        d = self.cfg.model.width
        if not self.first:
            self.Q, self.M = self.Vb.clone(), self._zeros(d)
        if not self.last:
            self.Qn, self.Mn = self.st["V"][self.e - 1].clone(), self._zeros(d)

    def _region_out(self) -> torch.Tensor:
        return self.st["V"][self.e - 1]

    def _boundary_in(self) -> torch.Tensor:
        """V_{s-1} from the previous region (Jacobi keeps it apart from V, as Vb)."""
        d = self.cfg.model.width
        if self.jac:
            if self.Vb is None:
                self.Vb = self._zeros(d)
            return self.Vb
        V = self.st["V"]
        if V[self.s - 2] is None:
            V[self.s - 2] = self._zeros(d)
        return V[self.s - 2]

    def _first_layer(self):
        s, st = self.s, self.st
        return [st["W"][s - 1], st["U"][s - 1], st["V"][s - 1]]

    def _ghost_next(self):
        e, st = self.e, self.st
        d = self.cfg.model.width
        if st["W"][e] is None:
            st["W"][e] = torch.zeros(d, d, dtype=self.dtype, device=self.device)
            st["U"][e] = self._zeros(d)
            st["V"][e] = self._zeros(d)
        return [st["W"][e], st["U"][e], st["V"][e]]

    def _owned_tensors(self):
        st = self.st
        out = []
        for l in self.own_layers():
            out.append(st["W"][l - 1])
            if l < self.L:
                if st["U"][l - 1] is not None:
                    out.append(st["U"][l - 1])
                out.append(st["V"][l - 1])
            else:
                out += [st["V"][l - 1], st["Lam"]]
        if self.jac and not self.first:
            out += [self.Q, self.M]
        return out

    def _serial_sweep(self) -> None:
        rb.serial_sweep(self.st, self.p, self.order)

    def _sweep_region(self) -> None:
        """Gauss–Seidel over this region's layers (and the output group on the last rank); Jacobi
        reads the boundary copy Q for V_{s-1} and ends with the region-last V against (Qn, Mn)."""
        st, p = self.st, self.p
        for l in range(self.s, self.e + 1):
            if l == 1:
                prev = st["X"]
            elif l == self.s and self.jac:
                prev = self.Q
            else:
                prev = st["V"][l - 2]
            nxt = (self.Qn, self.Mn) if (l == self.e and not self.last and self.jac) else None
            rb._hidden_block(st, p, l, prev, next_override=nxt)
        if self.last:
            rb._output_block(st, p)

    def _update_q(self) -> None:
        st, p = self.st, self.p
        i = self.s - 1
        W, U, V = st["W"], st["U"], st["V"]
        if p.variant == "two_split":
            tau0 = 0.5 * st["tau"].get(("Q", self.r), 1.0)
            self.Q, st["tau"][("Q", self.r)] = rb.update_Q_2s(
                W[i], V[i], self.M, self.Vb, self.Q, p.rho, p.beta_b, rb._omb(p), tau0)
        elif p.variant == "linear":
            self.Q = rb.update_Q_lin(W[i], U[i], V[i], U[i], self.M, self.Vb, self.Q, p.gamma,
                                     p.rho, p.beta_b, rb._omb(p), iters=p.power_iters,
                                     safety=p.tau_safety)
        else:
            self.Q = rb.update_Q(W[i], U[i], V[i], U[i], self.M, self.Vb, self.Q, p.gamma,
                                 p.rho, p.beta_b, rb._omb(p))

    def _update_m(self) -> None:
        self.M = rb.update_M(self.M, self.Q, self.Vb, self.p.beta_b)

    def _merit_terms(self) -> dict:
        st, p, N = self.st, self.p, self.N
        W, U, V = st["W"], st["U"], st["V"]
        out = {"lagrangian": 0.0, "relaxed_objective": 0.0, "primal_sq": 0.0}
        for l in range(self.s, self.e + 1):
            i = l - 1
            if l == 1:
                prev = st["X"]
            elif l == self.s and self.jac:
                prev = self.Q
            else:
                prev = V[i - 1]
            if p.variant == "two_split":
                term = rb.merit_hidden_2s(W[i], V[i], prev, l > 1, p.rho, p.lam, N)
                gap = V[i] - rb.sigma(W[i] @ prev) - (prev if l > 1 else 0)
                out["primal_sq"] += float((gap * gap).sum())
            else:
                term = rb.merit_hidden(W[i], U[i], V[i], prev, l > 1, p.gamma, p.rho, p.lam, N)
                g1, g2 = U[i] - W[i] @ prev, V[i] - rb.sigma(U[i]) - (prev if l > 1 else 0)
                out["primal_sq"] += float((g1 * g1).sum() + (g2 * g2).sum())
            out["lagrangian"] += term
            out["relaxed_objective"] += term
        if self.last:
            L = self.L
            for key, dual in (("lagrangian", True), ("relaxed_objective", False)):
                out[key] += rb.merit_out(st["Y"], V[L - 1], st["Lam"], W[L - 1], V[L - 2],
                                         p.beta, p.lam, N, p.loss, with_dual=dual)
            C = V[L - 1] - W[L - 1] @ V[L - 2]
            out["primal_sq"] += float((C * C).sum())
        if self.jac and not self.first:
            out["lagrangian"] += rb.merit_boundary(self.Q, self.M, self.Vb, p.beta_b, N)
        return out

    def _eval_input(self, split: str) -> torch.Tensor:
        if self.first:
            return _columns(self.ds, split, self.dtype, self.device)[0]
        n = len(getattr(self.ds, f"X_{split}"))
        return torch.zeros(self.cfg.model.width, n, dtype=self.dtype, device=self.device)

    def _eval_region(self, prev, split: str) -> torch.Tensor:
        W = self.st["W"]
        for l in range(self.s, self.e + 1):
            prev = rb.sigma(W[l - 1] @ prev) + (prev if l > 1 else 0)
        return W[self.L - 1] @ prev if self.last else prev

    def _eval_scores(self, out, split: str) -> dict:
        _, y = tensors_for(self.ds, split, self.dtype, self.device)
        return score_predictions(out.T, y, self.ds, split)

    # ---- checkpoint state --------------------------------------------------------------------
    def state(self) -> dict:
        st = self.st
        out = {}
        for name in ("W", "U", "V"):
            for i, t in enumerate(st[name]):
                if t is not None:
                    out[f"{name}/{i + 1}"] = t.detach().cpu().numpy()
        if st["Lam"] is not None:
            out["Lam"] = st["Lam"].detach().cpu().numpy()
        for name in ("Q", "M", "Vb", "Qn", "Mn"):
            t = getattr(self, name)
            if t is not None:
                out[f"jacobi/{name}"] = t.detach().cpu().numpy()
        for (kind, idx), tau in st["tau"].items():
            out[f"tau/{kind}/{idx}"] = np.asarray(tau, dtype=np.float64)
        out.update(self._best_state())
        return out

    def load_state(self, state: dict) -> None:
        st = self.st

        def t(a):
            return torch.as_tensor(np.asarray(a), dtype=self.dtype, device=self.device).clone()
        for name in ("W", "U", "V"):
            st[name] = [None] * len(st[name])
        self.best_loss, self.best_W = math.inf, None
        for key, a in state.items():
            parts = key.split("/")
            if parts[0] in ("W", "U", "V"):
                st[parts[0]][int(parts[1]) - 1] = t(a)
            elif parts[0] == "Lam":
                st["Lam"] = t(a)
            elif parts[0] == "jacobi":
                setattr(self, parts[1], t(a))
            elif parts[0] == "tau":
                st["tau"][(parts[1], int(parts[2]))] = float(np.asarray(a))
            else:
                self._load_best(key, a, t)
        if self.jac and not self.first:
            st["V"][self.s - 2] = None

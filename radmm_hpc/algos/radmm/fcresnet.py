"""RADMM as a Trainer: serial, serial red-black, two-colour PRU and Jacobi PRU over MPI ranks.

The block updates are the stateless functions of radmm_blocks.py. This module owns the
distribution: rank r holds hidden layers s_r..e_r (a balanced contiguous region), their W, U, V,
and boundary buffers only; the last rank also holds W_L, V_L, Λ and Y, rank 0 holds X. The state
uses the full-length lists of radmm_blocks with None for layers other ranks own, so the same
block code runs serially and distributed.

Exchanges per iteration (all through the comm layer, one packed message per neighbour):
  two-colour  even regions update, send V_e forward and (W, U, V)_s backward; then odd regions.
              Equals the serial sweep in red-black block order (serial-redblack).
  jacobi      every region updates at once from last iteration's neighbour data; then V_e goes
              forward (d×N) and (Q, M) come back (2·d×N) per boundary.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from radmm_hpc.algos.radmm import blocks as rb
from radmm_hpc.algos.base import Trainer
from radmm_hpc.models.fcresnet import init_weights
from radmm_hpc.scoring import score_predictions, tensors_for

TAG_FWD, TAG_BWD, TAG_EVAL = 11, 12, 13


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


class RadmmTrainer(Trainer):
    name = "radmm"

    def __new__(cls, cfg, rt, ds):
        # other residual networks (and the FCResNet when asked) take the general linearized path
        if cls is RadmmTrainer and (cfg.model.arch != "fcresnet" or cfg.radmmconv.general):
            from radmm_hpc.algos.radmm.general import GeneralRadmmTrainer
            return super().__new__(GeneralRadmmTrainer)
        return super().__new__(cls)

    def __init__(self, cfg, rt, ds):
        super().__init__(cfg, rt, ds)
        if not cfg.model.input_bias:
            raise NotImplementedError("RADMM uses the input-bias row (model.input_bias = true)")
        self.p = _params(cfg, ds.task)
        self.schedule = cfg.radmm.schedule
        self.comm = rt.comm
        m = cfg.model
        self.L = L = m.depth + 1
        distributed = self.schedule in ("two-colour", "jacobi")
        self.P = rt.size if distributed else 1
        self.r = rt.rank if distributed else 0
        self.regions = rb.partition_hidden(L - 1, self.P)
        self.s, self.e = self.regions[self.r]
        self.first, self.last = self.r == 0, self.r == self.P - 1
        self.order = None
        if self.schedule == "serial-redblack":
            self.order = rb.red_black_order(L, cfg.radmm.regions or 1)

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
        self._initial_forward()
        self.succ_sq = 0.0
        # keep_best: the owned weights of the iterate with the lowest forward-pass training loss
        # seen at a logging interval (selected on training data only)
        self.best_loss = math.inf
        self.best_W = None

    # ---- ownership ---------------------------------------------------------------------------
    def owns(self, l: int) -> bool:
        """Layer l (1-based; L is the output layer) belongs to this rank."""
        return self.s <= l <= self.e or (l == self.L and self.last)

    def own_layers(self):
        return list(range(self.s, self.e + 1)) + ([self.L] if self.last else [])

    def _zeros(self, rows: int) -> torch.Tensor:
        return torch.zeros(rows, self.N, dtype=self.dtype, device=self.device)

    # ---- start: a forward pass through the regions (a feasible point) --------------------------
    def _initial_forward(self) -> None:
        st, s, e, L = self.st, self.s, self.e, self.L
        W, U, V = st["W"], st["U"], st["V"]
        d = self.cfg.model.width
        if self.first:
            prev = st["X"]
        else:
            prev = self._zeros(d)
            self.comm.recv([prev], self.r - 1, TAG_FWD)
            V[s - 2] = prev            # boundary copy of V_{s-1}
        for l in range(s, e + 1):
            U[l - 1] = W[l - 1] @ prev
            V[l - 1] = rb.sigma(U[l - 1]) + (prev if l > 1 else 0)
            prev = V[l - 1]
        if not self.last:
            self.comm.send([prev], self.r + 1, TAG_FWD)
        else:
            V[L - 1] = W[L - 1] @ prev
            st["Lam"] = rb.lagrange_multiplier_from_loss(V[L - 1], st["Y"], self.p.loss)
        if self.schedule == "jacobi" and self.P > 1:
            # Q_r = V_{s-1} (feasible), M_r = 0; the next region's (Q, M) start as our V_e and 0
            self.Q = V[s - 2].clone() if not self.first else None
            self.M = self._zeros(d) if not self.first else None
            self.Vb = V[s - 2] if not self.first else None
            if not self.first:
                V[s - 2] = None         # Jacobi reads Q and Vb, not a copy of the neighbour's V
            self.Qn = V[e - 1].clone() if not self.last else None
            self.Mn = self._zeros(d) if not self.last else None
        elif self.schedule == "two-colour" and self.P > 1:
            self._fetch_next_layer()     # (W, U, V) of layer e+1 from the next region

    def _next_layer_buffers(self):
        e = self.e
        d = self.cfg.model.width
        st = self.st
        if st["W"][e] is None:
            st["W"][e] = torch.zeros(d, d, dtype=self.dtype, device=self.device)
            st["U"][e] = self._zeros(d)
            st["V"][e] = self._zeros(d)
        return [st["W"][e], st["U"][e], st["V"][e]]

    def _fetch_next_layer(self) -> None:
        s = self.s
        sends = {self.r - 1: [self.st["W"][s - 1], self.st["U"][s - 1], self.st["V"][s - 1]]} if not self.first else {}
        recvs = {self.r + 1: self._next_layer_buffers()} if not self.last else {}
        self.comm.exchange(sends, recvs, TAG_BWD)

    # ---- one iteration -----------------------------------------------------------------------
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
        if self.schedule == "jacobi" and self.P > 1 and not self.first:
            out += [self.Q, self.M]
        return out

    def step(self, it: int) -> None:
        before = self._owned_tensors()
        if self.schedule in ("serial", "serial-redblack") or self.P == 1:
            with self.timed("compute"):
                rb.serial_sweep(self.st, self.p, self.order)
        elif self.schedule == "two-colour":
            self._two_colour_step()
        else:
            self._jacobi_step()
        with self.timed("compute"):
            after = self._owned_tensors()
            self.succ_sq = sum(float(torch.sum((a - b) ** 2)) for a, b in zip(after, before))

    def _sweep_region(self, override=None) -> None:
        """Gauss–Seidel over this region's layers (and the output group on the last rank)."""
        st, p = self.st, self.p
        for l in range(self.s, self.e + 1):
            if l == 1:
                prev = st["X"]
            elif l == self.s and override is not None and not self.first:
                prev = self.Q
            else:
                prev = st["V"][l - 2]
            nxt = override if (l == self.e and not self.last and override is not None) else None
            rb._hidden_block(st, p, l, prev, next_override=nxt)
        if self.last:
            rb._output_block(st, p)

    def _two_colour_step(self) -> None:
        st, s, e = self.st, self.s, self.e
        for colour in (0, 1):
            if self.r % 2 == colour:
                with self.timed("compute"):
                    self._sweep_region()
            with self.timed("exchange"):
                # the colour that just updated sends; its neighbours (the other colour) receive
                sends, recvs = {}, {}
                if self.r % 2 == colour:
                    if not self.last:
                        sends[self.r + 1] = [st["V"][e - 1]]
                    if not self.first:
                        sends[self.r - 1] = [st["W"][s - 1], st["U"][s - 1], st["V"][s - 1]]
                else:
                    if not self.first:
                        recvs[self.r - 1] = [self._boundary_in()]
                    if not self.last:
                        recvs[self.r + 1] = self._next_layer_buffers()
                self.comm.exchange(sends, recvs, TAG_FWD + colour)

    def _boundary_in(self) -> torch.Tensor:
        V = self.st["V"]
        if V[self.s - 2] is None:
            V[self.s - 2] = self._zeros(self.cfg.model.width)
        return V[self.s - 2]

    def _jacobi_step(self) -> None:
        st, p, s, e = self.st, self.p, self.s, self.e
        with self.timed("compute"):
            if not self.first:
                i = s - 1
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
            self._sweep_region(override=(self.Qn, self.Mn) if not self.last else ())
        with self.timed("exchange"):
            # forward: our last V to the next region (d×N) ...
            self.comm.exchange({self.r + 1: [st["V"][e - 1]]} if not self.last else {},
                               {self.r - 1: [self.Vb]} if not self.first else {}, TAG_FWD)
        with self.timed("compute"):
            if not self.first:
                self.M = rb.update_M(self.M, self.Q, self.Vb, p.beta_b)
        with self.timed("exchange"):
            # ... and the boundary copy and its dual back (2·d×N), packed into one message
            self.comm.exchange({self.r - 1: [self.Q, self.M]} if not self.first else {},
                               {self.r + 1: [self.Qn, self.Mn]} if not self.last else {}, TAG_BWD)

    # ---- metrics -----------------------------------------------------------------------------
    def _local_merit(self) -> dict:
        st, p, N = self.st, self.p, self.N
        W, U, V = st["W"], st["U"], st["V"]
        jac = self.schedule == "jacobi" and self.P > 1
        out = {"lagrangian": 0.0, "relaxed_objective": 0.0, "primal_sq": 0.0,
               "bres_sq": 0.0, "bref_sq": 0.0, "succ_sq": self.succ_sq, "z_sq": 0.0}
        for l in range(self.s, self.e + 1):
            i = l - 1
            if l == 1:
                prev = st["X"]
            elif l == self.s and jac:
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
            out["lagrangian"] += rb.merit_out(st["Y"], V[L - 1], st["Lam"], W[L - 1], V[L - 2],
                                              p.beta, p.lam, N, p.loss, with_dual=True)
            out["relaxed_objective"] += rb.merit_out(st["Y"], V[L - 1], st["Lam"], W[L - 1], V[L - 2],
                                                     p.beta, p.lam, N, p.loss, with_dual=False)
            C = V[L - 1] - W[L - 1] @ V[L - 2]
            out["primal_sq"] += float((C * C).sum())
        if jac and not self.first:
            out["lagrangian"] += rb.merit_boundary(self.Q, self.M, self.Vb, p.beta_b, N)
            out["bres_sq"] = float(((self.Q - self.Vb) ** 2).sum())
            out["bref_sq"] = float((self.Vb ** 2).sum())
        out["z_sq"] = sum(float((t * t).sum()) for t in self._owned_tensors())
        return out

    @torch.no_grad()
    def forward_scores(self) -> dict:
        """Train and test scores by a true forward pass, pipelined through the regions."""
        ds, m = self.ds, self.cfg.model
        scores = {}
        W = self.st["W"]
        for split in ("train", "test"):
            n = len(getattr(ds, f"X_{split}"))
            if self.first:
                X, _ = _columns(ds, split, self.dtype, self.device)
                prev = X
            else:
                prev = torch.zeros(m.width, n, dtype=self.dtype, device=self.device)
                self.comm.recv([prev], self.r - 1, TAG_EVAL)
            for l in range(self.s, self.e + 1):
                prev = rb.sigma(W[l - 1] @ prev) + (prev if l > 1 else 0)
            if not self.last:
                self.comm.send([prev], self.r + 1, TAG_EVAL)
            else:
                _, y = tensors_for(ds, split, self.dtype, self.device)
                scores.update(score_predictions((W[self.L - 1] @ prev).T, y, ds, split))
        return scores

    def metrics(self) -> dict:
        local = self._local_merit()
        scores = self.forward_scores()   # nonempty on the last rank only
        keys = ["train_loss", "test_loss"] + (["train_accuracy", "test_accuracy"]
                                              if self.ds.task == "classification"
                                              else ["train_mse", "test_mse", "train_r2", "test_r2"])
        local.update({k: scores.get(k, 0.0) for k in keys})
        if self.P > 1:
            tot = self.comm.reduce_scalars(local)
        else:
            tot = local
        out = {k: tot[k] for k in keys}
        out["lagrangian"] = tot["lagrangian"]
        out["relaxed_objective"] = tot["relaxed_objective"]
        out["primal_residual"] = math.sqrt(tot["primal_sq"] / self.N)
        out["successive_diff"] = math.sqrt(tot["succ_sq"] / max(tot["z_sq"], 1e-300))
        if self.schedule == "jacobi" and self.P > 1:
            out["boundary_residual"] = math.sqrt(tot["bres_sq"] / max(tot["bref_sq"], 1e-300))
        tol = self.cfg.radmm.tol
        out["converged"] = float(tol > 0 and out["successive_diff"] < tol)
        if self.cfg.radmm.keep_best:
            if out["train_loss"] < self.best_loss:   # a reduced value: the same on every rank
                self.best_loss = out["train_loss"]
                self.best_W = self._snapshot_best()
            out["best_train_loss"] = self.best_loss
        return out

    def _snapshot_best(self) -> dict:
        return {l: self.st["W"][l - 1].clone() for l in self.own_layers()}

    def _export_W(self, l: int) -> torch.Tensor:
        return self.best_W[l] if self.best_W is not None else self.st["W"][l - 1]

    # ---- export and checkpoint state ---------------------------------------------------------
    def export_weights(self):
        """The network with the best forward-pass training loss (keep_best), else the last one."""
        if self.cfg.radmm.keep_best and self.best_W is None:
            self.metrics()      # no logging interval yet: score the current iterate
        mine = {f"{l:05d}": self._export_W(l).detach().cpu().numpy() for l in self.own_layers()}
        if self.P == 1:
            return [self._export_W(l) for l in range(1, self.L + 1)]
        got = self.comm.gather_arrays(mine)
        if got is None:
            return None
        merged = {k: v for part in got for k, v in part.items()}
        return [torch.as_tensor(merged[f"{l:05d}"]) for l in range(1, self.L + 1)]

    def elastic_resume(self) -> bool:
        return self.cfg.radmm.schedule in ("two-colour", "jacobi")

    def remap_state(self, manifest, old_shard):
        from radmm_hpc.checkpoint import remap_radmm
        return remap_radmm(self, manifest, old_shard)

    def state(self) -> dict:
        st = self.st
        out = {}
        for name in ("W", "U", "V"):
            for i, t in enumerate(st[name]):
                if t is not None:
                    out[f"{name}/{i + 1}"] = t.detach().cpu().numpy()
        for name in ("Lam",):
            if st[name] is not None:
                out[name] = st[name].detach().cpu().numpy()
        for name in ("Q", "M", "Vb", "Qn", "Mn"):
            t = getattr(self, name, None)
            if t is not None:
                out[f"jacobi/{name}"] = t.detach().cpu().numpy()
        for (kind, idx), tau in st["tau"].items():
            out[f"tau/{kind}/{idx}"] = np.asarray(tau, dtype=np.float64)
        out.update(self._best_state())
        return out

    def _best_state(self) -> dict:
        """keep_best's snapshot (this rank's layers) for the checkpoint."""
        if self.best_W is None:
            return {}
        out = {"best/loss": np.asarray(self.best_loss, dtype=np.float64)}
        for l, w in self.best_W.items():
            out[f"best/W/{l}"] = w.detach().cpu().numpy()
        return out

    def load_state(self, state: dict) -> None:
        st = self.st
        dev, dt = self.device, self.dtype

        def t(a):
            return torch.as_tensor(np.asarray(a), dtype=dt, device=dev).clone()
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
            elif key == "best/loss":
                self.best_loss = float(np.asarray(a))
            elif parts[0] == "best":
                self.best_W = self.best_W or {}
                self.best_W[int(parts[2])] = t(a)
        if self.schedule == "jacobi" and self.P > 1 and not self.first:
            st["V"][self.s - 2] = None

"""MAC and ParMAC (docs/mac.md): auxiliary-coordinate training, data sharded over ranks.

One loop iteration is one MAC alternation at the current μ:
  W-step  every submodel (a row block of a hidden layer, or the output layer) is fitted by Adam
          minibatch passes over the data shards in a fixed visiting order: at iteration `it`
          submodel m starts on shard (m − it) mod S and moves one shard on after each pass, e·S
          passes in all (e epochs). Under MPI shard j lives on rank j and the submodels (with
          their Adam state) travel the ring; a copy round then gives every rank every submodel.
          A guard keeps a submodel's old rows if its fit made its E_Q term worse.
  Z-step  per-point gradient steps with per-point backtracking, on each shard locally.
Every iters_per_mu iterations a μ stage ends: the multipliers move (variant al), the nested
model is validated on held-out training points, a stage that made it worse is skipped (the best
weights come back, Z restarts from their forward pass), and μ grows by mu_factor.

Deterministic mode: a serial run with mac.shards = P visits the same shards in the same order
with the same minibatches as ParMAC on P ranks, so both give the same model (tests/).
Only submodel bytes cross the network point-to-point; metrics use small control messages.
"""

from __future__ import annotations

import numpy as np
import torch

from radmm_hpc.algos.base import Trainer
from radmm_hpc.algos.mac.parts import Nested, auto_groups, make_submodels, visit_train, z_step
from radmm_hpc.comm import TAG
from radmm_hpc.data import shard_range
from radmm_hpc.models.fcresnet import init_weights
from radmm_hpc.scoring import score_predictions, tensors_for


def split_fit_val(n: int, fraction: float, seed: int):
    """Training rows used to fit, and rows held out to validate the nested model."""
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    n_val = int(round(n * fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class MacTrainer(Trainer):
    name = "mac"

    def __init__(self, cfg, rt, ds):
        super().__init__(cfg, rt, ds)
        c, m = cfg.mac, cfg.model
        self.c, self.comm, self.P, self.rank = c, rt.comm, rt.size, rt.rank
        self.S = c.shards or self.P
        self.my_shards = [self.rank] if self.P > 1 else list(range(self.S))
        self.nested = Nested(m.activation, m.input_bias, m.arch != "mlp", ds.task)
        gen = torch.Generator().manual_seed(cfg.train.seed)
        self.W = init_weights(ds.d_in, m.width, m.depth, ds.d_out, m.input_bias, m.init_scale,
                              gen, self.dtype, self.device)
        shapes = [tuple(w.shape) for w in self.W]
        groups = c.unit_groups or auto_groups(m.depth, m.width, self.S)
        self.subs = make_submodels(shapes, groups)
        self.Mom = [torch.zeros_like(w) for w in self.W]
        self.Var = [torch.zeros_like(w) for w in self.W]
        self.steps = torch.zeros(len(self.subs), dtype=self.dtype, device=self.device)
        X, y = tensors_for(ds, "train", self.dtype, self.device)
        fit, val = split_fit_val(len(X), c.val_fraction, cfg.train.seed)
        self.n_fit = len(fit)
        vi = torch.as_tensor(val if len(val) else fit, device=self.device)
        self.X_val, self.y_val = X[vi], y[vi]
        self.sh = {}
        for j in self.my_shards:
            lo, hi = shard_range(len(fit), j, self.S)
            idx = torch.as_tensor(fit[lo:hi], device=self.device)
            self.sh[j] = {"z0": self.nested.z0(X[idx]), "y": y[idx]}
        self._restart_z()
        self.mu = c.mu0
        # the initial network is the first validated model: a μ stage must beat it
        self.best_W, self.best_val = [w.clone() for w in self.W], self.val_loss()
        self.worse = self.skipped = self.rejected = 0
        self.done = False
        self.last_p2p = 0

    # ---- the μ schedule ----------------------------------------------------------------------------
    def mu_at(self, it: int) -> float:
        return self.c.mu0 * self.c.mu_factor ** (it // self.c.iters_per_mu)

    def _restart_z(self) -> None:
        """Z from a forward pass of the current weights (a feasible start), no multipliers."""
        with torch.no_grad():
            for s in self.sh.values():
                _, hidden = self.nested.forward(self.W, s["z0"][:, :-1] if self.nested.input_bias
                                                else s["z0"])
                s["Z"] = [h.clone() for h in hidden]
                s["Lam"] = [torch.zeros_like(h) for h in hidden] if self.c.variant == "al" else None
                s["alpha"] = torch.ones(len(s["z0"]), dtype=self.dtype, device=self.device)

    # ---- one iteration -------------------------------------------------------------------------------
    def step(self, it: int) -> None:
        if self.done:
            return
        self.mu = self.mu_at(it)
        b0 = self.comm.p2p_sent
        self.w_step(it, self.mu)
        self.last_p2p = self.comm.p2p_sent - b0
        self.zstep(self.mu)
        if (it + 1) % self.c.iters_per_mu == 0:
            self.end_stage(it // self.c.iters_per_mu, self.mu)

    def start_shard(self, sm, it: int) -> int:
        return (sm.index - it) % self.S

    def held(self, shard: int, it: int, t: int):
        return [sm for sm in self.subs if (self.start_shard(sm, it) + t) % self.S == shard]

    def _blocks(self, sms, with_state: bool):
        out = []
        for sm in sms:
            rows = slice(sm.r0, sm.r1)
            out.append(self.W[sm.layer][rows])
            if with_state:
                out += [self.Mom[sm.layer][rows], self.Var[sm.layer][rows],
                        self.steps[sm.index:sm.index + 1]]
        return out

    def _pass_on(self, sends, recvs, with_state: bool, tag: int) -> None:
        """Send submodels to the ring successor, receive the predecessor's (in place)."""
        succ, pred = (self.rank + 1) % self.P, (self.rank - 1) % self.P
        s, r = self._blocks(sends, with_state), self._blocks(recvs, with_state)
        with self.timed("exchange"):
            self.comm.exchange({succ: s} if s else {}, {pred: r} if r else {}, tag=tag)

    def w_step(self, it: int, mu: float) -> None:
        c, seed = self.c, self.cfg.train.seed
        old = [w.clone() for w in self.W]
        hops = c.epochs * self.S
        for t in range(hops):
            with self.timed("compute"):
                for j in self.my_shards:
                    s = self.sh[j]
                    for sm in self.held(j, it, t):
                        rng = np.random.default_rng([seed, it, sm.index, t])
                        visit_train(self.nested, sm, self.W, self.Mom, self.Var, self.steps, s["z0"],
                                    s["Z"], s["y"], s["Lam"], mu, c.lr, c.batch_size, rng)
            if self.P > 1 and t < hops - 1:
                self._pass_on(self.held(self.rank, it, t), self.held((self.rank - 1) % self.P, it, t),
                              True, tag=TAG.MAC_HOP[t % 2])
        # copy round: the final version of every submodel reaches every rank (parameters only)
        final = {sm.index: (self.start_shard(sm, it) + hops - 1) % self.S for sm in self.subs}
        for k in range(self.P - 1):
            mine = [sm for sm in self.subs if final[sm.index] == (self.rank - k) % self.P]
            theirs = [sm for sm in self.subs if final[sm.index] == (self.rank - 1 - k) % self.P]
            self._pass_on(mine, theirs, False, tag=TAG.MAC_COPY[k % 2])
        self._guard(old, mu)

    def _shard_sums(self, fn):
        """fn(shard dict) -> list of floats per shard; the sums over all shards, added in shard
        order (the same numbers on every rank and in a serial run with the same shards)."""
        local = {j: fn(self.sh[j]) for j in self.my_shards}
        parts = {}
        for d in self.comm.allgather_obj(local):
            parts.update(d)
        return [sum(parts[j][i] for j in range(self.S)) for i in range(len(parts[0]))]

    @torch.no_grad()
    def _guard(self, old, mu: float) -> None:
        """Keep a submodel's previous rows where its fit raised its term of E_Q."""
        def terms(s):
            out = []
            for sm in self.subs:
                zin, t = self.nested.fit_inputs(sm, s["z0"], s["Z"], s["Lam"], mu)
                for W in (old, self.W):
                    out.append(float(self.nested.fit_loss(sm, W[sm.layer][sm.r0:sm.r1], zin, t, s["y"])))
            return out
        sums = self._shard_sums(terms)
        for sm in self.subs:
            if sums[2 * sm.index + 1] > sums[2 * sm.index]:
                self.W[sm.layer][sm.r0:sm.r1] = old[sm.layer][sm.r0:sm.r1]
                self.rejected += 1

    def zstep(self, mu: float) -> None:
        with self.timed("compute"):
            W = [w.detach() for w in self.W]
            for s in self.sh.values():
                z_step(self.nested, W, s["z0"], s["Z"], s["y"], s["Lam"], mu, s["alpha"], self.c.z_steps)

    @torch.no_grad()
    def end_stage(self, stage: int, mu: float) -> None:
        c = self.c
        if c.variant == "al":
            for s in self.sh.values():
                for lam, r in zip(s["Lam"], self.nested.residuals(self.W, s["z0"], s["Z"], None, mu)):
                    lam.sub_(mu * r)
        val = self.val_loss()
        if val < self.best_val:   # (a NaN never wins)
            self.best_W, self.best_val, self.worse = [w.clone() for w in self.W], val, 0
        else:   # skip this μ value: back to the best nested model, restart Z from it
            self.worse += 1
            self.skipped += 1
            for w, b in zip(self.W, self.best_W):
                w.copy_(b)
            self._restart_z()
        violation = self.objective_parts(mu)["violation"]
        self.done = (stage + 1 >= c.mu_steps or (c.patience and self.worse >= c.patience)
                     or violation < c.tol)

    # ---- measurements --------------------------------------------------------------------------------
    @torch.no_grad()
    def val_loss(self, weights=None) -> float:
        out, _ = self.nested.forward(weights or self.W, self.X_val)
        return float(self.nested.loss_rows(out, self.y_val).mean())

    @torch.no_grad()
    def objective_parts(self, mu: float) -> dict:
        """E_Q (mean per point, the function the steps minimise) and the constraint violation
        Σ_k‖z_k − f_k(z_{k−1})‖² per point, over all shards."""
        def parts(s):
            loss, pen = self.nested.point_terms(self.W, s["z0"], s["Z"], s["y"], s["Lam"], mu)
            _, viol = self.nested.point_terms(self.W, s["z0"], s["Z"], s["y"], None, mu)
            return [float(loss.sum()), float(pen.sum()), float(2 * viol.sum())]
        loss, pen, viol = self._shard_sums(parts)
        n = max(1, self.n_fit)
        return {"E_Q": (loss + mu * pen) / n, "violation": viol / n, "aux_loss": loss / n}

    @torch.no_grad()
    def scores(self, weights) -> dict:
        out = {}
        for split in ("train", "test"):
            X, y = tensors_for(self.ds, split, weights[0].dtype, weights[0].device)
            out.update(score_predictions(self.nested.forward(weights, X)[0], y, self.ds, split))
        return out

    def submodel_bytes(self) -> int:
        """Point-to-point bytes one W-step sends over all ranks: each submodel makes e·S − 1
        training hops with its Adam state and S − 1 copy hops with its parameters only."""
        if self.P == 1:
            return 0
        item = self.W[0].element_size()
        hops = self.c.epochs * self.S - 1
        return sum(((3 * (sm.r1 - sm.r0) * self.W[sm.layer].shape[1] + 1) * hops
                    + (sm.r1 - sm.r0) * self.W[sm.layer].shape[1] * (self.S - 1)) * item
                   for sm in self.subs)

    def metrics(self):
        m = self.objective_parts(self.mu)
        m.update(self.scores(self.W))
        sent = self.comm.allgather_obj(self.last_p2p)
        m.update({"mu": self.mu, "val_loss": self.val_loss(), "converged": float(self.done),
                  "submodels": float(len(self.subs)), "rejected_fits": float(self.rejected),
                  "skipped_stages": float(self.skipped), "p2p_bytes_last_iter": float(sum(sent)),
                  "submodel_bytes_per_iter": float(self.submodel_bytes())})
        return m

    def _export(self):
        """The validated best nested model, or the current one where it validates better."""
        if self.best_W is not None and self.best_val <= self.val_loss():
            return self.best_W
        return self.W

    def export_weights(self):
        return [w.detach().clone() for w in self._export()] if self.rt.is_root else None

    def final_scores(self, weights):
        return self.scores(weights)

    # ---- checkpoint ----------------------------------------------------------------------------------
    def state(self):
        out = {"steps": self.steps.cpu().numpy(),
               "scalars": np.array([self.mu, self.best_val, self.worse, self.skipped, self.rejected,
                                    float(self.done), self.last_p2p], dtype=np.float64)}
        for i in range(len(self.W)):
            out[f"W/{i}"] = self.W[i].cpu().numpy()
            out[f"Mom/{i}"] = self.Mom[i].cpu().numpy()
            out[f"Var/{i}"] = self.Var[i].cpu().numpy()
            if self.best_W is not None:
                out[f"best/{i}"] = self.best_W[i].cpu().numpy()
        for j, s in self.sh.items():
            out[f"alpha/{j}"] = s["alpha"].cpu().numpy()
            for k, z in enumerate(s["Z"]):
                out[f"Z/{j}/{k}"] = z.cpu().numpy()
                if s["Lam"] is not None:
                    out[f"Lam/{j}/{k}"] = s["Lam"][k].cpu().numpy()
        return out

    def load_state(self, state):
        def put(dst, key):
            dst.copy_(torch.as_tensor(state[key]))
        put(self.steps, "steps")
        sc = state["scalars"]
        self.mu, self.best_val = float(sc[0]), float(sc[1])
        self.worse, self.skipped, self.rejected = int(sc[2]), int(sc[3]), int(sc[4])
        self.done, self.last_p2p = bool(sc[5]), int(sc[6])
        for i in range(len(self.W)):
            put(self.W[i], f"W/{i}")
            put(self.Mom[i], f"Mom/{i}")
            put(self.Var[i], f"Var/{i}")
        self.best_W = ([torch.as_tensor(state[f"best/{i}"]).to(self.W[i]) for i in range(len(self.W))]
                       if "best/0" in state else None)
        for j, s in self.sh.items():
            put(s["alpha"], f"alpha/{j}")
            for k in range(len(s["Z"])):
                put(s["Z"][k], f"Z/{j}/{k}")
                if s["Lam"] is not None:
                    put(s["Lam"][k], f"Lam/{j}/{k}")

"""MAC and ParMAC (docs/mac.md): auxiliary-coordinate training, data sharded over ranks.

One loop iteration is one MAC alternation at the current μ, Z-step then W-step:
  W-step  every submodel (a row block of a hidden layer; the output layer too with
          mac.output = fit) takes mac.epochs Gauss–Newton / Levenberg–Marquardt steps on its
          single-layer fit (parts.Nested.gn_stats / gn_step). One step is one ring epoch:
          at iteration `it` submodel m starts on shard (m − it) mod S and its normal-equation
          statistics accumulate over the shards in ring order; the last holder solves, a copy
          round gives every rank the new rows, and a per-row guard keeps a row's old weights
          where its full-data fit got worse (its damping then grows; it shrinks on success).
  Z-step  per-point gradient steps with per-point backtracking, on each shard locally, in the
          violation coordinates u_k = z_k − f_k(z_{k−1}) (mac.z_coords = u) or in z (z).
Every iters_per_mu iterations a μ stage ends: the multipliers move (variant al), the output layer
is refitted on the nested model's own forward features (the post-processing of Carreira-Perpiñán
& Wang; with mac.output = refit this is the only fit the output layer gets), the nested model is
validated on held-out training points (the best one is exported; with mac.skip_worse a stage that
made it worse is skipped: the best weights come back, Z restarts from their forward pass), and μ
grows by mu_factor.

Deterministic mode: a serial run with mac.shards = P visits the same shards in the same order
and sums the same statistics in the same order as ParMAC on P ranks: the same model (tests/).
Only statistics and weights of submodels cross the network point-to-point; the guard, metrics
and validation use small control messages.
"""

from __future__ import annotations

import numpy as np
import torch

from radmm_hpc.algos.base import Trainer, movement_metrics
from radmm_hpc.algos.mac.parts import Nested, auto_groups, make_submodels, z_step, z_step_u
from radmm_hpc.comm import TAG
from radmm_hpc.data import shard_range, validation_split
from radmm_hpc.models.fcresnet import init_weights
from radmm_hpc.scoring import score_predictions, tensors_for

LM_DOWN, LM_UP, LM_MAX = 1 / 3, 10.0, 1e6   # damping after a kept / undone step
OUT_LM_MIN = 1e-6     # the output layer's damping floor (its fit is convex: no need to hold it back);
                      # hidden rows' floor is mac.lm_min


def weight_movement(weights, initial) -> dict:
    """The movement metrics of every layer (base.movement_metrics, as for RADMM)."""
    return movement_metrics([float(((w.double() - w0.double()) ** 2).sum()) for w, w0 in zip(weights, initial)],
                            [float((w0.double() ** 2).sum()) for w0 in initial])


class MacTrainer(Trainer):
    name = "mac"

    def __init__(self, cfg, rt, ds):
        super().__init__(cfg, rt, ds)
        c, m = cfg.mac, cfg.model
        self.c, self.comm, self.P, self.rank = c, rt.comm, rt.size, rt.rank
        self.S = c.shards or self.P
        self.my_shards = [self.rank] if self.P > 1 else list(range(self.S))
        self.nested = Nested(m.activation, m.input_bias, m.arch != "mlp", ds.task, m.depth)
        gen = torch.Generator().manual_seed(cfg.train.seed)
        self.W = init_weights(ds.d_in, m.width, m.depth, ds.d_out, m.input_bias, m.init_scale,
                              gen, self.dtype, self.device)
        self.W0 = [w.clone() for w in self.W]
        shapes = [tuple(w.shape) for w in self.W]
        groups = c.unit_groups or auto_groups(m.depth, m.width, self.S)
        self.subs = make_submodels(shapes, groups)
        self.out_sub = self.subs[-1]
        self.trained = self.subs if c.output == "fit" else self.subs[:-1]
        # Levenberg–Marquardt damping: one per hidden row, one for the output layer
        self.damp = [torch.full((sm.r1 - sm.r0 if not self.nested.is_output(sm) else 1,), c.lm,
                                dtype=self.dtype, device=self.device) for sm in self.subs]
        X, y = tensors_for(ds, "train", self.dtype, self.device)
        # the rows the Adam baseline's early stopping holds out too (same data.split_seed)
        fit, val = validation_split(len(X), c.val_fraction, cfg.data.split_seed)
        self.n_fit = len(fit)
        vi = torch.as_tensor(val if len(val) else fit, device=self.device)
        self.X_val, self.y_val = X[vi], y[vi]
        self.sh = {}
        for j in self.my_shards:
            lo, hi = shard_range(len(fit), j, self.S)
            idx = torch.as_tensor(fit[lo:hi], device=self.device)
            self.sh[j] = {"X": X[idx], "z0": self.nested.z0(X[idx]), "y": y[idx]}
        self.mu = c.mu0
        self.rejected = self.skipped = self.worse = 0
        self.done = False
        self.last_p2p = self.last_bytes = 0
        # the initial network with its output layer fitted is the first validated model
        self.refit(0)
        self._restart_z()
        self.best_W, self.best_val = [w.clone() for w in self.W], self.val_loss()
        self.stage_val = self.best_val

    # ---- the μ schedule ----------------------------------------------------------------------------
    def mu_at(self, it: int) -> float:
        return self.c.mu0 * self.c.mu_factor ** (it // self.c.iters_per_mu)

    def stage_end(self, it: int) -> bool:
        return (it + 1) % self.c.iters_per_mu == 0

    def _restart_z(self) -> None:
        """Z from a forward pass of the current weights (a feasible start), no multipliers."""
        with torch.no_grad():
            for s in self.sh.values():
                s["Z"] = [h.clone() for h in self.nested.forward(self.W, s["X"])[1]]
                s["Lam"] = [torch.zeros_like(h) for h in s["Z"]] if self.c.variant == "al" else None
                # per-point Z-step sizes: the violations' curvature is at least μ, so start at 1/μ
                s["alpha"] = torch.full((len(s["z0"]),), 1.0 / self.mu, dtype=self.dtype, device=self.device)

    # ---- one iteration -------------------------------------------------------------------------------
    def step(self, it: int) -> None:
        if self.done:
            return
        self.mu = self.mu_at(it)
        b0 = self.comm.p2p_sent
        self.zstep(self.mu)      # Z first: from a feasible Z (start, skipped stage) a W-step has no work
        self.w_step(it, self.mu)
        if self.stage_end(it):
            self.end_stage(it, self.mu)
        self.last_p2p = self.comm.p2p_sent - b0
        self.last_bytes = self.submodel_bytes(it)

    def start_shard(self, sm, it: int) -> int:
        return (sm.index - it) % self.S

    def held(self, subs, shard: int, it: int, t: int):
        return [sm for sm in subs if (self.start_shard(sm, it) + t) % self.S == shard]

    def rows(self, sm, weights=None):
        return (weights or self.W)[sm.layer][sm.r0:sm.r1]

    def _pass_on(self, sends, recvs, tag: int) -> None:
        """Send tensors to the ring successor, receive the predecessor's (in place)."""
        succ, pred = (self.rank + 1) % self.P, (self.rank - 1) % self.P
        with self.timed("exchange"):
            self.comm.exchange({succ: sends} if sends else {}, {pred: recvs} if recvs else {}, tag=tag)

    def w_step(self, it: int, mu: float) -> None:
        def inputs(j, sm):
            s = self.sh[j]
            return (*self.nested.fit_inputs(sm, s["z0"], s["Z"], s["Lam"], mu), s["y"])
        decay = self.c.weight_decay * self.n_fit
        for _ in range(self.c.epochs):
            self.gn_epoch(it, self.trained, inputs, lambda sm: 0.0 if self.nested.is_output(sm) else decay)

    @torch.no_grad()
    def gn_epoch(self, it: int, subs, inputs, ridge) -> None:
        """One Gauss–Newton step of every submodel in `subs`: its statistics travel the ring and
        accumulate over the S shards (inputs(j, sm) = (input, target, y) on shard j), the last
        holder solves, a copy round sends the new rows to every rank, the guard keeps or undoes
        each row. ridge(sm) (sum convention) adds (ridge/2)‖W‖² to the submodel's fit."""
        old = {sm.index: self.rows(sm).clone() for sm in subs}
        stats = {}
        for t in range(self.S):
            with self.timed("compute"):
                for j in self.my_shards:
                    for sm in self.held(subs, j, it, t):
                        zin, tgt, y = inputs(j, sm)
                        st = self.nested.gn_stats(sm, self.rows(sm), zin, tgt, y)
                        if t == 0:
                            stats[sm.index] = st
                        else:
                            for acc, new in zip(stats[sm.index], st):
                                acc += new
                        if t == self.S - 1:
                            self.rows(sm).copy_(self.nested.gn_step(sm, self.rows(sm), stats.pop(sm.index),
                                                                    self.damp[sm.index], ridge(sm)))
            if self.P > 1 and t < self.S - 1:
                mine = self.held(subs, self.rank, it, t)
                theirs = self.held(subs, (self.rank - 1) % self.P, it, t)
                d_in = {sm.index: self.W[sm.layer].shape[1] for sm in theirs}
                for sm in theirs:
                    stats[sm.index] = [torch.empty(sh, dtype=self.dtype, device=self.device)
                                       for sh in self.nested.gn_shapes(sm, d_in[sm.index])]
                self._pass_on([x for sm in mine for x in stats.pop(sm.index)],
                              [x for sm in theirs for x in stats[sm.index]], tag=TAG.MAC_HOP[t % 2])
        self._copy_round(subs, it)
        self._guard(subs, old, inputs, ridge)

    def _copy_round(self, subs, it: int) -> None:
        """The solved rows of every submodel (on its last holder) reach every rank (weights only)."""
        final = {sm.index: (self.start_shard(sm, it) + self.S - 1) % self.S for sm in subs}
        for k in range(self.P - 1):
            mine = [self.rows(sm) for sm in subs if final[sm.index] == (self.rank - k) % self.P]
            theirs = [self.rows(sm) for sm in subs if final[sm.index] == (self.rank - 1 - k) % self.P]
            self._pass_on(mine, theirs, tag=TAG.MAC_COPY[k % 2])

    def _shard_sums(self, fn):
        """fn(shard id) -> list of floats per shard; the sums over all shards, added in shard
        order (the same numbers on every rank and in a serial run with the same shards)."""
        local = {j: fn(j) for j in self.my_shards}
        parts = {}
        for d in self.comm.allgather_obj(local):
            parts.update(d)
        return [sum(parts[j][i] for j in range(self.S)) for i in range(len(parts[0]))]

    @torch.no_grad()
    def _guard(self, subs, old, inputs, ridge) -> None:
        """Keep a row's previous weights where its new fit is worse over all shards (submodels and
        hidden rows touch disjoint terms of E_Q, so E_Q never rises); adapt the damping."""
        def terms(j):
            out = []
            for sm in subs:
                zin, tgt, y = inputs(j, sm)
                for W in (old[sm.index], self.rows(sm)):
                    out += self.nested.fit_terms(sm, W, zin, tgt, y).tolist()
            return out
        sums, k = self._shard_sums(terms), 0
        for sm in subs:
            n = self.damp[sm.index].numel()
            before = torch.tensor(sums[k:k + n], dtype=torch.float64)
            after = torch.tensor(sums[k + n:k + 2 * n], dtype=torch.float64)
            k += 2 * n
            if ridge(sm):
                dims = None if self.nested.is_output(sm) else 1
                before += 0.5 * ridge(sm) * (old[sm.index].double() ** 2).sum(dim=dims).cpu()
                after += 0.5 * ridge(sm) * (self.rows(sm).double() ** 2).sum(dim=dims).cpu()
            ok = (after <= before).to(self.device)
            rows = self.rows(sm)
            if self.nested.is_output(sm):
                if not bool(ok[0]):
                    rows.copy_(old[sm.index])
            else:
                rows[~ok] = old[sm.index][~ok]
            self.rejected += int((~ok).sum())
            lam = self.damp[sm.index]
            floor = OUT_LM_MIN if self.nested.is_output(sm) else self.c.lm_min
            lam.copy_(torch.where(ok, lam * LM_DOWN, lam * LM_UP).clamp(floor, max(LM_MAX, floor)))

    @torch.no_grad()
    def refit(self, it: int) -> None:
        """The output layer fitted on the nested model's own forward features over all shards
        (exact least squares; softmax: mac.refit_steps guarded Newton steps), ridge mac.ridge."""
        feats = {j: self.nested.forward(self.W, s["X"])[1][-1] for j, s in self.sh.items()}
        steps = self.c.refit_steps if self.ds.task == "classification" else 1
        ridge = self.c.ridge * self.n_fit
        for _ in range(steps):
            self.gn_epoch(it, [self.out_sub], lambda j, sm: (feats[j], None, self.sh[j]["y"]),
                          lambda sm: ridge)

    def zstep(self, mu: float) -> None:
        fn = z_step_u if self.c.z_coords == "u" else z_step
        with self.timed("compute"):
            W = [w.detach() for w in self.W]
            for s in self.sh.values():
                fn(self.nested, W, s["z0"], s["Z"], s["y"], s["Lam"], mu, s["alpha"], self.c.z_steps)

    @torch.no_grad()
    def end_stage(self, it: int, mu: float) -> None:
        c = self.c
        if c.variant == "al":
            for s in self.sh.values():
                for lam, r in zip(s["Lam"], self.nested.residuals(self.W, s["z0"], s["Z"], None, mu)):
                    lam.sub_(mu * r)
        self.refit(it)
        val = self.stage_val = self.val_loss()
        if val < self.best_val:   # (a NaN never wins)
            self.best_W, self.best_val, self.worse = [w.clone() for w in self.W], val, 0
        else:
            self.worse += 1
            if c.skip_worse:   # skip this μ value: back to the best nested model, Z from it
                self.skipped += 1
                for w, b in zip(self.W, self.best_W):
                    w.copy_(b)
                self._restart_z()
        violation = self.objective_parts(mu)["violation"]
        stage = it // c.iters_per_mu
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
        def parts(j):
            s = self.sh[j]
            loss, pen = self.nested.point_terms(self.W, s["z0"], s["Z"], s["y"], s["Lam"], mu)
            _, viol = self.nested.point_terms(self.W, s["z0"], s["Z"], s["y"], None, mu)
            return [float(loss.sum()), float(pen.sum()), float(2 * viol.sum())]
        loss, pen, viol = self._shard_sums(parts)
        n = max(1, self.n_fit)
        # hidden rows' weight decay, in the units of their fits (weight_decay per point, times μ)
        decay = 0.5 * mu * self.c.weight_decay * sum(float((w.double() ** 2).sum()) for w in self.W[:-1])
        return {"E_Q": (loss + mu * pen) / n + decay, "violation": viol / n, "aux_loss": loss / n}

    @torch.no_grad()
    def scores(self, weights) -> dict:
        out = {}
        for split in ("train", "test"):
            X, y = tensors_for(self.ds, split, weights[0].dtype, weights[0].device)
            out.update(score_predictions(self.nested.forward(weights, X)[0], y, self.ds, split))
        return out

    def submodel_bytes(self, it: int) -> int:
        """Point-to-point bytes of iteration `it` over all ranks: in each Gauss–Newton epoch a
        submodel's statistics make S − 1 hops and its solved rows S − 1 copy hops; the W-step
        has mac.epochs epochs of the trained submodels, a stage end the output layer's refit."""
        if self.P == 1:
            return 0
        item = self.W[0].element_size()

        def epoch(subs):
            return sum(sum(int(np.prod(sh)) for sh in self.nested.gn_shapes(sm, self.W[sm.layer].shape[1]))
                       + (sm.r1 - sm.r0) * self.W[sm.layer].shape[1] for sm in subs) * (self.S - 1) * item
        total = self.c.epochs * epoch(self.trained)
        if self.stage_end(it):
            total += (self.c.refit_steps if self.ds.task == "classification" else 1) * epoch([self.out_sub])
        return total

    def metrics(self):
        m = self.objective_parts(self.mu)
        m.update(self.scores(self.W))
        sent = self.comm.allgather_obj(self.last_p2p)
        m.update({"mu": self.mu, "val_loss": self.val_loss(), "converged": float(self.done),
                  "submodels": float(len(self.subs)), "rejected_fits": float(self.rejected),
                  "skipped_stages": float(self.skipped),
                  "stage_val_loss": self.stage_val, "p2p_bytes_last_iter": float(sum(sent)),
                  "submodel_bytes_last_iter": float(self.last_bytes)})
        m.update(weight_movement(self.W, self.W0))
        return m

    def _export(self):
        """The validated best nested model, or the current one where it validates better."""
        if self.best_val <= self.val_loss():
            return self.best_W
        return self.W

    def export_weights(self):
        return [w.detach().clone() for w in self._export()] if self.rt.is_root else None

    def final_scores(self, weights):
        return self.scores(weights)

    # ---- checkpoint ----------------------------------------------------------------------------------
    def resume_problem(self, manifest: dict) -> str | None:
        # before the Gauss–Newton W-step MAC fitted by Adam minibatches (mac.lr, mac.batch_size):
        # such a checkpoint holds Adam moments and no damping
        if "batch_size" in manifest.get("config", {}).get("mac", {}):
            return ("it was written by MAC with the Adam W-step (mac.lr, mac.batch_size) of an "
                    "earlier radmm_hpc, whose state the Gauss-Newton W-step cannot continue: start a new run")
        return None

    def state(self):
        out = {"scalars": np.array([self.mu, self.best_val, self.worse, self.skipped, self.rejected,
                                    float(self.done), self.last_p2p, self.last_bytes, self.stage_val],
                                   dtype=np.float64)}
        for i in range(len(self.W)):
            out[f"W/{i}"] = self.W[i].cpu().numpy()
            out[f"best/{i}"] = self.best_W[i].cpu().numpy()
        for sm, lam in zip(self.subs, self.damp):
            out[f"damp/{sm.index}"] = lam.cpu().numpy()
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
        sc = state["scalars"]
        self.mu, self.best_val = float(sc[0]), float(sc[1])
        self.worse, self.skipped, self.rejected = int(sc[2]), int(sc[3]), int(sc[4])
        self.done, self.last_p2p, self.last_bytes = bool(sc[5]), int(sc[6]), int(sc[7])
        self.stage_val = float(sc[8])
        for i in range(len(self.W)):
            put(self.W[i], f"W/{i}")
            put(self.best_W[i], f"best/{i}")
        for sm, lam in zip(self.subs, self.damp):
            put(lam, f"damp/{sm.index}")
        for j, s in self.sh.items():
            put(s["alpha"], f"alpha/{j}")
            for k in range(len(s["Z"])):
                put(s["Z"][k], f"Z/{j}/{k}")
                if s["Lam"] is not None:
                    put(s["Lam"][k], f"Lam/{j}/{k}")

"""The region layer of RADMM, shared by the FCResNet trainer (fcresnet.py) and the general one
(general.py): how layers are spread over ranks, what one iteration exchanges, and what the loop
and the checkpoints see.

Rank r holds hidden layers s_r..e_r (a balanced contiguous region, blocks.partition_hidden) and
the last rank also the output group (W_L, V_L, Λ). Schedules:
  serial, serial-redblack  one rank, every block in order (red-black: the order two-colour gives)
  two-colour  even regions update, send V_e forward and (W, U, V)_s backward; then odd regions.
              Equals the serial sweep in red-black block order.
  jacobi      every region updates at once from last iteration's neighbour data; then V_e goes
              forward and the boundary copy and its dual (Q, M) come back, per boundary.

A trainer supplies the numerics through the hooks below (its sweeps, its boundary tensors, its
merit terms and forward pass); this class runs the schedules, the metrics, keep-best, the export
and the elastic re-sharding of checkpoints (remap_state), whose keys both trainers write:
W/l, U/l, V/l, tau/{W,V}/l, tau/Q/r, Lam, jacobi/{Q,M,Vb,Qn,Mn}, best/loss, best/W/l.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch

from radmm_hpc.algos.base import Trainer, movement_metrics
from radmm_hpc.algos.radmm.blocks import partition_hidden, red_black_order
from radmm_hpc.comm import TAG
from radmm_hpc.config import radmm_schedule
from radmm_hpc.errors import CheckpointError, ConfigError

DISTRIBUTED = ("two-colour", "jacobi", "pipeline")     # the schedules that spread regions over ranks


class RegionTrainer(Trainer):
    name = "radmm"
    # successive differences compare with copies of the owned tensors (False: the trainer's
    # updates replace its tensors, so the old objects are the previous iterate)
    copy_before_step = True

    def _init_regions(self, L: int) -> None:
        cfg = self.cfg
        self.schedule = radmm_schedule(cfg.radmm)
        self.comm = self.rt.comm
        self.L = L
        distributed = self.schedule in DISTRIBUTED
        self.P = self.rt.size if distributed else 1
        self.r = self.rt.rank if distributed else 0
        regions = cfg.radmm.regions or 1 if self.schedule == "serial-redblack" else self.P
        if regions > L - 1:
            raise ConfigError(f"{regions} regions but the network has {L - 1} hidden layers (stem and "
                              f"blocks): use at most {L - 1} ranks")
        self.regions = partition_hidden(L - 1, self.P)
        self.s, self.e = self.regions[self.r]
        self.first, self.last = self.r == 0, self.r == self.P - 1
        self.jac = self.schedule == "jacobi" and self.P > 1
        self.order = red_black_order(L, cfg.radmm.regions or 1) if self.schedule == "serial-redblack" else None
        self.succ_sq = 0.0
        self.W0: Dict[int, torch.Tensor] = {}    # initial weights of the owned layers (movement)
        # keep_best: the owned weights of the iterate with the lowest forward-pass training loss
        # seen at a logging interval (selected on training data only)
        self.best_loss, self.best_W = math.inf, None

    # ---- hooks ---------------------------------------------------------------------------------
    # _weight(l)        W_l as it is now (None: a layer without parameters)
    # _forward_region(x)  the start: U, V of this region (and V_L, Λ on the last rank) from x
    # _start_jacobi()   Jacobi's boundary copies and duals at the start
    # _owned_tensors()  the tensors the successive difference is measured on
    # _serial_sweep()   one iteration on one rank;  _sweep_region(): this region's blocks
    # _region_out()     V_e;  _boundary_in(): V_{s-1} (filled by the previous region)
    # _first_layer()    what the previous region needs of layer s (W, U, V)
    # _ghost_next()     receive buffers for layer e+1's (W, U, V)
    # jst               the object holding Jacobi's Q, M (this boundary) and Qn, Mn (the next)
    # _update_q(), _update_m()   Jacobi's boundary blocks
    # _merit_terms()    lagrangian, relaxed_objective, primal_sq of this region
    # _eval_input(split), _eval_region(x, split), _eval_scores(out, split): the forward pass

    # ---- ownership -----------------------------------------------------------------------------
    def owns(self, l: int) -> bool:
        """Layer l (1-based; L is the output layer) belongs to this rank."""
        return self.s <= l <= self.e or (l == self.L and self.last)

    def own_layers(self) -> List[int]:
        return list(range(self.s, self.e + 1)) + ([self.L] if self.last else [])

    # ---- start ---------------------------------------------------------------------------------
    def _start(self, X) -> None:
        """A forward pass through the regions (a feasible point), then each schedule's buffers."""
        if self.first:
            prev = X
        else:
            prev = self._boundary_in()
            self.comm.recv([prev], self.r - 1, TAG.RADMM_INIT)
        out = self._forward_region(prev)
        if not self.last:
            self.comm.send([out], self.r + 1, TAG.RADMM_INIT)
        if self.jac:
            self._start_jacobi()
        elif self.schedule == "two-colour" and self.P > 1:
            self.comm.exchange({self.r - 1: self._first_layer()} if not self.first else {},
                               {self.r + 1: self._ghost_next()} if not self.last else {}, TAG.RADMM_BWD)

    # ---- one iteration -------------------------------------------------------------------------
    def step(self, it: int) -> None:
        before = self._owned_tensors()
        if self.copy_before_step:
            before = [t.clone() for t in before]
        if self.schedule in ("serial", "serial-redblack") or self.P == 1:
            with self.timed("compute"):
                self._serial_sweep()
        elif self.schedule == "two-colour":
            self._two_colour_step()
        else:
            self._jacobi_step()
        with self.timed("compute"):
            self.succ_sq = sum(float(((a - b) ** 2).sum()) for a, b in zip(self._owned_tensors(), before))

    def _two_colour_step(self) -> None:
        for colour in (0, 1):
            mine = self.r % 2 == colour
            if mine:
                with self.timed("compute"):
                    self._sweep_region()
            with self.timed("exchange"):
                # the colour that just updated sends; its neighbours (the other colour) receive
                sends, recvs = {}, {}
                if mine:
                    if not self.last:
                        sends[self.r + 1] = [self._region_out()]
                    if not self.first:
                        sends[self.r - 1] = self._first_layer()
                else:
                    if not self.first:
                        recvs[self.r - 1] = [self._boundary_in()]
                    if not self.last:
                        recvs[self.r + 1] = self._ghost_next()
                self.comm.exchange(sends, recvs, TAG.RADMM_COLOUR[colour])

    def _jacobi_step(self) -> None:
        j = self.jst
        with self.timed("compute"):
            if not self.first:
                self._update_q()
            self._sweep_region()
        with self.timed("exchange"):
            # forward: our last V to the next region ...
            self.comm.exchange({self.r + 1: [self._region_out()]} if not self.last else {},
                               {self.r - 1: [self._boundary_in()]} if not self.first else {}, TAG.RADMM_FWD)
        with self.timed("compute"):
            if not self.first:
                self._update_m()
        with self.timed("exchange"):
            # ... and the boundary copy and its dual back, packed into one message
            self.comm.exchange({self.r - 1: [j.Q, j.M]} if not self.first else {},
                               {self.r + 1: [j.Qn, j.Mn]} if not self.last else {}, TAG.RADMM_BWD)

    # ---- metrics -------------------------------------------------------------------------------
    def _remember_initial(self) -> None:
        """Keep the owned layers' initial weights: the movement metric compares with them (the
        seeded initialisation, rebuilt identically on resume)."""
        self.W0 = {l: w.detach().clone() for l in self.own_layers() if (w := self._weight(l)) is not None}

    def _movement_terms(self) -> dict:
        out = {}
        for l, w0 in self.W0.items():
            out[f"mv_num/{l}"] = float(((self._weight(l) - w0) ** 2).sum())
            out[f"mv_den/{l}"] = float((w0 * w0).sum())
        return out

    def _movement(self, tot: dict) -> dict:
        """The movement metrics (base.movement_metrics) of layers 1..L (None for layers without
        parameters) from the summed terms."""
        keys = [(f"mv_num/{l}", f"mv_den/{l}") for l in range(1, self.L + 1)]
        return movement_metrics([tot.get(n) if d in tot else None for n, d in keys],
                                [tot.get(d) for _, d in keys])

    def _local_merit(self) -> dict:
        out = dict(self._merit_terms(), succ_sq=self.succ_sq, bres_sq=0.0, bref_sq=0.0,
                   z_sq=sum(float((t * t).sum()) for t in self._owned_tensors()))
        if self.jac and not self.first:
            Vb = self._boundary_in()
            out["bres_sq"] = float(((self.jst.Q - Vb) ** 2).sum())
            out["bref_sq"] = float((Vb ** 2).sum())
        return out

    @torch.no_grad()
    def forward_scores(self) -> dict:
        """Train and test scores by a true forward pass, pipelined through the regions."""
        scores = {}
        for split in ("train", "test"):
            prev = self._eval_input(split)
            if not self.first:
                self.comm.recv([prev], self.r - 1, TAG.RADMM_EVAL)
            out = self._eval_region(prev, split)
            if not self.last:
                self.comm.send([out], self.r + 1, TAG.RADMM_EVAL)
            else:
                scores.update(self._eval_scores(out, split))
        return scores

    def metrics(self) -> dict:
        local = self._local_merit()
        scores = self.forward_scores()   # nonempty on the last rank only
        keys = ["train_loss", "test_loss"] + (["train_accuracy", "test_accuracy"]
                                              if self.ds.task == "classification"
                                              else ["train_mse", "test_mse", "train_r2", "test_r2"])
        local.update({k: scores.get(k, 0.0) for k in keys})
        local.update(self._movement_terms_all())
        tot = self.comm.reduce_scalars(local) if self.P > 1 else local
        out = {k: tot[k] for k in keys}
        out["lagrangian"] = tot["lagrangian"]
        out["relaxed_objective"] = tot["relaxed_objective"]
        out["primal_residual"] = math.sqrt(tot["primal_sq"] / self.N)
        out["successive_diff"] = math.sqrt(tot["succ_sq"] / max(tot["z_sq"], 1e-300))
        if self.jac:
            out["boundary_residual"] = math.sqrt(tot["bres_sq"] / max(tot["bref_sq"], 1e-300))
        tol = self.cfg.radmm.tol
        out["converged"] = float(tol > 0 and out["successive_diff"] < tol)
        out.update(self._movement(tot))
        out.update(self._extra_metrics(tot))
        self._keep_best(out)
        return out

    def _extra_metrics(self, tot: dict) -> dict:
        """A trainer's own reduced quantities (its _merit_terms keys beyond the common ones)."""
        return {}

    def _movement_terms_all(self) -> dict:
        """Movement terms with a key for every layer on every rank (the reduction needs the same
        keys everywhere): zeros for the layers this rank does not own."""
        out = {f"mv_{k}/{l}": 0.0 for l in range(1, self.L + 1) for k in ("num", "den")
               if self._has_weights(l)}
        out.update(self._movement_terms())
        return out

    def _has_weights(self, l: int) -> bool:
        return True

    def _keep_best(self, out: dict) -> None:
        """keep_best: the iterate with the lowest forward-pass training loss at a logging interval."""
        if self.cfg.radmm.keep_best:
            if out["train_loss"] < self.best_loss:   # a reduced value: the same on every rank
                self.best_loss = out["train_loss"]
                self.best_W = {l: w.clone() for l in self.own_layers() if (w := self._weight(l)) is not None}
            out["best_train_loss"] = self.best_loss

    # ---- export --------------------------------------------------------------------------------
    def _export_W(self, l: int) -> Optional[torch.Tensor]:
        if self.best_W is not None and l in self.best_W:
            return self.best_W[l]
        return self._weight(l)

    def export_weights(self):
        """W_1..W_L (None for layers without parameters) on rank 0: the iterate with the best
        forward-pass training loss (keep_best), else the last one."""
        if self.cfg.radmm.keep_best and self.best_W is None:
            self.metrics()      # no logging interval yet: score the current iterate
        if self.P == 1:
            return [self._export_W(l) for l in range(1, self.L + 1)]
        got = self.comm.gather_arrays({f"{l:05d}": w.detach().cpu().numpy() for l in self.own_layers()
                                       if (w := self._export_W(l)) is not None})
        if got is None:
            return None
        merged = {k: v for part in got for k, v in part.items()}
        return [torch.as_tensor(merged[f"{l:05d}"]) if f"{l:05d}" in merged else None
                for l in range(1, self.L + 1)]

    # ---- checkpoints ---------------------------------------------------------------------------
    def _best_state(self) -> Dict[str, np.ndarray]:
        """keep_best's snapshot (this rank's layers) for the checkpoint."""
        if self.best_W is None:
            return {}
        out = {"best/loss": np.asarray(self.best_loss, dtype=np.float64)}
        for l, w in self.best_W.items():
            out[f"best/W/{l}"] = w.detach().cpu().numpy()
        return out

    def _load_best(self, key: str, a, tensor) -> bool:
        """Restore one keep_best entry (True) or leave the key to the caller (False)."""
        if key == "best/loss":
            self.best_loss = float(np.asarray(a))
        elif key.startswith("best/"):
            self.best_W = self.best_W or {}
            self.best_W[int(key.split("/")[2])] = tensor(a)
        else:
            return False
        return True

    def partition(self) -> list:
        return [list(r) for r in self.regions]

    def manifest_fields(self) -> dict:
        return {"schedule": self.schedule, "n_layers": self.L}

    def resume_problem(self, manifest: dict) -> Optional[str]:
        P_old = manifest["world_size"]
        # the anchored variant and the paper variants keep different state
        old = manifest.get("config", {}).get("radmm", {}).get("variant", "proximal")
        if (old == "anchored") != (self.cfg.radmm.variant == "anchored"):
            return (f"it was written by radmm.variant = {old} and this run asks for "
                    f"{self.cfg.radmm.variant}: resume with --set radmm.variant={old}")
        if self.schedule in DISTRIBUTED and \
                manifest["partition"] != [list(r) for r in partition_hidden(self.L - 1, P_old)]:
            return (f"layer partition {manifest['partition']} does not match {P_old} ranks and "
                    f"{self.L - 1} hidden layers")
        return None

    def elastic_resume(self) -> bool:
        return self.schedule in DISTRIBUTED

    def remap_state(self, manifest: dict, old_state) -> Dict[str, np.ndarray]:
        """This rank's state for its region, from the old ranks' states (old_state(j)).

        Layers (W, U, V, their step sizes, the best iterate's W) come from their old owners; the
        output group (W_L, V_L, Λ) from the old last rank. Two-colour boundary copies are the
        owners' current values (which equal the copies at an iteration boundary). Jacobi boundary
        copies and duals: where a new boundary starts at the same layer as an old one, (Q, M) and
        its step size carry over; at a new boundary Q_r = V_{s_r-1} (the owner's V) and M_r = 0, a
        feasible start of the consensus.
        """
        old_regions = [tuple(r) for r in manifest["partition"]]
        P_old = len(old_regions)
        L = self.L
        old_jacobi = manifest.get("schedule") == "jacobi" and P_old > 1

        def owner(l: int) -> int:
            if l == L:
                return P_old - 1
            for k, (s, e) in enumerate(old_regions):
                if s <= l <= e:
                    return k
            raise CheckpointError(f"layer {l} is in no region of the checkpoint's partition {old_regions}")

        out: Dict[str, np.ndarray] = {}

        def layer(l: int, names=("W", "U", "V"), taus=True):
            src = old_state(owner(l))
            for n in names:
                if f"{n}/{l}" in src:
                    out[f"{n}/{l}"] = src[f"{n}/{l}"]
            if taus:
                for k in (f"tau/W/{l}", f"tau/V/{l}", f"best/W/{l}"):
                    if k in src:
                        out[k] = src[k]

        def boundary(s: int):
            """(Q, M, tau) for a boundary whose region starts at hidden layer s."""
            if old_jacobi:
                for k, (so, _) in enumerate(old_regions):
                    if k > 0 and so == s:
                        src = old_state(k)
                        return src["jacobi/Q"], src["jacobi/M"], src.get(f"tau/Q/{k}")
            V = old_state(owner(s - 1))[f"V/{s - 1}"]
            return V, np.zeros_like(V), None

        for l in self.own_layers():
            layer(l)
        if "best/loss" in old_state(0):       # keep_best: the loss is the same on every rank
            out["best/loss"] = old_state(0)["best/loss"]
        if self.last:
            out["Lam"] = old_state(P_old - 1)["Lam"]
        if self.P > 1 and self.schedule == "two-colour":
            if not self.first:
                layer(self.s - 1, names=("V",), taus=False)
            if not self.last:
                layer(self.e + 1, taus=False)
        elif self.P > 1 and self.schedule == "jacobi":
            if not self.first:
                Q, M, tau = boundary(self.s)
                out["jacobi/Q"], out["jacobi/M"] = Q, M
                out["jacobi/Vb"] = old_state(owner(self.s - 1))[f"V/{self.s - 1}"]
                if tau is not None:
                    out[f"tau/Q/{self.r}"] = tau
            if not self.last:
                Q, M, _ = boundary(self.e + 1)
                out["jacobi/Qn"], out["jacobi/Mn"] = Q, M
        return out

"""RADMM for general residual networks (convolutional ResNets) over MPI ranks: the trainer that
RadmmTrainer becomes when model.arch is not the FCResNet (or radmmconv.general = true).

Same distribution as radmm.py: rank r owns hidden layers s_r..e_r (a balanced contiguous region of
[stem, block_1, ..., block_n]) with their W (one flat vector per layer), U and V (per sample, on
the rank's GPU when they fit, else in host memory), the last rank also the head, V_L, Λ and Y,
rank 0 the input X. Schedules and exchanges as for the FCResNet:
  two-colour  even regions update, send V_e forward and (W, U, V)_s backward; then odd regions
              (== serial sweep in red-black order, serial-redblack).
  jacobi      every region at once; V_e forward, (Q, M) back (per boundary).
Block updates: radmm_general.Engine.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from radmm_hpc.algos.radmm import blocks as rb
from radmm_hpc.algos.base import Trainer
from radmm_hpc.algos.radmm.fcresnet import RadmmTrainer
from radmm_hpc.algos.radmm.engine import Chunks, Engine, Params
from radmm_hpc.algos.radmm.layers import fc_layers, module_layers
from radmm_hpc.errors import ConfigError
from radmm_hpc.scoring import calibrate_norm, score_predictions, tensors_for

TAG_FWD, TAG_BWD, TAG_EVAL, TAG_INIT = 21, 22, 23, 24


PENALTIES = ("gamma", "rho", "beta", "lam", "omega")


def params_from(cfg, task: str) -> Params:
    # the FCResNet (radmmconv.general) keeps [radmm]'s penalties; other networks use [radmmconv]'s
    r, c = cfg.radmm, cfg.radmmconv
    pen = {k: getattr(r if cfg.model.arch == "fcresnet" else c, k) for k in PENALTIES}
    return Params(beta_b=r.beta_b, three=r.splitting == "three",
                  loss="xent" if task == "classification" else "squared",
                  max_backtracks=c.max_backtracks, inner=c.inner_steps, **pen)


def build_layers(cfg, ds, dtype, device):
    """(layers, fc, model): the network as Layers, seeded by train.seed (the same on every rank);
    model is the nn.Module they are views of (None for the FCResNet)."""
    gen = torch.Generator().manual_seed(cfg.train.seed)
    m = cfg.model
    if m.arch == "fcresnet":
        from radmm_hpc.models.fcresnet import init_weights
        w = init_weights(ds.d_in, m.width, m.depth, ds.d_out, True, m.init_scale, gen, dtype, device)
        return fc_layers(w), True, None
    from radmm_hpc.models import build_model
    model = build_model(cfg, ds, gen, dtype, device)
    calibrate_norm(model, ds, dtype, device)
    return module_layers(model), False, model


def inputs(ds, split, dtype, device, fc: bool):
    """Samples as rows; the FCResNet's input gets its ones column (bias of layer 1)."""
    X, y = tensors_for(ds, split, dtype, device)
    if fc:
        X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=dtype, device=device)], dim=1)
    return X, y


def targets(ds, y):
    if ds.task == "classification":
        Y = torch.zeros(len(y), ds.n_classes, dtype=torch.float64, device=y.device)
        Y[torch.arange(len(y), device=y.device), y] = 1
        return Y
    return y


def aux_bytes_estimate(shapes, n: int, three: bool, elem: int) -> int:
    """Bytes of one region's per-sample state: V (and U) of its layers + two boundary tensors."""
    per = sum(int(np.prod(s)) for s in shapes)
    return elem * n * (per * (2 if three else 1) + 2 * max(int(np.prod(s)) for s in shapes))


class GeneralRadmmTrainer(RadmmTrainer):
    name = "radmm"

    def __init__(self, cfg, rt, ds):
        Trainer.__init__(self, cfg, rt, ds)
        self.p = params_from(cfg, ds.task)
        self.schedule = cfg.radmm.schedule
        self.comm = rt.comm
        self.layers, self.fc, self.model = build_layers(cfg, ds, self.dtype, self.device)
        self.L = L = len(self.layers)
        distributed = self.schedule in ("two-colour", "jacobi")
        self.P = rt.size if distributed else 1
        self.r = rt.rank if distributed else 0
        regions = cfg.radmm.regions or 1 if self.schedule == "serial-redblack" else self.P
        if regions > L - 1:
            raise ConfigError(f"{regions} regions but the network has {L - 1} hidden layers (stem and "
                              f"blocks): use at most {L - 1} ranks")
        self.regions = rb.partition_hidden(L - 1, self.P)
        if self.P > 1 and self.device.type == "cuda":
            self.comm.cuda_aware()        # collective start-up probe: direct GPU messages or staging
        self.s, self.e = self.regions[self.r]
        self.first, self.last = self.r == 0, self.r == self.P - 1
        self.jac = self.schedule == "jacobi" and self.P > 1
        self.order = None
        if self.schedule == "serial-redblack":
            self.order = rb.red_black_order(L, cfg.radmm.regions or 1)
        X, y = inputs(ds, "train", self.dtype, self.device, self.fc)
        self.N = N = X.shape[0]
        self.shapes = self._shapes(X[:1])
        store = self._store_device()
        self.ch = Chunks(N, cfg.radmmconv.chunk, store, self.device, self.dtype)
        self.eng = Engine(self.layers, self.p, self.ch, self.s, self.e, self.last)
        if self.last:
            Y = targets(ds, y).to(self.dtype)
            self.eng.Y = Y.to(store)
        self._initial_forward(X.to(store) if self.first else None)
        self.succ_sq = 0.0
        self.best_loss, self.best_W = math.inf, None

    # ---- set-up --------------------------------------------------------------------------------
    @torch.no_grad()
    def _shapes(self, x1):
        """Per-sample shape of V_0..V_L (one sample through the network; every rank)."""
        out = [tuple(x1.shape[1:])]
        for lay in self.layers:
            x1 = lay.g(x1)
            out.append(tuple(x1.shape[1:]))
        return out

    def _store_device(self):
        """Per-sample state on the compute device when it fits (radmmconv.aux_memory), else host."""
        mode = self.cfg.radmmconv.aux_memory
        if self.device.type != "cuda" or mode == "host":
            return torch.device("cpu")
        if mode == "device":
            return self.device
        need = aux_bytes_estimate(self.shapes[self.s:self.e + 1], self.N, self.p.three,
                                  torch.finfo(self.dtype).bits // 8)
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.device if need < 0.6 * free else torch.device("cpu")

    def _new(self, l):
        return self.ch.new(self.shapes[l])

    def owns(self, l: int) -> bool:
        return self.s <= l <= self.e or (l == self.L and self.last)

    def _initial_forward(self, X) -> None:
        eng = self.eng
        if self.first:
            prev = X
        else:
            prev = self._new(self.s - 1)
            self.comm.recv([prev], self.r - 1, TAG_INIT)
        out = eng.forward_init(prev)
        if not self.last:
            self.comm.send([out], self.r + 1, TAG_INIT)
        if self.jac:
            if not self.first:
                eng.Q = eng.V[self.s - 1].clone()
                eng.M = torch.zeros_like(eng.Q)
                eng.tauQ = torch.ones(self.N, dtype=self.dtype, device=self.ch.store)
            if not self.last:
                eng.Qn = eng.V[self.e].clone()
                eng.Mn = torch.zeros_like(eng.Qn)
        elif self.schedule == "two-colour" and self.P > 1:
            self._exchange({self.r - 1: self._first_layer()} if not self.first else {},
                           {self.r + 1: self._ghost_next()} if not self.last else {}, TAG_BWD)

    # ---- memory model (docs/radmm.md, "Memory per rank") ---------------------------------------
    def predicted_state_bytes(self) -> int:
        """Bytes of this rank's iterates by the formula of the docs: per sample, V_l (and U_l)
        and one τ per owned layer, the boundary copies of the schedule, V_L and Λ on the last
        rank; plus the owned (and ghost) weight vectors. Equals the numeric state() minus the
        keep_best weights and the scalar τ of the W steps (a test checks it)."""
        size = [int(np.prod(s)) for s in self.shapes]        # |V_l| per sample, l = 0..L
        k = 2 if self.p.three else 1
        per = sum(k * size[l] + 1 for l in range(self.s, self.e + 1))
        nw = sum(self.layers[l - 1].w.numel() for l in self.own_layers() if self.layers[l - 1].w is not None)
        if self.P > 1 and self.schedule == "two-colour":
            per += size[self.s - 1] if not self.first else 0
            if not self.last:
                per += k * size[self.e + 1]
                nw += self.layers[self.e].w.numel()
        elif self.jac:
            per += (3 * size[self.s - 1] + 1 if not self.first else 0) + (2 * size[self.e] if not self.last else 0)
        if self.last:
            per += 2 * size[self.L]
        return (torch.finfo(self.dtype).bits // 8) * (self.N * per + nw)

    # ---- exchanges -----------------------------------------------------------------------------
    def _exchange(self, sends, recvs, tag):
        self.comm.exchange_device(sends, recvs, tag)

    def _first_layer(self):
        s, eng = self.s, self.eng
        out = [w for w in [self.layers[s - 1].w] if w is not None]
        return out + ([eng.U[s]] if self.p.three else []) + [eng.V[s]]

    def _ghost_next(self):
        """Receive buffers for layer e+1 (W, U, V), the next region's first layer."""
        n, eng = self.e + 1, self.eng
        if n not in eng.V:
            eng.V[n] = self._new(n)
            if self.p.three:
                eng.U[n] = self._new(n)
        lay = self.layers[n - 1]
        out = [lay.w] if lay.w is not None else []
        return out + ([eng.U[n]] if self.p.three else []) + [eng.V[n]]

    def _boundary_in(self):
        if (self.s - 1) not in self.eng.V:
            self.eng.V[self.s - 1] = self._new(self.s - 1)
        return self.eng.V[self.s - 1]

    # ---- one iteration -------------------------------------------------------------------------
    def _owned_tensors(self):
        """The weights: the successive difference is measured on them (a copy of the per-sample
        state every iteration would double the memory that chunking saves)."""
        return [self.layers[l - 1].w for l in self.own_layers() if self.layers[l - 1].w is not None]

    def step(self, it: int) -> None:
        before = [t.clone() for t in self._owned_tensors()]
        if self.schedule in ("serial", "serial-redblack") or self.P == 1:
            with self.timed("compute"):
                for l in (self.order or range(1, self.L + 1)):
                    self.eng.update_layer(l)
        elif self.schedule == "two-colour":
            self._two_colour_step()
        else:
            self._jacobi_step()
        with self.timed("compute"):
            self.succ_sq = sum(float(((a - b) ** 2).sum()) for a, b in zip(self._owned_tensors(), before))

    def _sweep_region(self) -> None:
        for l in range(self.s, self.e + 1):
            self.eng.update_layer(l, jacobi=self.jac, override=self.jac and l == self.e and not self.last)
        if self.last:
            self.eng.update_layer(self.L, jacobi=self.jac)

    def _two_colour_step(self) -> None:
        for colour in (0, 1):
            mine = self.r % 2 == colour
            if mine:
                with self.timed("compute"):
                    self._sweep_region()
            with self.timed("exchange"):
                sends, recvs = {}, {}
                if mine:
                    if not self.last:
                        sends[self.r + 1] = [self.eng.V[self.e]]
                    if not self.first:
                        sends[self.r - 1] = self._first_layer()
                else:
                    if not self.first:
                        recvs[self.r - 1] = [self._boundary_in()]
                    if not self.last:
                        recvs[self.r + 1] = self._ghost_next()
                self._exchange(sends, recvs, TAG_FWD + 10 * colour)

    def _jacobi_step(self) -> None:
        eng, p = self.eng, self.p
        with self.timed("compute"):
            if not self.first:
                eng.step_q()
            self._sweep_region()
        with self.timed("exchange"):
            self._exchange({self.r + 1: [eng.V[self.e]]} if not self.last else {},
                           {self.r - 1: [eng.V[self.s - 1]]} if not self.first else {}, TAG_FWD)
        with self.timed("compute"):
            if not self.first:
                eng.M.add_(p.beta_b * (eng.Q - eng.V[self.s - 1]))
        with self.timed("exchange"):
            self._exchange({self.r - 1: [eng.Q, eng.M]} if not self.first else {},
                           {self.r + 1: [eng.Qn, eng.Mn]} if not self.last else {}, TAG_BWD)

    # ---- metrics -------------------------------------------------------------------------------
    def _local_merit(self) -> dict:
        N = self.N
        t = self.eng.merit_terms(self.jac)
        out = {"lagrangian": t["lagrangian"] / N, "relaxed_objective": t["relaxed_objective"] / N,
               "primal_sq": t["primal_sq"], "bres_sq": 0.0, "bref_sq": 0.0, "succ_sq": self.succ_sq,
               "z_sq": sum(float((x * x).sum()) for x in self._owned_tensors())}
        if self.jac and not self.first:
            out["bres_sq"] = float(((self.eng.Q - self.eng.V[self.s - 1]) ** 2).sum())
            out["bref_sq"] = float((self.eng.V[self.s - 1] ** 2).sum())
        return out

    @torch.no_grad()
    def forward_scores(self) -> dict:
        """Train and test scores by a true forward pass, pipelined through the regions, in chunks."""
        scores = {}
        for split in ("train", "test"):
            X, y = inputs(self.ds, split, self.dtype, self.ch.store, self.fc)
            n = X.shape[0]
            ch = Chunks(n, self.cfg.radmmconv.chunk, self.ch.store, self.device, self.dtype)
            if self.first:
                prev = X
            else:
                prev = ch.new(self.shapes[self.s - 1])
                self.comm.recv([prev], self.r - 1, TAG_EVAL)
            hi = self.L if self.last else self.e
            out = None
            for sl in ch.slices:
                h = ch.get(prev, sl)
                for l in range(self.s, hi + 1):
                    h = self.layers[l - 1].g(h)
                if out is None:
                    out = ch.new(h.shape[1:])
                ch.put(out, sl, h)
            if not self.last:
                self.comm.send([out], self.r + 1, TAG_EVAL)
            else:
                scores.update(score_predictions(out.to(self.device), y.to(self.device), self.ds, split))
        return scores

    def _snapshot_best(self):
        return {l: self.layers[l - 1].w.clone() for l in self.own_layers() if self.layers[l - 1].w is not None}

    def _export_W(self, l: int):
        if self.best_W is not None and l in self.best_W:
            return self.best_W[l]
        return self.layers[l - 1].w

    # ---- export, scoring, checkpoints -----------------------------------------------------------
    def export_weights(self):
        """Flat weight vectors of layers 1..L (keep_best: the best forward-pass training loss)."""
        if self.cfg.radmm.keep_best and self.best_W is None:
            self.metrics()
        mine = {f"{l:05d}": self._export_W(l).detach().cpu().numpy()
                for l in self.own_layers() if self.layers[l - 1].w is not None}
        if self.P == 1:
            got = [mine]
        else:
            got = self.comm.gather_arrays(mine)
            if got is None:
                return None
        merged = {k: v for part in got for k, v in part.items()}
        return [torch.as_tensor(merged[f"{l:05d}"]) if f"{l:05d}" in merged else None
                for l in range(1, self.L + 1)]

    def _load_exported(self, weights):
        for lay, w in zip(self.layers, weights):
            if w is not None:
                lay.w = w.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def final_scores(self, weights) -> dict:
        self._load_exported(weights)
        if self.model is not None:       # the model in eval mode: the same map as the layers
            from radmm_hpc.scoring import score_model
            for lay in self.layers:
                lay.sync_module()
            return score_model(self.model, self.ds)
        out = {}
        for split in ("train", "test"):
            X, y = inputs(self.ds, split, self.dtype, self.device, self.fc)
            ch = Chunks(X.shape[0], self.cfg.radmmconv.chunk, self.device, self.device, self.dtype)
            preds = []
            for sl in ch.slices:
                h = X[sl]
                for lay in self.layers:
                    h = lay.g(h)
                preds.append(h)
            out.update(score_predictions(torch.cat(preds), y, self.ds, split))
        return out

    def save_final(self, path: str, weights) -> None:
        if self.fc:
            return super().save_final(path, [w.view(lay.shapes[0]) for w, lay in zip(weights, self.layers)])
        import h5py
        self._load_exported(weights)
        if self.model is not None:
            from radmm_hpc.modelio import save_named_params
            for lay in self.layers:
                lay.sync_module()
            return save_named_params(path, self.model, self.cfg, self.ds)
        with h5py.File(path, "w") as fh:
            fh.attrs["arch"] = self.cfg.model.arch
            for i, lay in enumerate(self.layers, start=1):
                g = fh.create_group(f"layer{i:03d}")
                for n, t in (lay.params(lay.w).items() if lay.w is not None else []):
                    g.create_dataset(n, data=t.detach().cpu().numpy())

    # checkpoint keys follow radmm.py's (W/l, U/l, V/l, tau/..., Lam, jacobi/...), so that
    # checkpoint.remap_radmm resumes a general run on another number of ranks as well
    def state(self) -> dict:
        eng = self.eng
        out = {}
        ghost_w = [self.e + 1] if (self.schedule == "two-colour" and self.P > 1 and not self.last) else []
        for l in self.own_layers() + ghost_w:
            if self.layers[l - 1].w is not None:
                out[f"W/{l}"] = self.layers[l - 1].w.detach().cpu().numpy()
        for l, tau in eng.tauW.items():
            out[f"tau/W/{l}"] = np.asarray(tau, dtype=np.float64)
        for name, d in (("V", eng.V), ("U", eng.U), ("tau/V", eng.tauV)):
            for l, t in d.items():
                if l == 0:
                    continue                                  # X is data, not state
                key = "jacobi/Vb" if (name == "V" and self.jac and l == self.s - 1) else f"{name}/{l}"
                out[key] = t.detach().cpu().numpy()
        if eng.Lam is not None:
            out["Lam"] = eng.Lam.detach().cpu().numpy()
        for name in ("Q", "M", "Qn", "Mn"):
            t = getattr(eng, name)
            if t is not None:
                out[f"jacobi/{name}"] = t.detach().cpu().numpy()
        if eng.tauQ is not None:
            out[f"tau/Q/{self.r}"] = eng.tauQ.detach().cpu().numpy()
        out.update(self._best_state())
        return out

    def load_state(self, state: dict) -> None:
        eng, store = self.eng, self.ch.store

        def t(a, dev=store):
            x = torch.as_tensor(np.asarray(a), dtype=self.dtype).clone()
            x = x.pin_memory() if (self.ch.pin and dev == store) else x
            return x.to(dev)
        self.best_loss, self.best_W = math.inf, None
        for key, a in state.items():
            parts = key.split("/")
            if parts[0] == "W":
                self.layers[int(parts[1]) - 1].w = t(a, self.device)
            elif parts[0] in ("V", "U"):
                getattr(eng, parts[0])[int(parts[1])] = t(a)
            elif parts[0] == "tau" and parts[1] == "W":
                eng.tauW[int(parts[2])] = float(np.asarray(a))
            elif parts[0] == "tau" and parts[1] == "V":
                eng.tauV[int(parts[2])] = t(a)
            elif parts[0] == "tau" and parts[1] == "Q":
                eng.tauQ = t(a)
            elif key == "Lam":
                eng.Lam = t(a)
            elif key == "jacobi/Vb":
                eng.V[self.s - 1] = t(a)
            elif parts[0] == "jacobi":
                setattr(eng, parts[1], t(a))
            elif key == "best/loss":
                self.best_loss = float(np.asarray(a))
            elif parts[0] == "best":
                self.best_W = self.best_W or {}
                self.best_W[int(parts[2])] = t(a, self.device)
        if self.jac and not self.first and eng.tauQ is None:      # remapped onto a new boundary
            eng.tauQ = torch.ones(self.N, dtype=self.dtype, device=store)
        for l in range(self.s, self.e + 1):                      # remapped layers without a τ memory
            if l not in eng.tauV:
                eng.tauV[l] = torch.ones(self.N, dtype=self.dtype, device=store)

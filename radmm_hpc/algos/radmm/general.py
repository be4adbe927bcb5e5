"""RADMM for general residual networks (convolutional ResNets, and the FCResNet when
radmmconv.general = true): the linearized block updates of engine.py on this rank's region
(regions.py runs the schedules and exchanges).

Rank r owns hidden layers s_r..e_r of [stem, block_1, ..., block_n] with their W (one flat vector
per layer), U and V (per sample, on the rank's GPU when they fit, else in host memory), the last
rank also the head, V_L, Λ and Y, rank 0 the input X.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from radmm_hpc.algos.radmm.engine import Chunks, Engine, Params, serial_sweep
from radmm_hpc.algos.radmm.layers import fc_layers, module_layers
from radmm_hpc.algos.radmm.regions import RegionTrainer
from radmm_hpc.scoring import calibrate_norm, score_predictions, tensors_for

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


class LayerNetwork:
    """What a RADMM trainer on a list of Layers shares (this trainer and anchored.py's): the
    activation shapes, the forward pass that scores the network, the export and model.h5.
    Needs self.layers, self.fc, self.model, self.ch (Chunks) and the region attributes."""

    @torch.no_grad()
    def _shapes(self, x1):
        """Per-sample shape of V_0..V_L (one sample through the network; every rank)."""
        out = [tuple(x1.shape[1:])]
        for lay in self.layers:
            x1 = lay.g(x1)
            out.append(tuple(x1.shape[1:]))
        return out

    def _weight(self, l: int):
        return self.layers[l - 1].w

    def _has_weights(self, l: int) -> bool:
        return self.layers[l - 1].w is not None

    def _eval_input(self, split: str):
        X, _ = inputs(self.ds, split, self.dtype, self.ch.store, self.fc)
        if self.first:
            return X
        return self._eval_chunks(X.shape[0]).new(self.shapes[self.s - 1])

    def _eval_chunks(self, n: int) -> Chunks:
        return Chunks(n, self.cfg.radmmconv.chunk, self.ch.store, self.device, self.dtype)

    def _eval_region(self, prev, split: str):
        ch = self._eval_chunks(prev.shape[0])
        hi = self.L if self.last else self.e
        out = None
        for sl in ch.slices:
            h = ch.get(prev, sl)
            for l in range(self.s, hi + 1):
                h = self.layers[l - 1].g(h)
            if out is None:
                out = ch.new(h.shape[1:])
            ch.put(out, sl, h)
        return out

    def _eval_scores(self, out, split: str) -> dict:
        _, y = tensors_for(self.ds, split, self.dtype, self.device)
        return score_predictions(out.to(self.device), y, self.ds, split)

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


class GeneralRadmmTrainer(LayerNetwork, RegionTrainer):
    def __init__(self, cfg, rt, ds):
        super().__init__(cfg, rt, ds)
        self.p = params_from(cfg, ds.task)
        self.layers, self.fc, self.model = build_layers(cfg, ds, self.dtype, self.device)
        self._init_regions(len(self.layers))
        if self.P > 1 and self.device.type == "cuda":
            self.comm.cuda_aware()        # collective start-up probe: direct GPU messages or staging
        X, y = inputs(ds, "train", self.dtype, self.device, self.fc)
        self.N = N = X.shape[0]
        self.shapes = self._shapes(X[:1])
        store = self._store_device()
        self.ch = Chunks(N, cfg.radmmconv.chunk, store, self.device, self.dtype)
        self.eng = self.jst = Engine(self.layers, self.p, self.ch, self.s, self.e, self.last)
        if self.last:
            Y = targets(ds, y).to(self.dtype)
            self.eng.Y = Y.to(store)
        self._remember_initial()
        self._start(X.to(store) if self.first else None)

    # ---- set-up --------------------------------------------------------------------------------
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

    # ---- region hooks (regions.py) ---------------------------------------------------------------
    def _forward_region(self, prev):
        return self.eng.forward_init(prev)

    def _start_jacobi(self) -> None:
        eng = self.eng
        if not self.first:
            eng.Q = eng.V[self.s - 1].clone()
            eng.M = torch.zeros_like(eng.Q)
            eng.tauQ = torch.ones(self.N, dtype=self.dtype, device=self.ch.store)
        if not self.last:
            eng.Qn = eng.V[self.e].clone()
            eng.Mn = torch.zeros_like(eng.Qn)

    def _region_out(self):
        return self.eng.V[self.e]

    def _boundary_in(self):
        if (self.s - 1) not in self.eng.V:
            self.eng.V[self.s - 1] = self._new(self.s - 1)
        return self.eng.V[self.s - 1]

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

    def _owned_tensors(self):
        """The weights: the successive difference is measured on them (a copy of the per-sample
        state every iteration would double the memory that chunking saves)."""
        return [self.layers[l - 1].w for l in self.own_layers() if self.layers[l - 1].w is not None]

    def _serial_sweep(self) -> None:
        serial_sweep(self.eng, self.order)

    def _sweep_region(self) -> None:
        for l in range(self.s, self.e + 1):
            self.eng.update_layer(l, jacobi=self.jac, override=self.jac and l == self.e and not self.last)
        if self.last:
            self.eng.update_layer(self.L, jacobi=self.jac)

    def _update_q(self) -> None:
        self.eng.step_q()

    def _update_m(self) -> None:
        eng = self.eng
        eng.M.add_(self.p.beta_b * (eng.Q - eng.V[self.s - 1]))

    def _merit_terms(self) -> dict:
        t = self.eng.merit_terms(self.jac)
        return {"lagrangian": t["lagrangian"] / self.N, "relaxed_objective": t["relaxed_objective"] / self.N,
                "primal_sq": t["primal_sq"]}

    # checkpoint keys follow fcresnet.py's (W/l, U/l, V/l, tau/..., Lam, jacobi/...), so that
    # regions.remap_state resumes a general run on another number of ranks as well
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
            else:
                self._load_best(key, a, lambda a: t(a, self.device))
        if self.jac and not self.first and eng.tauQ is None:      # remapped onto a new boundary
            eng.tauQ = torch.ones(self.N, dtype=self.dtype, device=store)
        for l in range(self.s, self.e + 1):                      # remapped layers without a τ memory
            if l not in eng.tauV:
                eng.tauV[l] = torch.ones(self.N, dtype=self.dtype, device=store)

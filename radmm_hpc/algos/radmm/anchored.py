"""Forward-anchored RADMM with multiplier estimates (radmm.variant = anchored).

The paper variants (fcresnet.py, general.py) keep the auxiliary variables U, V and one multiplier
on the output constraint from one iteration to the next, and a loss signal crosses the network by
diffusion, one layer per sweep (docs/radmm.md, "Why the relaxation learned little"). This variant
keeps the splitting and the W blocks, and changes what the other blocks do each iteration:

1. anchor   U, V are set to the forward pass of the current weights (the feasible point at which
            every penalty term is zero), one pipelined pass through the regions;
2. duals    every constraint gets the multiplier that makes the Lagrangian stationary in (U, V)
            there: Λ = −N∇ℓ(V_L) on the output constraint and, layer by layer downwards, the
            multipliers of the hidden constraints (the adjoint recursion). Regions pass the
            multiplier of their input boundary to the previous rank: the only backward message;
3. W step   each W block takes its exact proximal step on the augmented Lagrangian with U, V and
            the multipliers fixed. For a linear map U = W·x (a dense layer, a convolution on its
            patches, a normalisation's per-channel affine map) that is the closed form of the
            paper's W update with the target shifted by the multiplier:

                W⁺ = W^k − (∇_W + NλW^k)(s·γ·Σ_n x_n x_nᵀ + (ω + Nλ) I)⁻¹,   ∇_W = −Σ_n Θ_n x_nᵀ

            (β in place of γ for the output layer), a step preconditioned by the input Gram
            matrix. The step of a hidden block is at most radmm.trust·‖W_l‖ (a per-block proximal
            weight raised until it holds).
4. penalty  the anchor of the next iteration gives the objective F = ℓ + λ/2‖W‖² of the new
            weights (L_β at a feasible point). If F rose, the step is undone and redone from the
            same anchor with the penalties scaled by radmm.grow (1: never undone; no new pass needed: the W steps
            only read the stored sums of step 3); after an accepted step they shrink by
            radmm.relax. F never increases from one accepted iterate to the next.

A seeded share of the training split (radmm.val_fraction) rides along in the forward pass; the
exported network is the accepted iterate with the lowest validation loss.

Schedules: serial (one rank) and pipeline (P ranks): the anchor pass and the dual pass walk the
columns in radmm.microbatches chunks, so rank r works on chunk j while rank r+1 works on chunk
j−1; the W steps run on every rank at once. Per boundary and accepted iteration: the region output
forward (d×(N_fit + N_val) values), the input-boundary multiplier backward (d×N_fit), a control
message of 4 float64 (accept, penalty scale, best, F) backward, and with λ > 0 one float64
forward (the running ‖W‖²). A rejected iteration sends no multipliers. P ranks compute exactly
what one rank computes with the same radmm.microbatches.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radmm_hpc.algos.radmm.blocks import _solve_right_spd
from radmm_hpc.algos.radmm.engine import Chunks
from radmm_hpc.algos.radmm.general import LayerNetwork, build_layers, inputs, targets
from radmm_hpc.algos.radmm.layers import MatMul
from radmm_hpc.algos.radmm.regions import RegionTrainer
from radmm_hpc.comm import TAG
from radmm_hpc.data import validation_split
from radmm_hpc.errors import ConfigError

NONE = 1e300     # F_prev / best_val before the first accepted anchor


class _Group:
    """One linear map inside a layer, U = W·x, with its slice of the layer's flat weight vector
    and the statistics of its input (Σ x xᵀ, in float64) gathered during the anchor pass."""

    def __init__(self, kind: str, module: nn.Module, w_slice: slice, b_slice: Optional[slice], rows: int):
        self.kind, self.module, self.w, self.b, self.rows = kind, module, w_slice, b_slice, rows
        self.acc: Optional[Tensor] = None      # Σ x xᵀ of the anchor pass being run
        self.per = 1                            # positions per sample (a convolution's output size)

    def add_input(self, x: Tensor) -> None:
        m = self.module
        if self.kind == "norm":
            # eval-mode normalisation with fixed statistics: per channel x̂ = (x − μ)/σ, U = a·x̂ + b
            shape = [1, -1] + [1] * (x.dim() - 2)
            xh = ((x - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + m.eps)).double()
            dims = [0] + list(range(2, x.dim()))
            s2, s1 = (xh * xh).sum(dims), xh.sum(dims)
            cnt = torch.full_like(s1, float(xh.numel() // xh.shape[1]))
            self.per = xh.numel() // (xh.shape[0] * xh.shape[1])
            G = torch.stack([torch.stack([s2, s1], -1), torch.stack([s1, cnt], -1)], -2)   # C×2×2
        else:
            n = x.shape[0]
            if self.kind == "conv":
                x = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)       # n × k × P
                x = x.transpose(1, 2).reshape(-1, x.shape[1])
            else:
                x = x.reshape(-1, x.shape[-1])
            self.per = x.shape[0] // max(n, 1)
            if self.b is not None:
                x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)
            G = (x.T @ x).double()        # per chunk in the working precision, summed in float64
        self.acc = G if self.acc is None else self.acc + G

    def as_matrix(self, v: Tensor) -> Tensor:
        """The group's part of a flat vector as rows × inputs (norm: channels × 2: scale, shift)."""
        if self.kind == "norm":
            return torch.stack([v[self.w], v[self.b]], 1)
        W = v[self.w].view(self.rows, -1)
        return torch.cat([W, v[self.b].view(-1, 1)], 1) if self.b is not None else W

    def put(self, v: Tensor, M: Tensor) -> None:
        if self.kind == "norm":
            v[self.w], v[self.b] = M[:, 0], M[:, 1]
            return
        k = v[self.w].numel() // self.rows
        v[self.w] = M[:, :k].reshape(-1)
        if self.b is not None:
            v[self.b] = M[:, k]


def _groups(layer) -> List[_Group]:
    """The linear maps of one layer, located in its flat weight vector (layer.names order)."""
    offsets, off = {}, 0
    for n, s in zip(layer.names, layer.shapes):
        offsets[n] = slice(off, off + s.numel())
        off += s.numel()
    out = []
    for prefix, m in layer.module.named_modules():
        own = dict(m.named_parameters(recurse=False))
        if not own:
            continue
        key = (prefix + ".") if prefix else ""
        w = offsets[key + "weight"]
        b = offsets.get(key + "bias") if "bias" in own else None
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise ConfigError("radmm.variant = anchored: grouped convolutions are not supported")
            out.append(_Group("conv", m, w, b, m.out_channels))
        elif isinstance(m, (nn.Linear, MatMul)):
            out.append(_Group("dense", m, w, b, own["weight"].shape[0]))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and b is not None:
            out.append(_Group("norm", m, w, b, m.num_features))
        else:
            raise ConfigError(f"radmm.variant = anchored has no W step for {type(m).__name__} layers")
    return out


def _block_step(g: _Group, W: Tensor, grad: Tensor, G: Tensor, pen: float, omega: float, Nlam: float) -> Tensor:
    """The exact proximal W step of one linear map: −(∇ + NλW)(pen·G/p + (ω + Nλ)I)⁻¹ (float64),
    p the positions per sample: a convolution's penalty is a mean over its output positions as
    well as over samples, so that one γ suits dense and convolutional layers."""
    Wm, Gm = g.as_matrix(W).double(), g.as_matrix(grad).double()
    B = -(Gm + Nlam * Wm)
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    A = (pen / g.per) * G + (omega + Nlam) * eye
    if g.kind == "norm":                                      # C independent 2×2 systems
        return torch.linalg.solve(A, B.unsqueeze(-1)).squeeze(-1)
    return _solve_right_spd(B, A)


class AnchoredTrainer(LayerNetwork, RegionTrainer):
    copy_before_step = False     # the W step writes new weight tensors

    def __init__(self, cfg, rt, ds):
        super().__init__(cfg, rt, ds)
        r = cfg.radmm
        self.layers, self.fc, self.model = build_layers(cfg, ds, self.dtype, self.device)
        self._init_regions(len(self.layers))
        if self.P > 1 and self.device.type == "cuda":
            self.comm.cuda_aware()        # collective start-up probe: direct GPU messages or staging
        self.loss = "xent" if ds.task == "classification" else "squared"
        X, y = inputs(ds, "train", self.dtype, self.device, self.fc)
        self.shapes = self._shapes(X[:1])
        fit, val = validation_split(len(y), r.val_fraction if r.keep_best else 0.0, cfg.data.split_seed)
        fit, val = torch.as_tensor(fit, device=self.device), torch.as_tensor(val, device=self.device)
        self.N, self.n_val = len(fit), len(val)
        store = torch.device("cpu") if self.device.type != "cuda" else self.device
        self.ch = Chunks(self.N, 0, store, self.device, self.dtype)        # scoring (LayerNetwork)
        # enough chunks to keep the pipeline busy (4 per rank), none much below 512 columns (each
        # chunk costs a fixed overhead per layer)
        m = r.microbatches or (1 if self.P == 1 else max(self.P, min(4 * self.P, self.N // 512)))
        size = max(1, math.ceil(self.N / m))
        self.fit_slices = [slice(i, min(i + size, self.N)) for i in range(0, self.N, size)]
        self.val_slices = [slice(i, min(i + size, self.n_val)) for i in range(0, self.n_val, size)]
        self.X = (X[fit], X[val]) if self.first else None
        Y = targets(ds, y).to(self.dtype)
        self.Y = (Y[fit], Y[val]) if self.last else None
        for l, lay in enumerate(self.layers, start=1):      # keep only this rank's weights
            if not self.owns(l):
                lay.w = None
        self.groups: Dict[int, List[_Group]] = {l: _groups(self.layers[l - 1]) for l in self.own_layers()}
        self._collect = False
        for l, gs in self.groups.items():
            if self.layers[l - 1].dense is None:     # a plain matrix is fed by _region itself
                for g in gs:
                    g.module.register_forward_pre_hook(self._hook(g))
        # the accepted anchor: its weights, input sums and gradients (the W steps read only these)
        self.Wp: Dict[int, Tensor] = {}
        self.G: Dict[int, List[Tensor]] = {}
        self.C: Dict[int, Tensor] = {}
        # "none yet" is a huge finite number: checkpoints hold finite values only
        self.F_prev, self.scale, self.best_val = NONE, 1.0, NONE
        self.accepted = self.rejected = 0
        self.last_val = 0.0
        self._remember_initial()

    def _hook(self, g: _Group):
        def hook(module, args):
            if self._collect:
                g.add_input(args[0].detach())
        return hook

    def _has_weights(self, l: int) -> bool:
        return self.layers[l - 1].module is not None and any(True for _ in self.layers[l - 1].module.parameters())

    # ---- one iteration ----------------------------------------------------------------------------
    def _recv_in(self, n: int, tag: int) -> Tensor:
        buf = torch.empty((n, *self.shapes[self.s - 1]), dtype=self.dtype, device=self.device)
        self.comm.exchange({}, {self.r - 1: [buf]}, tag)
        return buf

    def _region(self, x: Tensor, ws: Dict[int, Tensor]) -> Tensor:
        hi = self.L if self.last else self.e
        for l in range(self.s, hi + 1):
            lay = self.layers[l - 1]
            if self._collect and lay.dense is not None:
                self.groups[l][0].add_input(x.detach())
            x = lay.g(x, ws.get(l))
        return x

    def _loss_and_seed(self, out: Tensor, Y: Tensor):
        """Σ of the per-sample losses (float64) and its gradient in the output: −Λ."""
        o = out.detach()
        if self.loss == "squared":
            diff = o - Y
            return 0.5 * float((diff.double() ** 2).sum()), diff
        logp = torch.log_softmax(o.double(), 1)
        return float(-(logp * Y.double()).sum()), (torch.exp(logp) - Y.double()).to(o.dtype)

    def _anchor_pass(self, ws):
        """The forward pass of the current weights over the fit columns (kept for the dual pass)
        and the validation columns; on the last rank the summed losses and the seeds −Λ."""
        graphs, loss_sum, val_sum = [], 0.0, 0.0
        for g in (g for gs in self.groups.values() for g in gs):
            g.acc = None
        self._collect = True
        for sl in self.fit_slices:
            if self.first:
                x = self.X[0][sl]
            else:
                with self.timed("exchange"):
                    x = self._recv_in(sl.stop - sl.start, TAG.RADMM_FWD).requires_grad_()
            with self.timed("compute"), torch.enable_grad():
                out = self._region(x, ws)
            if self.last:
                part, seed = self._loss_and_seed(out, self.Y[0][sl])
                loss_sum += part
                graphs.append((x, out, seed))
            else:
                graphs.append((x, out, None))
                with self.timed("exchange"):
                    self.comm.exchange({self.r + 1: [out.detach()]}, {}, TAG.RADMM_FWD)
        self._collect = False
        for sl in self.val_slices:
            x = self.X[1][sl] if self.first else self._recv_in(sl.stop - sl.start, TAG.RADMM_EVAL)
            with self.timed("compute"), torch.no_grad():
                out = self._region(x, ws)
            if self.last:
                val_sum += self._loss_and_seed(out, self.Y[1][sl])[0]
            else:
                self.comm.exchange({self.r + 1: [out]}, {}, TAG.RADMM_EVAL)
        return graphs, loss_sum, val_sum

    def _weight_norm_sq(self) -> float:
        """Σ‖W‖² up to this region (λ > 0 only): one float64 passed along the ranks."""
        acc = torch.zeros(1, dtype=torch.float64)
        if not self.first:
            self.comm.exchange({}, {self.r - 1: [acc]}, TAG.RADMM_CTRL)
        acc += sum(float((self.layers[l - 1].w.double() ** 2).sum()) for l in self.groups)
        if not self.last:
            self.comm.exchange({self.r + 1: [acc]}, {}, TAG.RADMM_CTRL)
        return float(acc[0])

    def _decide(self, loss_sum: float, val_sum: float, wsq: float) -> Tensor:
        """Last rank: accept the anchor if the objective did not rise; the new penalty scale; is it
        the best iterate so far (validation loss, or every accepted one without a validation share)."""
        r = self.cfg.radmm
        Fv = loss_sum / self.N + 0.5 * r.lam * wsq
        accept = math.isfinite(Fv) and (Fv <= self.F_prev or r.grow == 1)      # grow = 1: keep every step
        val = val_sum / self.n_val if self.n_val else 0.0
        best = accept and (not self.n_val or val < self.best_val)
        scale = self.scale * (r.relax if accept else r.grow)
        return torch.tensor([float(accept), scale, float(best), Fv if accept else self.F_prev,
                             val if (best and self.n_val) else self.best_val], dtype=torch.float64)

    def step(self, it: int) -> None:
        ws = {l: self.layers[l - 1].w.detach().clone().requires_grad_() for l in self.groups}
        graphs, loss_sum, val_sum = self._anchor_pass(ws)
        wsq = self._weight_norm_sq() if self.cfg.radmm.lam > 0 else 0.0
        with self.timed("exchange"):
            ctl = self._decide(loss_sum, val_sum, wsq) if self.last else torch.zeros(5, dtype=torch.float64)
            if not self.last:
                self.comm.exchange({}, {self.r + 1: [ctl]}, TAG.RADMM_CTRL)
            if not self.first:
                self.comm.exchange({self.r - 1: [ctl]}, {}, TAG.RADMM_CTRL)
        accept, best = bool(ctl[0]), bool(ctl[2])
        self.scale, self.F_prev, self.best_val = float(ctl[1]), float(ctl[3]), float(ctl[4])
        if accept:
            self.accepted += 1
            if self.last:
                self.last_val = val_sum / self.n_val if self.n_val else 0.0
            self._dual_pass(graphs)
            for l, gs in self.groups.items():
                self.Wp[l] = ws[l].detach()
                self.G[l] = [g.acc for g in gs]
                self.C[l] = ws[l].grad
            if best:
                self.best_W = {l: w.clone() for l, w in self.Wp.items()}
                self.best_loss = self.best_val if self.n_val else self.F_prev
        else:
            self.rejected += 1
            if not self.Wp:
                raise FloatingPointError("the initial network's training loss is not finite")
        del graphs
        with self.timed("compute"):
            before = self._owned_tensors()
            self._w_steps()
            self.succ_sq = sum(float(((a - b) ** 2).sum()) for a, b in zip(self._owned_tensors(), before))

    def _dual_pass(self, graphs) -> None:
        """The multipliers, from the output down: autograd through this region's layers, seeded
        with −Λ on the last rank or the next region's input multiplier; leaves Σ ∂/∂W in .grad."""
        for x, out, seed in graphs:
            if not self.last:
                with self.timed("exchange"):
                    seed = torch.empty_like(out)
                    self.comm.exchange({}, {self.r + 1: [seed]}, TAG.RADMM_BWD)
            with self.timed("compute"):
                torch.autograd.backward(out, seed)
            if not self.first:
                with self.timed("exchange"):
                    self.comm.exchange({self.r - 1: [x.grad]}, {}, TAG.RADMM_BWD)

    @torch.no_grad()
    def _w_steps(self) -> None:
        """Every owned block's exact proximal step from the accepted anchor (independent blocks)."""
        r = self.cfg.radmm
        Nlam = self.N * r.lam
        for l, gs in self.groups.items():
            Wp, C = self.Wp[l], self.C[l]
            w = Wp.clone()
            pen = self.scale * (r.beta if l == self.L else r.gamma)
            for g, G in zip(gs, self.G[l]):
                D = _block_step(g, Wp, C, G, pen, r.omega, Nlam)
                if r.trust > 0 and l < self.L:
                    ref = float(g.as_matrix(Wp).double().norm())
                    size = float(D.norm())
                    if size > r.trust * ref > 0:
                        D = D * (r.trust * ref / size)
                g.put(w, g.as_matrix(Wp).double().add(D).to(self.dtype))
            self.layers[l - 1].w = w

    # ---- metrics ---------------------------------------------------------------------------------
    def _owned_tensors(self):
        return [self.layers[l - 1].w for l in self.groups]

    def _merit_terms(self) -> dict:
        # at an anchor every constraint holds: L_β = the objective F, the primal residual is 0
        F_last = self.F_prev if (self.last and self.F_prev < NONE) else 0.0
        return {"lagrangian": F_last, "relaxed_objective": F_last, "primal_sq": 0.0,
                "accepted": float(self.accepted) if self.last else 0.0,
                "rejected": float(self.rejected) if self.last else 0.0,
                "val_loss": self.last_val if self.last else 0.0,
                "penalty_scale": self.scale if self.last else 0.0}

    def _extra_metrics(self, tot: dict) -> dict:
        out = {k: tot[k] for k in ("accepted", "rejected", "penalty_scale")}
        if self.n_val and self.best_val < NONE:
            out["val_loss"], out["best_val_loss"] = tot["val_loss"], self.best_val
        return out

    def _keep_best(self, out: dict) -> None:
        """The choice of the exported iterate happens in step (validation loss at each anchor)."""

    # ---- checkpoint state ------------------------------------------------------------------------
    SCALARS = ("F_prev", "scale", "best_val", "accepted", "rejected", "last_val")

    def state(self) -> dict:
        out = {}
        for l in self.groups:
            out[f"W/{l}"] = self.layers[l - 1].w.detach().cpu().numpy()
            if l in self.Wp:
                out[f"anchor/Wp/{l}"] = self.Wp[l].detach().cpu().numpy()
                out[f"anchor/C/{l}"] = self.C[l].detach().cpu().numpy()
                for k, G in enumerate(self.G[l]):
                    out[f"anchor/G/{l}/{k}"] = G.detach().cpu().numpy()
        for name in self.SCALARS:
            out[f"anchor/{name}"] = np.asarray(float(getattr(self, name)), dtype=np.float64)
        out.update(self._best_state())
        return out

    def load_state(self, state: dict) -> None:
        def t(a, dtype=None):
            return torch.as_tensor(np.asarray(a), dtype=dtype or self.dtype, device=self.device).clone()
        self.best_loss, self.best_W = math.inf, None
        self.Wp, self.C, G = {}, {}, {}
        for key, a in state.items():
            parts = key.split("/")
            if parts[0] == "W":
                self.layers[int(parts[1]) - 1].w = t(a)
            elif parts[0] == "anchor" and parts[1] == "Wp":
                self.Wp[int(parts[2])] = t(a)
            elif parts[0] == "anchor" and parts[1] == "C":
                self.C[int(parts[2])] = t(a)
            elif parts[0] == "anchor" and parts[1] == "G":
                G.setdefault(int(parts[2]), {})[int(parts[3])] = t(a, torch.float64)
            elif parts[0] == "anchor":
                v = float(np.asarray(a))
                setattr(self, parts[1], int(v) if parts[1] in ("accepted", "rejected") else v)
            else:
                self._load_best(key, a, t)
        self.G = {l: [d[k] for k in sorted(d)] for l, d in G.items()}

    def remap_state(self, manifest: dict, old_state) -> Dict[str, np.ndarray]:
        """Every per-layer key moves with its layer's old owner; the scalars are the same on every
        rank (they travel with the control message)."""
        old_regions = [tuple(r) for r in manifest["partition"]]

        def owner(l: int) -> int:
            if l == self.L:
                return len(old_regions) - 1
            return next(k for k, (s, e) in enumerate(old_regions) if s <= l <= e)
        out: Dict[str, np.ndarray] = {}
        for l in self.own_layers():
            for key, a in old_state(owner(l)).items():
                p = key.split("/")
                if (p[0] == "W" and int(p[1]) == l) or (p[0] == "anchor" and len(p) > 2 and int(p[2]) == l) \
                        or (p[0] == "best" and p[1] == "W" and int(p[2]) == l):
                    out[key] = a
        for key, a in old_state(len(old_regions) - 1).items():     # the same on every rank but
            if key.startswith("anchor/") and key.count("/") == 1 or key == "best/loss":  # last_val
                out[key] = a
        return out

"""Backpropagation baseline: mini-batch Adam/SGD, synchronous data-parallel over ranks.

Every rank holds the same model. The global batch of each step is a function of the seed alone
(one permutation of the training set per epoch); rank r computes the gradient of its contiguous
share of that batch, normalised by the global batch size, and one Allreduce of a packed buffer
sums the shares. Every rank then takes the same optimizer step, so P ranks follow the same
trajectory as one process on the union batch (up to summation order).
"""

from __future__ import annotations

import numpy as np
import torch

from radmm_hpc.algos.base import Trainer
from radmm_hpc.data import shard_range
from radmm_hpc.models import FCResNet, build_model
from radmm_hpc.scoring import loss_fn, score_model, score_weights, tensors_for


class BackpropTrainer(Trainer):
    name = "backprop"
    backprop_baseline = False     # it is the baseline

    def __init__(self, cfg, rt, ds):
        super().__init__(cfg, rt, ds)
        b = cfg.backprop
        gen = torch.Generator().manual_seed(cfg.train.seed)
        self.model = build_model(cfg, ds, gen, self.dtype, self.device)
        params = list(self.model.parameters())
        if b.optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=b.lr, weight_decay=b.weight_decay)
        else:
            self.opt = torch.optim.SGD(params, lr=b.lr, momentum=b.momentum, weight_decay=b.weight_decay)
        self.X, self.y = tensors_for(ds, "train", self.dtype, self.device)
        self.n = len(self.X)
        self.batch = self.n if b.batch_size == 0 else min(b.batch_size, self.n)
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=self.dtype, device=self.device)
        self.grad_norm = 0.0

    def batch_indices(self, it: int) -> np.ndarray:
        """The global batch of step `it`: consecutive slices of a per-epoch seeded permutation."""
        if self.batch == self.n:
            return np.arange(self.n)
        per_epoch = self.n // self.batch
        epoch, k = divmod(it, per_epoch)
        perm = np.random.default_rng([self.cfg.train.seed, epoch]).permutation(self.n)
        return perm[k * self.batch:(k + 1) * self.batch]

    def step(self, it: int) -> None:
        idx = self.batch_indices(it)
        lo, hi = shard_range(len(idx), self.rt.rank, self.rt.size)
        mine = torch.as_tensor(idx[lo:hi], device=self.device)
        with self.timed("compute"):
            self.opt.zero_grad(set_to_none=False)
            if len(mine):
                pred = self.model(self.X[mine])
                # the share of the global mean: sum over my rows / global batch size
                loss = loss_fn(pred, self.y[mine], self.ds.task) * (len(mine) / len(idx))
                loss.backward()
            params = list(self.model.parameters())
            offset = 0
            for p in params:
                self.flat[offset:offset + p.numel()].copy_(p.grad.reshape(-1))
                offset += p.numel()
        with self.timed("exchange"):
            self.rt.comm.allreduce_(self.flat)
        with self.timed("compute"):
            offset = 0
            for p in params:
                p.grad.copy_(self.flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
            self.grad_norm = float(self.flat.norm())
            self.opt.step()
        if self.rt.size > 1:
            self._sync_buffers()

    def _sync_buffers(self):
        """BatchNorm running statistics are computed on each rank's share of the batch: average
        them so that every rank keeps the same model (no-op for the FCResNet)."""
        bufs = [b for b in self.model.buffers() if b.is_floating_point()]
        if not bufs:
            return
        with self.timed("exchange"):
            flat = torch.cat([b.reshape(-1) for b in bufs])
            self.rt.comm.allreduce_(flat)
            flat /= self.rt.size
            offset = 0
            for b in bufs:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()

    def weights(self):
        return [p.detach() for p in self.model.parameters()]

    @property
    def is_fc(self) -> bool:
        return isinstance(self.model, FCResNet)

    def metrics(self):
        # every rank holds the same model: scores are already the same everywhere
        if self.is_fc:
            m = score_weights(self.weights(), self.ds, self.cfg.model.activation, self.cfg.model.input_bias,
                              residual=self.cfg.model.arch != "mlp")
        else:
            m = score_model(self.model, self.ds)
        m["grad_norm"] = self.grad_norm
        return m

    def final_scores(self, weights):
        return super().final_scores(weights) if self.is_fc else score_model(self.model, self.ds)

    def save_final(self, path, weights):
        if self.is_fc:
            return super().save_final(path, weights)
        from radmm_hpc.modelio import save_named_params
        save_named_params(path, self.model, self.cfg, self.ds)

    def export_weights(self):
        return self.weights() if self.rt.is_root else None

    def state(self):
        out = {f"param/{i}": p.detach().cpu().numpy() for i, p in enumerate(self.model.parameters())}
        for i, p in enumerate(self.model.parameters()):
            for k, v in self.opt.state.get(p, {}).items():
                out[f"opt/{i}/{k}"] = torch.as_tensor(v).detach().cpu().numpy()
        for i, b in enumerate(self.model.buffers()):   # BatchNorm running statistics
            out[f"buffer/{i}"] = b.detach().cpu().numpy()
        return out

    def elastic_resume(self):
        return True

    def remap_state(self, manifest, old_shard):
        return old_shard(0)     # every rank held the same replica

    def load_state(self, state):
        params = list(self.model.parameters())
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(torch.as_tensor(state[f"param/{i}"]))
            for i, b in enumerate(self.model.buffers()):
                b.copy_(torch.as_tensor(state[f"buffer/{i}"]))
        for i, p in enumerate(params):
            keys = [k for k in state if k.startswith(f"opt/{i}/")]
            if keys:
                # Adam's 'step' stays a CPU tensor (as torch keeps it); moments go to the device
                self.opt.state[p] = {
                    k.split("/")[-1]: torch.as_tensor(state[k]).clone().to(
                        "cpu" if k.endswith("/step") else self.device)
                    for k in keys}

"""DAP-SVRG and DAP-SGD (docs/async.md, after Huo, Gu, Huang, arXiv 1609.06804): decoupled
asynchronous proximal methods for elastic-net logistic regression, rank 0 a parameter server that
only adds, ranks 1..W workers.

One loop iteration = one epoch s: the server opens it with the snapshot x̃ = x (SNAPSHOT); each
worker answers with Σ∇f_i(x̃) and Σf_i(x̃) over its shard (PARTIAL); the server sums those in rank
order (float64) to μ̃ and P(x̃), then hands out `dap.inner` units of work. A worker reads x̂ (possibly
stale), samples a mini-batch B of its shard (seeded by seed, rank, epoch) and pushes
Δ = prox_{ηh}(x̂ − η v) − x̂, with v = ∇f_B(x̂) − ∇f_B(x̃) + μ̃ (DAP-SVRG) or v = ∇f_B(x̂) and a step
η/(1 + decay·s) (DAP-SGD, whose μ̃ is unused: its PARTIAL round only measures P(x̃)).
The server applies x ← x + Δ. The step defaults to eta_scale/L/(1 + τ), τ = W − 1.
"""

from __future__ import annotations

import numpy as np
import torch

from radmm_hpc.algos.base import Trainer
from radmm_hpc.algos.ps import dap_math as dm
from radmm_hpc.algos.ps import protocol as ps
from radmm_hpc.data import shard_range


class DapWorker:
    """A worker's numerics; also driven directly by the single-process replay."""

    def __init__(self, A, Y, rank, W, shape, eta, cfg, svrg: bool, seed: int):
        lo, hi = shard_range(len(A), rank - 1, W)
        self.A, self.Y, self.lo = A[lo:hi], Y[lo:hi], lo
        self.rank, self.shape, self.eta0, self.svrg, self.seed = rank, shape, eta, svrg, seed
        self.lam1, self.lam2, self.b = cfg.lam1, cfg.lam2, min(cfg.batch_size, hi - lo)
        self.decay = cfg.sgd_decay
        self.step_count = 0
        self.epoch, self.snap, self.mu, self.rng = -1, None, None, None
        self.x_hat, self.v_read = None, 0

    def work(self, tag, inbox: ps.Msg, out: ps.Msg) -> int:
        h = inbox.hdr
        if tag == ps.SNAPSHOT:
            self.epoch = int(h[ps.EPOCH])
            self.rng = np.random.default_rng([self.seed, self.rank, self.epoch])
            self.snap = inbox.payload.reshape(self.shape).copy()
            self.v_read = int(h[ps.VERSION])
            if self.svrg:
                out.payload[:] = dm.grad_sum(self.A, self.Y, self.snap).ravel()
            else:
                out.payload[:] = 0.0
            out.hdr[:] = 0.0
            out.hdr[ps.LOSS] = dm.loss_sum(self.A, self.Y, self.snap)
            out.hdr[ps.NSAMP] = len(self.A)
            out.hdr[ps.EPOCH] = self.epoch
            return ps.PARTIAL
        if tag == ps.FULLGRAD:
            self.mu = inbox.payload.reshape(self.shape).copy()
            self.x_hat = self.snap            # nothing was applied since the snapshot
        elif tag == ps.PARAMS:
            self.x_hat = inbox.payload.reshape(self.shape)
            self.v_read = int(h[ps.VERSION])
        else:
            raise RuntimeError(f"DAP worker: unexpected message kind {tag}")
        idx = self.rng.integers(0, len(self.A), self.b)
        A, Y = self.A[idx], self.Y[idx]
        v = dm.grad_sum(A, Y, self.x_hat) / self.b
        if self.svrg:
            v = v - dm.grad_sum(A, Y, self.snap) / self.b + self.mu
            eta = self.eta0
        else:
            eta = self.eta0 / (1.0 + self.decay * self.epoch)
        delta = dm.prox(self.x_hat - eta * v, eta, self.lam1, self.lam2) - self.x_hat
        out.payload[:] = delta.ravel()
        out.hdr[:] = 0.0
        out.hdr[ps.EPOCH], out.hdr[ps.VREAD], out.hdr[ps.WSTEP] = self.epoch, self.v_read, self.step_count
        out.hdr[ps.NSAMP], out.hdr[ps.IDSUM] = self.b, float(idx.sum() + self.lo * self.b)
        self.step_count += 1
        return ps.PUSH


class DapServer:
    """The server's numerics: it only adds (x += Δ, μ̃ = Σ partials in rank order)."""

    def __init__(self, shape, n):
        self.x = np.zeros(shape).ravel()
        self.n = n
        self.partials, self.mu, self.given = {}, None, set()
        self.loss_sum = 0.0

    def begin(self):
        self.partials, self.given = {}, set()
        self.snap = self.x.copy()

    def open(self, w, msg: ps.Msg) -> int:
        msg.payload[:] = self.x
        return ps.SNAPSHOT

    def partial(self, w, msg: ps.Msg) -> None:
        self.partials[w] = (msg.payload.copy(), float(msg.hdr[ps.LOSS]))

    def full_gradient(self) -> None:
        mu = np.zeros_like(self.x)
        loss = 0.0
        for w in sorted(self.partials):      # rank order: the same sum on every run
            mu += self.partials[w][0]
            loss += self.partials[w][1]
        self.mu, self.loss_sum = mu / self.n, loss

    def params(self, w, msg: ps.Msg) -> int:
        if w not in self.given:
            self.given.add(w)
            msg.payload[:] = self.mu
            return ps.FULLGRAD
        msg.payload[:] = self.x
        return ps.PARAMS

    def push(self, w, msg: ps.Msg, scale: float) -> None:
        if scale == 1.0:
            self.x += msg.payload
        else:
            self.x += scale * msg.payload


class DapTrainer(Trainer):
    name = "dap"
    backprop_baseline = False
    least_squares_baseline = False   # the data's regression target became class labels here

    def __init__(self, cfg, rt, ds):
        super().__init__(cfg, rt, ds)
        d = cfg.dap
        self.svrg = cfg.train.algo != "dapsgd"
        self.A, self.Y, self.A_te, self.Y_te, K = dm.problem(ds, d.threshold)
        self.shape = (self.A.shape[1], K)
        self.W = max(1, rt.size - 1)
        self.eta = d.eta or d.eta_scale / dm.max_smoothness(self.A) / self.W   # 1/(1 + tau)
        self.inner = d.inner or max(1, len(self.A) // d.batch_size)
        self.grad_evals = 0.0       # per-sample gradients evaluated (data passes × n)
        self.p_star, self.snap_obj = float("nan"), float("nan")
        nelem = self.shape[0] * K
        self.pcomm = rt.comm.dup() if rt.size > 1 else None
        if rt.is_root:
            self.app = DapServer(self.shape, len(self.A))
            self.server = ps.Server(self.pcomm, nelem, np.float64, cfg.ps, cfg.ps.trace) if self.pcomm else None
            if d.reference:
                self.x_star, self.p_star = dm.reference_solution(self.A, self.Y, d.lam1, d.lam2)
        else:
            self.app = DapWorker(self.A, self.Y, rt.rank, self.W, self.shape, self.eta, d, self.svrg,
                                 cfg.train.seed)
            self.link = ps.WorkerLink(self.pcomm, nelem, np.float64, cfg.ps)

    def step(self, it: int) -> None:
        final = it == self.cfg.train.iters - 1
        b0, r0 = self.pcomm.p2p_sent, self.pcomm.p2p_recv
        if self.rt.is_root:
            self.server.epoch = it
            self.app.begin()
            with self.timed("serve"):
                self.server.run_phase(self.app, self.inner, final)
            self.snap_obj = self.app.loss_sum / len(self.A) + dm.penalty(
                self.app.snap.reshape(self.shape), self.cfg.dap.lam1, self.cfg.dap.lam2)
            per_push = 2 if self.svrg else 1
            self.grad_evals += (len(self.A) if self.svrg else 0) + per_push * self.cfg.dap.batch_size * self.inner
        else:
            with self.timed("compute"):
                self.link.serve(self.app)
        # the protocol's bytes count with the rest of the job's traffic
        self.rt.comm.p2p_sent += self.pcomm.p2p_sent - b0
        self.rt.comm.p2p_recv += self.pcomm.p2p_recv - r0

    def x(self) -> np.ndarray:
        return self.app.x.reshape(self.shape)

    def _scores(self) -> dict:
        d, x = self.cfg.dap, self.x()
        obj = dm.objective(self.A, self.Y, x, d.lam1, d.lam2)
        out = {"train_loss": dm.loss_sum(self.A, self.Y, x) / len(self.A),
               "test_loss": dm.loss_sum(self.A_te, self.Y_te, x) / len(self.A_te),
               "train_accuracy": dm.accuracy(self.A, self.Y, x),
               "test_accuracy": dm.accuracy(self.A_te, self.Y_te, x),
               "objective": obj, "snapshot_objective": self.snap_obj,
               "data_passes": self.grad_evals / len(self.A),
               "nonzeros": float((np.abs(x[:-1]) > 0).sum())}
        if self.cfg.dap.reference:
            out["suboptimality"] = obj - self.p_star
        out.update(self.server.stats.summary())
        return out

    def metrics(self):
        return self.rt.comm.bcast_obj(self._scores() if self.rt.is_root else None)

    def export_weights(self):
        return [torch.from_numpy(self.x().copy())] if self.rt.is_root else None

    def final_scores(self, weights):
        out = self._scores()
        out["staleness_hist"] = self.server.stats.hist.tolist()
        return out

    def save_final(self, path, weights):
        import h5py
        tmp = path + ".tmp"
        with h5py.File(tmp, "w") as fh:
            fh.attrs.update({"format": "radmm_hpc.linear/1", "algo": self.cfg.train.algo,
                             "task": "binary" if self.shape[1] == 1 else "one-vs-rest",
                             "lam1": self.cfg.dap.lam1, "lam2": self.cfg.dap.lam2,
                             "threshold": self.cfg.dap.threshold, "data": self.cfg.data.name})
            fh["coef"] = weights[0].numpy()        # (features + 1 bias row) × classes
            fh["preprocess/x_mean"], fh["preprocess/x_std"] = self.ds.x_mean, self.ds.x_std
        import os
        os.replace(tmp, path)

    def state(self):
        if not self.rt.is_root:
            return {"worker_steps": np.array([self.app.step_count], dtype=np.int64)}
        s = self.server
        out = {"x": self.app.x.copy(), "version": np.array([s.version], dtype=np.int64),
               "stats": s.stats.array(), "staleness_hist": s.stats.hist.copy(),
               "grad_evals": np.array([self.grad_evals]), "snapshot_objective": np.array([self.snap_obj])}
        if s.trace:
            out["trace"] = s.trace_array()
        return out

    def load_state(self, st):
        if not self.rt.is_root:
            self.app.step_count = int(st["worker_steps"][0])
            return
        s = self.server
        self.app.x[:] = st["x"]
        s.version = int(st["version"][0])
        s.stats.load(st["stats"], st["staleness_hist"])
        self.grad_evals = float(st["grad_evals"][0])
        self.snap_obj = float(st["snapshot_objective"][0])
        s.trace = [tuple(r) for r in st["trace"]] if "trace" in st else []

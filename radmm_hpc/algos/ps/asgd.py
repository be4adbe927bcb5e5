"""A-SGD with a parameter-server rank (docs/async.md, after Paine et al., arXiv 1312.6186).

Rank 0 holds the weights (CPU); ranks 1..W each hold the network (build_model: any architecture
the factory knows), a contiguous shard of the training set and their own device. Per unit of work
a worker reads W, then
  accumulate mode: n_sync local SGD/momentum steps on its mini-batches, pushes U = W_local − W_read,
                   and the server applies W ← W + U (× the staleness scale);
  gradient mode:   pushes one mini-batch gradient g, and the server steps (momentum kept there).
One loop iteration = asgd.updates_per_iter server updates. Warm start: asgd.warm_start_steps
single-rank SGD steps on rank 0 before the first phase, or asgd.init_model = a model.h5.
Mini-batches are drawn by a generator seeded with (seed, rank, iteration), so deterministic mode
(ps.deterministic) reproduces a run exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from radmm_hpc.algos.base import Trainer
from radmm_hpc.algos.ps import protocol as ps
from radmm_hpc.data import shard_range
from radmm_hpc.errors import UserError
from radmm_hpc.models import FC_ARCHS, build_model
from radmm_hpc.scoring import calibrate_norm, loss_fn, score_model, tensors_for

_NP = {torch.float32: np.float32, torch.float64: np.float64}


def _flat(params, grads=False) -> torch.Tensor:
    return torch.cat([(p.grad if grads else p.detach()).reshape(-1) for p in params])


def _assign(params, flat: torch.Tensor) -> None:
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


class AsgdWorker:
    """A worker's numerics (also driven by the single-process replay)."""

    def __init__(self, cfg, ds, rank, W, dtype, device, model=None):
        a = cfg.asgd
        X, y = tensors_for(ds, "train", dtype, device)
        lo, hi = shard_range(len(X), rank - 1, W)
        self.X, self.y, self.lo, self.task = X[lo:hi], y[lo:hi], lo, ds.task
        self.model = model if model is not None else build_model(
            cfg, ds, torch.Generator().manual_seed(cfg.train.seed), dtype, device)
        self.params = list(self.model.parameters())
        self.rank, self.seed, self.a = rank, cfg.train.seed, a
        self.b = min(a.batch_size, hi - lo)
        self.buf = torch.zeros_like(_flat(self.params))     # local momentum (accumulate mode)
        self.step_count, self.epoch, self.rng = 0, -1, None
        self.last_loss = float("nan")

    def _grad(self, idx) -> float:
        for p in self.params:
            p.grad = None
        i = torch.as_tensor(idx, device=self.X.device)
        loss = loss_fn(self.model(self.X[i]), self.y[i], self.task)
        loss.backward()
        return float(loss.detach())

    def work(self, tag, inbox: ps.Msg, out: ps.Msg) -> int:
        if tag != ps.PARAMS:
            raise RuntimeError(f"A-SGD worker: unexpected message kind {tag}")
        h = inbox.hdr
        if int(h[ps.EPOCH]) != self.epoch:
            self.epoch = int(h[ps.EPOCH])
            self.rng = np.random.default_rng([self.seed, self.rank, self.epoch])
        read = torch.from_numpy(inbox.payload).to(self.buf.device)
        _assign(self.params, read)
        a, loss_sum, id_sum, steps = self.a, 0.0, 0, (self.a.n_sync if self.a.mode == "accumulate" else 1)
        for _ in range(steps):
            idx = self.rng.integers(0, len(self.X), self.b)
            id_sum += int(idx.sum())
            loss_sum += self._grad(idx) * self.b
            g = _flat(self.params, grads=True)
            if a.mode == "gradient":
                result = g
                break
            self.buf.mul_(a.momentum).add_(g)
            _assign(self.params, _flat(self.params) - a.lr * self.buf)
        else:
            result = _flat(self.params) - read
        out.payload[:] = result.detach().cpu().numpy()
        out.hdr[:] = 0.0
        out.hdr[ps.EPOCH], out.hdr[ps.VREAD], out.hdr[ps.WSTEP] = self.epoch, h[ps.VERSION], self.step_count
        out.hdr[ps.NSAMP], out.hdr[ps.LOSS] = steps * self.b, loss_sum
        out.hdr[ps.IDSUM] = float(id_sum + steps * self.b * self.lo)
        self.step_count += 1
        self.last_loss = loss_sum / (steps * self.b)
        return ps.PUSH


class AsgdServer:
    """The server's numerics: W ← W + scale·U, or a momentum step on a pushed gradient."""

    def __init__(self, x: np.ndarray, a):
        self.x, self.a = x, a
        self.t = torch.from_numpy(x)           # a view: updates land in x
        self.buf = torch.zeros_like(self.t)
        self.loss_sum, self.samples = 0.0, 0.0

    def begin(self):
        self.loss_sum, self.samples = 0.0, 0.0

    def open(self, w, msg):
        return ps.PARAMS

    def params(self, w, msg) -> int:
        msg.payload[:] = self.x
        return ps.PARAMS

    def push(self, w, msg, scale: float) -> None:
        u = torch.from_numpy(msg.payload)
        if self.a.mode == "accumulate":
            self.t.add_(u, alpha=scale)
        else:
            self.buf.mul_(self.a.momentum).add_(u)
            self.t.add_(self.buf, alpha=-self.a.lr * scale)
        self.loss_sum += float(msg.hdr[ps.LOSS])
        self.samples += float(msg.hdr[ps.NSAMP])


class AsgdTrainer(Trainer):
    name = "asgd"

    def __init__(self, cfg, rt, ds):
        super().__init__(cfg, rt, ds)
        self.W = max(1, rt.size - 1)
        self.pcomm = rt.comm.dup() if rt.size > 1 else None
        gen = torch.Generator().manual_seed(cfg.train.seed)
        if rt.is_root:   # the server's copy lives on the CPU
            self.model = build_model(cfg, ds, gen, self.dtype, "cpu")
            if cfg.asgd.init_model:
                self._load_init(cfg.asgd.init_model)
            x = _flat(list(self.model.parameters())).numpy().copy()
            self.app = AsgdServer(x, cfg.asgd)
            self.server = ps.Server(self.pcomm, x.size, x.dtype, cfg.ps, cfg.ps.trace) if self.pcomm else None
        else:
            self.app = AsgdWorker(cfg, ds, rt.rank, self.W, self.dtype, self.device)
            n = self.app.buf.numel()
            self.link = ps.WorkerLink(self.pcomm, n, _NP[self.dtype], cfg.ps)
        self.warm_done = cfg.asgd.warm_start_steps == 0
        self.last_phase_loss = float("nan")

    def _load_init(self, path):
        """Start from a model.h5 of the same network: the FCResNet layout, or the named-parameter
        layout (e.g. a `--algo backprop --model resnet20` run's; its BatchNorm statistics come too)."""
        if self.cfg.model.arch in FC_ARCHS:
            from radmm_hpc.modelio import load_model
            weights, _ = load_model(path)
            params = list(self.model.parameters())
            shapes = [tuple(p.shape) for p in params]
            if [tuple(w.shape) for w in weights] != shapes:
                raise UserError(f"asgd.init_model {path}: layer shapes {[tuple(w.shape) for w in weights]} "
                                f"do not match this model's {shapes}")
            _assign(params, torch.cat([w.reshape(-1).to(self.dtype) for w in weights]))
            return
        from radmm_hpc.modelio import load_named_params
        arrays, _ = load_named_params(path)
        own = self.model.state_dict()
        if sorted(arrays) != sorted(own) or any(tuple(arrays[k].shape) != tuple(own[k].shape) for k in own):
            raise UserError(f"asgd.init_model {path}: its parameters do not match this model "
                            f"({self.cfg.model.arch}, base width {self.cfg.model.base_width})")
        self.model.load_state_dict({k: torch.as_tensor(v).to(own[k].dtype) for k, v in arrays.items()})

    def _warm_start(self):
        """A short single-rank phase on rank 0 (cold starts hurt asynchronous SGD)."""
        a = self.cfg.asgd
        X, y = tensors_for(self.ds, "train", self.dtype, "cpu")
        params = list(self.model.parameters())
        _assign(params, self.app.t)
        rng = np.random.default_rng([self.cfg.train.seed, 0, 2**32 - 1])   # not any phase's stream
        buf = torch.zeros_like(self.app.t)   # plain momentum SGD (torch.optim's first use is slow)
        for _ in range(a.warm_start_steps):
            idx = torch.as_tensor(rng.integers(0, len(X), min(a.batch_size, len(X))))
            for p in params:
                p.grad = None
            loss_fn(self.model(X[idx]), y[idx], self.ds.task).backward()
            buf.mul_(a.momentum).add_(_flat(params, grads=True))
            _assign(params, _flat(params) - a.lr * buf)
        self.app.t.copy_(_flat(params))

    def step(self, it: int) -> None:
        final = it == self.cfg.train.iters - 1
        b0, r0 = self.pcomm.p2p_sent, self.pcomm.p2p_recv
        if self.rt.is_root:
            if not self.warm_done:
                with self.timed("compute"):
                    self._warm_start()
                self.warm_done = True
            self.server.epoch = it
            self.app.begin()
            with self.timed("serve"):
                self.server.run_phase(self.app, self.cfg.asgd.updates_per_iter, final)
            self.last_phase_loss = self.app.loss_sum / max(1.0, self.app.samples)
        else:
            with self.timed("compute"):
                self.link.serve(self.app)
        self.rt.comm.p2p_sent += self.pcomm.p2p_sent - b0
        self.rt.comm.p2p_recv += self.pcomm.p2p_recv - r0

    def weights(self):
        params = list(self.model.parameters())
        _assign(params, self.app.t)
        return [p.detach() for p in params]

    def _server_model(self):
        """The server's network with the pushed parameters; BatchNorm statistics (which no
        worker pushes) recomputed from the training data, so scores and model.h5 are a plain
        eval-mode network that `eval` reproduces."""
        self.weights()
        calibrate_norm(self.model, self.ds, self.dtype, "cpu")
        return self.model

    @torch.no_grad()
    def _scores(self) -> dict:
        out = score_model(self._server_model(), self.ds)
        out["worker_batch_loss"] = self.last_phase_loss
        out.update(self.server.stats.summary())
        return out

    def metrics(self):
        return self.rt.comm.bcast_obj(self._scores() if self.rt.is_root else None)

    def export_weights(self):
        return [w.clone() for w in self.weights()] if self.rt.is_root else None

    def final_scores(self, weights):
        out = self._scores()
        out["staleness_hist"] = self.server.stats.hist.tolist()
        return out

    def save_final(self, path, weights):
        if self.cfg.model.arch in FC_ARCHS:
            return super().save_final(path, weights)
        from radmm_hpc.modelio import save_named_params  # as backprop saves the same models
        save_named_params(path, self._server_model(), self.cfg, self.ds)

    def state(self):
        if not self.rt.is_root:
            return {"momentum": self.app.buf.cpu().numpy().copy(),
                    "worker_steps": np.array([self.app.step_count], dtype=np.int64)}
        s = self.server
        out = {"x": self.app.x.copy(), "server_momentum": self.app.buf.numpy().copy(),
               "version": np.array([s.version], dtype=np.int64), "stats": s.stats.array(),
               "staleness_hist": s.stats.hist.copy(), "warm_done": np.array([int(self.warm_done)]),
               "phase_loss": np.array([self.last_phase_loss])}
        if s.trace:
            out["trace"] = s.trace_array()
        return out

    def load_state(self, st):
        if not self.rt.is_root:
            self.app.buf.copy_(torch.as_tensor(st["momentum"]))
            self.app.step_count = int(st["worker_steps"][0])
            return
        s = self.server
        self.app.x[:] = st["x"]
        self.app.buf.copy_(torch.as_tensor(st["server_momentum"]))
        s.version = int(st["version"][0])
        s.stats.load(st["stats"], st["staleness_hist"])
        self.warm_done = bool(st["warm_done"][0])
        self.last_phase_loss = float(st["phase_loss"][0])
        s.trace = [tuple(r) for r in st["trace"]] if "trace" in st else []

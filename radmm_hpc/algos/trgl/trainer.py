"""TRGL: module-wise training of a ResNet with a kinetic-energy penalty (docs/trgl.md).

The ResNet's layers are split into K modules (models/resnet.py: split_modules). Module k has its
own classifier (an auxiliary head; the last module uses the network's head), its own optimizer,
and the loss L_k = CE(F_k(T_k(x)), y) + (1/λ_k) Σ_blocks mean(r²), λ_k = 2τ_k (Uzawa: λ_k grows
by η·CE_k every s iterations). Inputs of a module are detached: no gradient crosses a boundary.

Modes: parallel (each batch goes through all modules, each steps on it), sequential and multilap
(one module trains at a time on its budget; earlier modules are frozen, in evaluation mode), and
e2e (one module = the whole network, no penalty: ordinary backprop, the baseline).

On P > 1 ranks, rank k owns module k. Parallel mode is a forward-only pipeline: in loop step t,
rank k trains on batch t − k, received from rank k − 1 (activation and labels in one packed
message), and sends its detached output to rank k + 1 without waiting (`in_flight` message slots),
so all ranks compute at once. Each module sees exactly the batches and inputs of single-process
parallel mode, in the same order, so the parameters are the same. Before metrics, checkpoints and
export the pipeline is drained (every rank catches up to the batches fed so far).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from radmm_hpc.algos.base import Trainer
from radmm_hpc.algos.trgl.parts import (
    MemoryMeter,
    TrglModule,
    active_module,
    augment,
    batch_indices,
    stage_schedule,
    tensor_bytes,
)
from radmm_hpc.comm import TAG
from radmm_hpc.errors import UserError
from radmm_hpc.models import build_model
from radmm_hpc.models.resnet import AuxHead, ResNet, init_resnet, split_modules
from radmm_hpc.scoring import score_model

SPLITS = ("val", "test", "train")


def _layer_prefix(i: int, n_blocks: int) -> str:
    """Name of model.layers()[i] inside the ResNet's state_dict."""
    return "stem" if i == 0 else ("head" if i == n_blocks + 1 else f"blocks.{i - 1}")


class TrglTrainer(Trainer):
    name = "trgl"

    def __init__(self, cfg, rt, ds):
        super().__init__(cfg, rt, ds)
        g = self.g = cfg.trgl
        self.P, self.r = rt.size, rt.rank
        self.e2e = g.mode == "e2e"
        self.K = 1 if self.e2e else (g.modules or self.P)
        self.penalty = g.penalty == "kinetic" and not self.e2e
        self._split_data(cfg, ds)
        model = build_model(cfg, ds, torch.Generator().manual_seed(cfg.train.seed), self.dtype, self.device)
        if not isinstance(model, ResNet):
            raise UserError(f"--algo trgl trains a convolutional ResNet, not {cfg.model.arch}")
        self.n_blocks = len(model.blocks)
        self.parts = split_modules(model, self.K, g.split)
        self.shapes = self._shapes(model)        # output shape (C, H, W) of each module
        layers = model.layers()
        self.mine = list(range(self.K)) if self.P == 1 else [self.r]
        self.mods, self.opts = {}, {}
        for k in self.mine:
            head = None
            if k < self.K - 1:   # the same aux head for module k whatever the number of ranks
                head = AuxHead(self.shapes[k][0], ds.d_out, g.aux_pool, cfg.model.norm)
                init_resnet(head, torch.Generator().manual_seed(cfg.train.seed * 1000 + k + 1))
                head = head.to(self.device, self.dtype)
            self.mods[k] = TrglModule([layers[i] for i in self.parts[k]], head, g.penalise)
            self.opts[k] = torch.optim.SGD(self.mods[k].parameters(), lr=g.lr, momentum=g.momentum,
                                           weight_decay=g.weight_decay)
        del model, layers   # this rank keeps only its own modules
        tau = [g.tau / 2 if (g.tau_schedule == "varying" and k < self.K // 2) else g.tau for k in range(self.K)]
        self.lam = {k: 2.0 * tau[k] for k in self.mine}
        self.acc = {k: np.zeros(3) for k in self.mine}    # since the last metrics: CE, energy, batches
        self.schedule = (stage_schedule(self.K, g.mode, cfg.train.iters, g.stage_iters, g.stage_growth,
                                        g.laps) if g.mode in ("sequential", "multilap") else None)
        self.fed = 0                                       # loop steps so far (batches fed)
        self.done = {k: 0 for k in self.mine}              # batches module k has trained on
        self.sends = [None] * g.in_flight
        self.best_val, self.best_iter, self.best = -1.0, 0, None
        self.meter = MemoryMeter(self.device)
        self.train_s, self.eval_s = 0.0, 0.0
        self.t_first, self.t_end, self.fed_first = None, None, 0   # throughput window

    # ---- data -------------------------------------------------------------------------------
    def _split_data(self, cfg, ds):
        """A validation split held out of the training split (model selection)."""
        n = len(ds.X_train)
        perm = np.random.default_rng([cfg.data.split_seed, 23]).permutation(n)
        n_val = max(1, int(round(n * self.g.val_fraction)))
        if n - n_val < 2:
            raise UserError(f"{n} training samples are too few for a validation split")
        idx = {"val": np.sort(perm[:n_val]), "train": np.sort(perm[n_val:])}
        t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        lab = lambda a: torch.as_tensor(a, dtype=torch.long, device=self.device)  # noqa: E731
        self.data = {s: (t(ds.X_train[i]), lab(ds.y_train[i])) for s, i in idx.items()}
        self.data["test"] = (t(ds.X_test), lab(ds.y_test))
        self.n = len(idx["train"])
        self.B = min(self.g.batch_size, self.n)

    def _batch(self, b: int):
        X, y = self.data["train"]
        idx = torch.as_tensor(batch_indices(self.n, self.B, self.cfg.train.seed, b), device=self.device)
        x = X[idx].reshape(-1, *self.ds.image_shape)
        if self.g.augment:
            gen = torch.Generator().manual_seed(int(np.random.default_rng([self.cfg.train.seed, 29, b])
                                                    .integers(2 ** 62)))
            pad = self.g.crop_pad if self.g.crop_pad >= 0 else self.ds.image_shape[1] // 8
            x = augment(x, pad, self.g.flip, gen)
        return x, y[idx]

    @torch.no_grad()
    def _shapes(self, model):
        was = model.training
        model.eval()
        x = torch.zeros(1, self.ds.d_in, dtype=self.dtype, device=self.device)
        outs = []
        layers = model.layers()
        for part in self.parts:
            for i in part:
                x = layers[i](x)
            outs.append(tuple(x.shape[1:]))
        model.train(was)
        return outs

    # ---- training ---------------------------------------------------------------------------
    def _train_module(self, k: int, x, y):
        """One step of module k on (x, y); returns its output (computed before the step), detached."""
        mod, opt = self.mods[k], self.opts[k]
        mod.train()
        opt.zero_grad(set_to_none=False)
        with self.meter.track(mod.parameters()):
            out, logits, energy = mod(x.detach())
            ce = F.cross_entropy(logits, y, label_smoothing=self.g.label_smoothing)
            loss = ce + energy / self.lam[k] if self.penalty else ce
            loss.backward()
        opt.step()
        self.acc[k] += (float(ce.detach()), float(energy.detach()), 1.0)
        self.done[k] += 1
        if self.penalty and self.g.uzawa and self.done[k] % self.g.uzawa_every == 0:
            self.lam[k] += self.g.uzawa_eta * float(ce.detach())
        return out.detach()

    @torch.no_grad()
    def _frozen(self, k: int, x):
        self.mods[k].eval()
        return self.mods[k](x)[0]

    def step(self, it: int) -> None:
        t0 = time.perf_counter()
        if self.t_first is None:
            self.t_first, self.fed_first = t0, it
        self.fed = it + 1
        with self.timed("compute"):
            if self.schedule is not None:
                self._step_sequential(it)
            elif self.P == 1:
                x, y = self._batch(it)
                for k in range(self.K):
                    x = self._train_module(k, x, y)
            else:
                # rank k lags k batches behind rank 0: its input was sent in an earlier step
                while self.done[self.r] < self.fed - self.r:
                    self._pipe_one()
        self.train_s += time.perf_counter() - t0

    def _recv_input(self, b: int, tag: int, shape):
        """Activation and labels of batch b from rank r − 1 (one packed message)."""
        numel = self.B * int(np.prod(shape))
        req, buf = self.rt.comm.post_recv(numel + self.B, self.dtype, self.r - 1, tag)
        self.rt.comm.wait_all([req])
        x = buf[:numel].view(self.B, *shape).to(self.device, copy=True)
        y = buf[numel:].to(self.device, torch.long)
        return x, y

    def _pipe_one(self) -> None:
        k = self.r
        b = self.done[k]
        x, y = self._batch(b) if k == 0 else self._recv_input(b, TAG.TRGL_PIPE, self.shapes[k - 1])
        out = self._train_module(k, x, y)
        if k < self.K - 1:
            slot = b % len(self.sends)
            self.rt.comm.wait_all([self.sends[slot]])   # that slot's buffer is free again
            self.sends[slot] = self.rt.comm.post_send([out, y.to(self.dtype)], k + 1, TAG.TRGL_PIPE, slot)

    def _step_sequential(self, it: int) -> None:
        a = active_module(self.schedule, it)
        if a is None:
            return
        if self.P == 1:
            x, y = self._batch(it)
            for k in range(a):
                x = self._frozen(k, x)
            self._train_module(a, x, y)
            return
        k = self.r
        if k > a:
            return
        x, y = self._batch(it) if k == 0 else self._recv_input(it, TAG.TRGL_PIPE, self.shapes[k - 1])
        if k == a:
            self._train_module(k, x, y)
        else:
            out = self._frozen(k, x)
            self.rt.comm.wait_all([self.rt.comm.post_send([out, y.to(self.dtype)], k + 1, TAG.TRGL_PIPE)])

    def drain(self) -> None:
        """Bring every rank up to the batches fed so far and complete all sends (collective in
        effect: rank k waits only for rank k − 1)."""
        if self.P > 1 and self.schedule is None:
            while self.done[self.r] < self.fed:
                self._pipe_one()
            self.rt.comm.wait_all(self.sends)
            self.sends = [None] * len(self.sends)

    # ---- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self):
        """Per module k and split: (summed CE, correct, count) of its classifier, by a forward
        pass in evaluation mode through the pipeline, in chunks."""
        out = {}
        for split in SPLITS:
            X, y = self.data[split]
            n = min(len(X), self.g.eval_max) if split == "train" else len(X)
            stats = {k: np.zeros(3) for k in self.mine}
            for s in range(0, n, 256):
                e = min(n, s + 256)
                yb = y[s:e]
                if self.P == 1 or self.r == 0:
                    x = X[s:e]
                else:
                    x = torch.empty(e - s, *self.shapes[self.r - 1], dtype=self.dtype)
                    self.rt.comm.recv([x], self.r - 1, TAG.TRGL_EVAL)
                    x = x.to(self.device)
                for k in self.mine:
                    self.mods[k].eval()
                    x, logits, _ = self.mods[k](x)
                    stats[k] += (float(F.cross_entropy(logits, yb, reduction="sum")),
                                 float((logits.argmax(1) == yb).sum()), e - s)
                if self.P > 1 and self.r < self.K - 1:
                    self.rt.comm.send([x.contiguous()], self.r + 1, TAG.TRGL_EVAL)
            out[split] = stats
        return out

    def _static_bytes(self) -> int:
        params = [p for k in self.mine for p in self.mods[k].parameters()]
        moms = [v for k in self.mine for st in self.opts[k].state.values() for v in st.values()
                if torch.is_tensor(v)]
        return 2 * tensor_bytes(params) + tensor_bytes(moms) + self.rt.comm.buffer_bytes()

    def metrics(self):
        self.drain()
        t0 = time.perf_counter()
        ev = self._evaluate()
        m = {}
        for k in range(self.K):
            for split in SPLITS:
                m[f"module{k}_{split}_accuracy"] = 0.0
            m[f"module{k}_ce"] = m[f"module{k}_kinetic"] = m[f"module{k}_lambda"] = 0.0
        for split in SPLITS:
            m[f"{split}_loss"] = m[f"{split}_accuracy"] = 0.0
        for r in range(self.P):
            m[f"peak_mem_mb_rank{r}"] = 0.0
        for k in self.mine:
            for split in SPLITS:
                loss, correct, cnt = ev[split][k]
                m[f"module{k}_{split}_accuracy"] = correct / cnt
                if k == self.K - 1:   # the network's own head: the scores that count
                    m[f"{split}_loss"], m[f"{split}_accuracy"] = loss / cnt, correct / cnt
            ce, en, cnt = self.acc[k]
            if cnt:
                m[f"module{k}_ce"], m[f"module{k}_kinetic"] = ce / cnt, en / cnt
            m[f"module{k}_lambda"] = self.lam[k]
            self.acc[k][:] = 0
        m[f"peak_mem_mb_rank{self.r}"] = self.meter.peak_bytes(self._static_bytes()) / 2 ** 20
        m = self.rt.comm.reduce_scalars(m, "sum")
        if m["val_accuracy"] > self.best_val:   # the same decision on every rank (reduced value)
            self.best_val, self.best_iter = m["val_accuracy"], self.fed
            if self.g.keep_best:
                self.best = {k: {n: t.detach().clone() for n, t in self.mods[k].state_dict().items()}
                             for k in self.mine}
        m["best_val_accuracy"], m["best_iter"] = self.best_val, float(self.best_iter)
        if self.schedule is not None:
            m["converged"] = float(active_module(self.schedule, self.fed) is None)
        self.eval_s += time.perf_counter() - t0
        return m

    # ---- export -----------------------------------------------------------------------------
    def export_weights(self):
        """The ResNet (best-validation parameters when keep_best) on rank 0, None elsewhere."""
        self.drain()
        self.t_end = time.perf_counter()
        arrays = {}
        for k in self.mine:
            sd = (self.best or {}).get(k) or self.mods[k].state_dict()
            for name, t in sd.items():
                if name.startswith("body."):
                    j, rest = name[5:].split(".", 1)
                    arrays[_layer_prefix(self.parts[k][int(j)], self.n_blocks) + "." + rest] = t.cpu().numpy()
        arrays[f"mem/{self.r}"] = np.array([self.meter.peak_bytes(self._static_bytes())], dtype=np.int64)
        gathered = self.rt.comm.gather_arrays(arrays)
        if gathered is None:
            return None
        merged = {k: v for part in gathered for k, v in part.items()}
        self.mem_per_rank = [int(merged.pop(f"mem/{r}")[0]) for r in range(self.P)]
        model = build_model(self.cfg, self.ds, torch.Generator().manual_seed(0), self.dtype, self.device)
        model.load_state_dict({k: torch.as_tensor(v) for k, v in merged.items()})
        return model

    def final_scores(self, model):
        out = score_model(model, self.ds)
        # images through the whole network per second of the training window (first step to the
        # drained end, metrics evaluation excluded); rank 0's clock, the ranks agree every step
        window = (self.t_end - self.t_first - self.eval_s) if self.t_first is not None else 0.0
        images = (self.fed - self.fed_first) * self.B
        out.update({"mode": self.g.mode, "modules": self.K, "n_train": self.n, "n_val": len(self.data["val"][0]),
                    "partition": self.partition(), "val_accuracy_best": self.best_val,
                    "selected_iter": self.best_iter if self.g.keep_best else self.fed,
                    "peak_mem_bytes_per_rank": self.mem_per_rank,
                    "peak_mem_mb_max_rank": max(self.mem_per_rank) / 2 ** 20,
                    "train_images_per_s": images / window if window > 0 else 0.0})
        return out

    def save_final(self, path, model):
        from radmm_hpc.modelio import save_named_params
        save_named_params(path, model, self.cfg, self.ds)

    # ---- checkpoint -------------------------------------------------------------------------
    def partition(self):
        """The layers (indices into stem, blocks, head) of each module; rank k trains module k."""
        return [list(p) for p in self.parts]

    def state(self):
        self.drain()
        out = {"fed": np.array([self.fed]), "best": np.array([self.best_val, self.best_iter])}
        for k in self.mine:
            for i, t in enumerate(self.mods[k].state_dict().values()):
                out[f"m{k}/sd/{i}"] = t.detach().cpu().numpy()
            for i, p in enumerate(self.mods[k].parameters()):
                buf = self.opts[k].state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    out[f"m{k}/mom/{i}"] = buf.detach().cpu().numpy()
            out[f"m{k}/misc"] = np.array([self.lam[k], self.done[k], *self.acc[k]])
            if self.best is not None:
                for i, t in enumerate(self.best[k].values()):
                    out[f"m{k}/best/{i}"] = t.cpu().numpy()
        return out

    def load_state(self, state):
        for k in self.mine:
            if f"m{k}/misc" not in state:
                raise UserError(f"the checkpoint holds no state for TRGL module {k} (written with "
                                f"another number of modules or ranks?)")
        self.fed = int(state["fed"][0])
        self.best_val, self.best_iter = float(state["best"][0]), int(state["best"][1])
        for k in self.mine:
            mod = self.mods[k]
            keys = list(mod.state_dict())
            mod.load_state_dict({n: torch.as_tensor(state[f"m{k}/sd/{i}"]) for i, n in enumerate(keys)})
            for i, p in enumerate(mod.parameters()):
                if f"m{k}/mom/{i}" in state:
                    self.opts[k].state[p] = {"momentum_buffer": torch.as_tensor(
                        state[f"m{k}/mom/{i}"]).to(self.device, p.dtype).clone()}
            misc = state[f"m{k}/misc"]
            self.lam[k], self.done[k], self.acc[k] = float(misc[0]), int(misc[1]), np.array(misc[2:5])
            if f"m{k}/best/0" in state:
                if self.best is None:
                    self.best = {}
                self.best[k] = {n: torch.as_tensor(state[f"m{k}/best/{i}"]).to(self.device).clone()
                                for i, n in enumerate(keys)}

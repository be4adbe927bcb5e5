"""Pieces of TRGL (docs/trgl.md): a module with its classifier and kinetic penalty, image
augmentation with torch ops, the batch schedule, and memory accounting."""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from radmm_hpc.models.resnet import Block


class TrglModule(nn.Module):
    """A contiguous slice of the ResNet's layers and its classifier (an AuxHead, or the network's
    own head for the last module). forward returns (output, classifier logits, kinetic energy)
    where the energy is Σ_blocks mean(r²) of the residual branches (or of out − shortcut(in))."""

    def __init__(self, layers: List[nn.Module], classifier: Optional[nn.Module], penalise: str = "branch"):
        super().__init__()
        self.body = nn.ModuleList(layers)
        self.classifier = classifier
        self.penalise = penalise

    def forward(self, x):
        energy = x.new_zeros(())
        for layer in self.body:
            if isinstance(layer, Block):
                out, r = layer.forward_with_branch(x)
                d = r if self.penalise == "branch" else out - layer.shortcut(x)
                energy = energy + d.pow(2).mean()
                x = out
            else:
                x = layer(x)
        if self.classifier is None:   # the last module's body ends with the network's head
            return x, x, energy
        return x, self.classifier(x), energy


def augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop of each image from its zero-padded copy (shifts in [−pad, pad]) and a random
    horizontal flip, with torch ops only; `gen` (CPU) makes it reproducible."""
    B, C, H, W = x.shape
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen).to(x.device)
        xp = F.pad(x, (pad, pad, pad, pad))
        rows = (dy[:, None] + torch.arange(H, device=x.device))[:, :, None]   # B × H × 1
        cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, :]   # B × 1 × W
        b = torch.arange(B, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(B, generator=gen) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(mask, x.flip(3), x)
    return x.contiguous()


def batch_indices(n: int, batch: int, seed: int, b: int) -> np.ndarray:
    """Batch `b`: consecutive slices of a per-epoch seeded permutation (the last partial batch
    of an epoch is dropped so every batch has the same size, as the pipeline's buffers need)."""
    per_epoch = max(1, n // batch)
    epoch, k = divmod(b, per_epoch)
    perm = np.random.default_rng([seed, 17, epoch]).permutation(n)
    return perm[k * batch:(k + 1) * batch]


def stage_schedule(k_modules: int, mode: str, iters: int, stage_iters: int, growth: int, laps: int):
    """Sequential/multi-lap schedule: a list of (module, iterations) segments. Module k (0-based)
    has a budget of stage_iters + k·growth iterations (stage_iters = 0: iters // K each), split
    over `laps` laps (multilap) or spent in one go (sequential)."""
    base = stage_iters or max(1, iters // k_modules)
    budgets = [base + k * growth for k in range(k_modules)]
    if mode == "sequential":
        return [(k, b) for k, b in enumerate(budgets) if b > 0]
    out = []
    for lap in range(laps):
        for k, b in enumerate(budgets):
            share = b // laps + (1 if lap < b % laps else 0)
            if share:
                out.append((k, share))
    return out


def active_module(schedule, it: int):
    """The module trained at iteration `it` (None once the schedule is spent)."""
    for k, n in schedule:
        if it < n:
            return k
        it -= n
    return None


class MemoryMeter:
    """Peak bytes of one rank's training memory. CUDA: torch.cuda.max_memory_allocated. CPU:
    bytes of the tensors saved for backward during a step (counted once per storage, through
    autograd's saved-tensor hooks; parameters excluded) plus the static bytes (parameters,
    gradients, optimizer state, message buffers) that the caller adds."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.saved_peak = 0
        self._live = {}
        self._skip = set()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def track(self, params):
        """Context manager around one forward/backward: records saved activation bytes."""
        self._skip = {p.data_ptr() for p in params}
        self._live = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self._skip and ptr not in self._live:
                self._live[ptr] = t.untyped_storage().nbytes()
                self.saved_peak = max(self.saved_peak, sum(self._live.values()))
            return t
        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    def peak_bytes(self, static_bytes: int) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(self.saved_peak + static_bytes)


def tensor_bytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))

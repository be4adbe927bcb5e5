"""`report RUN_DIR`: PNG plots of metrics.jsonl (loss curves, per-phase time per rank) and, for the
parameter-server modes, of summary.json's staleness histogram."""

from __future__ import annotations

import json
import os

from radmm_hpc.errors import UserError


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir}: no metrics.jsonl (is this a run directory?)")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{path}: line {n} is not JSON") from None
    if not rows:
        raise UserError(f"{path}: no records")
    return rows


def report(run_dir: str) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("report needs matplotlib: pip install 'radmm_hpc[plots]'") from None
    rows = read_metrics(run_dir)
    its = [r["iter"] for r in rows]
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = [k for k in ("train_loss", "test_loss", "lagrangian", "relaxed_objective",
                        "primal_residual", "boundary_residual", "successive_diff", "objective",
                        "suboptimality", "E_Q", "violation", "aux_loss", "val_loss") if k in rows[0]]
    for k in keys:
        vals = [r.get(k) for r in rows]
        if all(v is not None and v > 0 for v in vals):
            ax.semilogy(its, vals, label=k)
        else:
            ax.plot(its, [v if v is not None else float("nan") for v in vals], label=k)
    ax.set_xlabel("iteration")
    ax.set_ylabel("value")
    ax.set_title(f"{os.path.basename(os.path.normpath(run_dir))}: losses and residuals")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path = os.path.join(run_dir, "losses.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    phases = rows[-1].get("phase_s")
    if phases:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = sorted(phases)
        n_ranks = len(phases[names[0]])
        bottom = [0.0] * n_ranks
        for name in names:
            vals = phases[name]
            ax.bar(range(n_ranks), vals, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xlabel("rank")
        ax.set_ylabel("seconds (whole run)")
        ax.set_title("time per phase and rank")
        ax.set_xticks(range(n_ranks))
        ax.legend()
        path = os.path.join(run_dir, "phases.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    hist = _summary(run_dir).get("staleness_hist")
    if hist:
        last = max(i for i, c in enumerate(hist) if c > 0) if any(hist) else 0
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(range(last + 1), hist[:last + 1])
        ax.set_xlabel("staleness (server updates between a worker's read and its push; last bin: ≥ 63)"
                      if last == len(hist) - 1 else "staleness (server updates between a worker's read and its push)")
        ax.set_ylabel("pushes")
        ax.set_title(f"staleness histogram ({sum(hist)} pushes)")
        path = os.path.join(run_dir, "staleness.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _summary(run_dir: str) -> dict:
    """summary.json, or {} for a run that has not finished (the plots above need only metrics)."""
    try:
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError):
        return {}

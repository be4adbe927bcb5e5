"""`report RUN_DIR [RUN_DIR ...] [--out PATH]`: PNG plots of runs' metrics.jsonl.

metrics.png has one panel per quantity: the scores (loss, R², MSE, accuracy: train solid, test
dashed, validation dotted) each in their own panel, apart from each method's objectives and
residuals; several runs are overlaid, one colour per run. phases.png shows the time per phase and
rank of each run, staleness.png the parameter-server modes' staleness histogram (summary.json),
movement.png the relative movement ‖W_l − W_l⁰‖/‖W_l⁰‖ of every layer (metrics' layer_movement)
at the logged iterations: whether the bottom layers learn or only the top ones.
"""

from __future__ import annotations

import json
import math
import os

from radmm_hpc.errors import UserError

SPLITS = {"train": "-", "test": "--", "val": ":"}
SCORES = ("loss", "r2", "mse", "accuracy")          # the scores: the first panels, in this order
NOT_PLOTTED = {"iter", "wall_s", "bytes_sent", "phase_s", "converged"}
TITLES = {"loss": "loss", "r2": "R²", "mse": "MSE (target units)", "accuracy": "accuracy"}


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


def quantity(key: str) -> tuple[str, str]:
    """(panel, split) of a metrics key: train_loss -> (loss, train); lagrangian -> (lagrangian, '')."""
    split, _, rest = key.partition("_")
    if split in SPLITS and rest in SCORES:
        return rest, split
    return key, ""


def panels(runs: dict) -> dict:
    """{panel: [(run label, key)]} for the runs' metrics ({label: rows}): the scores first, then
    every other numeric quantity, each in its own panel."""
    out: dict = {}
    for label, rows in runs.items():
        keys = []
        for r in rows:
            keys += [k for k, v in r.items() if k not in keys and k not in NOT_PLOTTED
                     and (isinstance(v, (int, float)) and not isinstance(v, bool) or v is None)]
        for k in keys:
            out.setdefault(quantity(k)[0], []).append((label, k))
    order = [p for p in SCORES if p in out] + [p for p in out if p not in SCORES]
    return {p: out[p] for p in order}


def _labels(run_dirs: list) -> list:
    """Short names for the legend: the directory names, or the paths where names repeat."""
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    labels = [os.path.normpath(d) if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]
    return [f"{x} #{i + 1}" if labels.count(x) > 1 else x for i, x in enumerate(labels)]


def _out_paths(out: str | None, first: str) -> dict:
    if out and out.endswith(".png"):
        stem = out[:-4]
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        return {"metrics": out, **{k: f"{stem}-{k}.png" for k in ("phases", "staleness", "movement")}}
    directory = out or first
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {directory}: cannot create it: {exc.strerror}") from None
    return {k: os.path.join(directory, f"{k}.png") for k in ("metrics", "phases", "staleness", "movement")}


def report(run_dirs, out: str | None = None) -> list[str]:
    """Draw the figures; returns the paths written."""
    if isinstance(run_dirs, str):
        run_dirs = [run_dirs]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("report needs matplotlib: pip install 'radmm_hpc[plots]'") from None
    labels = _labels(run_dirs)
    runs = {label: read_metrics(d) for label, d in zip(labels, run_dirs)}
    paths = _out_paths(out, run_dirs[0])
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    written = [_metrics_figure(plt, runs, colours, paths["metrics"])]
    with_phases = [(label, rows[-1]["phase_s"]) for label, rows in runs.items() if rows[-1].get("phase_s")]
    if with_phases:
        written.append(_phases_figure(plt, with_phases, paths["phases"]))
    hists = [(label, _summary(d).get("staleness_hist")) for label, d in zip(labels, run_dirs)]
    hists = [(label, h) for label, h in hists if h]
    if hists:
        written.append(_staleness_figure(plt, hists, paths["staleness"]))
    moving = {label: rows for label, rows in runs.items() if any(r.get("layer_movement") for r in rows)}
    if moving:
        written.append(_movement_figure(plt, moving, paths["movement"]))
    return written


def _metrics_figure(plt, runs: dict, colours: dict, path: str) -> str:
    layout = panels(runs)
    cols = min(3, max(1, len(layout)))
    nrows = math.ceil(len(layout) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.3 * nrows), squeeze=False)
    for ax, (panel, lines) in zip(axes.flat, layout.items()):
        lo, hi = math.inf, 0.0
        for label, key in lines:
            rows = runs[label]
            its = [r["iter"] for r in rows if key in r]
            vals = [r[key] if r[key] is not None else float("nan") for r in rows if key in r]
            finite = [v for v in vals if v == v]
            lo = min([lo] + finite) if all(v > 0 for v in finite) else -math.inf
            hi = max([hi] + finite)
            split = quantity(key)[1]
            name = label if len(runs) > 1 else ""
            name = f"{name} {split}".strip() if split else (name or key)
            marker = "o" if len(its) <= 30 else None      # a line of one point would not show
            ax.plot(its, vals, SPLITS.get(split, "-"), color=colours[label], label=name, marker=marker,
                    markersize=3)
        if lo > 0 and hi > 20 * lo and panel not in ("r2", "accuracy"):   # spans decades
            ax.set_yscale("log")
        ax.set_title(TITLES.get(panel, panel))
        ax.set_xlabel("iteration")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(layout):]:
        ax.set_visible(False)
    fig.suptitle(", ".join(runs) if len(runs) <= 4 else f"{len(runs)} runs")
    return _save(plt, fig, path, top=1 - 0.4 / fig.get_figheight())   # room for the title


def _save(plt, fig, path: str, top: float = 1.0) -> str:
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _phases_figure(plt, runs: list, path: str) -> str:
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.8), squeeze=False)
    for ax, (label, phases) in zip(axes.flat, runs):
        names = sorted(phases)
        n_ranks = len(phases[names[0]])
        bottom = [0.0] * n_ranks
        for name in names:
            vals = phases[name]
            ax.bar(range(n_ranks), vals, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xlabel("rank")
        ax.set_ylabel("seconds (whole run)")
        ax.set_title(f"{label}: time per phase and rank")
        ax.set_xticks(range(n_ranks))
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def _staleness_figure(plt, runs: list, path: str) -> str:
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 3.8), squeeze=False)
    for ax, (label, hist) in zip(axes.flat, runs):
        last = max(i for i, c in enumerate(hist) if c > 0) if any(hist) else 0
        ax.bar(range(last + 1), hist[:last + 1])
        ax.set_xlabel("staleness (server updates between a worker's read and its push"
                      + ("; last bin: ≥ 63)" if last == len(hist) - 1 else ")"), fontsize=8)
        ax.set_ylabel("pushes")
        ax.set_title(f"{label}: staleness ({sum(hist)} pushes)")
    return _save(plt, fig, path)


def _movement_figure(plt, runs: dict, path: str) -> str:
    """Per run: movement against layer index, one line per logged iteration (light to dark)."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.8), squeeze=False)
    for ax, (label, rows) in zip(axes.flat, runs.items()):
        rows = [r for r in rows if r.get("layer_movement")]
        cmap = plt.get_cmap("viridis")
        for i, r in enumerate(rows):
            mv = [v if v is not None else float("nan") for v in r["layer_movement"]]
            ax.plot(range(1, len(mv) + 1), mv, color=cmap(i / max(1, len(rows) - 1)),
                    label=f"iter {r['iter']}" if i in (0, len(rows) - 1) else None)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("layer (1 = input layer)")
        ax.set_ylabel("‖W − W⁰‖ / ‖W⁰‖")
        ax.set_title(f"{label}: layer movement")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def _summary(run_dir: str) -> dict:
    """summary.json, or {} for a run that has not finished (the plots above need only metrics)."""
    try:
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError):
        return {}

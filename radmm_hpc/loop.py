"""The shared training loop: every method is a Trainer driven from here.

Per iteration: step, (every log_every) metrics and a progress line, one agreement on signals and
time-based checkpoints, and (every checkpoint.every) a checkpoint (checkpoint.py). A signal
(SIGUSR1/SIGTERM) writes a checkpoint on every rank and exits with status 3; `resume` restores a
checkpoint before the first step. At the end rank 0 scores the exported network by a forward
pass, runs the reference baselines, and writes model.h5 and summary.json.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import torch

from radmm_hpc import rundir
from radmm_hpc.algos import trainer_class
from radmm_hpc.config import render_toml, setting_comments
from radmm_hpc.data import load_dataset
from radmm_hpc.errors import EXIT_DIVERGED, Preempted, UserError
from radmm_hpc.metrics import MetricsLog, Progress, TensorBoardLog, clean, peak_rss_mb
from radmm_hpc.runtime import CollectiveError, agree, gather_ranks, on_root
from radmm_hpc.scoring import least_squares_scores, output_layer_only_scores


def prepare_run_dir(cfg, rt, resume: bool = False, overwrite: bool = False) -> str:
    """Rank 0 creates the run directory (rundir.py: a fresh default name, or the named one when
    empty, resumed or overwritten) and tells the others."""
    def make():
        if cfg.train.run_dir:
            return rundir.prepare(cfg.train.run_dir, resume, overwrite)
        try:
            return rundir.new_default_dir()
        except OSError as exc:
            raise UserError(f"cannot create a run directory under runs/: {exc.strerror}") from None
    rt.run_dir = on_root(rt, make)
    return rt.run_dir


def _finite(m: dict) -> bool:
    return all(v == v and abs(v) != float("inf") for v in m.values() if isinstance(v, float))


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(clean(obj) if isinstance(obj, dict) else obj, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def _trim_metrics(path: str, upto: int) -> None:
    """On resume: drop metrics lines of iterations after the checkpoint (they will be redone)."""
    if not os.path.isfile(path):
        return
    keep = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                if int(json.loads(line)["iter"]) <= upto:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(keep)
    os.replace(tmp, path)


def train(cfg, rt, resume: str | None = None, overwrite: bool = False, argv=None) -> dict | None:
    from radmm_hpc.checkpoint import Checkpointer
    ds = agree(rt, load_dataset, cfg.data)
    run_dir = prepare_run_dir(cfg, rt, resume=bool(resume), overwrite=overwrite)
    trainer = agree(rt, trainer_class(cfg.train.algo), cfg, rt, ds)
    root = rt.is_root
    ckpt = Checkpointer(cfg, rt, run_dir, trainer)
    resumed = ckpt.resume(resume) if resume else None
    done = resumed["iteration"] if resumed else 0
    gather_ranks(rt)
    if root:
        with open(os.path.join(run_dir, "config.toml"), "w", encoding="utf-8") as fh:
            fh.write(render_toml(cfg.to_dict(), setting_comments()))
        # a resumed run redoes the iterations after its checkpoint; a fresh one (--resume auto
        # finding no checkpoint) starts its metrics again
        _trim_metrics(os.path.join(run_dir, "metrics.jsonl"), done)
        rundir.write_run_json(run_dir, rundir.run_metadata(
            rt, argv, dict(resumed, path=ckpt.last_path) if resumed else None), bool(resumed))
    log = MetricsLog(os.path.join(run_dir, "metrics.jsonl") if root else None)
    tb = agree(rt, lambda: TensorBoardLog(os.path.join(run_dir, "tensorboard"), done)
               if root and cfg.train.tensorboard else None)
    progress = Progress(cfg.train.iters, root, cfg.train.progress_seconds, start=done)
    comm, t = rt.comm, cfg.train
    iter_times, step_bytes = [], 0
    it, wall0, bytes_from = 0, 0.0, 0
    if resumed:
        it, wall0, step_bytes = resumed["iteration"], resumed["wall_s"], resumed["step_bytes"]
        bytes_from = resumed["bytes_from"]
    t_start = time.perf_counter() - wall0

    def loop_state():
        return {"wall_s": time.perf_counter() - t_start, "step_bytes": step_bytes}
    try:
        while it < t.iters:
            b0, t0 = comm.bytes_sent, time.perf_counter()
            trainer.step(it)
            iter_times.append(time.perf_counter() - t0)
            step_bytes += comm.bytes_sent - b0
            it += 1
            last = it == t.iters
            stop = False
            if it % t.log_every == 0 or last:
                m = trainer.metrics()
                if not _finite(m):
                    # the metrics are reduced, so every rank sees this and leaves together
                    from radmm_hpc.checkpoint import list_checkpoints
                    last_good = (list_checkpoints(run_dir) or [None])[0] if root else None
                    raise CollectiveError(f"non-finite loss at iteration {it}: the run diverged (lower the "
                                          f"learning rate or raise the penalties)"
                                          + (f"; last good checkpoint: {last_good}" if last_good else ""),
                                          EXIT_DIVERGED)
                phases = dict(trainer.phase_s, wait=comm.wait_s)
                per_rank = comm.allgather_obj((phases, dict(trainer.phase_cpu_s)))
                record = {"iter": it, "wall_s": time.perf_counter() - t_start,
                          "time_per_iter_s": statistics.median(iter_times[-t.log_every:]),
                          "bytes_sent": comm.bytes_sent, **m,
                          "phase_s": {k: [p[0].get(k, 0.0) for p in per_rank] for k in sorted(phases)},
                          "phase_cpu_s": {k: [p[1].get(k, 0.0) for p in per_rank]
                                          for k in sorted(trainer.phase_cpu_s)}}
                log.write(record)
                if tb:
                    tb.write(record)
                shown = {k: m[k] for k in ("train_loss", "test_loss", "test_r2", "test_accuracy") if k in m}
                progress.update(it, shown, force=last)
                stop = bool(m.get("converged", 0.0))
            # one agreement: 2 = a signal on some rank, 1 = rank 0's checkpoint clock ran out
            flag = comm.agree_flag((2 if rt.signals.received else 0) | int(ckpt.time_due()))
            if flag >= 2:
                path = ckpt.save(it, loop_state())
                raise Preempted(f"stopped by a signal at iteration {it}; checkpoint {path} written")
            if flag or ckpt.iter_due(it):
                ckpt.save(it, loop_state())
            if stop:
                break
    finally:
        progress.close()
        log.close()
        if tb:
            tb.close()
    wall = time.perf_counter() - t_start
    weights = trainer.export_weights()
    peaks = comm.reduce_scalars({"bytes": step_bytes / max(1, it - bytes_from), "rss": peak_rss_mb(),
                                 "state": sum(a.nbytes for a in trainer.state().values()) / 2**20}, "max")
    summary = None
    if root:
        trainer.save_final(os.path.join(run_dir, "model.h5"), weights)
        scores = trainer.final_scores(weights)
        summary = {"algo": t.algo, "data": cfg.data.name, "model": cfg.model.arch,
                   "world_size": rt.size, "iters": it, "wall_s": wall,
                   "time_per_iter_s": statistics.median(iter_times) if iter_times else 0.0,
                   **scores, "bytes_sent_per_iter": peaks["bytes"], "peak_rss_mb": peaks["rss"],
                   "state_mb_max_rank": peaks["state"],
                   "run_dir": run_dir}
        if t.compare:
            summary["baselines"] = baselines(cfg, ds, wall, rt, trainer.backprop_baseline,
                                             trainer.least_squares_baseline)
    # other ranks wait (sleeping, not spinning) while rank 0 runs the baselines (Adam for `wall`)
    comm.barrier(timeout_s=comm.timeout_s + (2 * wall if t.compare else 0.0))
    if root:
        write_json(os.path.join(run_dir, "summary.json"), summary)
        print_table(summary)
    return summary


def baselines(cfg, ds, seconds: float, rt, with_backprop: bool = True,
              with_least_squares: bool = True) -> dict:
    """Reference numbers on rank 0: least squares (regression); for the FCResNet or MLP the
    initial network with only its output layer fitted (no feature learning); and for
    non-backprop methods Adam backpropagation on the same network for the same wall-clock (all
    the node's cores): its last iterate and its early-stopped (best validation) iterate."""
    out = {}
    ls = least_squares_scores(ds) if with_least_squares else None
    if ls:
        out["least_squares"] = ls
    fixed = output_layer_only_scores(cfg, ds) if with_least_squares else None
    if fixed:
        out["output_layer_only"] = fixed
    if with_backprop:
        from radmm_hpc.baselines import backprop_for_seconds
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
        try:
            out.update(backprop_for_seconds(cfg, ds, seconds, rt.device))
        finally:
            torch.set_num_threads(threads)
    return out


def print_table(summary: dict) -> None:
    rows = [(summary["algo"], summary)] + list(summary.get("baselines", {}).items())
    cols = [c for c in ("train_loss", "test_loss", "train_mse", "test_mse", "train_r2", "test_r2",
                        "train_accuracy", "test_accuracy") if c in summary]
    print(f"\nrun {summary['run_dir']}: {summary['iters']} iterations on {summary['world_size']} "
          f"rank(s) in {summary['wall_s']:.1f} s (scores by a forward pass)")
    print(f"{'method':<32}" + "".join(f"{c:>15}" for c in cols))
    for name, r in rows:
        print(f"{name:<32}" + "".join(f"{r[c]:>15.4f}" if isinstance(r.get(c), float) else f"{'-':>15}"
                                       for c in cols))

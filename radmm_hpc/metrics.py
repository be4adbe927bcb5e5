"""Run outputs written by rank 0: metrics.jsonl lines, progress on the terminal or in logs."""

from __future__ import annotations

import json
import math
import resource
import sys
import time


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def clean(d: dict) -> dict:
    """JSON has no NaN/Inf: write them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


class MetricsLog:
    def __init__(self, path: str | None):
        self.fh = open(path, "a", encoding="utf-8") if path else None

    def write(self, record: dict) -> None:
        if self.fh:
            self.fh.write(json.dumps(clean(record)) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh:
            self.fh.close()


class TensorBoardLog:
    """The numbers of each metrics record as TensorBoard scalars (train.tensorboard, rank 0), in
    RUN_DIR/tensorboard. Every run starts with a purge at the step after its checkpoint, so
    that TensorBoard hides the events of the iterations being redone (as metrics.jsonl is trimmed)."""

    def __init__(self, path: str, done: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from radmm_hpc.errors import ConfigError
            raise ConfigError("train.tensorboard = true needs the tensorboard package: "
                              "pip install 'radmm_hpc[tensorboard]'") from None
        # steps start at 1: a fresh run (done = 0) hides whatever an earlier run left there
        self.writer = SummaryWriter(path, purge_step=done + 1)

    def write(self, record: dict) -> None:
        step = int(record["iter"])
        for k, v in record.items():
            if k != "iter" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """A bar on a terminal; a plain line every `every_s` seconds otherwise (Slurm logs). Both show
    the seconds per iteration and the time left at that pace (over this process's iterations:
    a resumed run counts from `start`)."""

    def __init__(self, total: int, enabled: bool, every_s: float, stream=None, start: int = 0):
        self.total, self.enabled, self.every_s, self.start = total, enabled, every_s, start
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = self.last = time.time()

    def pace(self, it: int, now: float) -> str:
        done = it - self.start
        if done <= 0:
            return ""
        per = (now - self.t0) / done
        return f"{per:.3g} s/iter  ETA {_clock(per * max(0, self.total - it))}"

    def update(self, it: int, info: dict, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.time()
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        pace = self.pace(it, now)
        if self.tty:
            width = 30
            done = int(width * it / max(1, self.total))
            self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {it}/{self.total} {pace}  {text}\x1b[K")
            self.stream.flush()
        elif force or now - self.last >= self.every_s:
            self.stream.write(f"iter {it}/{self.total}  {now - self.t0:.1f}s  {pace}  {text}\n")
            self.stream.flush()
            self.last = now

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

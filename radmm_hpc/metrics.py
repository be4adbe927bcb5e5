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


class Progress:
    """A bar on a terminal; a plain line every `every_s` seconds otherwise (Slurm logs)."""

    def __init__(self, total: int, enabled: bool, every_s: float, stream=None):
        self.total, self.enabled, self.every_s = total, enabled, every_s
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = self.last = time.time()

    def update(self, it: int, info: dict, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.time()
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        if self.tty:
            width = 30
            done = int(width * it / max(1, self.total))
            self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {it}/{self.total} {text}\x1b[K")
            self.stream.flush()
        elif force or now - self.last >= self.every_s:
            self.stream.write(f"iter {it}/{self.total}  {now - self.t0:.1f}s  {text}\n")
            self.stream.flush()
            self.last = now

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

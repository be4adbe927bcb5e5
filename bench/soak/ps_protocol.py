"""Soak test of the parameter-server protocol: many start/stop cycles under a watchdog.

    timeout 600 mpiexec -n 4 python -m bench.soak.ps_protocol --cycles 200

Each cycle duplicates the communicator, runs one phase (a varying budget, including 0 and less
than the number of workers) and ends every worker with exactly one STOP, then frees it. The modes
rotate: free-running, round-robin (deterministic) with dropped stale updates, and stale-synchronous
gating with random worker delays. Any hang ends in the protocol's own timeout (an error) or the
outer `timeout`; the script prints a table and exits 0 only if every cycle was exact.
"""

import argparse
import sys
import time

from tests.support import mpi_all, runtime, world
from tests.support.ps_selftest import start_stop_cycles

MODES = [("free", False, "none", 0.0), ("round-robin+drop", True, "drop", 0.0),
         ("ssp+jitter", False, "ssp", 0.0005)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cycles", type=int, default=200)
    p.add_argument("--timeout", type=float, default=60.0, help="protocol wait limit (s)")
    a = p.parse_args()
    comm = world()
    base = runtime(comm).comm
    rows, all_ok = [], True
    for name, det, policy, jitter in MODES:
        n = a.cycles // len(MODES) + (1 if len(rows) < a.cycles % len(MODES) else 0)
        t0 = time.perf_counter()
        ok = start_stop_cycles(base, n, det, policy, jitter, timeout_s=a.timeout)
        ok = mpi_all(ok, comm)
        rows.append((name, n, time.perf_counter() - t0, ok))
        all_ok = all_ok and ok
    if comm.Get_rank() == 0:
        print(f"soak: {comm.Get_size()} ranks ({comm.Get_size() - 1} workers), {a.cycles} start/stop cycles")
        print(f"{'mode':<20}{'cycles':>8}{'seconds':>10}{'ms/cycle':>10}  result")
        for name, n, s, ok in rows:
            print(f"{name:<20}{n:>8}{s:>10.2f}{1000 * s / max(1, n):>10.1f}  {'ok' if ok else 'FAILED'}")
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()

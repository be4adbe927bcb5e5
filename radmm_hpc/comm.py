"""The communication layer: the only module that calls MPI for moving data between ranks.

Everything else calls these methods. Tensors travel through the uppercase (buffer) mpi4py calls;
several tensors for one neighbour are packed into one reusable buffer and sent as one message.
GPU tensors are staged through host memory unless the start-up probe found MPI CUDA-aware. Every
wait is one polling loop (_poll) with a short sleep, so that ranks oversubscribing cores (8 ranks
on 2 cores) do not spin against the ranks doing the work and a signal handler can run during a
long wait. Every wait has a deadline (comm.timeout_s): a peer on a dead or cut-off node ends the
job with CommTimeout instead of a hang.

With no MPI (world size 1, or mpi4py without an MPI library) the same API works serially.
Byte counters count tensor payload only: point-to-point bytes and collective payload separately.
"""

from __future__ import annotations

import pickle
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from radmm_hpc.errors import EXIT_COMM, UserError

try:  # an MPI library may be absent: then the program still runs as one process
    from mpi4py import MPI
except (ImportError, RuntimeError):  # pragma: no cover - depends on the installation
    MPI = None

_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}
# polling: this many tests back to back (latency), then sleeps of SHORT_S, and LONG_S once a wait
# has lasted LONG_AFTER tests (the cores go to the ranks that compute)
SPINS, LONG_AFTER, SHORT_S, LONG_S = 50, 2000, 0.0002, 0.001


class TAG:
    """Every message tag, in one table: exchanges that can be in flight together on one
    communicator have tags of their own."""
    RADMM_INIT, RADMM_FWD, RADMM_BWD, RADMM_EVAL = 11, 12, 13, 14
    RADMM_COLOUR = (15, 16)          # two-colour: the messages after colour 0's and colour 1's sweep
    RADMM_CTRL = 17                  # anchored: the accept/penalty decision and the running ‖W‖²
    MAC_HOP = (21, 22)               # W-step: submodels to the ring successor (alternating passes)
    MAC_COPY = (23, 24)              # the copy round after the W-step
    TRGL_PIPE, TRGL_EVAL = 31, 32    # the module pipeline: training batches, evaluation chunks
    # the parameter-server protocol (algos/ps/protocol.py), on its own duplicated communicator:
    # the tag is the message kind. Server -> worker, then worker -> server.
    PS_PARAMS, PS_SNAPSHOT, PS_FULLGRAD, PS_PARK, PS_STOP = 41, 42, 43, 44, 45
    PS_PUSH, PS_PARTIAL = 46, 47
    CUDA_PROBE = 90                  # cuda_aware()'s start-up ring exchange
    GATHER = 1000                    # gather_arrays: GATHER + i for a rank's i-th array


DEFAULT_TIMEOUT_S = 600.0   # comm.timeout_s (config.py): longer than any legitimate wait


class CommTimeout(UserError):
    """A wait in this layer passed its deadline: a peer's node died or is cut off. Raised on the
    ranks that can still act; the CLI prints it as one line and aborts the job."""

    exit_code = EXIT_COMM


def _host(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor (the buffer MPI reads or writes)."""
    return t.detach().numpy()


def _pack(buf: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Copy `tensors` into the flat `buf` one after another (staging GPU data to a host buffer)."""
    offset = 0
    for t in tensors:
        buf[offset:offset + t.numel()].copy_(t.detach().reshape(-1))
        offset += t.numel()
    return buf


def _unpack(buf: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Fill `tensors` in place from the flat `buf` (the inverse of _pack)."""
    offset = 0
    for t in tensors:
        t.copy_(buf[offset:offset + t.numel()].view(t.shape))
        offset += t.numel()


class Comm:
    def __init__(self, mpi_comm=None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.mpi = mpi_comm
        # deadline of every wait (point to point and collectives): past it, CommTimeout
        self.timeout_s = timeout_s
        self._abandoned: list = []
        self.rank = mpi_comm.Get_rank() if mpi_comm is not None else 0
        self.size = mpi_comm.Get_size() if mpi_comm is not None else 1
        self.p2p_sent = 0
        self.p2p_recv = 0
        self.coll_bytes = 0
        self._buffers: Dict[tuple, torch.Tensor] = {}
        self._probed = self._cuda_aware = False   # cuda_aware(): may GPU tensors go to MPI directly?
        self.wait_s = 0.0   # time spent blocked in this layer (the "wait" phase)

    # ---- counters -------------------------------------------------------------------------
    @property
    def bytes_sent(self) -> int:
        return self.p2p_sent + self.coll_bytes

    def counters(self) -> dict:
        return {"p2p_sent": self.p2p_sent, "p2p_recv": self.p2p_recv, "coll_bytes": self.coll_bytes}

    def buffer_bytes(self) -> int:
        """Bytes of the reusable message buffers this layer holds (memory accounting)."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    # ---- control plane: small Python objects ------------------------------------------------
    # Pickled, as mpi4py's lowercase calls do, but through nonblocking buffer collectives so that
    # these waits have the deadline too (the objects come from the job's own ranks). An object
    # travels in a fixed slot (its length, then its bytes) in one collective; only when some
    # object is larger than the slot does a second round move the whole pickles.
    SLOT = 2048

    def barrier(self, timeout_s: float | None = None) -> None:
        if self.mpi is not None:
            self._wait([self.mpi.Ibarrier()], "a barrier", timeout_s)

    def _slot(self, data: bytes) -> np.ndarray:
        slot = np.zeros(self.SLOT, dtype=np.uint8)
        slot[:8] = np.frombuffer(np.int64(len(data)).tobytes(), dtype=np.uint8)
        if len(data) <= self.SLOT - 8:
            slot[8:8 + len(data)] = np.frombuffer(data, dtype=np.uint8)
        return slot

    def _unslot(self, slot: np.ndarray):
        """(length, the object if it fitted in the slot else None)."""
        n = int(slot[:8].view(np.int64)[0])
        return n, (pickle.loads(slot[8:8 + n].tobytes()) if n <= self.SLOT - 8 else None)

    def bcast_obj(self, obj, root: int = 0):
        if self.mpi is None:
            return obj
        data = pickle.dumps(obj) if self.rank == root else b""
        slot = self._slot(data) if self.rank == root else np.empty(self.SLOT, dtype=np.uint8)
        self._wait([self.mpi.Ibcast(slot, root=root)], "a broadcast")
        n, got = self._unslot(slot)
        if n > self.SLOT - 8:       # too big for the slot: the whole pickle in a second round
            buf = np.frombuffer(data, dtype=np.uint8).copy() if self.rank == root else np.empty(n, np.uint8)
            self._wait([self.mpi.Ibcast(buf, root=root)], "a broadcast")
            got = obj if self.rank == root else pickle.loads(buf.tobytes())
        return obj if self.rank == root else got

    def _gather_objs(self, obj, root):
        """Every rank's object on every rank (root None) or on root only (None elsewhere)."""
        data = pickle.dumps(obj)
        slot = self._slot(data)
        what = "an allgather" if root is None else "a gather"
        if root is None:
            slots = np.empty((self.size, self.SLOT), dtype=np.uint8)
            self._wait([self.mpi.Iallgather(slot, slots)], what)
        else:
            slots = np.empty((self.size, self.SLOT), dtype=np.uint8) if self.rank == root else None
            self._wait([self.mpi.Igather(slot, slots, root=root)], what)
            if self.rank != root:
                if len(data) > self.SLOT - 8:      # too big for the slot: the whole pickle to root
                    self._wait([self.mpi.Isend(np.frombuffer(data, dtype=np.uint8), dest=root, tag=991)], what)
                return None
        got = [self._unslot(row) for row in slots]
        big = [r for r, (n, o) in enumerate(got) if n > self.SLOT - 8]
        if big:
            if root is None:   # everyone knows who overflowed: each sends its pickle to all
                counts = np.array([got[r][0] if r in big else 0 for r in range(self.size)], dtype=np.int64)
                out = np.empty(int(counts.sum()), dtype=np.uint8)
                mine = np.frombuffer(data, dtype=np.uint8) if self.rank in big else np.empty(0, np.uint8)
                displ = np.concatenate([[0], np.cumsum(counts)[:-1]])
                self._wait([self.mpi.Iallgatherv(mine, [out, (counts, displ), MPI.BYTE])], what)
                for r in big:
                    got[r] = (0, pickle.loads(out[displ[r]:displ[r] + counts[r]].tobytes()))
            else:
                bufs = {r: np.empty(got[r][0], dtype=np.uint8) for r in big if r != root}
                self._wait([self.mpi.Irecv(b, source=r, tag=991) for r, b in bufs.items()], what)
                for r in big:
                    got[r] = (0, obj if r == root else pickle.loads(bufs[r].tobytes()))
        return [o for _, o in got]

    def allgather_obj(self, obj) -> list:
        return [obj] if self.mpi is None else self._gather_objs(obj, None)

    def gather_obj(self, obj, root: int = 0):
        return [obj] if self.mpi is None else self._gather_objs(obj, root)

    def agree_flag(self, flag: int) -> int:
        """Max of an integer flag over ranks (signals, stop decisions, errors)."""
        if self.mpi is None:
            return int(flag)
        buf = np.array([int(flag)], dtype=np.int64)
        self._wait([self.mpi.Iallreduce(MPI.IN_PLACE, buf, op=MPI.MAX)], "an allreduce")
        return int(buf[0])

    def abort(self, code: int) -> None:
        """End every rank of the job now (a failure only this rank saw)."""
        if self.mpi is not None:
            self.mpi.Abort(code)

    # ---- waiting ----------------------------------------------------------------------------
    def _poll(self, done, timeout_s: Optional[float] = None, message: str = "", error=TimeoutError) -> None:
        """Call done() until it is true: SPINS times back to back (latency), then with sleeps (the
        cores go to the ranks that compute), looking at the clock only while sleeping (no cost per
        message). Raises error(message) after timeout_s seconds (None: no deadline). The time of a
        wait that ends counts as this layer's wait."""
        t0 = time.perf_counter()
        spins = 0
        while not done():
            spins += 1
            if spins > SPINS:
                time.sleep(SHORT_S if spins < LONG_AFTER else LONG_S)
                if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                    raise error(message() if callable(message) else message)
        self.wait_s += time.perf_counter() - t0

    def _wait(self, reqs: List, what: str = "a message", timeout_s: Optional[float] = None) -> None:
        """Until every request completes, or CommTimeout past the deadline (comm.timeout_s)."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            self._poll(lambda: MPI.Request.Testall(reqs), limit,
                       lambda: f"no progress for {limit:g} s waiting for {what} (comm.timeout_s): a node died "
                               f"or its network is down; resume from the last checkpoint (--resume auto)",
                       CommTimeout)
        except CommTimeout:
            self._abandoned.extend(reqs)     # their buffers stay alive: a late peer may still write
            raise

    def wait_all(self, reqs) -> None:
        reqs = [r for r in reqs if r is not None]
        if reqs and self.mpi is not None:
            self._wait(reqs)

    # ---- collectives on tensors ---------------------------------------------------------------
    def allreduce_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place allreduce of a tensor (any device); returns it."""
        if self.mpi is None:
            return t
        host = t if (t.device.type == "cpu" and t.is_contiguous()) else t.detach().to("cpu").contiguous()
        self.coll_bytes += host.numel() * host.element_size()
        self._wait([self.mpi.Iallreduce(MPI.IN_PLACE, _host(host), op=getattr(MPI, _OPS[op]))])
        if host is not t:
            t.copy_(host)
        return t

    def reduce_scalars(self, values: Dict[str, float], op: str = "sum") -> Dict[str, float]:
        """Reduce a dict of floats (same keys on every rank) with one Allreduce."""
        keys = sorted(values)
        buf = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        if self.mpi is not None:
            self._wait([self.mpi.Iallreduce(MPI.IN_PLACE, _host(buf), op=getattr(MPI, _OPS[op]))])
        return {k: float(v) for k, v in zip(keys, buf.tolist())}

    def gather_arrays(self, arrays: Dict[str, np.ndarray], root: int = 0):
        """Gather every rank's named arrays to `root` (model export). Returns a list per rank
        on root, None elsewhere. Shapes travel as control data, values as buffers."""
        if self.mpi is None:
            return [arrays]
        meta = {k: (a.shape, a.dtype.str) for k, a in arrays.items()}
        metas = self.gather_obj(meta, root=root)
        if self.rank != root:
            sends = [np.ascontiguousarray(arrays[k]) for k in sorted(arrays)]
            self._wait([self.mpi.Isend(a, dest=root, tag=TAG.GATHER + i) for i, a in enumerate(sends)],
                       "the model export")
            return None
        out, reqs = [], []
        for r, m in enumerate(metas):
            if r == root:
                out.append(dict(arrays))
                continue
            got = {}
            for i, k in enumerate(sorted(m)):
                shape, dt = m[k]
                got[k] = np.empty(shape, dtype=np.dtype(dt))
                reqs.append(self.mpi.Irecv(got[k], source=r, tag=TAG.GATHER + i))
            out.append(got)
        self._wait(reqs, "the model export")
        return out

    # ---- point to point -----------------------------------------------------------------------
    def _buffer(self, key: tuple, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self._buffers.get(key)
        if buf is None or buf.numel() != numel or buf.dtype != dtype:
            buf = torch.empty(numel, dtype=dtype)
            self._buffers[key] = buf
        return buf

    def _message(self, key: tuple, tensors: Sequence[torch.Tensor], direct: bool) -> torch.Tensor:
        """The flat buffer of one message: on the GPU (direct) or this layer's host buffer `key`."""
        numel = sum(t.numel() for t in tensors)
        if direct:
            return torch.empty(numel, dtype=tensors[0].dtype, device=tensors[0].device)
        return self._buffer(key, numel, tensors[0].dtype)

    def exchange(self, sends: Dict[int, Sequence[torch.Tensor]],
                 recvs: Dict[int, Sequence[torch.Tensor]], tag: int = 0) -> None:
        """Send one packed message to each peer in `sends` and receive one from each in `recvs`.

        Receive targets are filled in place. All tensors of one message share a dtype. GPU
        tensors go to MPI directly when cuda_aware() found it can read GPU memory (all tensors of
        the exchange on the GPU), else through host buffers.
        """
        if not sends and not recvs:
            return
        if self.mpi is None:
            raise RuntimeError("exchange with a peer in a one-process run")
        tensors = [t for ts in list(sends.values()) + list(recvs.values()) for t in ts]
        direct = self._cuda_aware and all(t.device.type == "cuda" for t in tensors)
        reqs, unpack = [], []
        for peer, ts in recvs.items():
            buf = self._message(("r", peer, tag), ts, direct)
            reqs.append(self.mpi.Irecv(buf if direct else _host(buf), source=peer, tag=tag))
            unpack.append((buf, ts))
            self.p2p_recv += buf.numel() * buf.element_size()
        for peer, ts in sends.items():
            buf = _pack(self._message(("s", peer, tag), ts, direct), ts)
            if direct:
                torch.cuda.synchronize(buf.device)   # the packed data must be written before MPI reads it
            reqs.append(self.mpi.Isend(buf if direct else _host(buf), dest=peer, tag=tag))
            self.p2p_sent += buf.numel() * buf.element_size()
        self._wait(reqs)
        for buf, ts in unpack:
            _unpack(buf, ts)

    def send(self, tensors: Sequence[torch.Tensor], dest: int, tag: int = 0) -> None:
        self.exchange({dest: tensors}, {}, tag)

    def recv(self, tensors: Sequence[torch.Tensor], source: int, tag: int = 0) -> None:
        self.exchange({}, {source: tensors}, tag)

    # ---- non-blocking point to point (pipelines: TRGL) ----------------------------------------
    def post_send(self, tensors: Sequence[torch.Tensor], dest: int, tag: int, slot: int = 0):
        """Pack `tensors` into this (dest, tag, slot)'s own buffer and start sending it; returns
        the request. The caller waits on it (wait_all) before posting on the same slot again."""
        buf = _pack(self._message(("ps", dest, tag, slot), tensors, False), tensors)
        self.p2p_sent += buf.numel() * buf.element_size()
        return self.mpi.Isend(_host(buf), dest=dest, tag=tag)

    def post_recv(self, numel: int, dtype: torch.dtype, source: int, tag: int, slot: int = 0):
        """Start receiving one packed message into this (source, tag, slot)'s buffer; returns
        (request, buffer). Read the buffer only after wait_all([request])."""
        buf = self._buffer(("pr", source, tag, slot), numel, dtype)
        self.p2p_recv += buf.numel() * buf.element_size()
        return self.mpi.Irecv(_host(buf), source=source, tag=tag), buf

    # ---- parameter-server messages (async modes): tagged, fixed-size buffers -----------------
    # The protocol itself lives in radmm_hpc/algos/ps/protocol.py; these are its only MPI calls.
    # Buffers are numpy arrays (a byte image: header + payload); every wait has a deadline so
    # that a lost peer ends in an error (and the CLI's abort) instead of a hang.
    def dup(self) -> "Comm":
        """A duplicate communicator (own message space) with its own counters."""
        return Comm(self.mpi.Dup() if self.mpi is not None else None, self.timeout_s)

    def free(self) -> None:
        if self.mpi is not None and self.mpi != MPI.COMM_WORLD:
            self.mpi.Free()
            self.mpi = None

    def isend_msg(self, buf: np.ndarray, dest: int, tag: int):
        self.p2p_sent += buf.nbytes
        return self.mpi.Isend([buf, MPI.BYTE], dest=dest, tag=tag)

    def irecv_msg(self, buf: np.ndarray, source: int, tag: int = -1):
        """Receive one message of any tag (tag < 0) or of `tag`."""
        self.p2p_recv += buf.nbytes   # messages of one protocol have a fixed size
        return self.mpi.Irecv([buf, MPI.BYTE], source=source, tag=MPI.ANY_TAG if tag < 0 else tag)

    def wait_msgs(self, reqs: list, timeout_s: float, what: str, some: bool = True) -> list:
        """Wait until at least one (some=True) or all of `reqs` (None entries are skipped)
        complete. Returns [(index, tag)] of the completed ones; their slots are set to None.
        Raises TimeoutError naming `what` after timeout_s seconds."""
        live = [i for i, r in enumerate(reqs) if r is not None]
        done: list = []

        def progress() -> bool:
            for i in live:
                st = MPI.Status()
                if reqs[i] is not None and reqs[i].Test(st):
                    done.append((i, st.Get_tag()))
                    reqs[i] = None
            return bool(some and done) or all(reqs[i] is None for i in live)
        if live:
            self._poll(progress, timeout_s, f"parameter-server protocol: no progress for {timeout_s:g} s "
                                            f"waiting for {what} (a rank died or hangs)")
        return done

    # ---- device tensors -------------------------------------------------------------------------
    def cuda_aware(self) -> bool:
        """Whether MPI can read and write CUDA memory directly: decided once, collectively, by a
        start-up probe (the library says it supports CUDA and a device-to-device ring exchange of
        a known pattern arrives intact on every rank); otherwise messages are staged through host
        memory. Any failure of the probe means 'no'. Callers run it on every rank at start-up."""
        if self._probed:
            return self._cuda_aware
        ok = 0
        if self.mpi is not None and torch.cuda.is_available():
            try:
                query = getattr(MPI, "Query_cuda_support", None)
                if query is not None and query():
                    dev = torch.device("cuda", torch.cuda.current_device())
                    send = torch.full((4,), float(self.rank + 1), device=dev)
                    recv = torch.zeros(4, device=dev)
                    torch.cuda.synchronize(dev)
                    right, left = (self.rank + 1) % self.size, (self.rank - 1) % self.size
                    self._wait([self.mpi.Irecv(recv, source=left, tag=TAG.CUDA_PROBE),
                                self.mpi.Isend(send, dest=right, tag=TAG.CUDA_PROBE)])
                    ok = int(bool(torch.all(recv == float(left + 1))))
            except Exception:   # noqa: BLE001 - any failure means staging through the host
                ok = 0
        # every rank must agree (one path for all): a MIN over ranks
        self._cuda_aware = self.mpi is not None and -self.agree_flag(-ok) == 1
        self._probed = True
        return self._cuda_aware

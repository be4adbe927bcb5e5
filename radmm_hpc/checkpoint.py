"""Sharded HDF5 checkpoints with exact resume (layout and semantics: docs/checkpoints.md).

A checkpoint is a directory ``<run_dir>/ckpt-<iteration:06d>/`` holding

    shard-<rank:05d>.h5   one per rank: /trainer/<key> (the Trainer's state() arrays) and
                          /loop/... (iteration, wall clock, RNG states, comm counters, phase times)
    manifest.json         written by rank 0 last: format, version, iteration, world size, the
                          resolved config, the layer partition, every shard's size, SHA-256 and
                          dataset inventory, and a SHA-256 of the manifest itself

and ``<run_dir>/latest`` names the newest complete checkpoint. Nothing is pickled: shards hold
numeric arrays and plain attributes, the manifest is JSON.

Writing is atomic: every rank writes its shard (built in memory, written, fsynced) into
``ckpt-N.tmp-<tag>``; after a barrier rank 0 writes the manifest, fsyncs it and the directory,
``os.replace``s the directory to ``ckpt-N``, fsyncs the run directory, then replaces ``latest``
the same way and prunes to the last ``checkpoint.keep``. A crash at any point leaves the previous
checkpoint complete and verifiable; a failed write (full disk, unwritable directory) removes the
temporary directory and leaves everything else as it was.

Loading verifies the manifest's own checksum, the format version, the config (the settings that
determine the trajectory), the world size (or maps the state elastically), every shard's size and
SHA-256 (on the bytes that are then parsed), and the datasets' shapes against what this run's
Trainer expects.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import secrets
import shutil
import sys
import time
from typing import Dict, List, Optional

import h5py
import numpy as np
import torch

from radmm_hpc import __version__
from radmm_hpc.config import foreign_sections
from radmm_hpc.errors import (
    EXIT_DIVERGED,
    CheckpointError,
    CheckpointWriteError,
    CollectiveError,
    DamagedCheckpoint,
    UserError,
)

FORMAT = "radmm_hpc.checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "latest"
CKPT_RE = re.compile(r"^ckpt-(\d{6,})$")
# settings that do not change the trajectory and may differ between a run and its resume
_FREE_KEYS = {"train": {"iters", "device", "deterministic", "log_every", "progress_seconds", "run_dir",
                        "world_size", "compare", "tensorboard"},
              "radmm": {"tol"}, "checkpoint": None, "comm": None}


def shard_name(rank: int) -> str:
    return f"shard-{rank:05d}.h5"


def ckpt_name(it: int) -> str:
    return f"ckpt-{it:06d}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _manifest_digest(body: dict) -> str:
    text = json.dumps({k: v for k, v in body.items() if k != "manifest_sha256"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _oserr(exc: OSError) -> str:
    return exc.strerror or str(exc)


# ---- what a shard holds -----------------------------------------------------------------------
def _rng_arrays() -> Dict[str, np.ndarray]:
    out = {"rng/torch": torch.get_rng_state().numpy().copy()}
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out["rng/numpy_keys"] = np.asarray(keys, dtype=np.uint32)
    out["rng/numpy_misc"] = np.array([pos, has_gauss], dtype=np.int64)
    out["rng/numpy_gauss"] = np.array([cached], dtype=np.float64)
    version, internal, gauss_next = random.getstate()
    out["rng/python_state"] = np.asarray(internal, dtype=np.uint64)
    out["rng/python_version"] = np.array([version], dtype=np.int64)
    out["rng/python_gauss"] = np.array([] if gauss_next is None else [gauss_next], dtype=np.float64)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng/cuda/{i}"] = s.numpy().copy()
    return out


def _set_rng(a: Dict[str, np.ndarray]) -> None:
    torch.set_rng_state(torch.as_tensor(a["rng/torch"], dtype=torch.uint8).clone())
    misc = a["rng/numpy_misc"]
    np.random.set_state(("MT19937", a["rng/numpy_keys"].astype(np.uint32), int(misc[0]), int(misc[1]),
                         float(a["rng/numpy_gauss"][0])))
    g = a["rng/python_gauss"]
    random.setstate((int(a["rng/python_version"][0]), tuple(int(x) for x in a["rng/python_state"]),
                     float(g[0]) if len(g) else None))
    cuda = sorted(k for k in a if k.startswith("rng/cuda/"))
    if cuda and torch.cuda.is_available():
        states = [torch.as_tensor(a[k], dtype=torch.uint8).clone() for k in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def _shard_image(arrays: Dict[str, np.ndarray], attrs: dict) -> bytes:
    """The HDF5 file as bytes (built in memory: written and hashed in one pass)."""
    fh = h5py.File(f"mem-{secrets.token_hex(6)}.h5", "w", driver="core", backing_store=False)
    try:
        fh.attrs.update(attrs)
        for key, a in arrays.items():
            fh.create_dataset(key, data=np.array(a, order="C", copy=True))
        fh.flush()
        return bytes(fh.id.get_file_image())
    finally:
        fh.close()


def _read_shard(data: bytes, where: str) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    try:
        with h5py.File(io.BytesIO(data), "r") as fh:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    out[name] = obj[()]
            fh.visititems(visit)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise DamagedCheckpoint(f"{where}: not a readable HDF5 shard ({exc})") from None
    return {k: np.asarray(v) for k, v in out.items()}


def _read_bytes(path: str, missing: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{path}: {missing}") from None
    except OSError as exc:
        raise DamagedCheckpoint(f"{path}: cannot read: {_oserr(exc)}") from None


# ---- manifest -----------------------------------------------------------------------------------
def read_manifest(ckpt_dir: str) -> dict:
    """Parse and check a checkpoint's manifest. Raises CheckpointError naming the file."""
    path = os.path.join(ckpt_dir, MANIFEST)
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir}: not a checkpoint directory")
    raw = _read_bytes(path, "missing (incomplete or not a checkpoint directory)")
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DamagedCheckpoint(f"{path}: damaged (not valid JSON)") from None
    if not isinstance(m, dict):
        raise DamagedCheckpoint(f"{path}: damaged (not a JSON object)")
    if "manifest_sha256" not in m or m.get("manifest_sha256") != _manifest_digest(m):
        raise DamagedCheckpoint(f"{path}: damaged (manifest checksum mismatch)")
    if m.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a radmm_hpc checkpoint manifest (format {m.get('format')!r})")
    if m.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {m.get('format_version')!r}, "
                              f"this radmm_hpc reads version {FORMAT_VERSION}")
    try:
        P = m["world_size"]
        ok = (isinstance(m["iteration"], int) and isinstance(P, int) and P >= 1
              and isinstance(m["config"], dict) and isinstance(m["shards"], list) and len(m["shards"]) == P
              and all(isinstance(s, dict) and s.get("file") == shard_name(i) and isinstance(s.get("bytes"), int)
                      and isinstance(s.get("sha256"), str) and isinstance(s.get("datasets"), dict)
                      for i, s in enumerate(m["shards"]))
              and isinstance(m.get("partition"), list))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise DamagedCheckpoint(f"{path}: damaged (missing or malformed fields)")
    return m


def read_shard_bytes(ckpt_dir: str, m: dict, j: int) -> bytes:
    """Shard j's bytes after checking their size and SHA-256 against the manifest."""
    s = m["shards"][j]
    path = os.path.join(ckpt_dir, s["file"])
    data = _read_bytes(path, "missing shard")
    if len(data) != s["bytes"]:
        raise DamagedCheckpoint(f"{path}: truncated or damaged ({len(data)} bytes, the manifest says {s['bytes']})")
    if hashlib.sha256(data).hexdigest() != s["sha256"]:
        raise DamagedCheckpoint(f"{path}: damaged (SHA-256 mismatch)")
    return data


def load_shard(ckpt_dir: str, m: dict, j: int) -> Dict[str, np.ndarray]:
    """Shard j's arrays, verified (checksum, readable HDF5, datasets as listed in the manifest)."""
    data = read_shard_bytes(ckpt_dir, m, j)
    where = os.path.join(ckpt_dir, m["shards"][j]["file"])
    arrays = _read_shard(data, where)
    inv = m["shards"][j]["datasets"]
    if set(arrays) != set(inv):
        raise DamagedCheckpoint(f"{where}: datasets differ from the manifest's inventory")
    for k, a in arrays.items():
        shape = inv[k][0] if isinstance(inv[k], list) and inv[k] else None
        if list(a.shape) != shape:
            raise DamagedCheckpoint(f"{where}: dataset {k} has shape {a.shape}, the manifest says {shape}")
    return arrays


def verify(ckpt_dir: str) -> dict:
    """Check a whole checkpoint on one process (inspect, tests, job scripts). Returns the manifest."""
    m = read_manifest(ckpt_dir)
    for j in range(m["world_size"]):
        load_shard(ckpt_dir, m, j)
    return m


def list_checkpoints(run_dir: str) -> List[str]:
    """Checkpoint directories of a run, newest (highest iteration) first."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    found = [(int(mt.group(1)), n) for n in names if (mt := CKPT_RE.match(n))
             and os.path.isdir(os.path.join(run_dir, n))]
    return [os.path.join(run_dir, n) for _, n in sorted(found, reverse=True)]


def _config_diff(saved: dict, cfg: dict) -> Optional[str]:
    foreign = foreign_sections(cfg["train"]["algo"])
    for sec, table in cfg.items():
        free = _FREE_KEYS.get(sec, set())
        if free is None or sec in foreign:
            continue
        old = saved.get(sec)
        if not isinstance(old, dict):
            return f"section [{sec}] missing"
        for k, v in table.items():
            if k in free or k not in old:      # not in old: a setting added since it was written
                continue
            if old.get(k) != v:
                return f"{sec}.{k} = {old.get(k)!r} there, {v!r} in this run"
    return None


# ---- the checkpointer -------------------------------------------------------------------------
class Checkpointer:
    """Saves and restores one run's checkpoints; every method is collective."""

    def __init__(self, cfg, rt, run_dir: str, trainer):
        self.cfg, self.rt, self.run_dir, self.trainer = cfg, rt, run_dir, trainer
        self.comm = rt.comm
        self.every = cfg.checkpoint.every
        self.every_s = cfg.checkpoint.every_seconds
        self.keep = cfg.checkpoint.keep
        self.last_time = time.monotonic()
        self.last_path: Optional[str] = None

    # -- when --
    def time_due(self) -> bool:
        """Rank 0's clock decides (the loop agrees on it with the signal flag)."""
        return bool(self.rt.is_root and self.every_s > 0
                    and time.monotonic() - self.last_time >= self.every_s)

    def iter_due(self, it: int) -> bool:
        return self.every > 0 and it % self.every == 0

    # -- save --
    def save(self, it: int, loop: dict) -> str:
        from radmm_hpc.runtime import agree
        rt, comm = self.rt, self.comm
        state = self.trainer.state()
        bad = any(a.dtype.kind in "fc" and not np.all(np.isfinite(a)) for a in state.values())
        if comm.agree_flag(int(bad)):
            keep = f"the last good checkpoint {self.last_path} is kept" if self.last_path else "no checkpoint written"
            raise CollectiveError(f"non-finite values in the training state at iteration {it}: the run "
                                  f"diverged; {keep}", EXIT_DIVERGED)
        final = os.path.join(self.run_dir, ckpt_name(it))
        tmp = comm.bcast_obj(f"{final}.tmp-{os.getpid()}-{secrets.token_hex(3)}" if rt.is_root else None)

        def mkdir():
            if rt.is_root:
                try:
                    os.makedirs(tmp)
                except OSError as exc:
                    raise CheckpointWriteError(f"cannot write checkpoint {tmp}: {_oserr(exc)}") from None
        agree(rt, mkdir)
        try:
            info = agree(rt, self._write_shard, tmp, it, state, loop)
            infos = comm.gather_obj(info)
            agree(rt, self._commit, tmp, final, it, infos)
        except CollectiveError:
            if rt.is_root:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.last_time = time.monotonic()
        self.last_path = final
        return final

    def _write_shard(self, tmp: str, it: int, state: dict, loop: dict) -> dict:
        comm, tr = self.comm, self.trainer
        arrays = {f"trainer/{k}": np.asarray(v) for k, v in state.items()}
        L = {"iteration": np.array([it], dtype=np.int64),
             "wall_s": np.array([loop.get("wall_s", 0.0)], dtype=np.float64),
             "step_bytes": np.array([loop.get("step_bytes", 0)], dtype=np.int64),
             "comm/p2p_sent": np.array([comm.p2p_sent], dtype=np.int64),
             "comm/p2p_recv": np.array([comm.p2p_recv], dtype=np.int64),
             "comm/coll_bytes": np.array([comm.coll_bytes], dtype=np.int64),
             "comm/wait_s": np.array([comm.wait_s], dtype=np.float64)}
        for k, v in tr.phase_s.items():
            L[f"phase/{k}"] = np.array([v], dtype=np.float64)
        for k, v in tr.phase_cpu_s.items():
            L[f"phase_cpu/{k}"] = np.array([v], dtype=np.float64)
        L.update(_rng_arrays())
        arrays.update({f"loop/{k}": v for k, v in L.items()})
        path = os.path.join(tmp, shard_name(self.rt.rank))
        try:
            image = _shard_image(arrays, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                          "rank": self.rt.rank, "world_size": self.rt.size,
                                          "iteration": it})
            _write_bytes(path, image)
        except OSError as exc:
            raise CheckpointWriteError(f"cannot write checkpoint shard {path}: {_oserr(exc)}") from None
        return {"file": shard_name(self.rt.rank), "rank": self.rt.rank, "bytes": len(image),
                "sha256": hashlib.sha256(image).hexdigest(),
                "datasets": {k: [list(a.shape), a.dtype.str] for k, a in sorted(arrays.items())}}

    def _commit(self, tmp: str, final: str, it: int, infos) -> None:
        if not self.rt.is_root:
            return
        cfg = self.cfg
        tr = self.trainer
        m = {"format": FORMAT, "format_version": FORMAT_VERSION, "radmm_hpc_version": __version__,
             "iteration": it, "world_size": self.rt.size, "algo": cfg.train.algo,
             **tr.manifest_fields(), "partition": tr.partition(),
             "created_unix": time.time(), "config": cfg.to_dict(), "shards": infos}
        m["manifest_sha256"] = _manifest_digest(m)
        try:
            _write_bytes(os.path.join(tmp, MANIFEST), (json.dumps(m, indent=1) + "\n").encode())
            _fsync_dir(tmp)
            old = None
            if os.path.exists(final):   # e.g. re-reaching an iteration after a fallback resume
                old = f"{final}.old-{secrets.token_hex(3)}"
                os.rename(final, old)
            os.replace(tmp, final)
            _fsync_dir(self.run_dir)
            ptr = os.path.join(self.run_dir, f"{LATEST}.tmp-{secrets.token_hex(3)}")
            _write_bytes(ptr, (os.path.basename(final) + "\n").encode())
            os.replace(ptr, os.path.join(self.run_dir, LATEST))
            _fsync_dir(self.run_dir)
        except OSError as exc:
            raise CheckpointWriteError(f"cannot write checkpoint {final}: {_oserr(exc)}") from None
        if old:
            shutil.rmtree(old, ignore_errors=True)
        self._prune(final)

    def _prune(self, final: str) -> None:
        keep = set(list_checkpoints(self.run_dir)[:self.keep]) | {final}
        for path in list_checkpoints(self.run_dir):
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
        for n in os.listdir(self.run_dir):   # leftovers of crashed writes (one job per run dir)
            if n.startswith("ckpt-") and (".tmp-" in n or ".old-" in n) or n.startswith(f"{LATEST}.tmp-"):
                p = os.path.join(self.run_dir, n)
                shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else _unlink(p)

    # -- resume --
    def resume(self, spec: str) -> Optional[dict]:
        """Restore the trainer from `spec` ('auto' or a checkpoint path). Returns the loop state
        (iteration, wall_s, step_bytes) or None when 'auto' finds nothing to resume."""
        from radmm_hpc.runtime import agree
        rt, comm = self.rt, self.comm
        if spec != "auto" and not os.path.isdir(spec) and not spec.endswith(MANIFEST):
            raise CollectiveError(f"--resume {spec}: not a checkpoint directory "
                                  f"(expected {self.run_dir}/ckpt-NNNNNN or 'auto')", 2)
        if spec == "auto":
            cands = comm.bcast_obj(list_checkpoints(self.run_dir) if rt.is_root else None)
        else:
            path = spec[:-len(MANIFEST)] if spec.endswith(MANIFEST) else spec
            cands = [os.path.normpath(path)]
        for path in cands:
            m, err = self._attempt(lambda: read_manifest(path) if rt.is_root else None)
            if not err:
                m = comm.bcast_obj(m)
                _, err = self._attempt(self._check_compatible, path, m)
            if not err:
                verified, err = self._attempt(self._verify_my_share, path, m)
            if err:
                damaged, msg, code = err
                if damaged and spec == "auto":
                    if rt.is_root:
                        print(f"radmm-hpc: warning: skipping damaged checkpoint: {msg}", file=sys.stderr, flush=True)
                    continue
                raise CollectiveError(msg, code)
            loop = agree(rt, self._load, path, m, verified)
            self.last_path = path
            if rt.is_root:
                print(f"radmm-hpc: resumed from {path} (iteration {m['iteration']}, "
                      f"{m['world_size']} -> {rt.size} ranks)", flush=True)
            return loop
        if spec == "auto" and rt.is_root:
            print(f"radmm-hpc: no checkpoint in {self.run_dir}: starting fresh", flush=True)
        return None

    def _attempt(self, fn, *args):
        """Run fn on every rank; returns (result, None) or (None, (damaged, message, exit code))
        of the lowest failing rank, the same on every rank."""
        res, err = None, None
        try:
            res = fn(*args)
        except UserError as exc:
            err = (isinstance(exc, DamagedCheckpoint), str(exc), exc.exit_code)
        errs = [e for e in self.comm.allgather_obj(err) if e is not None]
        return res, (errs[0] if errs else None)

    def _check_compatible(self, path: str, m: dict) -> None:
        where = os.path.join(path, MANIFEST)
        diff = _config_diff(m["config"], self.cfg.to_dict())
        if diff:
            raise CheckpointError(f"{where}: written by another config ({diff})")
        P_old, P = m["world_size"], self.rt.size
        if P_old != P and not self.trainer.elastic_resume():
            raise CheckpointError(f"{where}: written by {P_old} ranks; --algo {self.cfg.train.algo} in this "
                                  f"configuration resumes on {P_old} ranks only, not {P}")
        problem = self.trainer.resume_problem(m)
        if problem:
            raise CheckpointError(f"{where}: {problem}")

    def _verify_my_share(self, path: str, m: dict) -> Dict[int, Dict[str, np.ndarray]]:
        """Rank r checks shards j ≡ r (mod P) in full; returns those it holds, parsed."""
        out = {}
        for j in range(self.rt.rank, m["world_size"], self.rt.size):
            out[j] = load_shard(path, m, j)
        return out

    def _load(self, path: str, m: dict, have: Dict[int, Dict[str, np.ndarray]]) -> dict:
        rt, comm = self.rt, self.comm
        cache = dict(have)

        def shard(j):
            if j not in cache:
                cache[j] = load_shard(path, m, j)
            return cache[j]

        def part(arrays, prefix):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        P_old, P = m["world_size"], rt.size
        same = P_old == P
        if same:
            state = part(shard(rt.rank), "trainer/")
        else:
            state = self.trainer.remap_state(m, lambda j: part(shard(j), "trainer/"))
        self._check_shapes(path, state)
        self.trainer.load_state(state)
        loop = part(shard(min(rt.rank, P_old - 1)), "loop/")
        try:
            _set_rng(loop)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise CheckpointError(f"{path}: RNG state unreadable ({exc})") from None
        if same:
            comm.p2p_sent = int(loop["comm/p2p_sent"][0])
            comm.p2p_recv = int(loop["comm/p2p_recv"][0])
            comm.coll_bytes = int(loop["comm/coll_bytes"][0])
            comm.wait_s = float(loop["comm/wait_s"][0])
            for k, v in part(loop, "phase/").items():
                self.trainer.phase_s[k] = float(v[0])
            for k, v in part(loop, "phase_cpu/").items():
                self.trainer.phase_cpu_s[k] = float(v[0])
        return {"iteration": int(m["iteration"]), "wall_s": float(loop["wall_s"][0]),
                "step_bytes": int(loop["step_bytes"][0]) if same else 0,
                "bytes_from": 0 if same else int(m["iteration"])}

    def _check_shapes(self, path: str, state: dict) -> None:
        fresh = self.trainer.state()
        for k, a in fresh.items():
            if k not in state:
                raise CheckpointError(f"{path}: no dataset trainer/{k} for rank {self.rt.rank}")
            if tuple(state[k].shape) != tuple(a.shape):
                raise CheckpointError(f"{path}: dataset trainer/{k} has shape {tuple(state[k].shape)}, "
                                      f"this run expects {tuple(a.shape)}")
        # keys a fresh Trainer lacks (optimizer moments, step sizes, best iterate, ...) are the
        # Trainer's own business: load_state reads what it knows


def _unlink(p: str) -> None:
    try:
        os.remove(p)
    except OSError:
        pass

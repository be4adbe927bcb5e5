"""`inspect PATH`: describe a model file, a checkpoint directory (its manifest, every shard's
datasets and checksum status) or a run directory (its model and its checkpoints)."""

from __future__ import annotations

import os

import h5py

from radmm_hpc.errors import UserError


def inspect_checkpoint(path: str) -> str:
    """The manifest, each shard's checksum status and datasets (shape, dtype)."""
    from radmm_hpc.checkpoint import CheckpointError, load_shard, read_manifest
    m = read_manifest(path)
    c = m["config"]
    lines = [f"{path}: checkpoint (format {m['format']} version {m['format_version']}, "
             f"radmm_hpc {m.get('radmm_hpc_version')})",
             f"  iteration {m['iteration']}, world size {m['world_size']}, algo {m.get('algo')}"
             + (f", schedule {m['schedule']}" if m.get("schedule") else ""),
             f"  partition (RADMM: layers per rank; TRGL: per module): {m['partition'] or '-'}"]
    for sec in ("train", "model", "data"):
        if isinstance(c.get(sec), dict):
            lines.append(f"  [{sec}] " + ", ".join(f"{k}={v}" for k, v in c[sec].items()))
    bad = 0
    for j, s in enumerate(m["shards"]):
        try:
            load_shard(path, m, j)
            status = "sha256 ok"
        except CheckpointError as exc:
            status, bad = f"BAD: {exc}", bad + 1
        lines.append(f"  {s['file']}: {s['bytes']} bytes, {status}")
        for k, (shape, dt) in sorted(s["datasets"].items()):
            lines.append(f"    {k}: {dt} {tuple(shape)}")
    lines.append(f"  status: {'OK' if not bad else f'{bad} damaged shard(s)'}")
    return "\n".join(lines)


def _run_checkpoints(run_dir: str) -> list:
    from radmm_hpc.checkpoint import CheckpointError, list_checkpoints, verify
    out = []
    latest = os.path.join(run_dir, "latest")
    if os.path.isfile(latest):
        with open(latest, encoding="utf-8", errors="replace") as fh:
            out.append(f"  latest -> {fh.read().strip()}")
    for ck in list_checkpoints(run_dir):
        try:
            m = verify(ck)
            out.append(f"  {os.path.basename(ck)}: iteration {m['iteration']}, {m['world_size']} rank(s), ok")
        except CheckpointError as exc:
            out.append(f"  {os.path.basename(ck)}: BAD: {exc}")
    return out


def inspect(path: str) -> str:
    if not os.path.exists(path):
        raise UserError(f"not found: {path}")
    if os.path.basename(path) == "manifest.json":
        path = os.path.dirname(path) or "."
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "manifest.json")):
        return inspect_checkpoint(path)
    if os.path.isdir(path):
        ckpts = _run_checkpoints(path)
        if os.path.isfile(os.path.join(path, "model.h5")):
            text = inspect(os.path.join(path, "model.h5"))
            return text + ("\ncheckpoints:\n" + "\n".join(ckpts) if ckpts else "")
        if ckpts:
            return f"{path}: run directory, checkpoints:\n" + "\n".join(ckpts)
        raise UserError(f"{path}: a directory with no model.h5 or checkpoints")
    try:
        fh = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path}: not an HDF5 file") from None
    lines = [path]
    with fh:
        for k, v in sorted(fh.attrs.items()):
            lines.append(f"  {k} = {v.item() if hasattr(v, 'item') else v}")

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                lines.append(f"  {name}: {obj.dtype} {obj.shape}")
        fh.visititems(visit)
    return "\n".join(lines)

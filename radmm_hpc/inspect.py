"""`inspect PATH`: describe a model file, a checkpoint directory (its manifest, every shard's
datasets and checksum status) or a run directory (its model and its checkpoints). A short
summary comes first (what was trained, how, how well), the details after it."""

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


def _model_summary(path: str, fh) -> str:
    """One line: architecture, sizes, task, data, parameter count."""
    a = {k: (v.item() if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 else v) for k, v in fh.attrs.items()}
    count = [0]

    def visit(name, obj):   # parameters: not the preprocessing, BatchNorm statistics, or the
        # FCResNet layout's zero biases of layers 2..L (only layer 1 has a bias)
        skip = (name.startswith("preprocess/") or "running_" in name or name.endswith("num_batches_tracked")
                or (name.startswith("layers/") and name.endswith("/bias") and name != "layers/1/bias"))
        if isinstance(obj, h5py.Dataset) and not skip:
            count[0] += int(obj.size)
    fh.visititems(visit)
    if "arch" not in a:
        return f"{path}: HDF5 file (not a radmm_hpc model)"
    out = f"{a.get('n_classes')} classes" if a.get("task") == "classification" else f"{a.get('d_out')} output(s)"
    if a.get("format", "").startswith("radmm_hpc.named-params"):
        shape = "x".join(str(int(v)) for v in a.get("image_shape", ()))
        net = (f"{a['arch']} ({a.get('block')}-activation, shortcut {a.get('shortcut')}, norm {a.get('norm')}, "
               f"base width {a.get('base_width')}), input {shape or a.get('d_in')}")
    else:
        net = f"{a['arch']} {a.get('depth')} hidden layers x {a.get('width')} units, {a.get('d_in')} inputs"
    return f"{path}: {net} -> {out} ({a.get('task')}), trained on {a.get('data')}, {count[0]:,} parameters"


def _run_summary(run_dir: str) -> str | None:
    """One line from summary.json: method, data, iterations, ranks, time, test scores."""
    import json
    try:
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as fh:
            s = json.load(fh)
    except (OSError, ValueError):
        return None
    scores = ", ".join(f"{k} {s[k]:.4g}" for k in ("test_r2", "test_accuracy", "test_loss", "train_loss")
                       if isinstance(s.get(k), (int, float)))
    return (f"{run_dir}: {s.get('algo')} on {s.get('data')} ({s.get('model')}), {s.get('iters')} iterations "
            f"on {s.get('world_size')} rank(s) in {s.get('wall_s', 0):.1f} s; {scores}")


def inspect(path: str) -> str:
    if not os.path.exists(path):
        raise UserError(f"not found: {path}")
    if os.path.basename(path) == "manifest.json":
        path = os.path.dirname(path) or "."
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "manifest.json")):
        return inspect_checkpoint(path)
    if os.path.isdir(path):
        ckpts = _run_checkpoints(path)
        head = _run_summary(path)
        head = [head] if head else []
        if os.path.isfile(os.path.join(path, "model.h5")):
            text = inspect(os.path.join(path, "model.h5"))
            return "\n".join(head + [text] + (["checkpoints:"] + ckpts if ckpts else []))
        if ckpts:
            return "\n".join(head + [f"{path}: run directory, checkpoints:"] + ckpts)
        raise UserError(f"{path}: a directory with no model.h5 or checkpoints")
    try:
        fh = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path}: not an HDF5 file") from None
    with fh:
        lines = [_model_summary(path, fh), "  attributes:"]
        for k, v in sorted(fh.attrs.items()):
            lines.append(f"    {k} = {v.item() if hasattr(v, 'item') and getattr(v, 'ndim', 0) == 0 else v}")
        lines.append("  datasets:")

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                lines.append(f"    {name}: {obj.dtype} {obj.shape}")
        fh.visititems(visit)
    return "\n".join(lines)

"""`inspect PATH`: describe a model file (and, once they exist, checkpoints)."""

from __future__ import annotations

import os

import h5py

from radmm_hpc.errors import UserError


def inspect(path: str) -> str:
    if not os.path.exists(path):
        raise UserError(f"not found: {path}")
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "model.h5")):
        path = os.path.join(path, "model.h5")
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

"""model.h5: the trained network in a plain, documented HDF5 layout (see docs/outputs.md).

    /layers/<l>/weight   (out, in) float array, l = 1..L
    /layers/<l>/bias     (out,)     (layer 1: the input bias; other layers: zeros)
    /preprocess/x_mean, x_std [, y_mean, y_std]
    attributes on /: format, arch, width, depth, d_in, d_out, activation, task, n_classes,
    input_bias, data

Layer l computes V_l = R_l V_{l-1} + σ(W_l V_{l-1} + b_l) with R_1 = 0, R_l = I for 1 < l < L,
and the output layer V_L = W_L V_{L-1} + b_L. Nothing is pickled; only arrays and attributes.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import torch

from radmm_hpc.errors import UserError

FORMAT = "radmm_hpc.model/1"


def save_model(path: str, weights, cfg, ds) -> None:
    m = cfg.model
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as fh:
        fh.attrs.update({"format": FORMAT, "arch": m.arch, "width": m.width, "depth": m.depth,
                         "d_in": ds.d_in, "d_out": ds.d_out, "activation": m.activation,
                         "task": ds.task, "n_classes": ds.n_classes, "data": cfg.data.name,
                         "input_bias": bool(m.input_bias)})
        for l, W in enumerate(weights, start=1):
            W = W.detach().cpu().double().numpy()
            g = fh.create_group(f"layers/{l}")
            if l == 1 and m.input_bias:
                g["weight"], g["bias"] = W[:, :-1], W[:, -1]
            else:
                g["weight"], g["bias"] = W, np.zeros(W.shape[0])
        pre = fh.create_group("preprocess")
        pre["x_mean"], pre["x_std"] = ds.x_mean, ds.x_std
        if ds.task == "regression":
            pre["y_mean"], pre["y_std"] = ds.y_mean, ds.y_std
    os.replace(tmp, path)


NAMED_FORMAT = "radmm_hpc.named-params/1"


def save_named_params(path: str, model: torch.nn.Module, cfg, ds) -> None:
    """Any nn.Module (the convolutional ResNets): /params/<name> for every parameter and buffer
    of model.state_dict() (names as PyTorch spells them, '.' kept), /preprocess as above, and
    attributes format = radmm_hpc.named-params/1, arch, block, shortcut, norm, base_width,
    image_shape, d_in, d_out, task, n_classes, data. Nothing is pickled."""
    m = cfg.model
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as fh:
        fh.attrs.update({"format": NAMED_FORMAT, "arch": m.arch, "block": m.block, "shortcut": m.shortcut,
                         "norm": m.norm, "base_width": m.base_width, "d_in": ds.d_in, "d_out": ds.d_out,
                         "task": ds.task, "n_classes": ds.n_classes, "data": cfg.data.name,
                         "image_shape": np.asarray(ds.image_shape or (), dtype=np.int64)})
        g = fh.create_group("params")
        for name, t in model.state_dict().items():
            g[name] = t.detach().cpu().numpy()
        pre = fh.create_group("preprocess")
        pre["x_mean"], pre["x_std"] = ds.x_mean, ds.x_std
    os.replace(tmp, path)


def _open(path: str):
    """The model file opened read-only, or a one-line UserError."""
    if not os.path.isfile(path):
        raise UserError(f"model file not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path}: not an HDF5 file") from None


def load_named_params(path: str) -> tuple[dict, dict]:
    """(state_dict of numpy arrays, attributes) of a save_named_params file."""
    with _open(path) as fh:
        attrs = {k: (v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v) for k, v in fh.attrs.items()}
        if attrs.get("format") != NAMED_FORMAT:
            raise UserError(f"{path}: not a radmm_hpc named-parameter model (format {attrs.get('format')!r})")
        return {k: np.asarray(v[()]) for k, v in fh["params"].items()}, attrs


def load_model(path: str, dtype=torch.float64):
    """Returns (weights with the input bias folded into W_1, attributes)."""
    with _open(path) as fh:
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in fh.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise UserError(f"{path}: not a radmm_hpc model file (format {attrs.get('format')!r})")
        weights = []
        n = len(fh["layers"])
        for l in range(1, n + 1):
            W = np.asarray(fh[f"layers/{l}/weight"][()])
            b = np.asarray(fh[f"layers/{l}/bias"][()])
            if l == 1 and attrs.get("input_bias", True):
                W = np.hstack([W, b[:, None]])
            elif np.any(b != 0):
                raise UserError(f"{path}: layer {l} has a bias, which FCResNet does not support")
            weights.append(torch.as_tensor(W, dtype=dtype))
    return weights, attrs


def load_preprocess(path: str) -> dict:
    """{x_mean, x_std[, y_mean, y_std]}: the standardisation stored with the model (fitted on its
    training split), for scoring any data exactly as the model was trained to see it."""
    with _open(path) as fh:
        if "preprocess" not in fh:
            raise UserError(f"{path}: no /preprocess group (not a radmm_hpc model file?)")
        return {k: np.asarray(v[()]) for k, v in fh["preprocess"].items()}


class Preprocessed(torch.nn.Module):
    """The trained network with its preprocessing: raw input rows are standardised with the
    training split's statistics, and regression outputs are mapped back to the target's units
    (classification: the logits). `net` alone takes standardised inputs, as during training."""

    def __init__(self, net: torch.nn.Module, pre: dict, dtype=torch.float64):
        super().__init__()
        self.net = net
        for k in ("x_mean", "x_std", "y_mean", "y_std"):
            if k in pre:
                self.register_buffer(k, torch.as_tensor(pre[k], dtype=dtype))
            else:
                setattr(self, k, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net((x - self.x_mean) / self.x_std)
        return out * self.y_std + self.y_mean if self.y_mean is not None else out


def _resolve_model_path(path: str) -> str:
    return os.path.join(path, "model.h5") if os.path.isdir(path) else path


def load_module(path: str, preprocess: bool = True, dtype=torch.float64) -> torch.nn.Module:
    """A run directory's (or a model.h5's) trained network as a torch.nn.Module in eval mode.
    preprocess = True (default): it takes raw input rows (N, features; images flattened as
    N × C·H·W) and returns predictions in the target's units (regression) or logits; False: the
    bare network on standardised inputs, the outputs the project's scores are computed from."""
    path = _resolve_model_path(path)
    with _open(path) as fh:
        fmt = fh.attrs.get("format")
    if fmt == FORMAT:
        from radmm_hpc.models import FCResNet
        weights, attrs = load_model(path, dtype)
        net = FCResNet(weights, attrs["activation"], bool(attrs.get("input_bias", True)),
                       residual=attrs.get("arch") != "mlp")
    elif fmt == NAMED_FORMAT:
        net = _named_module(path, dtype)
    else:
        raise UserError(f"{path}: not a radmm_hpc model file (format {fmt!r})")
    module = Preprocessed(net, load_preprocess(path), dtype) if preprocess else net
    return module.eval()


def _named_module(path: str, dtype) -> torch.nn.Module:
    """A convolutional ResNet from its named parameters, built as models.build_model builds it."""
    from types import SimpleNamespace

    from radmm_hpc.models.resnet import build_resnet
    arrays, a = load_named_params(path)
    mcfg = SimpleNamespace(arch=a["arch"], block=a["block"], shortcut=a["shortcut"], norm=a["norm"],
                           base_width=int(a["base_width"]))
    ds = SimpleNamespace(name=a.get("data"), image_shape=tuple(int(v) for v in a["image_shape"]),
                         task=a["task"], d_out=int(a["d_out"]))
    net = build_resnet(mcfg, ds, torch.Generator().manual_seed(0), dtype)
    net.load_state_dict({k: torch.as_tensor(v, dtype=dtype) if v.dtype.kind == "f" else torch.as_tensor(v)
                         for k, v in arrays.items()})
    return net


def export(run_dir: str, fmt: str = "pt", out: str | None = None) -> str:
    """Write the state dict of load_module(run_dir) (network and preprocessing buffers) as
    `model.pt` (torch.save of a dict of tensors: torch.load(..., weights_only=True) reads it) or
    `model.safetensors` (with the model file's attributes as metadata). Returns the path."""
    module = load_module(run_dir)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    out = out or os.path.join(run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir) or ".",
                              f"model.{fmt}")
    tmp = out + ".tmp"
    try:
        if fmt == "safetensors":
            try:
                from safetensors.torch import save_file
            except ImportError:
                raise UserError("--format safetensors needs the safetensors package: "
                                "pip install 'radmm_hpc[export]'") from None
            with _open(_resolve_model_path(run_dir)) as fh:
                meta = {k: str(v.tolist() if hasattr(v, "tolist") else v) for k, v in fh.attrs.items()}
            save_file(state, tmp, metadata=meta)
        else:
            torch.save(state, tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror}") from None
    return out

"""Readers for each data source. Every failure names the file and the problem."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from importlib import resources

import numpy as np

from radmm_hpc.errors import DataError

WINE_FILES = {"wine-red": ["winequality-red.csv"], "wine-white": ["winequality-white.csv"],
              "wine": ["winequality-red.csv", "winequality-white.csv"]}
NAMES = tuple(WINE_FILES) + ("digits", "synthetic-regression", "synthetic-classification",
                             "csv:PATH", "hdf5:PATH", "mnist:DIR", "cifar10:DIR")
PREFIXES = ("csv:", "hdf5:", "mnist:", "cifar10:")


@dataclass
class Raw:
    X: np.ndarray
    y: np.ndarray
    task: str
    n_classes: int = 0
    X_test: np.ndarray = None
    y_test: np.ndarray = None
    image_shape: tuple = None   # (C, H, W) for image data (X is flat, N × C·H·W)


def read_csv(path: str, what: str = "data file") -> tuple[list[str] | None, np.ndarray]:
    """A numeric table from a ',' or ';' separated file with an optional header row."""
    if not os.path.isfile(path):
        raise DataError(f"{what} not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as text: {exc}") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: the file is empty")
    sep = ";" if lines[0].count(";") > lines[0].count(",") else ","
    rows = list(csv.reader(lines, delimiter=sep))
    header = None
    try:
        float(rows[0][0])
    except ValueError:
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    if not rows:
        raise DataError(f"{path}: no data rows")
    width = len(header) if header else len(rows[0])
    values = np.empty((len(rows), width))
    for i, row in enumerate(rows):
        line = i + 1 + (header is not None)
        if len(row) != width:
            raise DataError(f"{path}: line {line} has {len(row)} columns, expected {width}")
        try:
            values[i] = [float(v) for v in row]
        except ValueError:
            raise DataError(f"{path}: line {line} has a value that is not a number") from None
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        raise DataError(f"{path}: NaN or infinite value at line {bad[0] + 1 + (header is not None)}, "
                        f"column {bad[1] + 1}")
    if width < 2:
        raise DataError(f"{path}: needs at least one feature column and a target column")
    return header, values


def _wine(name: str) -> Raw:
    root = resources.files("radmm_hpc.data") / "wine_quality"
    sums = {}
    for line in (root / "SHA256SUMS").read_text().splitlines():
        digest, fname = line.split()
        sums[fname.lstrip("*")] = digest
    parts = []
    for fname in WINE_FILES[name]:
        path = str(root / fname)
        with open(path, "rb") as fh:
            if hashlib.sha256(fh.read()).hexdigest() != sums.get(fname):
                raise DataError(f"{path}: checksum does not match SHA256SUMS (damaged installation?)")
        header, values = read_csv(path, "bundled data file")
        if header is None or header[-1] != "quality" or values.shape[1] != 12:
            raise DataError(f"{path}: expected 11 features and a 'quality' column")
        if name == "wine":   # both colours: an is-red feature
            is_red = np.full((len(values), 1), float(fname.endswith("red.csv")))
            values = np.hstack([values[:, :-1], is_red, values[:, -1:]])
        parts.append(values)
    values = np.vstack(parts)
    return Raw(X=values[:, :-1], y=values[:, -1:], task="regression")


def _classification_labels(y: np.ndarray, path: str, n_classes: int | None = None) -> tuple[np.ndarray, int]:
    if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
        raise DataError(f"{path}: classification labels must be one column, got shape {y.shape}")
    y = y.reshape(-1)
    if not np.all(np.equal(np.mod(y, 1), 0)):
        raise DataError(f"{path}: classification labels must be integers")
    k = int(y.max()) + 1 if n_classes is None else n_classes
    if y.min() < 0 or y.max() >= k:
        raise DataError(f"{path}: label out of range [0, {k}): found {int(y.min())}..{int(y.max())}")
    return y.astype(np.int64), max(k, 2)


def _task(dcfg, default="regression") -> str:
    return default if dcfg.task == "auto" else dcfg.task


def _csv(path: str, dcfg) -> Raw:
    _, values = read_csv(path)
    X, y = values[:, :-1], values[:, -1:]
    if _task(dcfg) == "classification":
        y, k = _classification_labels(y, path)
        return Raw(X=X, y=y, task="classification", n_classes=k)
    return Raw(X=X, y=y, task="regression")


def _hdf5(path: str, dcfg) -> Raw:
    import h5py
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path}")
    try:
        fh = h5py.File(path, "r")
    except OSError:
        raise DataError(f"{path}: not an HDF5 file") from None
    with fh:
        for key in ("X", "y"):
            if key not in fh or not isinstance(fh[key], h5py.Dataset):
                raise DataError(f"{path}: missing dataset '{key}' (expected datasets X and y)")
        arrays = {k: np.asarray(fh[k][()], dtype=np.float64) for k in ("X", "y", "X_test", "y_test") if k in fh}
    X, y = arrays["X"], arrays["y"]
    image_shape = _hdf5_images(path, arrays)
    X = arrays["X"]
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise DataError(f"{path}: X must be 2-D (samples × features), got shape {X.shape}")
    if y.shape[0] != X.shape[0]:
        raise DataError(f"{path}: X has {X.shape[0]} samples but y has {y.shape[0]}")
    for k, a in arrays.items():
        if not np.isfinite(a).all():
            raise DataError(f"{path}: dataset '{k}' contains NaN or infinite values")
    has_test = "X_test" in arrays and "y_test" in arrays
    if has_test and (arrays["X_test"].ndim != 2 or arrays["X_test"].shape[1] != X.shape[1]
                     or arrays["y_test"].shape[0] != arrays["X_test"].shape[0]):
        raise DataError(f"{path}: X_test/y_test shapes {arrays['X_test'].shape}/{arrays['y_test'].shape} "
                        f"do not match X {X.shape}")
    classification = _task(dcfg, "classification" if fh_int(y) else "regression") == "classification"
    if classification:
        y, k = _classification_labels(y, path)
        yt = _classification_labels(arrays["y_test"], path, k)[0] if has_test else None
        return Raw(X=X, y=y, task="classification", n_classes=k,
                   X_test=arrays.get("X_test") if has_test else None, y_test=yt, image_shape=image_shape)
    y = y.reshape(len(y), -1)
    yt = arrays["y_test"].reshape(len(arrays["y_test"]), -1) if has_test else None
    if has_test and yt.shape[1] != y.shape[1]:
        raise DataError(f"{path}: y_test has {yt.shape[1]} target columns, y has {y.shape[1]}")
    return Raw(X=X, y=y, task="regression", X_test=arrays.get("X_test") if has_test else None, y_test=yt)


def _hdf5_images(path: str, arrays: dict):
    """3-D (N, H, W) or 4-D (N, C, H, W) X (and X_test) are images: flatten them in place and
    return (C, H, W); 2-D X is tabular (None)."""
    X = arrays["X"]
    if X.ndim not in (3, 4):
        return None
    shape = (1, *X.shape[1:]) if X.ndim == 3 else tuple(X.shape[1:])
    for k in ("X", "X_test"):
        if k in arrays:
            a = arrays[k]
            if a.shape[1:] != X.shape[1:]:
                raise DataError(f"{path}: {k} images have shape {a.shape[1:]}, X has {X.shape[1:]}")
            arrays[k] = a.reshape(len(a), -1)
    return tuple(int(v) for v in shape)


def _image_set(kind: str, directory: str) -> Raw:
    from radmm_hpc.data.images import load_cifar10, load_mnist
    X, y, X_te, y_te = (load_mnist if kind == "mnist" else load_cifar10)(directory)
    shape = tuple(int(v) for v in X.shape[1:])
    flat = lambda a: a.reshape(len(a), -1).astype(np.float64)  # noqa: E731
    k = 10 if kind == "cifar10" else max(2, int(max(y.max(initial=0), y_te.max(initial=0))) + 1)
    return Raw(X=flat(X), y=y, task="classification", n_classes=k, X_test=flat(X_te), y_test=y_te,
               image_shape=shape)


def fh_int(y: np.ndarray) -> bool:
    """HDF5 files with integer labels in one column default to classification."""
    return y.ndim == 1 and bool(np.all(np.equal(np.mod(y, 1), 0)))


def _digits() -> Raw:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data 'digits' needs scikit-learn: pip install 'radmm_hpc[digits]'") from None
    d = load_digits()
    return Raw(X=d.data.astype(np.float64), y=d.target.astype(np.int64), task="classification", n_classes=10,
               image_shape=(1, 8, 8))


def _synthetic(dcfg, classification: bool) -> Raw:
    """A smooth nonlinear teacher: learnable, but not by a linear model alone."""
    rng = np.random.default_rng(dcfg.split_seed + 12345)
    n, p = dcfg.n_samples, dcfg.n_features
    X = rng.standard_normal((n, p))
    A = rng.standard_normal((p, 16)) / np.sqrt(p)
    H = np.tanh(X @ A)
    if classification:
        B = rng.standard_normal((16, dcfg.n_classes))
        logits = H @ B * 3.0 + dcfg.noise * rng.standard_normal((n, dcfg.n_classes))
        return Raw(X=X, y=logits.argmax(1).astype(np.int64), task="classification", n_classes=dcfg.n_classes)
    b = rng.standard_normal((16, 1))
    y = H @ b + 0.5 * X[:, :1] + dcfg.noise * rng.standard_normal((n, 1))
    return Raw(X=X, y=y, task="regression")


def check_name(name: str) -> None:
    """A DataError unless `name` is a data set this module reads (checked at validation, so that
    every mode, --print-config included, rejects a misspelt name before any work)."""
    if name in WINE_FILES or name in NAMES or (":" in name and name.split(":", 1)[0] + ":" in PREFIXES
                                               and name.split(":", 1)[1]):
        return
    import difflib
    close = difflib.get_close_matches(name, NAMES, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise DataError(f"unknown data set '{name}'{hint}; choose one of {', '.join(NAMES)}")


def load_raw(dcfg) -> Raw:
    name = dcfg.name
    if name in WINE_FILES:
        raw = _wine(name)
    elif name == "digits":
        raw = _digits()
    elif name == "synthetic-regression":
        raw = _synthetic(dcfg, classification=False)
    elif name == "synthetic-classification":
        raw = _synthetic(dcfg, classification=True)
    elif name.startswith("csv:"):
        raw = _csv(name[4:], dcfg)
    elif name.startswith("hdf5:"):
        raw = _hdf5(name[5:], dcfg)
    elif name.startswith("mnist:"):
        raw = _image_set("mnist", name[6:])
    elif name.startswith("cifar10:"):
        raw = _image_set("cifar10", name[8:])
    else:
        check_name(name)
    if len(raw.X) < 2:
        raise DataError(f"data set '{name}' has {len(raw.X)} samples: too few to train")
    return raw

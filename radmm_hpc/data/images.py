"""Image data sets in their published file formats: MNIST idx files and the CIFAR-10 python
batches. Every failure names the file and the problem. Images come back as (N, C, H, W) uint8
or float arrays; load_dataset flattens them and normalises per channel.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle

import numpy as np

from radmm_hpc.errors import DataError

# idx type codes (http://yann.lecun.com/exdb/mnist/ "THE IDX FILE FORMAT")
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
               "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def _find(directory: str, stem: str, what: str) -> str:
    """`stem`, `stem.gz`, or the common `stem` with '.idx3' spelled as '-idx3' variants."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise DataError(f"{what}: {stem}[.gz] not found in {directory}")


def read_idx(path: str) -> np.ndarray:
    """An idx file (gzip-compressed or raw): magic 0x0000 <type> <ndim>, big-endian int32 dims."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] == 0:
        raise DataError(f"{path}: not an idx file (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated idx header")
    dims = tuple(int(v) for v in np.frombuffer(data, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != need:
        raise DataError(f"{path}: idx header says {dims} ({need} bytes of data), the file has {len(body)}")
    return np.frombuffer(body, dtype).reshape(dims)


def load_mnist(directory: str):
    """(X_train, y_train, X_test, y_test), X as (N, 1, 28, 28)-like arrays."""
    if not os.path.isdir(directory):
        raise DataError(f"mnist: directory not found: {directory}")
    arrays = {k: read_idx(_find(directory, stem, "mnist")) for k, stem in MNIST_FILES.items()}
    for split in ("train", "test"):
        X, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if X.ndim != 3:
            raise DataError(f"mnist: {split} images must be 3-D (N, H, W), got shape {X.shape}")
        if y.ndim != 1 or len(y) != len(X):
            raise DataError(f"mnist: {split} has {len(X)} images but labels of shape {y.shape}")
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise DataError(f"mnist: train images {arrays['train_x'].shape[1:]} and test images "
                        f"{arrays['test_x'].shape[1:]} differ in size")
    return (arrays["train_x"][:, None], arrays["train_y"].astype(np.int64),
            arrays["test_x"][:, None], arrays["test_y"].astype(np.int64))


class _BatchUnpickler(pickle.Unpickler):
    """Only what a CIFAR-10 batch holds (dicts, lists, bytes, numpy arrays): a hostile file
    cannot make the unpickler import or call anything else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_batch(path: str):
    try:
        with open(path, "rb") as fh:
            d = _BatchUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a malformed file
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch (expected a dict)")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: CIFAR-10 batch without 'data' and 'labels'")
    X = np.asarray(d["data"])
    y = np.asarray(d["labels"])
    if X.ndim != 2 or X.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be (N, 3072) uint8, got shape {X.shape}")
    if y.shape != (len(X),) or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{path}: 'labels' must be {len(X)} integers in 0..9")
    return X.reshape(-1, 3, 32, 32), y.astype(np.int64)


def load_cifar10(directory: str):
    """The python version: data_batch_1..5 and test_batch (a directory such as cifar-10-batches-py)."""
    if not os.path.isdir(directory):
        raise DataError(f"cifar10: directory not found: {directory}")
    train = []
    for i in range(1, 6):
        path = os.path.join(directory, f"data_batch_{i}")
        if not os.path.isfile(path):
            raise DataError(f"cifar10: data_batch_{i} not found in {directory}")
        train.append(_cifar_batch(path))
    test_path = os.path.join(directory, "test_batch")
    if not os.path.isfile(test_path):
        raise DataError(f"cifar10: test_batch not found in {directory}")
    X_te, y_te = _cifar_batch(test_path)
    return (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]), X_te, y_te)


def channel_stats(X: np.ndarray, image_shape):
    """Per-channel mean and std of flat images (N, C·H·W), expanded to one value per feature so
    that (X − mean)/std applies them (and model.h5's preprocess arrays keep their meaning)."""
    c, h, w = image_shape
    per = X.reshape(len(X), c, h * w)
    mean = per.mean(axis=(0, 2))
    std = per.std(axis=(0, 2))
    std = np.where(std > 1e-12, std, 1.0)
    return np.repeat(mean, h * w), np.repeat(std, h * w)

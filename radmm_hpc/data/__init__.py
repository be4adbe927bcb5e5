"""Data sets: bundled Wine Quality, scikit-learn's digits, CSV and HDF5 files, generators.

`load_dataset(cfg.data)` returns a Dataset with a deterministic train/test split and
standardisation fitted on the training split only. Arrays are numpy, samples as rows.
Regression targets are standardised for training; metrics convert back with y_mean, y_std.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radmm_hpc.data.loaders import load_raw
from radmm_hpc.errors import DataError


@dataclass
class Dataset:
    name: str
    task: str                  # regression | classification
    X_train: np.ndarray        # (n_train, d_in) float64, standardised
    y_train: np.ndarray        # regression: (n_train, d_out) standardised; classification: (n_train,) int64
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int = 0
    x_mean: np.ndarray = None
    x_std: np.ndarray = None
    y_mean: np.ndarray = None  # regression only
    y_std: np.ndarray = None
    image_shape: tuple = None  # (C, H, W) for image data: X rows are flat images, per-channel normalised

    @property
    def d_in(self) -> int:
        return self.X_train.shape[1]

    @property
    def d_out(self) -> int:
        return self.n_classes if self.task == "classification" else self.y_train.shape[1]


def split_indices(n: int, test_fraction: float, seed: int):
    """A deterministic permutation split: the same seed gives the same split everywhere."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    if n - n_test < 1:
        raise DataError(f"{n} samples are too few for a train/test split")
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows) of a training split of n rows: a seeded share held out for
    model selection (the Adam baseline's early stopping and RADMM's choice of iterate draw the
    same rows for the same data.split_seed)."""
    perm = np.random.default_rng([seed, 11]).permutation(n)
    n_val = max(1, int(round(fraction * n))) if (n > 1 and fraction > 0) else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _standardise(train: np.ndarray, *others):
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)   # constant columns stay as they are (centred)
    return mean, std, [(a - mean) / std for a in (train, *others)]


def load_dataset(dcfg, preprocess: dict | None = None) -> Dataset:
    """The data set of `dcfg`, standardised with statistics of its training split, or with
    `preprocess` ({x_mean, x_std[, y_mean, y_std]}, a trained model's, for scoring other data)."""
    raw = load_raw(dcfg)
    X, y, task = raw.X, raw.y, raw.task
    if getattr(dcfg, "dedup", False):
        X, y = _dedup(X, y)
    if raw.X_test is not None:
        X_tr, y_tr, X_te, y_te = X, y, raw.X_test, raw.y_test
    else:
        tr, te = split_indices(len(X), dcfg.test_fraction, dcfg.split_seed)
        X_tr, y_tr, X_te, y_te = X[tr], y[tr], X[te], y[te]
    X_tr, y_tr = _subset(X_tr, y_tr, getattr(dcfg, "train_subset", 0), dcfg.split_seed)
    if preprocess is not None:
        x_mean, x_std = preprocess["x_mean"], preprocess["x_std"]
        if np.shape(x_mean)[-1:] != X_tr.shape[1:]:
            raise DataError(f"data '{dcfg.name}' has {X_tr.shape[1]} features, the model's "
                            f"preprocessing {np.shape(x_mean)[-1]}")
        X_tr, X_te = (X_tr - x_mean) / x_std, (X_te - x_mean) / x_std
    elif raw.image_shape is not None:
        from radmm_hpc.data.images import channel_stats
        x_mean, x_std = channel_stats(X_tr, raw.image_shape)
        X_tr, X_te = (X_tr - x_mean) / x_std, (X_te - x_mean) / x_std
    else:
        x_mean, x_std, (X_tr, X_te) = _standardise(X_tr, X_te)
    ds = Dataset(name=dcfg.name, task=task, X_train=X_tr, y_train=y_tr, X_test=X_te, y_test=y_te,
                 n_classes=raw.n_classes, x_mean=x_mean, x_std=x_std, image_shape=raw.image_shape)
    if task == "regression":
        if preprocess is not None and "y_mean" in preprocess:
            ds.y_mean, ds.y_std = preprocess["y_mean"], preprocess["y_std"]
            ds.y_train, ds.y_test = (y_tr - ds.y_mean) / ds.y_std, (y_te - ds.y_mean) / ds.y_std
        else:
            ds.y_mean, ds.y_std, (ds.y_train, ds.y_test) = _standardise(y_tr, y_te)
    return ds


def _dedup(X, y):
    """The first occurrence of every distinct (features, target) row, in the original order. A
    random split of data with repeated rows puts twins on both sides, and a score on such a test
    split rewards memorising (docs/radmm.md). Applied to the data a split is drawn from; a given
    test split (X_test) is left as the file has it."""
    rows = np.hstack([X.reshape(len(X), -1), np.asarray(y, dtype=np.float64).reshape(len(y), -1)])
    _, first = np.unique(rows, axis=0, return_index=True)
    keep = np.sort(first)
    return X[keep], y[keep]


def _subset(X, y, n: int, seed: int):
    """The first n rows of a seeded permutation of the training split (small-data regimes);
    normalisation is then fitted on these rows only."""
    if not n or n >= len(X):
        return X, y
    keep = np.sort(np.random.default_rng([seed, 7]).permutation(len(X))[:n])
    return X[keep], y[keep]


def shard_range(n: int, rank: int, size: int) -> tuple[int, int]:
    """Contiguous balanced slice [start, stop) of n items for `rank` of `size`."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)

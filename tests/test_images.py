"""Image data: MNIST idx files (gzip and raw), CIFAR-10 python batches and HDF5 images, built
here in their real formats; malformed files are rejected with one line naming the file."""

import gzip
import pickle
import struct

import h5py
import numpy as np
import pytest

from radmm_hpc.config import DataCfg
from radmm_hpc.data import load_dataset
from radmm_hpc.data.images import read_idx
from radmm_hpc.errors import DataError


def _idx(path, arr, gz=False, code=0x08):
    data = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.tobytes()
    if gz:
        path = str(path) + ".gz"
        data = gzip.compress(data)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _mnist(tmp_path, gz, n=(20, 8), hw=(6, 5)):
    rng = np.random.default_rng(0)
    out = {}
    for split, stem, k in (("train", "train", n[0]), ("test", "t10k", n[1])):
        X = rng.integers(0, 256, (k, *hw), dtype=np.uint8)
        y = (np.arange(k) % 10).astype(np.uint8)
        _idx(tmp_path / f"{stem}-images-idx3-ubyte", X, gz)
        _idx(tmp_path / f"{stem}-labels-idx1-ubyte", y, gz)
        out[split] = (X, y)
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    raw = _mnist(tmp_path, gz)
    ds = load_dataset(DataCfg(name=f"mnist:{tmp_path}"))
    assert ds.image_shape == (1, 6, 5) and ds.n_classes == 10
    assert ds.X_train.shape == (20, 30) and ds.X_test.shape == (8, 30)
    np.testing.assert_array_equal(ds.y_train, raw["train"][1])
    # per-channel normalisation fitted on the training split only
    x = raw["train"][0].astype(np.float64)
    np.testing.assert_allclose(ds.X_train, ((x - x.mean()) / x.std()).reshape(20, -1), atol=1e-12)
    xt = raw["test"][0].astype(np.float64).reshape(8, -1)
    np.testing.assert_allclose(ds.X_test, (xt - x.mean()) / x.std(), atol=1e-12)


def test_mnist_malformed(tmp_path):
    _mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    good = path.read_bytes()
    path.write_bytes(good[:-7])                      # truncated body
    with pytest.raises(DataError, match="idx header says"):
        load_dataset(DataCfg(name=f"mnist:{tmp_path}"))
    path.write_bytes(b"\x12\x34" + good[2:])          # bad magic
    with pytest.raises(DataError, match="bad magic"):
        read_idx(str(path))
    path.write_bytes(good)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*not found"):
        load_dataset(DataCfg(name=f"mnist:{tmp_path}"))
    _idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))   # 8 images, 3 labels
    with pytest.raises(DataError, match="8 images but labels"):
        load_dataset(DataCfg(name=f"mnist:{tmp_path}"))
    with pytest.raises(DataError, match="directory not found"):
        load_dataset(DataCfg(name=f"mnist:{tmp_path}/nope"))


def _cifar(tmp_path, per=4):
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8),
             b"labels": list(rng.integers(0, 10, per).tolist()), b"filenames": [b"x.png"] * per}
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(d, fh, protocol=2)


def test_cifar10_batches(tmp_path):
    _cifar(tmp_path)
    ds = load_dataset(DataCfg(name=f"cifar10:{tmp_path}"))
    assert ds.image_shape == (3, 32, 32) and ds.X_train.shape == (20, 3072) and ds.X_test.shape == (4, 3072)
    per_channel = ds.X_train.reshape(20, 3, -1)
    np.testing.assert_allclose(per_channel.mean(axis=(0, 2)), 0, atol=1e-9)
    np.testing.assert_allclose(per_channel.std(axis=(0, 2)), 1, atol=1e-9)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_malformed(tmp_path):
    _cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 python batch"):
        load_dataset(DataCfg(name=f"cifar10:{tmp_path}"))
    with open(tmp_path / "data_batch_3", "wb") as fh:   # a pickle that would call a function
        pickle.dump({b"data": _Evil(), b"labels": []}, fh)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset(DataCfg(name=f"cifar10:{tmp_path}"))
    with open(tmp_path / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DataError, match=r"'data' must be \(N, 3072\)"):
        load_dataset(DataCfg(name=f"cifar10:{tmp_path}"))
    (tmp_path / "test_batch").unlink()
    _cifar(tmp_path)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5 not found"):
        load_dataset(DataCfg(name=f"cifar10:{tmp_path}"))


def test_hdf5_images_and_subset(tmp_path):
    rng = np.random.default_rng(2)
    f = tmp_path / "img.h5"
    with h5py.File(f, "w") as fh:
        fh["X"] = rng.standard_normal((40, 2, 4, 4)) * np.array([1.0, 5.0])[None, :, None, None] + 3
        fh["y"] = rng.integers(0, 3, 40)
        fh["X_test"], fh["y_test"] = rng.standard_normal((6, 2, 4, 4)), rng.integers(0, 3, 6)
    ds = load_dataset(DataCfg(name=f"hdf5:{f}"))
    assert ds.image_shape == (2, 4, 4) and ds.X_train.shape == (40, 32) and ds.task == "classification"
    np.testing.assert_allclose(ds.X_train.reshape(40, 2, -1).std(axis=(0, 2)), 1, atol=1e-9)
    sub = load_dataset(DataCfg(name=f"hdf5:{f}", train_subset=10))
    assert sub.X_train.shape == (10, 32) and len(sub.X_test) == 6
    again = load_dataset(DataCfg(name=f"hdf5:{f}", train_subset=10))
    np.testing.assert_array_equal(sub.X_train, again.X_train)
    with h5py.File(f, "w") as fh:
        fh["X"], fh["y"] = rng.standard_normal((10, 1, 4, 4)), rng.integers(0, 3, 10)
        fh["X_test"], fh["y_test"] = rng.standard_normal((3, 1, 5, 4)), rng.integers(0, 3, 3)
    with pytest.raises(DataError, match=r"X_test images have shape \(1, 5, 4\)"):
        load_dataset(DataCfg(name=f"hdf5:{f}"))
    with h5py.File(f, "w") as fh:   # 3-D X: one channel
        fh["X"], fh["y"] = rng.standard_normal((10, 4, 4)), rng.integers(0, 3, 10)
    assert load_dataset(DataCfg(name=f"hdf5:{f}")).image_shape == (1, 4, 4)


def test_digits_is_an_image_set():
    ds = load_dataset(DataCfg(name="digits", train_subset=100))
    assert ds.image_shape == (1, 8, 8) and ds.X_train.shape == (100, 64)
    assert abs(ds.X_train.mean()) < 1e-9 and abs(ds.X_train.std() - 1) < 1e-9

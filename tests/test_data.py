import h5py
import numpy as np
import pytest

from radmm_hpc.config import DataCfg
from radmm_hpc.data import load_dataset, shard_range, split_indices
from radmm_hpc.errors import DataError


def test_wine_sizes_and_split():
    ds = load_dataset(DataCfg(name="wine"))
    assert ds.X_train.shape[1] == 12 and len(ds.X_train) + len(ds.X_test) == 6497
    assert len(ds.X_test) == round(6497 * 0.2)
    red = load_dataset(DataCfg(name="wine-red"))
    assert red.d_in == 11 and len(red.X_train) + len(red.X_test) == 1599
    assert load_dataset(DataCfg(name="wine-white")).X_train.shape[0] + \
        load_dataset(DataCfg(name="wine-white")).X_test.shape[0] == 4898


def test_standardisation_uses_train_only():
    ds = load_dataset(DataCfg(name="wine"))
    np.testing.assert_allclose(ds.X_train.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(ds.X_train.std(0), 1, atol=1e-10)
    assert np.abs(ds.X_test.mean(0)).max() > 1e-6      # test split is not re-fitted
    np.testing.assert_allclose(ds.y_train.mean(), 0, atol=1e-10)
    assert 5.5 < float(ds.y_mean[0]) < 6.2              # quality scores are 3..9


def test_split_deterministic_and_seeded():
    a = split_indices(100, 0.2, 0)
    b = split_indices(100, 0.2, 0)
    c = split_indices(100, 0.2, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    assert len(np.intersect1d(*a)) == 0 and len(a[0]) + len(a[1]) == 100


def test_shard_range_covers_everything():
    for n in (0, 1, 7, 10, 103):
        for p in (1, 2, 3, 4, 8):
            parts = [shard_range(n, r, p) for r in range(p)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(parts[i][1] == parts[i + 1][0] for i in range(p - 1))
            sizes = [b - a for a, b in parts]
            assert max(sizes) - min(sizes) <= 1


def test_csv_ok_and_semicolons(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('"a";"b";"y"\n' + "\n".join(f"{i};{i * 2};{i % 3}" for i in range(20)) + "\n")
    ds = load_dataset(DataCfg(name=f"csv:{f}"))
    assert ds.task == "regression" and ds.d_in == 2
    ds = load_dataset(DataCfg(name=f"csv:{f}", task="classification"))
    assert ds.task == "classification" and ds.n_classes == 3


@pytest.mark.parametrize("content, message", [
    ("a,b,y\n1,2,3\n1,nan,3\n", "NaN or infinite value at line 3, column 2"),
    ("a,b,y\n1,2,3\n1,2\n", "line 3 has 2 columns, expected 3"),
    ("a,b,y\n1,2,3\n1,x,3\n", "line 3 has a value that is not a number"),
    ("", "the file is empty"),
    ("a,b,y\n", "no data rows"),
])
def test_csv_malformed(tmp_path, content, message):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(DataError) as exc:
        load_dataset(DataCfg(name=f"csv:{f}"))
    assert message in str(exc.value) and str(f) in str(exc.value)


def test_csv_label_out_of_range(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("a,y\n1,0\n2,1.5\n3,1\n")
    with pytest.raises(DataError, match="integers"):
        load_dataset(DataCfg(name=f"csv:{f}", task="classification"))
    f.write_text("a,y\n1,0\n2,-1\n3,1\n")
    with pytest.raises(DataError, match="label out of range"):
        load_dataset(DataCfg(name=f"csv:{f}", task="classification"))


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="not found: .*nope.csv"):
        load_dataset(DataCfg(name=f"csv:{tmp_path}/nope.csv"))
    with pytest.raises(DataError, match="unknown data set 'wien'.*did you mean 'wine'"):
        load_dataset(DataCfg(name="wien"))


def test_hdf5(tmp_path):
    f = tmp_path / "d.h5"
    rng = np.random.default_rng(0)
    with h5py.File(f, "w") as fh:
        fh["X"] = rng.standard_normal((30, 4))
        fh["y"] = rng.integers(0, 3, 30)
    ds = load_dataset(DataCfg(name=f"hdf5:{f}"))
    assert ds.task == "classification" and ds.n_classes == 3 and ds.d_in == 4
    with h5py.File(f, "w") as fh:
        fh["X"] = rng.standard_normal((30, 4))
        fh["y"] = rng.standard_normal(29)
    with pytest.raises(DataError, match="X has 30 samples but y has 29"):
        load_dataset(DataCfg(name=f"hdf5:{f}"))
    with h5py.File(f, "w") as fh:
        fh["X"] = rng.standard_normal((30, 4))
    with pytest.raises(DataError, match="missing dataset 'y'"):
        load_dataset(DataCfg(name=f"hdf5:{f}"))
    with h5py.File(f, "w") as fh:
        x = rng.standard_normal((30, 4))
        x[3, 1] = np.nan
        fh["X"], fh["y"] = x, rng.standard_normal(30)
    with pytest.raises(DataError, match="'X' contains NaN"):
        load_dataset(DataCfg(name=f"hdf5:{f}"))
    f.write_text("not hdf5")
    with pytest.raises(DataError, match="not an HDF5 file"):
        load_dataset(DataCfg(name=f"hdf5:{f}"))


def test_digits_and_synthetic():
    ds = load_dataset(DataCfg(name="digits"))
    assert ds.n_classes == 10 and ds.d_in == 64
    s = load_dataset(DataCfg(name="synthetic-classification", n_classes=4, n_samples=200))
    assert s.n_classes == 4 and len(s.X_train) + len(s.X_test) == 200


def _twins(ds):
    """Test rows whose feature vector also stands in the training split."""
    train = {r.tobytes() for r in np.round(ds.X_train, 9)}
    return sum(r.tobytes() in train for r in np.round(ds.X_test, 9))


def test_dedup_removes_repeated_wines_before_the_split():
    full = load_dataset(DataCfg(name="wine"))
    assert _twins(full) == 359                        # the default split: 27.6% of the test rows
    ded = load_dataset(DataCfg(name="wine", dedup=True))
    n = len(ded.X_train) + len(ded.X_test)
    assert n < 6497 and len(ded.X_test) == round(n * 0.2)
    # distinct (features, target) rows only; twins left across the split have different grades
    rows = np.hstack([np.vstack([ded.X_train, ded.X_test]),
                      np.concatenate([ded.y_train, ded.y_test]).reshape(n, -1)])
    assert len(np.unique(np.round(rows, 9), axis=0)) == n
    assert _twins(ded) < 10


def test_dedup_keeps_first_occurrences_in_order(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,y\n1,2,3\n4,5,6\n1,2,3\n7,8,9\n4,5,6\n1,2,4\n")
    ds = load_dataset(DataCfg(name=f"csv:{path}", dedup=True, test_fraction=0.25))
    X = np.vstack([ds.X_train, ds.X_test]) * ds.x_std + ds.x_mean
    assert sorted(map(tuple, np.round(X).astype(int))) == [(1, 2), (1, 2), (4, 5), (7, 8)]

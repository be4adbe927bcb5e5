"""Reference scores on the default Wine Quality split, and where test R² comes from.

Many wines appear more than once in Wine Quality (the same eleven measurements and colour, the
same grade). With the project's seeded 80/20 split, a test row that has an identical twin in the
training split can be predicted by memorising it. This bench counts those rows and scores, on
"seen" (twin in train) and "unseen" test rows separately:
  - reference regressors (scikit-learn, the `digits` extra): least squares, RBF kernel ridge,
    gradient-boosted trees, a random forest, 15-nearest neighbours;
  - the default network with its hidden layers left at their initialisation and only the output
    layer fitted by least squares (what a method that learns no hidden features reaches);
  - any trained FCResNet run directories given with --runs (their model.h5, e.g. the main job's).

    OMP_NUM_THREADS=1 python -m bench.studies.wine_references [--dedup] [--runs runs/main ...]

--dedup draws the split from the distinct rows only (data.dedup = true); give it runs trained
with `--set data.dedup=true`.
"""

import argparse
import os

import numpy as np
import torch

from radmm_hpc.config import Config
from radmm_hpc.data import load_dataset
from radmm_hpc.modelio import load_model
from radmm_hpc.models.fcresnet import forward
from radmm_hpc.scoring import output_layer_only_predictions


def r2(y, p):
    """R² of predictions p for targets y; NaN for fewer than two rows (an empty "seen" set)."""
    if len(y) < 2:
        return float("nan")
    return 1.0 - float(((y - p) ** 2).sum()) / float(((y - y.mean()) ** 2).sum())


def references():
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import LinearRegression
    from sklearn.neighbors import KNeighborsRegressor
    return {"least squares": LinearRegression(),
            "kernel ridge (RBF, a=0.3, g=0.2)": KernelRidge(alpha=0.3, kernel="rbf", gamma=0.2),
            "gradient-boosted trees (sklearn HGB)": HistGradientBoostingRegressor(random_state=0),
            "random forest (200 trees)": RandomForestRegressor(n_estimators=200, random_state=0, n_jobs=1),
            "15-nearest neighbours (distance)": KNeighborsRegressor(15, weights="distance")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="*", default=[], help="run directories with an FCResNet model.h5")
    ap.add_argument("--dedup", action="store_true", help="data.dedup = true")
    args = ap.parse_args()
    cfg = Config()
    cfg.data.dedup = args.dedup
    ds = load_dataset(cfg.data)
    Xtr, Xte = ds.X_train, ds.X_test
    # standardised targets: R² is the same in the target's units
    ytr, yte = ds.y_train.ravel(), ds.y_test.ravel()
    seen_rows = {r.tobytes() for r in np.round(Xtr, 9)}
    seen = np.array([r.tobytes() in seen_rows for r in np.round(Xte, 9)])
    print(f"wine{' (dedup)' if args.dedup else ''}, split_seed {cfg.data.split_seed}: {len(Xtr)} train / "
          f"{len(Xte)} test rows; {seen.sum()} test rows ({seen.mean():.1%}) have an identical feature vector "
          f"in the training split")
    print(f"{'model':<40}{'test R2':>9}{'unseen':>9}{'seen':>9}{'train R2':>10}")

    def show(name, p_test, p_train):
        print(f"{name:<40}{r2(yte, p_test):>9.3f}{r2(yte[~seen], p_test[~seen]):>9.3f}"
              f"{r2(yte[seen], p_test[seen]):>9.3f}{r2(ytr, p_train):>10.3f}", flush=True)

    for name, m in references().items():
        m.fit(Xtr, ytr)
        show(name, m.predict(Xte), m.predict(Xtr))
    fixed = output_layer_only_predictions(cfg, ds)
    show(f"initial {cfg.model.width}x{cfg.model.depth} net, output layer only",
         fixed["test"].ravel(), fixed["train"].ravel())
    for run in args.runs:
        weights, attrs = load_model(os.path.join(run, "model.h5"))
        with torch.no_grad():
            pred = [forward(weights, torch.as_tensor(X, dtype=torch.float64), attrs["activation"],
                            bool(attrs.get("input_bias", True)), residual=attrs.get("arch") != "mlp")
                    .numpy().ravel() for X in (Xte, Xtr)]
        show(f"{os.path.basename(os.path.normpath(run))} (model.h5)", *pred)


if __name__ == "__main__":
    main()

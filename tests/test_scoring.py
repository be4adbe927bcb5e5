"""The reference lines of the final table."""

import numpy as np
import torch

from radmm_hpc.config import Config
from radmm_hpc.data import load_dataset
from radmm_hpc.models.fcresnet import forward, init_weights
from radmm_hpc.scoring import output_layer_only_scores, score_weights
from tests.support import runtime


def test_output_layer_only_is_the_least_squares_output_layer_of_the_initial_network():
    cfg = Config()
    cfg.data.name, cfg.data.n_samples = "synthetic-regression", 300
    cfg.model.width, cfg.model.depth = 8, 3
    ds = load_dataset(cfg.data)
    ref = output_layer_only_scores(cfg, ds)
    m = cfg.model
    w = init_weights(ds.d_in, m.width, m.depth, ds.d_out, m.input_bias, m.init_scale,
                     torch.Generator().manual_seed(cfg.train.seed), torch.float64, "cpu")
    _, hidden = forward(w, torch.as_tensor(ds.X_train), return_hidden=True)
    H = hidden[-1].numpy()
    coef, *_ = np.linalg.lstsq(H, ds.y_train, rcond=None)
    # the same network with that output layer, scored by the ordinary forward pass
    fitted = w[:-1] + [torch.as_tensor(coef.T.copy())]
    got = score_weights(fitted, ds, m.activation, m.input_bias)
    for k in ("train_loss", "test_loss", "train_r2", "test_r2"):
        assert abs(ref[k] - got[k]) < 1e-9, k
    # least squares: the random output layer and any perturbation of the fit do worse on train
    assert ref["train_loss"] < score_weights(w, ds, m.activation, m.input_bias)["train_loss"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        bumped = w[:-1] + [torch.as_tensor(coef.T + 1e-3 * rng.standard_normal(coef.T.shape))]
        assert ref["train_loss"] < score_weights(bumped, ds, m.activation, m.input_bias)["train_loss"]
    cfg.model.arch = "resnet8"      # only defined for the FCResNet / MLP
    assert output_layer_only_scores(cfg, ds) == {}


def test_backprop_baseline_rows_are_the_last_and_the_best_validation_iterates():
    import dataclasses

    from radmm_hpc.algos.backprop import BackpropTrainer
    from radmm_hpc.baselines import CHECK_EVERY, backprop_for_seconds, validation_split
    from radmm_hpc.scoring import loss_fn, predict, score_model, tensors_for
    cfg = Config()
    cfg.train.dtype = "float64"
    cfg.data.name, cfg.data.n_samples = "synthetic-regression", 400
    cfg.model.width, cfg.model.depth = 16, 3
    cfg.backprop.batch_size, cfg.backprop.lr = 32, 0.01        # fast enough to overfit
    ds = load_dataset(cfg.data)
    rows = backprop_for_seconds(cfg, ds, 0.5, "cpu")
    last, best = rows["backprop_adam_same_wall_clock"], rows["backprop_adam_early_stopped"]
    assert best["iters"] % CHECK_EVERY == 0 and 0 < best["iters"] <= last["iters"]
    # replay the same deterministic training, checking the validation loss every CHECK_EVERY steps
    fit, val = validation_split(cfg, len(ds.X_train))
    assert len(val) == 32 and not set(fit) & set(val)
    tr = BackpropTrainer(cfg, runtime(),
                         dataclasses.replace(ds, X_train=ds.X_train[fit], y_train=ds.y_train[fit]))
    Xv, yv = tensors_for(dataclasses.replace(ds, X_train=ds.X_train[val], y_train=ds.y_train[val]),
                         "train", torch.float64, "cpu")
    checks = {}
    for it in range(last["iters"]):
        tr.step(it)
        if (it + 1) % CHECK_EVERY == 0:
            checks[it + 1] = float(loss_fn(predict(tr.model, Xv), yv, ds.task))
        if it + 1 == best["iters"]:
            at_best = score_model(tr.model, ds)
    assert min(checks, key=checks.get) == best["iters"] and abs(checks[best["iters"]] - best["val_loss"]) < 1e-12
    assert abs(at_best["test_loss"] - best["test_loss"]) < 1e-12
    assert abs(score_model(tr.model, ds)["test_loss"] - last["test_loss"]) < 1e-12

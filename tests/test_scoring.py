"""The reference lines of the final table."""

import numpy as np
import torch

from radmm_hpc.config import Config
from radmm_hpc.data import load_dataset
from radmm_hpc.models.fcresnet import forward, init_weights
from radmm_hpc.scoring import output_layer_only_scores, score_weights


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

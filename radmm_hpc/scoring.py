"""Forward-pass scores of a network on a data set (the numbers users care about).

Losses are in the training units (regression: ½·mean squared error of the standardised target,
i.e. ℓ(V) = 1/(2N)‖V − Y‖²; classification: mean cross-entropy). MSE and R² are reported in the
target's own units.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from radmm_hpc.models.fcresnet import forward


def loss_fn(pred: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Mean loss over the rows of `pred` (differentiable)."""
    if task == "classification":
        return F.cross_entropy(pred, y)
    return 0.5 * ((pred - y) ** 2).sum(dim=1).mean()


def score_predictions(pred: torch.Tensor, y: torch.Tensor, ds, prefix: str) -> dict:
    out = {f"{prefix}_loss": float(loss_fn(pred, y, ds.task))}
    if ds.task == "classification":
        out[f"{prefix}_accuracy"] = float((pred.argmax(1) == y).double().mean())
    else:
        p = pred.detach().cpu().double().numpy() * ds.y_std + ds.y_mean
        t = y.detach().cpu().double().numpy() * ds.y_std + ds.y_mean
        sse = float(((p - t) ** 2).sum())
        sst = float(((t - t.mean(axis=0)) ** 2).sum())
        out[f"{prefix}_mse"] = sse / t.size
        out[f"{prefix}_r2"] = 1.0 - sse / sst if sst > 0 else float("nan")
    return out


def tensors_for(ds, split: str, dtype, device):
    X = torch.as_tensor(getattr(ds, f"X_{split}"), dtype=dtype, device=device)
    y = getattr(ds, f"y_{split}")
    y = torch.as_tensor(y, device=device, dtype=torch.long if ds.task == "classification" else dtype)
    return X, y


@torch.no_grad()
def score_weights(weights, ds, activation: str, input_bias: bool, splits=("train", "test"),
                  residual: bool = True) -> dict:
    """Score a whole network (list of weight matrices) by a true forward pass."""
    out = {}
    w0 = weights[0]
    for split in splits:
        X, y = tensors_for(ds, split, w0.dtype, w0.device)
        out.update(score_predictions(forward(weights, X, activation, input_bias, residual=residual),
                                     y, ds, split))
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, X: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """model(X) in evaluation mode (BatchNorm running statistics), in chunks of rows so that
    convolutional activations of a whole data set never sit in memory at once."""
    was = model.training
    model.eval()
    try:
        return torch.cat([model(X[i:i + chunk]) for i in range(0, len(X), chunk)]) if len(X) else model(X)
    finally:
        model.train(was)


@torch.no_grad()
def calibrate_norm(model, ds, dtype, device, samples: int = 4096, chunk: int = 512) -> None:
    """Set BatchNorm's running statistics to those of the network as it is now, on (up to
    `samples`) training samples, a cumulative average over chunks; leaves the model in eval mode.
    Used where the statistics cannot come from training itself: RADMM's layers are per-sample
    maps (eval mode, statistics fixed once at the start), and A-SGD's server holds only the
    parameters its workers push. The same computation on every rank gives the same statistics."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None            # a cumulative average over the chunks
    model.train()
    X = torch.as_tensor(ds.X_train[:samples], dtype=dtype)
    for i in range(0, len(X), chunk):
        model(X[i:i + chunk].to(device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def score_model(model: torch.nn.Module, ds, splits=("train", "test")) -> dict:
    """Score any nn.Module (FCResNet, ResNet, ...) by a forward pass in evaluation mode."""
    p = next(model.parameters())
    out = {}
    for split in splits:
        X, y = tensors_for(ds, split, p.dtype, p.device)
        out.update(score_predictions(predict(model, X), y, ds, split))
    return out


def least_squares_scores(ds) -> dict:
    """Ordinary least squares with an intercept (regression only): a reference line."""
    if ds.task != "regression":
        return {}
    A = np.hstack([ds.X_train, np.ones((len(ds.X_train), 1))])
    coef, *_ = np.linalg.lstsq(A, ds.y_train, rcond=None)
    out = {}
    for split in ("train", "test"):
        X = getattr(ds, f"X_{split}")
        pred = torch.as_tensor(np.hstack([X, np.ones((len(X), 1))]) @ coef)
        out.update(score_predictions(pred, torch.as_tensor(getattr(ds, f"y_{split}")), ds, split))
    return out


def multinomial_logistic_fit(feats: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-4,
                             max_iter: int = 100, newton_max: int = 2048) -> np.ndarray:
    """The (n_classes × d) weights of a linear layer without intercept (the output layer's form)
    that minimise the mean cross-entropy of softmax(feats Wᵀ) plus (l2/2)‖W‖², in float64 from
    zero (deterministic). The small ridge keeps the fit finite on separable features. Newton's
    method with backtracking (the features of a network are nearly collinear, where first-order
    methods crawl); above `newton_max` unknowns, where the Hessian would not fit, L-BFGS."""
    X = torch.as_tensor(np.asarray(feats, dtype=np.float64))
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    n, d = X.shape
    Y = F.one_hot(yt, n_classes).double()

    def f(W):
        return float(F.cross_entropy(X @ W.T, yt)) + 0.5 * l2 * float((W ** 2).sum())
    W = torch.zeros(n_classes, d, dtype=torch.float64)
    if n_classes * d > newton_max:
        W.requires_grad_(True)
        opt = torch.optim.LBFGS([W], max_iter=20 * max_iter, history_size=20, tolerance_grad=1e-10,
                                tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(X @ W.T, yt) + 0.5 * l2 * (W ** 2).sum()
            loss.backward()
            return loss
        with torch.enable_grad():
            opt.step(closure)
        return W.detach().numpy()
    eye = torch.eye(n_classes * d, dtype=torch.float64)
    for _ in range(max_iter):
        P = torch.softmax(X @ W.T, dim=1)
        G = (P - Y).T @ X / n + l2 * W
        q = (P[:, :, None] * X[:, None, :]).reshape(n, -1)
        H = (torch.block_diag(*torch.einsum("na,ni,nj->aij", P, X, X)) - q.T @ q) / n + l2 * eye
        step = torch.linalg.solve(H, G.reshape(-1)).reshape(G.shape)
        dec = float((G * step).sum())          # the Newton decrement²: stop when it is tiny
        if dec < 1e-14:
            break
        t, f0 = 1.0, f(W)
        while f(W - t * step) > f0 - 0.25 * t * dec and t > 1e-10:
            t *= 0.5
        W = W - t * step
    return W.numpy()


@torch.no_grad()
def output_layer_only_predictions(cfg, ds) -> dict | None:
    """{"train": …, "test": …} predictions (standardised target, or class scores) of the FCResNet
    (or MLP) at its seeded initialisation with only the output layer fitted on the last hidden
    layer: least squares for regression, multinomial_logistic_fit for classification. What a
    trainer reaches that learns no hidden features. None where it does not apply (convolutional
    ResNets)."""
    from radmm_hpc.models import FC_ARCHS
    from radmm_hpc.models.fcresnet import init_weights
    m = cfg.model
    if m.arch not in FC_ARCHS:
        return None
    w = init_weights(ds.d_in, m.width, m.depth, ds.d_out, m.input_bias, m.init_scale,
                     torch.Generator().manual_seed(cfg.train.seed), torch.float64, "cpu")
    feats = {}
    for split in ("train", "test"):
        X, _ = tensors_for(ds, split, torch.float64, "cpu")
        _, hidden = forward(w, X, m.activation, m.input_bias, return_hidden=True, residual=m.arch == "fcresnet")
        feats[split] = hidden[-1].numpy()
    if ds.task == "classification":
        coef = multinomial_logistic_fit(feats["train"], ds.y_train, ds.d_out).T
    else:
        coef, *_ = np.linalg.lstsq(feats["train"], ds.y_train, rcond=None)
    return {split: feats[split] @ coef for split in feats}


def output_layer_only_scores(cfg, ds) -> dict:
    """Scores of output_layer_only_predictions ({} where it does not apply): a method's scores
    are worth reading against this line (docs/radmm.md, docs/mac.md)."""
    pred = output_layer_only_predictions(cfg, ds)
    if pred is None:
        return {}
    out = {}
    for split in ("train", "test"):
        y = getattr(ds, f"y_{split}")
        y = torch.as_tensor(y, dtype=torch.long) if ds.task == "classification" else torch.as_tensor(y)
        out.update(score_predictions(torch.as_tensor(pred[split]), y, ds, split))
    return out

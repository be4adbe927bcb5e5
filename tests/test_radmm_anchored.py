"""The anchored RADMM variant (algos/radmm/anchored.py) on one process."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from radmm_hpc.algos.radmm import AnchoredTrainer
from radmm_hpc.algos.radmm.anchored import _block_step, _groups
from radmm_hpc.algos.radmm.engine import Layer
from radmm_hpc.config import Config, ConfigError, validate
from radmm_hpc.scoring import output_layer_only_scores
from tests.support import make_trainer as make
from tests.support.configs import anchored_cfg


def run(tr, iters):
    for it in range(iters):
        tr.step(it)
    return tr


def test_factory_and_schedule_checks():
    assert isinstance(make(anchored_cfg()), AnchoredTrainer)
    cfg = anchored_cfg()
    cfg.radmm.schedule = "jacobi"
    with pytest.raises(ConfigError, match="serial or pipeline"):
        validate(cfg, 2)
    cfg = anchored_cfg()
    cfg.radmm.variant, cfg.radmm.schedule = "proximal", "pipeline"
    with pytest.raises(ConfigError, match="anchored"):
        validate(cfg, 2)
    cfg = Config()                      # the default: anchored on the pipeline schedule
    validate(cfg, 8)


def test_lower_layers_move_and_the_network_beats_the_output_layer_only_fit():
    """The point of the variant: the bottom half of the hidden layers learns. On 600 wines, 6 hidden
    layers of 16, 25 iterations: every lower-half layer moves by more than 5% of its initial norm,
    and the forward-pass training loss is below that of the initial network with only its output
    layer fitted (least squares)."""
    cfg = anchored_cfg(val_fraction=0.0)
    tr = run(make(cfg), 25)
    m = tr.metrics()
    lower = [x for x in m["layer_movement"][:(tr.L - 1) // 2]]
    assert min(lower) > 0.05, lower
    ref = output_layer_only_scores(cfg, tr.ds)
    assert m["train_loss"] < ref["train_loss"] - 0.01, (m["train_loss"], ref["train_loss"])
    assert m["movement_lower_half"] == pytest.approx(sum(lower) / len(lower))


def test_objective_never_rises_between_accepted_anchors_and_rejections_raise_the_penalty():
    cfg = anchored_cfg(val_fraction=0.0, gamma=0.01, beta=0.01)     # steps too long at first
    tr = make(cfg)
    Fs, scales = [], []
    for it in range(20):
        before = (tr.accepted, tr.rejected, tr.scale)
        tr.step(it)
        if tr.rejected > before[1]:
            assert tr.scale == pytest.approx(before[2] * cfg.radmm.grow)
        else:
            assert tr.scale == pytest.approx(before[2] * cfg.radmm.relax)
            Fs.append(tr.F_prev)
        scales.append(tr.scale)
    assert tr.accepted + tr.rejected == 20 and tr.rejected >= 1
    assert all(b <= a for a, b in zip(Fs, Fs[1:])), Fs


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_w_step_is_the_exact_proximal_step(kind):
    """Δ = −(∇ + NλW)(s·γ·G/p + (ω + Nλ)I)⁻¹ solves the normal equations of the block's quadratic
    model; for a convolution, G from the unfolded patches is the Gram matrix of the convolution as
    a linear map of its weights: Δ G Δᵀ = Σ‖conv(x; Δ)‖²."""
    torch.manual_seed(0)
    if kind == "conv":
        mod = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False).double()
        x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    else:
        mod = torch.nn.Linear(6, 4).double()
        x = torch.randn(7, 6, dtype=torch.float64)
    (g,) = _groups(Layer(mod, "linear", None))
    g.add_input(x)
    W = torch.cat([p.detach().reshape(-1) for p in mod.parameters()])
    grad = torch.randn_like(W)
    D = _block_step(g, W, grad, g.acc, 2.0, 0.5, 0.1)
    A = 2.0 * g.acc / g.per + 0.6 * torch.eye(D.shape[1], dtype=torch.float64)
    resid = g.as_matrix(grad) + 0.1 * g.as_matrix(W) + D @ A
    assert float(resid.abs().max()) < 1e-10
    if kind == "conv":
        assert g.per == 9                  # 3×3 output positions per sample
        out = F.conv2d(x, D.view_as(mod.weight), stride=2, padding=1)
        assert float((D @ g.acc * D).sum()) == pytest.approx(float((out ** 2).sum()), rel=1e-10)
    else:
        out = x @ D[:, :6].T + D[:, 6]       # the bias column rides on a ones input
        assert float((D @ g.acc * D).sum()) == pytest.approx(float((out ** 2).sum()), rel=1e-10)


def test_chunked_pass_equals_one_pass():
    """Micro-batches change only how the columns are walked: the iterates agree to rounding."""
    a = run(make(anchored_cfg(microbatches=1)), 4)
    b = run(make(anchored_cfg(microbatches=5)), 4)
    for l in a.groups:
        assert torch.allclose(a.layers[l - 1].w, b.layers[l - 1].w, rtol=1e-9, atol=1e-12)


def test_state_round_trip_continues_bit_identically():
    cfg = anchored_cfg(gamma=0.01, beta=0.01, trust=0.0)    # with rejections in the first iterations
    ref = run(make(cfg), 10)
    assert ref.rejected >= 1
    first = run(make(cfg), 6)
    state = {k: np.array(v) for k, v in first.state().items()}
    resumed = make(cfg)
    resumed.load_state(state)
    for it in range(6, 10):
        resumed.step(it)
    assert (resumed.accepted, resumed.rejected) == (ref.accepted, ref.rejected)
    for l in ref.groups:
        assert torch.equal(ref.layers[l - 1].w, resumed.layers[l - 1].w)
        assert torch.equal(ref.best_W[l], resumed.best_W[l])


def test_validation_share_picks_the_exported_iterate():
    cfg = anchored_cfg(val_fraction=0.2)
    tr = run(make(cfg), 12)
    assert tr.n_val == round(0.2 * 600) and tr.N == 600 - tr.n_val
    assert math.isfinite(tr.best_val) and tr.best_W is not None
    w = tr.export_weights()
    assert all(torch.equal(w[l - 1], tr.best_W[l]) for l in tr.groups)


def test_classification_learns_on_digits():
    cfg = anchored_cfg(data="digits", subset=400, depth=4, width=32)
    tr = run(make(cfg), 10)
    m = tr.metrics()
    assert m["test_accuracy"] > 0.8 and m["movement_lower_half"] > 0.05     # chance: 0.1


def test_convolutional_resnet_learns_and_its_stem_moves():
    cfg = anchored_cfg(data="digits", subset=256)
    cfg.model.arch, cfg.model.base_width = "resnet8", 4
    tr = make(cfg)
    start = tr.metrics()["train_loss"]
    run(tr, 6)
    m = tr.metrics()
    assert m["train_loss"] < 0.7 * start
    assert m["layer_movement"][0] > 0.01             # the stem (the first layer) learns
    kinds = {g.kind for gs in tr.groups.values() for g in gs}
    assert kinds == {"conv", "norm", "dense"}

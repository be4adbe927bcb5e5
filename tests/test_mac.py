"""MAC (serial): monotone E_Q per step, the penalty path, the nested model, config, resume."""

import json

import numpy as np
import pytest
import torch

from radmm_hpc.config import validate
from radmm_hpc.errors import ConfigError
from tests.support import make_trainer
from tests.support.checkpoints import same_weights
from tests.support.configs import mac_cfg


@pytest.mark.parametrize("variant,task,output,coords,decay", [
    ("qp", "regression", "refit", "u", 0.0), ("al", "regression", "fit", "u", 0.05),
    ("qp", "classification", "fit", "u", 0.0), ("qp", "regression", "fit", "z", 0.0)])
def test_e_q_decreases_across_w_and_z_steps(variant, task, output, coords, decay):
    cfg = mac_cfg(variant=variant, shards=3, output=output, z_coords=coords, weight_decay=decay)
    if task == "classification":
        cfg.data.name = "synthetic-classification"
    tr = make_trainer(cfg)
    mu = 3.0
    eq = [tr.objective_parts(mu)["E_Q"]]
    for it in range(4):
        tr.zstep(mu)
        eq.append(tr.objective_parts(mu)["E_Q"])
        tr.w_step(it, mu)
        eq.append(tr.objective_parts(mu)["E_Q"])
    steps = np.diff(eq)
    assert np.all(steps <= 1e-12 * abs(eq[0])), eq
    assert eq[-1] < 0.9 * eq[0], eq                  # and it does go down, not merely stay
    assert (steps[0::2] < 0).all() and (steps[3::2] < 0).all(), eq   # both steps contribute


def test_gauss_newton_fits_are_exact_where_they_should_be():
    """One ring epoch over 3 shards: the linear output layer gets the least-squares fit of all
    points; a ReLU row whose targets a ReLU row with the same active set produced is recovered
    (the active-set linear fit); the sums do not depend on how the points are split."""
    from radmm_hpc.algos.mac.parts import Submodel
    cfg = mac_cfg(shards=3, output="fit")
    tr = make_trainer(cfg)
    tr.zstep(2.0)
    tr.damp[-1].fill_(1e-12)
    tr.gn_epoch(0, [tr.out_sub], lambda j, sm: (tr.sh[j]["Z"][-1], None, tr.sh[j]["y"]), lambda sm: 0.0)
    Zk = torch.cat([tr.sh[j]["Z"][-1] for j in range(3)]).numpy()
    y = torch.cat([tr.sh[j]["y"] for j in range(3)]).numpy()
    coef, *_ = np.linalg.lstsq(Zk, y, rcond=None)
    assert np.allclose(tr.W[-1].numpy(), coef.T, atol=1e-9, rtol=0)
    # a hidden block: teacher rows W*, start from W* + noise small enough to keep the active sets
    nested, g = tr.nested, torch.Generator().manual_seed(3)
    z = torch.randn(200, 6, generator=g, dtype=torch.float64)
    W_star = torch.randn(4, 6, generator=g, dtype=torch.float64)
    pre = z @ W_star.T
    z = z[(pre.abs() > 0.3).all(dim=1)]              # no point near a kink
    t = torch.relu(z @ W_star.T)
    W_start = W_star + 1e-3 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    sm = Submodel(0, 1, 0, 4)
    parts = [nested.gn_stats(sm, W_start, z[i::3], t[i::3], None) for i in range(3)]
    whole = nested.gn_stats(sm, W_start, z, t, None)
    summed = [sum(p[k] for p in parts) for k in range(2)]
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(summed, whole))
    new = nested.gn_step(sm, W_start, whole, torch.full((4,), 1e-12, dtype=torch.float64))
    assert torch.allclose(new, W_star, atol=1e-8)
    assert float(nested.fit_loss(sm, new, z, t, None)) < 1e-12


def test_classification_refit_is_the_multinomial_output_layer():
    """The stage-end refit of a softmax output layer (Newton steps over the ring) reaches the
    minimiser that scoring.multinomial_logistic_fit computes on the same features."""
    from radmm_hpc.scoring import multinomial_logistic_fit
    cfg = mac_cfg(shards=2, refit_steps=25, ridge=1e-2)
    cfg.data.name = "synthetic-classification"
    tr = make_trainer(cfg)                 # the constructor refits the output layer
    feats = torch.cat([tr.nested.forward(tr.W, tr.sh[j]["X"])[1][-1] for j in range(2)]).numpy()
    y = torch.cat([tr.sh[j]["y"] for j in range(2)]).numpy()
    ref = multinomial_logistic_fit(feats, y, tr.ds.d_out, l2=1e-2)
    assert np.allclose(tr.W[-1].numpy(), ref, atol=1e-6), np.abs(tr.W[-1].numpy() - ref).max()


@pytest.mark.parametrize("variant", ["qp", "al"])
def test_constraint_violation_falls_as_mu_grows(variant):
    tr = make_trainer(mac_cfg(variant=variant))
    for it in range(2):            # at a small μ the auxiliary coordinates leave the forward pass
        tr.step(it)
    viol, gap = [], []
    for stage in range(6):
        mu = 0.5 * 4.0 ** stage
        for it in range(3):
            tr.w_step(it, mu)
            tr.zstep(mu)
        parts = tr.objective_parts(mu)
        viol.append(parts["violation"])
        # nested (forward-pass) loss against the relaxed problem's loss on the fitted points
        out, _ = tr.nested.forward(tr.W, tr.sh[0]["z0"][:, :-1])
        gap.append(abs(float(tr.nested.loss_rows(out, tr.sh[0]["y"]).sum()) / tr.n_fit
                       - parts["aux_loss"]) if tr.S == 1 else None)
    assert viol[0] > 1e-4 and viol[-1] < viol[0] / 50 and all(b < a for a, b in zip(viol, viol[1:])), viol
    assert gap[-1] < gap[0] / 3, gap


def test_training_beats_the_initial_network_and_stops_at_the_schedule_end(tmp_path):
    from radmm_hpc.loop import train
    from tests.support import runtime
    cfg = mac_cfg(mu_steps=4, n=200)
    cfg.train.iters, cfg.train.log_every, cfg.train.run_dir = 50, 2, str(tmp_path)
    tr = make_trainer(cfg)
    init = tr.scores(tr.W0)["train_loss"]
    output_only = tr.scores(tr.W)["train_loss"]     # the constructor fitted the output layer
    summary = train(cfg, runtime())
    assert summary["iters"] == 8            # 4 μ values × 2 alternations, then converged
    assert summary["train_loss"] < 0.8 * output_only < 0.8 * init, (summary["train_loss"], output_only, init)
    rec = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [r["mu"] for r in rec] == [1.0, 2.0, 4.0, 8.0] and rec[-1]["converged"] == 1.0
    move = rec[-1]["layer_movement"]            # ‖W_l − W_l⁰‖/‖W_l⁰‖ per layer, every interval
    assert len(move) == cfg.model.depth + 1 and all(m > 1e-3 for m in move), move
    assert rec[-1]["movement_output"] == move[-1] and rec[-1]["movement_lower_half"] == move[0]
    assert rec[-1]["movement_upper_half"] == pytest.approx((move[1] + move[2]) / 2, rel=1e-12)


def test_validation_skips_a_stage_that_makes_the_nested_model_worse():
    tr = make_trainer(mac_cfg(skip_worse=True))
    best = [w.clone() for w in tr.W]
    tr.best_val = -1.0                         # nothing can validate better than this
    tr.step(0)
    tr.step(1)                                 # end of the first μ stage: skipped
    assert tr.skipped == 1 and same_weights([w.numpy() for w in tr.W], [b.numpy() for b in best])
    assert tr.objective_parts(tr.mu)["violation"] < 1e-20   # Z restarted from a forward pass


def test_hidden_layers_split_into_unit_groups_when_few_layers():
    from radmm_hpc.algos.mac.parts import auto_groups, make_submodels
    tr = make_trainer(mac_cfg(depth=1, width=8, shards=4))
    assert len(tr.subs) >= 4
    subs = make_submodels([(8, 5), (8, 8), (1, 8)], auto_groups(2, 8, 6))
    rows = {}
    for sm in subs:
        rows.setdefault(sm.layer, []).append((sm.r0, sm.r1))
    assert len(subs) >= 6 and rows[2] == [(0, 1)]
    assert all(sorted(r)[0][0] == 0 and sorted(r)[-1][1] == 8 for l, r in rows.items() if l < 2)


def test_config_errors():
    cfg = mac_cfg(shards=3)
    with pytest.raises(ConfigError, match="mac.shards = 3 but the job has 2 ranks"):
        validate(cfg, world_size=2)
    validate(cfg, world_size=1)             # a serial run may mimic 3 ranks
    for key, value, msg in [("mu_factor", 1.0, "mac.mu_factor must be > 1"),
                            ("variant", "admm", "mac.variant must be one of"),
                            ("output", "none", "mac.output must be one of"),
                            ("z_coords", "x", "mac.z_coords must be one of"),
                            ("lm", 0.0, "mac.lm must be > 0"), ("lm_min", -1.0, "mac.lm_min must be > 0"),
                            ("val_fraction", 0.7, "mac.val_fraction"),
                            ("unit_groups", 99, "mac.unit_groups = 99")]:
        bad = mac_cfg(**{key: value})
        with pytest.raises(ConfigError, match=msg):
            validate(bad, world_size=1)


@pytest.mark.parametrize("data", ["synthetic-regression", "synthetic-classification"])
def test_cli_runs_mac_and_scores_the_nested_model(cli, tmp_path, capsys, data):
    """The final table has the output-layer-only reference (least squares or the multinomial
    logistic fit on the initial network's features) beside MAC and Adam."""
    from radmm_hpc.cli import main
    proc, _ = cli(["--algo", "mac", "--data", data, "--iters", "4",
                   "--run-dir", str(tmp_path), "--set", "model.width=8", "--set", "model.depth=2",
                   "--set", "data.n_samples=80"])
    assert proc.returncode == 0, proc.stderr
    s = json.load(open(tmp_path / "summary.json"))
    key = "test_mse" if data.endswith("regression") else "test_accuracy"
    assert s["algo"] == "mac" and np.isfinite(s[key])
    assert key in s["baselines"]["output_layer_only"] and "output_layer_only" in proc.stdout
    assert "backprop_adam_same_wall_clock" in s["baselines"]
    assert main(["eval", str(tmp_path)]) == 0        # model.h5 is the FCResNet layout
    out = capsys.readouterr().out
    assert f"{s[key]:.6g}" in out, out


@pytest.mark.parametrize("arch", ["fcresnet", "mlp"])
def test_mac_model_is_the_shared_model(arch):
    """MAC's layer functions are the shared forward pass (so shared scoring and eval fit), and a
    plain MLP (no skips) trains too."""
    from radmm_hpc.models import build_model
    from radmm_hpc.models.fcresnet import forward
    cfg = mac_cfg(depth=3)
    cfg.model.arch = arch
    validate(cfg)
    tr = make_trainer(cfg)
    X = torch.as_tensor(tr.ds.X_test)
    mod = build_model(cfg, tr.ds, torch.Generator().manual_seed(0), torch.float64)
    ref = forward(tr.W, X, "relu", True, residual=arch == "fcresnet")
    assert torch.allclose(tr.nested.forward(tr.W, X)[0], ref)
    assert torch.allclose(mod(X), forward(list(mod.weights), X, residual=arch == "fcresnet"))
    other = forward(tr.W, X, "relu", True, residual=arch != "fcresnet")
    assert not torch.allclose(ref, other)
    before = tr.scores(tr.W)["train_loss"]
    for it in range(4):
        tr.step(it)
    assert tr.scores(tr.W)["train_loss"] < before
    cfg.train.algo = "radmm"
    if arch == "mlp":
        with pytest.raises(ConfigError, match="model.arch = mlp is trained by"):
            validate(cfg)

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


@pytest.mark.parametrize("variant,task", [("qp", "regression"), ("al", "regression"),
                                          ("qp", "classification")])
def test_e_q_decreases_across_w_and_z_steps(variant, task):
    cfg = mac_cfg(variant=variant, shards=3)
    if task == "classification":
        cfg.data.name = "synthetic-classification"
    tr = make_trainer(cfg)
    mu = 3.0
    eq = [tr.objective_parts(mu)["E_Q"]]
    for it in range(4):
        tr.w_step(it, mu)
        eq.append(tr.objective_parts(mu)["E_Q"])
        tr.zstep(mu)
        eq.append(tr.objective_parts(mu)["E_Q"])
    steps = np.diff(eq)
    assert np.all(steps <= 1e-12 * abs(eq[0])), eq
    assert eq[-1] < 0.97 * eq[0], eq                 # and it does go down, not merely stay
    assert (steps[0::2] < 0).any() and (steps[1::2] < 0).any(), eq   # both steps contribute


@pytest.mark.parametrize("variant", ["qp", "al"])
def test_constraint_violation_falls_as_mu_grows(variant):
    tr = make_trainer(mac_cfg(variant=variant))
    for it in range(2):            # at a small μ the auxiliary coordinates leave the forward pass
        tr.step(it)
    viol, gap = [], []
    for stage in range(5):
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
    init = make_trainer(cfg).scores(make_trainer(cfg).W)["train_loss"]
    summary = train(cfg, runtime())
    assert summary["iters"] == 8            # 4 μ values × 2 alternations, then converged
    assert summary["train_loss"] < 0.8 * init, (summary["train_loss"], init)
    rec = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [r["mu"] for r in rec] == [1.0, 2.0, 4.0, 8.0] and rec[-1]["converged"] == 1.0


def test_validation_skips_a_stage_that_makes_the_nested_model_worse():
    tr = make_trainer(mac_cfg())
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
                            ("val_fraction", 0.7, "mac.val_fraction"),
                            ("unit_groups", 99, "mac.unit_groups = 99")]:
        bad = mac_cfg(**{key: value})
        with pytest.raises(ConfigError, match=msg):
            validate(bad, world_size=1)


def test_cli_runs_mac_and_scores_the_nested_model(cli, tmp_path, capsys):
    from radmm_hpc.cli import main
    proc, _ = cli(["--algo", "mac", "--data", "synthetic-regression", "--iters", "4",
                   "--run-dir", str(tmp_path), "--set", "model.width=8", "--set", "model.depth=2",
                   "--set", "data.n_samples=80", "--set", "train.compare=false"])
    assert proc.returncode == 0, proc.stderr
    s = json.load(open(tmp_path / "summary.json"))
    assert s["algo"] == "mac" and np.isfinite(s["test_mse"])
    assert main(["eval", str(tmp_path)]) == 0        # model.h5 is the FCResNet layout
    out = capsys.readouterr().out
    assert f"{s['test_mse']:.6g}" in out, out


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

"""The interfaces users already work with (issue 19): --print-config with comments, hints for
unknown flags, data set names, a closed pipe, tracebacks in the run directory, eval with the
stored preprocessing, export and the one-call loader, report panels, inspect's summary."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.support import ROOT

TINY = ["--set", "model.width=8", "--set", "model.depth=3", "--set", "train.compare=false",
        "--set", "train.log_every=5"]
try:
    import tomllib
except ImportError:   # pragma: no cover
    import tomli as tomllib


@pytest.fixture(scope="module")
def red_run(tmp_path_factory):
    """A tiny backprop run on wine-red (regression), reused by several tests."""
    from tests.support import run_cli
    run = tmp_path_factory.mktemp("red") / "run"
    proc, _ = run_cli(["--algo", "backprop", "--data", "wine-red", "--iters", "40", "--run-dir", str(run), *TINY])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny backprop run of a convolutional ResNet on digits (named-parameter model.h5)."""
    from tests.support import run_cli
    run = tmp_path_factory.mktemp("digits") / "run"
    proc, _ = run_cli(["--algo", "backprop", "--model", "resnet8", "--data", "digits", "--iters", "30",
                       "--run-dir", str(run), "--set", "model.base_width=4", "--set", "train.compare=false",
                       "--set", "train.log_every=10"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


# -- --print-config and flags -------------------------------------------------------------------
def test_print_config_carries_every_setting_comment(cli):
    from radmm_hpc.config import Config
    proc, _ = cli(["--print-config", "--algo", "trgl", "--model", "resnet20", "--data", "digits"])
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    parsed = tomllib.loads(text)                    # still valid TOML, the same values
    assert parsed["train"]["algo"] == "trgl" and parsed["model"]["arch"] == "resnet20"
    lines, sec = {}, None
    for ln in text.splitlines():
        if ln.startswith("["):
            sec = ln.strip("[]")
        elif " = " in ln and not ln.startswith("#"):
            lines[f"{sec}.{ln.split(' = ')[0]}"] = ln
    total = 0
    for sec, table in Config().to_dict().items():
        for key in table:
            assert "  # " in lines[f"{sec}.{key}"], f"{sec}.{key} has no comment"
            total += 1
    assert total >= 120
    assert "weight decay λ" in text and "[default for --algo trgl]" in text


@pytest.mark.parametrize("flag,expect", [
    (["--lr", "0.1"], "--set backprop.lr=0.1"),
    (["--algo", "trgl", "--lr=0.05"], "--set trgl.lr=0.05"),
    (["--width", "32"], "--set model.width=32"),
    (["--batch-size", "16", "--algo", "asgd"], "--set asgd.batch_size=16"),
    (["--radmm.gamma", "5"], "--set radmm.gamma=5"),
])
def test_unknown_flag_suggests_the_setting(cli, flag, expect):
    proc, _ = cli(flag)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and "unrecognized arguments" in err[0] and expect in err[0], proc.stderr


@pytest.mark.parametrize("args", [["--print-config"], ["--algo", "backprop", "--iters", "1"]])
def test_unknown_data_set_is_an_error_in_every_mode(cli, args, tmp_path):
    proc, _ = cli(["--data", "wnie", "--run-dir", str(tmp_path / "r"), *args])
    assert proc.returncode == 2 and "unknown data set 'wnie' (did you mean 'wine'?)" in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()


def test_unknown_data_set_in_eval(cli, red_run):
    proc, _ = cli(["eval", str(red_run), "--data", "wnie"])
    assert proc.returncode == 2 and "unknown data set 'wnie'" in proc.stderr


# -- pipes and tracebacks -----------------------------------------------------------------------
def test_closed_pipe_is_a_normal_exit(red_run, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "radmm_hpc", "inspect", str(red_run)], cwd=str(tmp_path),
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()                      # `| head -0`: the reader is gone before the output
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert p.returncode == 0, err
    assert "Traceback" not in err and "internal error" not in err and "BrokenPipe" not in err, err
    assert os.listdir(tmp_path) == []     # no traceback file left in the working directory


def test_internal_error_traceback_goes_to_the_run_dir(tmp_path, monkeypatch):
    from radmm_hpc import cli
    from radmm_hpc.algos.backprop import BackpropTrainer

    def broken(self, it):
        raise RuntimeError("deliberate failure in step")
    monkeypatch.setattr(BackpropTrainer, "step", broken)
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    code = cli.main(["--algo", "backprop", "--iters", "3", "--run-dir", str(run), *TINY])
    assert code == 1
    log = run / "radmm-hpc-error-rank0.log"
    assert log.is_file() and "deliberate failure in step" in log.read_text()
    assert not [n for n in os.listdir(tmp_path) if n.startswith("radmm-hpc-error")]


# -- eval, export, loader -----------------------------------------------------------------------
def _raw_split(name, split_seed=0, test_fraction=0.2):
    from radmm_hpc.config import DataCfg
    from radmm_hpc.data import split_indices
    from radmm_hpc.data.loaders import load_raw
    raw = load_raw(DataCfg(name=name))
    tr, te = split_indices(len(raw.X), test_fraction, split_seed)
    return raw.X[te], raw.y[te]


def test_eval_other_data_uses_the_stored_preprocessing(cli, red_run):
    """Scores of wine-white under the red model: inputs standardised with the red training split's
    statistics, outputs mapped back with its target statistics (not refitted on white)."""
    import radmm_hpc
    proc, _ = cli(["eval", str(red_run), "--data", "wine-white"])
    assert proc.returncode == 0, proc.stderr
    got = {k: float(v) for k, v in (ln.split() for ln in proc.stdout.splitlines())}
    X, y = _raw_split("wine-white")
    model = radmm_hpc.load(str(red_run))
    with torch.no_grad():
        pred = model(torch.as_tensor(X)).numpy()
    mse = float(((pred - y) ** 2).mean())
    r2 = 1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert abs(got["test_mse"] - mse) < 1e-4 * mse and abs(got["test_r2"] - r2) < 1e-4, (got, mse, r2)


def test_loader_forward_equals_the_scores(red_run, digits_run):
    import radmm_hpc
    from radmm_hpc.config import Config
    from radmm_hpc.data import load_dataset
    from radmm_hpc.scoring import score_predictions
    for run, key in ((red_run, "test_r2"), (digits_run, "test_accuracy")):
        summary = json.loads((run / "summary.json").read_text())
        cfg = Config.from_dict(tomllib.loads((run / "config.toml").read_text()))
        ds = load_dataset(cfg.data)
        net = radmm_hpc.load(str(run), preprocess=False)       # the bare network, standardised inputs
        assert isinstance(net, torch.nn.Module) and not net.training
        with torch.no_grad():
            pred = net(torch.as_tensor(ds.X_test))
        yt = torch.as_tensor(ds.y_test)
        s = score_predictions(pred, yt, ds, "test")
        assert abs(s[key] - summary[key]) < 1e-5 and abs(s["test_loss"] - summary["test_loss"]) < 1e-5, (s, summary)
        # with preprocessing: raw rows in, the same predictions (regression: in the target's units)
        full = radmm_hpc.load(str(run))
        X_raw = ds.X_test * ds.x_std + ds.x_mean
        with torch.no_grad():
            out = full(torch.as_tensor(X_raw))
        expect = pred * torch.as_tensor(ds.y_std) + torch.as_tensor(ds.y_mean) if ds.task == "regression" else pred
        assert torch.allclose(out, expect, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_export_state_dict(cli, red_run, digits_run, fmt, tmp_path):
    import radmm_hpc
    for run in (red_run, digits_run):
        out = tmp_path / f"{run.parent.name}.{fmt}"
        proc, _ = cli(["export", str(run), "--format", fmt, "--out", str(out)])
        assert proc.returncode == 0 and proc.stdout.strip() == str(out), proc.stderr
        if fmt == "pt":
            state = torch.load(out, weights_only=True)
        else:
            from safetensors.torch import load_file
            state = load_file(str(out))
        module = radmm_hpc.load(str(run))
        ref = module.state_dict()
        assert sorted(state) == sorted(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
        for p in module.parameters():      # a fresh module takes the exported state and agrees
            p.data.zero_()
        module.load_state_dict(state)
        x = torch.randn(5, module.x_mean.numel(), dtype=torch.float64)
        with torch.no_grad():
            assert torch.equal(module(x), radmm_hpc.load(str(run))(x))
    proc, _ = cli(["export", str(red_run), "--format", fmt])      # default: RUN_DIR/model.<fmt>
    assert proc.returncode == 0 and (red_run / f"model.{fmt}").is_file()


# -- report and inspect ---------------------------------------------------------------------------
def test_report_one_panel_per_quantity_runs_overlaid(cli, red_run, tmp_path):
    from radmm_hpc.report import panels, read_metrics
    radmm = tmp_path / "radmm"
    proc, _ = cli(["--data", "wine-red", "--iters", "10", "--run-dir", str(radmm), *TINY])
    assert proc.returncode == 0, proc.stderr[-2000:]
    layout = panels({"bp": read_metrics(str(red_run)), "radmm": read_metrics(str(radmm))})
    assert list(layout)[:3] == ["loss", "r2", "mse"]               # the scores first, one panel each
    # anchored RADMM also logs the loss on its validation share (dotted in the same panel)
    assert set(layout["loss"]) == {("bp", "train_loss"), ("bp", "test_loss"),
                                   ("radmm", "train_loss"), ("radmm", "test_loss"), ("radmm", "val_loss")}
    assert layout["lagrangian"] == [("radmm", "lagrangian")]       # objectives apart from the scores
    out = tmp_path / "cmp"
    proc, _ = cli(["report", str(red_run), str(radmm), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert (out / "metrics.png").stat().st_size > 5000 and (out / "phases.png").is_file()
    assert (out / "movement.png").stat().st_size > 5000        # RADMM logs every layer's movement
    proc, _ = cli(["report", str(radmm), "--out", str(tmp_path / "one.png")])
    assert proc.returncode == 0 and (tmp_path / "one.png").is_file() and (tmp_path / "one-phases.png").is_file()


def test_inspect_starts_with_a_summary(cli, red_run, digits_run):
    proc, _ = cli(["inspect", str(red_run)])
    assert proc.returncode == 0
    first, second = proc.stdout.splitlines()[:2]
    assert first.startswith(f"{red_run}: backprop on wine-red (fcresnet), 40 iterations on 1 rank(s)"), first
    assert "test_r2" in first
    assert "fcresnet 3 hidden layers x 8 units, 11 inputs -> 1 output(s) (regression)" in second
    n_params = 8 * 12 + 2 * 8 * 8 + 8
    assert f"{n_params:,} parameters" in second, second
    proc, _ = cli(["inspect", str(digits_run / "model.h5")])
    first = proc.stdout.splitlines()[0]
    assert "resnet8" in first and "input 1x8x8 -> 10 classes (classification)" in first and "digits" in first, first

"""End-to-end: the CLI as users run it, serially and under mpiexec."""

import json
import os

import h5py
import numpy as np
import pytest

SMALL = ["--set", "model.width=8", "--set", "model.depth=4", "--set", "train.log_every=5",
         "--set", "train.compare=false", "--iters", "10"]


def bad_input_cases(tmp_path):
    nan = tmp_path / "nan.csv"
    nan.write_text("a,b,y\n1,2,3\n4,nan,6\n7,8,9\n")
    h5 = tmp_path / "short.h5"
    with h5py.File(h5, "w") as fh:
        fh["X"], fh["y"] = np.zeros((5, 2)), np.zeros(4)
    return [
        (["--set", "model.widht=8"], "unknown key 'model.widht' (did you mean 'model.width'?)"),
        (["--set", "model.width=-8"], "model.width must be > 0"),
        (["--set", "radmm.rho=0"], "radmm.rho must be > 0"),
        (["--set", "model.depth=2", "--algo", "radmm"], None),    # regions > layers only at 4 ranks
        (["--data", f"csv:{tmp_path}/missing.csv"], "data file not found"),
        (["--data", f"csv:{nan}"], "NaN or infinite value at line 3, column 2"),
        (["--data", f"hdf5:{h5}"], "X has 5 samples but y has 4"),
        (["--set", "train.world_size=3"], "train.world_size = 3 but this job has"),
        (["--run-dir", "/proc/forbidden/run"], "cannot create run directory"),
    ]


@pytest.mark.parametrize("ranks", [1, 4])
def test_bad_inputs_one_line_every_rank_fails(cli, tmp_path, ranks):
    for args, message in bad_input_cases(tmp_path):
        if message is None:
            if ranks == 1:
                continue
            message = "4 regions but model.depth = 2 hidden layers"
        # the subprocess timeout is the no-hang check (a hung rank would never exit)
        proc, _ = cli(["--algo", "backprop"] + SMALL + args if "--algo" not in args else SMALL + args,
                      ranks=ranks, timeout=120)
        errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr[-2000:])
        assert len(errors) == 1 and message in errors[0], (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr + proc.stdout


def test_unknown_subcommand_argument(cli):
    proc, _ = cli(["eval"])
    assert proc.returncode == 2 and "radmm-hpc: error:" in proc.stderr


def test_backprop_run_outputs_eval_report_inspect(cli, tmp_path):
    run = tmp_path / "run"
    proc, _ = cli(["--algo", "backprop", "--run-dir", str(run)] + SMALL + ["--set", "train.compare=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.toml", "metrics.jsonl", "summary.json", "model.h5"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    for key in ("algo", "data", "world_size", "iters", "wall_s", "time_per_iter_s", "train_loss",
                "test_loss", "test_mse", "test_r2", "bytes_sent_per_iter", "peak_rss_mb"):
        assert key in summary, key
    assert summary["iters"] == 10 and summary["world_size"] == 1
    assert "least_squares" in summary["baselines"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in lines] == [5, 10]
    assert "least_squares" in proc.stdout and "test_r2" in proc.stdout
    # eval reproduces the summary's forward-pass scores from model.h5
    proc, _ = cli(["eval", str(run)])
    assert proc.returncode == 0, proc.stderr
    got = dict(line.split() for line in proc.stdout.splitlines())
    assert abs(float(got["test_r2"]) - summary["test_r2"]) < 1e-4
    proc, _ = cli(["report", str(run)])
    assert proc.returncode == 0, proc.stderr
    assert (run / "metrics.png").stat().st_size > 1000 and (run / "phases.png").is_file()
    proc, _ = cli(["inspect", str(run / "model.h5")])
    assert proc.returncode == 0 and "layers/1/weight" in proc.stdout


def test_backprop_on_8_ranks_writes_run(cli, tmp_path):
    run = tmp_path / "run8"
    proc, _ = cli(["--algo", "backprop", "--run-dir", str(run), "--data", "wine-red"] + SMALL,
                  ranks=8, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 8
    # one packed Allreduce of all gradients per step
    n_params = 8 * 12 + 3 * 8 * 8 + 8
    assert summary["bytes_sent_per_iter"] == n_params * 4
    assert proc.stdout.count("least_squares") <= 1


def test_print_config(cli):
    proc, _ = cli(["--print-config", "--set", "model.width=12"])
    assert proc.returncode == 0 and "width = 12" in proc.stdout


def test_eval_errors(cli, tmp_path):
    proc, _ = cli(["eval", str(tmp_path)])
    assert proc.returncode == 2 and "no config.toml" in proc.stderr
    proc, _ = cli(["inspect", str(tmp_path / "x.h5")])
    assert proc.returncode == 2 and "not found" in proc.stderr
    os.makedirs(tmp_path / "r")
    proc, _ = cli(["report", str(tmp_path / "r")])
    assert proc.returncode == 2 and "no metrics.jsonl" in proc.stderr


def test_divergence_exits_4_on_every_rank(cli, tmp_path):
    # an absurd learning rate makes backprop's loss overflow to inf/NaN within a few steps
    args = ["--algo", "backprop"] + SMALL + [
        "--set", "backprop.lr=1e12", "--set", "backprop.optimizer=sgd", "--set", "train.log_every=1"]
    for ranks in (1, 3):
        proc, secs = cli(args + ["--run-dir", str(tmp_path / f"d{ranks}")], ranks=ranks, timeout=90)
        assert proc.returncode == 4, (ranks, proc.returncode, proc.stderr[-1500:])
        assert "diverged" in proc.stderr and "Traceback" not in proc.stderr and "Abort" not in proc.stderr


@pytest.mark.parametrize("algo,ranks,extra", [
    ("backprop", 1, ["--model", "mlp", "--set", "model.depth=3"]),
    ("asgd", 3, ["--model", "resnet8", "--data", "digits", "--set", "model.base_width=4",
                 "--set", "data.train_subset=256"]),
])
def test_final_scores_match_metrics_and_eval(cli, tmp_path, algo, ranks, extra):
    """The summary's scores are those of the last metrics point, and `eval` recomputes them from
    model.h5: the exported file is the network that was scored (MLPs without skips; A-SGD's
    convolutional ResNet with BatchNorm statistics the server recomputes)."""
    run = tmp_path / "run"
    args = ["--algo", algo, "--run-dir", str(run), *SMALL, *extra]
    proc, _ = cli(args, ranks=ranks, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    key = "test_r2" if "test_r2" in summary else "test_accuracy"
    assert abs(summary[key] - last[key]) < 1e-9 and abs(summary["test_loss"] - last["test_loss"]) < 1e-6
    if key == "test_accuracy":
        assert summary["test_accuracy"] > 0.3          # 10 classes: chance is 0.1
    proc, _ = cli(["eval", str(run)])
    assert proc.returncode == 0, proc.stderr
    got = dict(line.split() for line in proc.stdout.splitlines())
    assert abs(float(got[key]) - summary[key]) < 1e-4
    assert abs(float(got["test_loss"]) - summary["test_loss"]) < 1e-4
    proc, _ = cli(["report", str(run)])
    assert proc.returncode == 0, proc.stderr
    if algo == "asgd":   # the parameter-server modes plot their staleness histogram
        assert (run / "staleness.png").stat().st_size > 1000

"""Per-method defaults (issue 19): every --algo with its documented models and the bundled data,
run with its defaults (iterations and the settings they depend on) at a reduced size (smaller
networks, fewer samples), gives a useful model."""

import json

import pytest

FC = ["--set", "model.width=16", "--set", "model.depth=6"]
# (algo, ranks, arguments at a reduced size, score, threshold); each at its default iterations
CASES = [
    ("radmm", 2, ["--data", "wine", *FC, "--train-subset", "1000"], "test_r2", 0.15),
    ("radmm", 2, ["--model", "resnet8", "--data", "digits", "--set", "model.base_width=4",
                  "--train-subset", "600"], "test_accuracy", 0.8),
    ("mac", 2, ["--data", "wine", *FC, "--train-subset", "1000"], "test_r2", 0.12),
    ("trgl", 3, ["--model", "resnet20", "--data", "digits", "--set", "model.base_width=4"], "test_accuracy", 0.85),
    ("asgd", 3, ["--data", "wine-red", *FC], "test_r2", 0.25),
    ("asgd", 3, ["--model", "resnet8", "--data", "digits", "--set", "model.base_width=4",
                 "--train-subset", "600"], "test_accuracy", 0.85),
    ("dapsvrg", 3, ["--data", "wine"], "test_accuracy", 0.7),
    ("dapsgd", 3, ["--data", "wine"], "test_accuracy", 0.7),
    ("backprop", 2, ["--data", "wine", *FC], "test_r2", 0.25),
    ("backprop", 1, ["--model", "resnet20", "--data", "digits", "--set", "model.base_width=4"], "test_accuracy", 0.9),
]
SUBOPTIMALITY = {"dapsvrg": 2e-3, "dapsgd": 3e-2}   # objective above P* at the end


def test_every_method_has_its_defaults_and_flags_win(tmp_path):
    from radmm_hpc.cli import parse_args, resolve_config
    from radmm_hpc.config import METHOD_DEFAULTS, method_defaults
    for algo in ("radmm", "mac", "trgl", "asgd", "dapsvrg", "dapsgd", "backprop"):
        assert "train.iters" in METHOD_DEFAULTS[algo], algo
    world = {"asgd": 3, "dapsvrg": 3, "dapsgd": 3}
    for algo, model in (("trgl", "resnet20"), ("dapsgd", "fcresnet"), ("backprop", "fcresnet"),
                        ("backprop", "resnet8")):
        cfg = resolve_config(parse_args(["--algo", algo, "--model", model]), world.get(algo, 1))
        want = method_defaults(algo, model)
        for key, value in want.items():
            sec, name = key.split(".")
            assert getattr(getattr(cfg, sec), name) == value, (algo, key)
    conv, dense = method_defaults("backprop", "resnet8"), method_defaults("backprop", "fcresnet")
    assert conv["train.iters"] != dense["train.iters"]
    # a --config file and flags override the per-method defaults
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\niters = 7\n[dap]\neta_scale = 0.2\n")
    cfg = resolve_config(parse_args(["--algo", "dapsgd", "--config", str(toml)]), 3)
    assert (cfg.train.iters, cfg.dap.eta_scale) == (7, 0.2)
    cfg = resolve_config(parse_args(["--algo", "trgl", "--model", "resnet8", "--iters", "5"]), 1)
    assert cfg.train.iters == 5
    cfg = resolve_config(parse_args(["--config", str(toml), "--set", "train.algo=trgl", "--model", "resnet8"]), 1)
    assert cfg.train.iters == 7          # the file's value, over trgl's default


@pytest.mark.parametrize("algo,ranks,args,key,threshold", CASES,
                         ids=[f"{c[0]}-{c[2][c[2].index('--data') + 1] if '--data' in c[2] else ''}"
                              f"{'-' + c[2][c[2].index('--model') + 1] if '--model' in c[2] else ''}" for c in CASES])
def test_default_gives_a_useful_model(cli, tmp_path, algo, ranks, args, key, threshold):
    run = tmp_path / "run"
    proc, secs = cli(["--algo", algo, *args, "--run-dir", str(run), "--set", "train.compare=false"],
                     ranks=ranks, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary[key] > threshold, (key, summary[key], threshold, summary["iters"])
    if algo in SUBOPTIMALITY:
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["suboptimality"] < SUBOPTIMALITY[algo], last["suboptimality"]
    from radmm_hpc.config import method_defaults  # the run had the method's own default
    model = args[args.index("--model") + 1] if "--model" in args else "fcresnet"
    iters = method_defaults(algo, model)["train.iters"]
    assert summary["iters"] == iters or (algo == "mac" and summary["iters"] <= iters), summary["iters"]
    print(f"\n{algo} {' '.join(args)}: {key} {summary[key]:.4f} after {summary['iters']} iterations, "
          f"{secs:.1f} s wall")

import pytest

from radmm_hpc.cli import parse_args, resolve_config
from radmm_hpc.config import Config, render_toml, validate
from radmm_hpc.errors import ConfigError
from tests.support import runtime


def resolve(argv, world=1):
    return resolve_config(parse_args(argv), world)


def test_defaults_validate():
    validate(Config(), 1)
    validate(Config(), 8)


def test_precedence_flags_over_toml_over_defaults(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model]\nwidth = 32\ndepth = 6\n[train]\niters = 7\n")
    cfg = resolve(["--config", str(f), "--set", "model.width=16", "--iters", "9"])
    assert (cfg.model.width, cfg.model.depth, cfg.train.iters) == (16, 6, 9)
    assert Config().model.width != 16


def test_set_coerces_types():
    cfg = resolve(["--algo", "backprop", "--set", "radmm.gamma=2.5", "--set", "model.input_bias=false",
                   "--set", "train.seed=0x10"])
    assert cfg.radmm.gamma == 2.5 and cfg.model.input_bias is False and cfg.train.seed == 16


@pytest.mark.parametrize("argv, message", [
    (["--set", "model.widht=3"], "did you mean 'model.width'"),
    (["--set", "modle.width=3"], "did you mean 'model'"),
    (["--set", "model.width=-3"], "model.width must be > 0"),
    (["--set", "model.width=abc"], "expected an integer"),
    (["--set", "radmm.rho=0"], "radmm.rho must be > 0"),
    (["--set", "radmm.beta=-1"], "radmm.beta must be > 0"),
    (["--set", "model.width"], "expected section.key=value"),
    (["--algo", "radmn"], "did you mean 'radmm'"),
    (["--dtype", "float16"], "invalid choice"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_values_one_line(argv, message):
    with pytest.raises(ConfigError) as exc:
        resolve(argv)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_more_regions_than_layers():
    with pytest.raises(ConfigError, match="at most 3 ranks"):
        resolve(["--set", "model.depth=3"], world=4)
    resolve(["--set", "model.depth=4"], world=4)


def test_world_size_mismatch(monkeypatch):
    from radmm_hpc.runtime import check_world_size
    rt = runtime()
    with pytest.raises(ConfigError, match=r"train.world_size = 4 but this job has 1 rank: .*"
                                          r"--set train.world_size=1"):
        check_world_size(rt, 4)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    with pytest.raises(ConfigError, match=r"SLURM_NTASKS = 8 tasks but this job has 1 rank: .*mpirun -n 8.*"
                                          r"--set train.world_size=1"):
        check_world_size(rt, 0)
    check_world_size(rt, 1)     # an explicit setting wins over Slurm's count


def test_bad_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model\nwidth=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(["--config", str(f)])
    f.write_text("width = 3\n")
    with pytest.raises(ConfigError, match="must be a table"):
        resolve(["--config", str(f)])
    with pytest.raises(ConfigError, match="config file not found"):
        resolve(["--config", str(tmp_path / "nope.toml")])


def test_render_round_trip(tmp_path):
    cfg = resolve(["--set", "model.width=17", "--run-dir", 'a "b"\\c'])
    f = tmp_path / "c.toml"
    f.write_text(render_toml(cfg.to_dict()))
    assert resolve(["--config", str(f)]).to_dict() == cfg.to_dict()


def test_radmm_needs_relu_and_input_bias():
    with pytest.raises(ConfigError, match="relu"):
        resolve(["--set", "model.activation=tanh"])
    with pytest.raises(ConfigError, match="input_bias"):
        resolve(["--set", "model.input_bias=false"])
    resolve(["--algo", "backprop", "--set", "model.activation=tanh"])

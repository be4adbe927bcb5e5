"""Typed configuration: defaults < TOML file < command-line flags, validated before any work.

Sections are dataclasses; every field has a type and a default. `--set section.key=value` and TOML
tables address the same fields. Validation rejects unknown keys (suggesting the closest valid
name) and out-of-range values with a one-line ConfigError.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass, field, fields

from radmm_hpc.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ALGOS = ("radmm", "backprop", "asgd", "dapsvrg", "dapsgd", "mac", "trgl")
SCHEDULES = ("auto", "serial", "pipeline", "serial-redblack", "two-colour", "jacobi")
# The sections only one method reads. A run depends on its own and on the shared ones (train,
# model, data, ...); another method's section (its tuned defaults may change) never changes it.
METHOD_SECTIONS = {"radmm": ("radmm", "radmmconv"), "backprop": ("backprop",), "mac": ("mac",),
                   "trgl": ("trgl",), "asgd": ("ps", "asgd"), "dapsvrg": ("ps", "dap"),
                   "dapsgd": ("ps", "dap")}


def foreign_sections(algo: str) -> set:
    """The settings sections that a run of `algo` does not read."""
    every = {sec for secs in METHOD_SECTIONS.values() for sec in secs}
    return every - set(METHOD_SECTIONS.get(algo, ()))


@dataclass
class TrainCfg:
    algo: str = "radmm"           # training method: radmm | backprop | mac | trgl | asgd | dapsvrg | dapsgd
    iters: int = 60               # per-method default: config.METHOD_DEFAULTS (docs/outputs.md)
    seed: int = 0                 # initialisation and sampling seed (the same on every rank)
    device: str = "auto"          # auto | cpu | cuda
    dtype: str = "float32"        # float32 | float64
    deterministic: bool = False   # torch deterministic algorithms (bit-identical resume)
    log_every: int = 10           # iterations per metrics line
    progress_seconds: float = 10.0  # seconds between progress lines when stderr is not a terminal
    run_dir: str = ""             # default: runs/<timestamp>
    world_size: int = 0           # expected number of ranks; 0 = any (under Slurm: SLURM_NTASKS)
    compare: bool = True          # final table: backprop and least squares beside the trained model
    tensorboard: bool = False     # also log the metrics for TensorBoard in RUN_DIR/tensorboard (rank 0;
                                  # needs pip install 'radmm_hpc[tensorboard]')


@dataclass
class ModelCfg:
    arch: str = "fcresnet"        # fcresnet | mlp | resnet<6n+2> (resnet20, ...) | resnet<9n+2>b (resnet29b, ...)
    width: int = 64               # units per hidden layer (fcresnet, mlp)
    depth: int = 34               # hidden layers V_1..V_{L-1} (layer 1 is the input layer)
    activation: str = "relu"      # relu | tanh | gelu
    input_bias: bool = True       # a row of ones appended to the input (bias of layer 1)
    init_scale: float = 0.1       # residual and output layers: init_scale·sqrt(2/width) (He = 1.0)
    # convolutional ResNets (arch resnet<6n+2> basic blocks, resnet<9n+2>b bottleneck): docs/trgl.md
    block: str = "post"           # post | pre (activation)
    shortcut: str = "A"           # A (parameter-free subsample + zero pad) | B (1x1 projection)
    norm: str = "batch"           # batch | none
    base_width: int = 16          # channels of the first stage (then x2, x4)


@dataclass
class DataCfg:
    name: str = "wine"            # wine | wine-red | wine-white | digits | csv:PATH | hdf5:PATH | mnist:DIR |
                                  # cifar10:DIR | synthetic-regression | synthetic-classification
    test_fraction: float = 0.2    # share of the samples held out as the test split (when the data has none)
    split_seed: int = 0           # seed of the train/test permutation
    task: str = "auto"            # auto | regression | classification (for csv/hdf5)
    n_samples: int = 512          # synthetic generators
    n_features: int = 8           # synthetic generators: input features
    n_classes: int = 3            # synthetic-classification: classes
    noise: float = 0.1            # synthetic generators: noise standard deviation
    train_subset: int = 0         # keep this many training samples (seeded by split_seed); 0 = all
    dedup: bool = False           # drop repeated samples (same features and target) before the split,
                                  # so no test row has a twin in training (Wine Quality: 27.6% do)


@dataclass
class BackpropCfg:
    optimizer: str = "adam"       # adam | sgd
    lr: float = 1e-3              # learning rate
    momentum: float = 0.9         # sgd only
    weight_decay: float = 0.0     # L2 penalty of the optimizer
    batch_size: int = 256         # global batch over all ranks; 0 = full batch


@dataclass
class RadmmCfg:
    # anchored (the default): the auxiliary variables are set to the forward pass each iteration,
    # the multipliers to their estimates (a backward sweep through the regions), then every W
    # block takes its exact proximal step (docs/radmm.md). proximal | linearized: the paper's
    # full-batch variants (previous defaults: configs/radmm-proximal.toml)
    variant: str = "anchored"     # anchored | proximal | linearized
    splitting: str = "three"      # three | two (proximal and linearized only)
    schedule: str = "auto"        # auto (anchored: pipeline, else jacobi) | serial | pipeline |
                                  # serial-redblack | two-colour | jacobi
    regions: int = 0              # serial-redblack: regions to mimic (0 = world size)
    # defaults tuned on Wine Quality for the anchored variant (docs/radmm.md); the paper variants
    # were tuned at gamma = rho = 100, lam = 0.1 (configs/radmm-proximal.toml)
    lam: float = 0.0              # weight decay λ
    gamma: float = 10.0           # penalty on U_l = W_l V_{l-1} (anchored: a hidden block's step ~ 1/γ)
    rho: float = 100.0            # penalty on V_l = R_l V_{l-1} + σ(U_l) (proximal, linearized)
    beta: float = 10.0            # ADMM penalty on the output constraint (β > 1)
    omega: float = 1.0            # proximal weight
    beta_b: float = 10.0          # Jacobi boundary consensus penalty (boundary blocks use ω + β_b/2)
    keep_best: bool = True        # export the best iterate (anchored: by validation loss; others:
                                  # the lowest forward-pass training loss at a logging interval)
    tol: float = 0.0              # stop when the relative successive difference falls below
    # anchored variant only
    microbatches: int = 0         # column chunks per pipelined pass (0: 4 per rank but at least 512
                                  # columns each, at least one per rank; 1 on one rank)
    grow: float = 2.0             # a step that raised the objective is undone, the penalties ×grow
                                  # (1: every step is kept; with relax = 1, fixed penalties)
    relax: float = 0.9            # after an accepted step the penalties ×relax
    trust: float = 0.1            # a hidden block's step is at most trust·‖W_l‖ (0 = no bound)
    val_fraction: float = 0.1     # training share held out to choose the exported iterate (0: the
                                  # last accepted one, the lowest training objective)


def radmm_schedule(r: "RadmmCfg") -> str:
    """The schedule radmm.schedule = auto stands for: pipeline for the anchored variant, Jacobi
    PRU for the paper variants."""
    if r.schedule != "auto":
        return r.schedule
    return "pipeline" if r.variant == "anchored" else "jacobi"


@dataclass
class CheckpointCfg:
    every: int = 0                # iterations between checkpoints (0 = off)
    every_seconds: float = 300.0  # seconds between checkpoints, by rank 0's clock (0 = off)
    keep: int = 3                 # complete checkpoints kept in the run directory (docs/checkpoints.md)


@dataclass
class CommCfg:
    """The comm layer (comm.py)."""
    timeout_s: float = 600.0      # a wait for peers with no progress this long ends the job (a node
                                  # died or its network is cut) instead of hanging; must exceed the
                                  # longest legitimate wait: a neighbour's iteration, a checkpoint


@dataclass
class PsCfg:
    """The parameter-server protocol of the async modes (asgd, dapsvrg, dapsgd; docs/async.md)."""
    staleness: str = "none"       # none | drop | scale | ssp (stale-synchronous gating)
    bound: int = 8                # staleness bound of drop / scale / ssp
    deterministic: bool = False   # round-robin service + seeded samplers: replayable iterates
    trace: bool = False           # keep the update trace (always on when deterministic)
    timeout_s: float = 600.0      # a wait with no progress this long is an error (never a hang)


@dataclass
class AsgdCfg:
    mode: str = "accumulate"      # accumulate (n_sync local steps, push the update) | gradient
    n_sync: int = 4               # local steps between pushes (accumulate mode)
    lr: float = 0.002             # 0.01 diverged with 3 workers on the default 34-layer network
    momentum: float = 0.9         # worker SGD momentum
    batch_size: int = 32          # per worker mini-batch
    updates_per_iter: int = 16    # server updates per loop iteration
    warm_start_steps: int = 0     # single-rank SGD steps on rank 0 before the first phase
    init_model: str = ""          # or start from a model.h5 of the same network (e.g. a backprop run's)


@dataclass
class DapCfg:
    lam1: float = 1e-3            # elastic net: lam1·|x|_1 + lam2/2·|x|^2 (bias not penalised)
    lam2: float = 1e-2            # the l2 weight lam2 of the elastic net
    eta: float = 0.0              # step size; 0 = eta_scale/L/(1 + tau), tau = workers - 1
    eta_scale: float = 0.1        # see eta
    batch_size: int = 8           # samples per worker gradient
    inner: int = 0                # server updates per epoch (= one loop iteration); 0 = n / batch_size
    threshold: float = 6.0        # regression data: label = target >= threshold (Wine: quality >= 6)
    sgd_decay: float = 1.0        # dapsgd: eta_s = eta / (1 + sgd_decay·s) at epoch s
    reference: bool = True        # compute P* (serial accelerated proximal gradient) for suboptimality


@dataclass
class MacCfg:
    """MAC / ParMAC (docs/mac.md); the defaults were chosen on Wine Quality and digits there."""
    variant: str = "al"           # al (augmented Lagrangian) | qp (quadratic penalty)
    mu0: float = 10.0             # first penalty μ (data are standardised, so it transfers)
    mu_factor: float = 1.05       # μ_{i+1} = mu_factor · μ_i
    mu_steps: int = 20            # μ values; the run converges when they are used up
    iters_per_mu: int = 1         # MAC alternations (Z-step + W-step) per μ value
    epochs: int = 1               # Gauss–Newton steps (ring epochs) of every submodel per W-step
    lm: float = 1.0               # initial Levenberg–Marquardt damping of each row's fit
    lm_min: float = 1.0           # its floor for hidden rows (it shrinks ×1/3 after a kept step,
                                  # grows ×10 after an undone one): a high floor keeps every hidden
                                  # row's step damped, which regularises (docs/mac.md)
    weight_decay: float = 0.0     # ridge of each hidden row's fit (per point; in E_Q times μ)
    output: str = "refit"         # refit (output layer fitted on the forward features at μ stage
                                  # ends only) | fit (also fitted to Z in every W-step, the paper's)
    refit_steps: int = 10         # Newton steps of a softmax output layer's refit (regression: exact)
    ridge: float = 1e-4           # ridge of the output layer's refit (per point, like the loss)
    z_steps: int = 3              # Z-step gradient steps per point (with backtracking)
    z_coords: str = "u"           # u (violations z_k − f_k(z_{k−1}): every layer moves at once) | z
    unit_groups: int = 0          # row groups per hidden layer (0 = enough for a submodel per shard)
    shards: int = 0               # data shards (0 = world size); serial with shards = P == ParMAC on P
    val_fraction: float = 0.1     # training points held out to validate the nested model (the same
                                  # rows as the Adam baseline's early stopping: data.validation_split)
    skip_worse: bool = False      # a μ stage that validates worse is undone (best weights, Z restarted)
    patience: int = 3             # stop after this many μ stages in a row that validate worse (0 = never)
    tol: float = 0.0              # stop when the constraint violation per point falls below


@dataclass
class TrglCfg:
    """Module-wise training with the kinetic penalty (docs/trgl.md)."""
    mode: str = "parallel"        # parallel | sequential | multilap | e2e (end-to-end backprop, 1 rank)
    modules: int = 0              # K modules; 0 = the world size (on P > 1 ranks K must be P)
    split: str = "compute"        # balance the modules by compute (MACs) or params
    penalty: str = "kinetic"      # kinetic | none (greedy module-wise training)
    penalise: str = "branch"      # branch (residual-branch output r) | displacement (out - shortcut(in))
    tau: float = 1.0              # penalty weight 1/(2 tau); larger = weaker
    tau_schedule: str = "constant"  # constant | varying (the first half of the modules use tau/2)
    uzawa: bool = False           # adaptive: weight 1/lambda_k, lambda_k += uzawa_eta * CE_k ...
    uzawa_eta: float = 1.0        # Uzawa step of lambda_k
    uzawa_every: int = 10         # ... every uzawa_every iterations (lambda_k starts at 2 tau_k)
    lr: float = 0.05              # SGD with momentum, one optimizer per module
    momentum: float = 0.9         # SGD momentum
    weight_decay: float = 2e-4    # SGD weight decay
    label_smoothing: float = 0.1  # of the cross-entropy of every head
    batch_size: int = 64          # mini-batch per step and module
    augment: bool = True          # random crop (zero padding crop_pad) and horizontal flip
    crop_pad: int = -1            # -1: image height // 8 (CIFAR 32 → 4, MNIST 28 → 3, digits 8 → 1)
    flip: bool = False            # true for natural images (CIFAR-10); digits are not mirror-symmetric
    aux_pool: int = 2             # auxiliary heads pool to aux_pool x aux_pool
    laps: int = 2                 # multilap: laps of the sequential schedule
    stage_iters: int = 0          # sequential/multilap: iterations of module 1 (0: train.iters / K)
    stage_growth: int = 0         # ... module k gets stage_iters + (k-1) * stage_growth
    val_fraction: float = 0.1     # held out of the training split for model selection
    keep_best: bool = True        # export the parameters with the best validation accuracy
    eval_max: int = 2048          # metrics: at most this many training samples are scored
    in_flight: int = 2            # pipeline: message slots per neighbour (batches in flight)


@dataclass
class RadmmConvCfg:
    """RADMM for general residual networks (convolutional ResNets; docs/radmm.md)."""
    general: bool = False         # run the FCResNet through the general (autograd) path too
    chunk: int = 0                # samples per chunk of a sweep (0 = all at once)
    aux_memory: str = "auto"      # auto | device | host: where per-sample U, V, Λ live
    max_backtracks: int = 40      # doublings of a step's τ before it is taken as it is
    inner_steps: int = 1          # proximal-gradient steps per W block and sweep
    # penalties for convolutional ResNets (the [radmm] ones are the FCResNet's, tuned on Wine
    # Quality); chosen on digits, docs/radmm.md. radmm.beta_b and radmm.splitting apply to both.
    gamma: float = 0.01           # penalty γ on U = W V (convolutional ResNets)
    rho: float = 0.01             # penalty ρ on V = R V + σ(U)
    beta: float = 1.5             # ADMM penalty β on the output constraint
    lam: float = 1e-4             # weight decay λ
    omega: float = 1e-3           # proximal weight ω


@dataclass
class Config:
    train: TrainCfg = field(default_factory=TrainCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    backprop: BackpropCfg = field(default_factory=BackpropCfg)
    radmm: RadmmCfg = field(default_factory=RadmmCfg)
    checkpoint: CheckpointCfg = field(default_factory=CheckpointCfg)
    comm: CommCfg = field(default_factory=CommCfg)
    ps: PsCfg = field(default_factory=PsCfg)
    asgd: AsgdCfg = field(default_factory=AsgdCfg)
    dap: DapCfg = field(default_factory=DapCfg)
    mac: MacCfg = field(default_factory=MacCfg)
    trgl: TrglCfg = field(default_factory=TrglCfg)
    radmmconv: RadmmConvCfg = field(default_factory=RadmmConvCfg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = cls()
        apply_table(cfg, d, source="config")
        return cfg


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value, typ, where: str):
    """Convert a TOML value or a --set string to the field's type."""
    if typ in ("bool", bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if typ in ("int", int):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value), 0)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if typ in ("float", float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def set_value(cfg: Config, dotted: str, value, source: str) -> None:
    parts = dotted.split(".")
    sections = {f.name: f for f in fields(cfg)}
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ConfigError(f"{source}: '{dotted}' is not of the form section.key (sections: {', '.join(sections)})")
    sec_name, key = parts
    if sec_name not in sections:
        raise ConfigError(f"{source}: unknown section '{sec_name}'{_suggest(sec_name, sections)}")
    section = getattr(cfg, sec_name)
    keys = {f.name: f for f in fields(section)}
    if key not in keys:
        raise ConfigError(f"{source}: unknown key '{sec_name}.{key}'"
                          f"{_suggest(key, keys).replace(chr(39), chr(39) + sec_name + '.', 1)}")
    setattr(section, key, _coerce(value, keys[key].type, f"{source}: {dotted}"))


def apply_table(cfg: Config, table: dict, source: str) -> None:
    for sec_name, sec in table.items():
        if not isinstance(sec, dict):
            raise ConfigError(f"{source}: '{sec_name}' must be a table [{sec_name}], "
                              f"not a value{_suggest(sec_name, [f.name for f in fields(cfg)])}")
        for key, value in sec.items():
            set_value(cfg, f"{sec_name}.{key}", value, source)


def load_toml(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def parse_set(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _choice(where, value, choices):
    if value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(choices)}, got {value!r}"
                          f"{_suggest(str(value), choices)}")


def _positive(where, value, strict=True):
    if (value <= 0) if strict else (value < 0):
        raise ConfigError(f"{where} must be {'> 0' if strict else '>= 0'}, got {value}")


def validate(cfg: Config, world_size: int = 1) -> None:
    """Check ranges and combinations; raise ConfigError with one line on the first problem."""
    t, m, d, b, r, c = cfg.train, cfg.model, cfg.data, cfg.backprop, cfg.radmm, cfg.checkpoint
    _choice("train.algo", t.algo, ALGOS)
    _positive("train.iters", t.iters)
    _positive("train.seed", t.seed, strict=False)
    _choice("train.device", t.device, ("auto", "cpu", "cuda"))
    _choice("train.dtype", t.dtype, ("float32", "float64"))
    _positive("train.log_every", t.log_every)
    _positive("train.progress_seconds", t.progress_seconds)
    _positive("train.world_size", t.world_size, strict=False)
    _positive("comm.timeout_s", cfg.comm.timeout_s)
    _positive("model.width", m.width)
    if m.depth < 1:
        raise ConfigError(f"model.depth must be >= 1 hidden layer, got {m.depth}")
    _choice("model.activation", m.activation, ("relu", "tanh", "gelu"))
    _positive("model.init_scale", m.init_scale)
    if not 0.0 < d.test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {d.test_fraction}")
    _positive("data.split_seed", d.split_seed, strict=False)
    _choice("data.task", d.task, ("auto", "regression", "classification"))
    _positive("data.n_samples", d.n_samples)
    _positive("data.n_features", d.n_features)
    if d.n_classes < 2:
        raise ConfigError(f"data.n_classes must be >= 2, got {d.n_classes}")
    _positive("data.noise", d.noise, strict=False)
    from radmm_hpc.data.loaders import check_name
    check_name(d.name)
    _choice("backprop.optimizer", b.optimizer, ("adam", "sgd"))
    _positive("backprop.lr", b.lr)
    _positive("backprop.momentum", b.momentum, strict=False)
    _positive("backprop.weight_decay", b.weight_decay, strict=False)
    _positive("backprop.batch_size", b.batch_size, strict=False)
    _choice("radmm.variant", r.variant, ("anchored", "proximal", "linearized"))
    _choice("radmm.splitting", r.splitting, ("three", "two"))
    _choice("radmm.schedule", r.schedule, SCHEDULES)
    for name in ("gamma", "rho", "beta", "omega", "beta_b"):
        _positive(f"radmm.{name}", getattr(r, name))
    for name in ("lam", "tol"):
        _positive(f"radmm.{name}", getattr(r, name), strict=False)
    _positive("radmm.regions", r.regions, strict=False)
    _positive("radmm.microbatches", r.microbatches, strict=False)
    _positive("radmm.trust", r.trust, strict=False)
    if r.grow < 1:
        raise ConfigError(f"radmm.grow must be >= 1, got {r.grow}")
    if not 0 < r.relax <= 1:
        raise ConfigError(f"radmm.relax must be in (0, 1], got {r.relax}")
    if not 0 <= r.val_fraction < 1:
        raise ConfigError(f"radmm.val_fraction must be in [0, 1), got {r.val_fraction}")
    schedule = radmm_schedule(r)
    if r.variant == "anchored":
        if schedule not in ("serial", "pipeline"):
            raise ConfigError(f"radmm.variant = anchored runs the serial or pipeline schedule, not {schedule}")
        if r.splitting != "three":
            raise ConfigError("radmm.variant = anchored is a three-splitting method (radmm.splitting = three)")
    elif schedule == "pipeline":
        raise ConfigError(f"radmm.schedule = pipeline is the anchored variant's; radmm.variant = {r.variant} "
                          f"runs serial, serial-redblack, two-colour or jacobi")
    _positive("checkpoint.every", c.every, strict=False)
    _positive("checkpoint.every_seconds", c.every_seconds, strict=False)
    _positive("checkpoint.keep", c.keep)
    _validate_conv_model(m, d)
    _validate_trgl(cfg, world_size)
    if t.algo == "radmm":
        if m.activation != "relu":
            raise ConfigError("RADMM's block updates are written for model.activation = relu")
        if not m.input_bias:
            raise ConfigError("RADMM needs model.input_bias = true (the bias row of layer 1)")
        regions = world_size
        if schedule in ("serial", "serial-redblack"):
            if world_size != 1:
                raise ConfigError(f"radmm.schedule = {schedule} runs on 1 rank, the job has {world_size}; "
                                  f"use {'pipeline' if r.variant == 'anchored' else 'two-colour or jacobi'}")
            regions = r.regions or 1
        if regions > m.depth:
            raise ConfigError(f"{regions} regions but model.depth = {m.depth} hidden layers: "
                              f"each region needs at least one layer (use at most {m.depth} ranks)")
    rc = cfg.radmmconv
    _positive("radmmconv.chunk", rc.chunk, strict=False)
    _choice("radmmconv.aux_memory", rc.aux_memory, ("auto", "device", "host"))
    _positive("radmmconv.max_backtracks", rc.max_backtracks)
    _positive("radmmconv.inner_steps", rc.inner_steps)
    for name in ("gamma", "rho", "beta", "omega"):
        _positive(f"radmmconv.{name}", getattr(rc, name))
    _positive("radmmconv.lam", rc.lam, strict=False)
    _validate_async(cfg, world_size)
    _validate_mac(cfg, world_size)


def _validate_async(cfg: Config, world_size: int) -> None:
    """The async modes (ps, asgd, dap sections)."""
    p, a, dp = cfg.ps, cfg.asgd, cfg.dap
    _choice("ps.staleness", p.staleness, ("none", "drop", "scale", "ssp"))
    _positive("ps.bound", p.bound, strict=False)
    _positive("ps.timeout_s", p.timeout_s)
    _choice("asgd.mode", a.mode, ("accumulate", "gradient"))
    for name in ("n_sync", "batch_size", "updates_per_iter", "lr"):
        _positive(f"asgd.{name}", getattr(a, name))
    _positive("asgd.momentum", a.momentum, strict=False)
    _positive("asgd.warm_start_steps", a.warm_start_steps, strict=False)
    for name in ("lam1", "eta", "inner", "sgd_decay"):
        _positive(f"dap.{name}", getattr(dp, name), strict=False)
    for name in ("lam2", "eta_scale", "batch_size"):
        _positive(f"dap.{name}", getattr(dp, name))
    if cfg.train.algo in ("asgd", "dapsvrg", "dapsgd") and world_size < 2:
        raise ConfigError(f"--algo {cfg.train.algo} needs at least 2 ranks (rank 0 is the parameter "
                          f"server, ranks 1.. are workers): mpirun -n 2 or more")


def _validate_mac(cfg: Config, world_size: int) -> None:
    a, m = cfg.mac, cfg.model
    _choice("mac.variant", a.variant, ("qp", "al"))
    _choice("mac.output", a.output, ("refit", "fit"))
    _choice("mac.z_coords", a.z_coords, ("u", "z"))
    for name in ("mu0", "lm", "lm_min"):
        _positive(f"mac.{name}", getattr(a, name))
    if a.mu_factor <= 1.0:
        raise ConfigError(f"mac.mu_factor must be > 1 (μ grows), got {a.mu_factor}")
    for name in ("mu_steps", "iters_per_mu", "epochs", "refit_steps"):
        _positive(f"mac.{name}", getattr(a, name))
    for name in ("ridge", "weight_decay", "z_steps", "unit_groups", "shards", "patience", "tol"):
        _positive(f"mac.{name}", getattr(a, name), strict=False)
    if not 0.0 <= a.val_fraction < 0.5:
        raise ConfigError(f"mac.val_fraction must be in [0, 0.5), got {a.val_fraction}")
    if a.unit_groups > m.width:
        raise ConfigError(f"mac.unit_groups = {a.unit_groups} but a hidden layer has only "
                          f"model.width = {m.width} units")
    if m.arch == "mlp" and cfg.train.algo not in ("mac", "backprop"):
        raise ConfigError(f"model.arch = mlp is trained by --algo mac or backprop, not {cfg.train.algo}")
    if cfg.train.algo == "mac" and world_size > 1 and a.shards not in (0, world_size):
        raise ConfigError(f"mac.shards = {a.shards} but the job has {world_size} ranks: ParMAC keeps "
                          f"one shard per rank (use 0, or shards = P only in a serial run)")


def _validate_conv_model(m, d) -> None:
    """Convolutional ResNet fields and image-data options (feat-trgl)."""
    from radmm_hpc.models.resnet import parse_arch
    if m.arch not in ("fcresnet", "mlp") and parse_arch(m.arch) is None:
        raise ConfigError(f"model.arch must be fcresnet, mlp, resnet<6n+2> (resnet20, resnet32, resnet56, "
                          f"resnet110, ...) or resnet<9n+2>b (bottleneck: resnet29b, resnet164b), "
                          f"got {m.arch!r}"
                          f"{_suggest(m.arch, ('fcresnet', 'mlp', 'resnet20', 'resnet32', 'resnet56', 'resnet110'))}")
    _choice("model.block", m.block, ("post", "pre"))
    _choice("model.shortcut", m.shortcut, ("A", "B"))
    _choice("model.norm", m.norm, ("batch", "none"))
    _positive("model.base_width", m.base_width)
    _positive("data.train_subset", d.train_subset, strict=False)


def _validate_trgl(cfg: Config, world_size: int) -> None:
    g, m = cfg.trgl, cfg.model
    _choice("trgl.mode", g.mode, ("parallel", "sequential", "multilap", "e2e"))
    _choice("trgl.split", g.split, ("compute", "params"))
    _choice("trgl.penalty", g.penalty, ("kinetic", "none"))
    _choice("trgl.penalise", g.penalise, ("branch", "displacement"))
    _choice("trgl.tau_schedule", g.tau_schedule, ("constant", "varying"))
    for name in ("tau", "lr", "batch_size", "uzawa_every", "laps", "aux_pool", "eval_max", "in_flight"):
        _positive(f"trgl.{name}", getattr(g, name))
    if g.crop_pad < -1:
        raise ConfigError(f"trgl.crop_pad must be >= 0 (or -1: image height // 8), got {g.crop_pad}")
    for name in ("modules", "momentum", "weight_decay", "stage_iters", "stage_growth", "uzawa_eta"):
        _positive(f"trgl.{name}", getattr(g, name), strict=False)
    if not 0.0 <= g.label_smoothing < 1.0:
        raise ConfigError(f"trgl.label_smoothing must be in [0, 1), got {g.label_smoothing}")
    if not 0.0 < g.val_fraction < 1.0:
        raise ConfigError(f"trgl.val_fraction must be in (0, 1), got {g.val_fraction}")
    if cfg.train.algo != "trgl":
        return
    from radmm_hpc.models.resnet import parse_arch
    parsed = parse_arch(m.arch)
    if parsed is None:
        raise ConfigError(f"--algo trgl trains a convolutional ResNet: set --model resnet20 (or another "
                          f"resnet<6n+2> / resnet<9n+2>b), got model.arch = {m.arch}")
    if g.mode == "e2e" and world_size > 1:
        raise ConfigError(f"trgl.mode = e2e runs on 1 rank, the job has {world_size} "
                          f"(use --algo backprop for data-parallel end-to-end training)")
    k = g.modules or world_size
    if world_size > 1 and k != world_size:
        raise ConfigError(f"trgl.modules = {g.modules} but the job has {world_size} ranks: "
                          f"rank k owns module k (set trgl.modules = 0 or {world_size})")
    blocks = 3 * parsed[1]
    if k > blocks:
        raise ConfigError(f"{k} modules but {m.arch} has {blocks} residual blocks: each module needs "
                          f"at least one (use at most {blocks} {'ranks' if world_size > 1 else 'modules'})")


def render_toml(d: dict, comments: dict | None = None) -> str:
    """Write a two-level dict of plain values as TOML (the resolved config.toml, --print-config),
    with `comments` ({"section.key": (lines above, comment beside)}) where given."""
    def fmt(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    comments = comments or {}
    out = []
    for sec, table in d.items():
        out.append(f"[{sec}]")
        for k, v in table.items():
            above, beside = comments.get(f"{sec}.{k}", ((), ""))
            out += [f"# {c}" for c in above]
            line = f"{k} = {fmt(v)}"
            out.append(f"{line:<30}  # {beside}" if beside else line)
        out.append("")
    return "\n".join(out)


def setting_comments() -> dict:
    """{"section.key": (comment lines above the field, comment beside it)} read from this file's
    source (the comments at each field of the sections above), for --print-config and
    config.toml. A comment continued on the lines below a field belongs to that field; one on
    its own line at the field's indentation belongs to the next field. Empty without the source."""
    import inspect as _inspect
    import io
    import tokenize
    out = {}
    for f in fields(Config):
        cls = f.default_factory
        try:
            src = _inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        names = {g.name for g in fields(cls)}
        field_col, current, above = None, None, []
        line_field = {}
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            row, col = tok.start
            if tok.type == tokenize.NAME and tok.string in names and row not in line_field and col > 0 \
                    and (field_col is None or col == field_col):
                field_col, current = col, f"{f.name}.{tok.string}"
                line_field[row] = current
                out[current] = (tuple(above), "")
                above = []
            elif tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                if row in line_field:
                    out[current] = (out[current][0], text)
                elif current and field_col is not None and col > field_col and out[current][1]:
                    out[current] = (out[current][0], f"{out[current][1]} {text}")
                else:
                    above.append(text)
    return out


# Per-method defaults: the settings whose useful value depends on the method, above all
# train.iters (one RADMM iteration sweeps every layer and sample, one backprop iteration is one
# mini-batch step). They replace the section defaults above for the chosen --algo ("ALGO:conv":
# also, for a convolutional ResNet), under the --config file and the flags. Chosen so that every
# method with its documented models and the bundled data gives a useful model in about a minute on
# 2 cores (docs/outputs.md, "Per-method defaults"; tests/test_method_defaults.py).
METHOD_DEFAULTS = {
    # RADMM and MAC: their iteration counts as before (their settings are tuned in docs/radmm.md,
    # docs/mac.md)
    "radmm": {"train.iters": 60},
    # RADMM (anchored, pipeline) on resnet20 and digits, 2 ranks: test accuracy 0.94 at 6
    # iterations, 0.98 from 12 on, 0.983 exported after 60 (an iteration costs ~3 s on 2 cores)
    "radmm:conv": {"train.iters": 30},
    "mac": {"train.iters": 60},
    # TRGL, resnet20 on digits, 3 ranks: test accuracy 0.96 at 120 iterations, 0.98 at 180 (0.72 at 60)
    "trgl": {"train.iters": 300},
    # A-SGD, 3 workers: wine-red's test R² peaks near 30 iterations and falls as the 34-layer
    # network overfits (0.37 at 30, 0.20 at 60); a resnet8 on digits is at 0.99 by 15
    "asgd": {"train.iters": 30},
    # DAP: one iteration is one epoch; eta_scale 0.1 left the objective 0.08 (DAP-SGD) and 0.006
    # (DAP-SVRG) above P* after 40 epochs on wine, 2 workers
    "dapsvrg": {"train.iters": 20, "dap.eta_scale": 0.5},
    "dapsgd": {"train.iters": 20, "dap.eta_scale": 1.0},
    # Adam, batch 256: one iteration is one mini-batch step. The default network on wine reaches
    # test R² 0.36 by 300; a resnet20 on digits 0.98 by 60 (an iteration costs far more)
    "backprop": {"train.iters": 300},
    "backprop:conv": {"train.iters": 100},
}


def method_defaults(algo: str, arch: str) -> dict:
    """{"section.key": value} that --algo `algo` with model.arch `arch` starts from."""
    out = dict(METHOD_DEFAULTS.get(algo, {}))
    if arch not in ("fcresnet", "mlp"):
        out.update(METHOD_DEFAULTS.get(f"{algo}:conv", {}))
    return out


def build_config(apply_user, world_size: int = 1) -> Config:
    """Defaults < per-method defaults < what `apply_user(cfg)` sets (the --config file, then the
    flags), validated. apply_user runs twice: once to learn the method and model, once for real."""
    probe = Config()
    apply_user(probe)
    cfg = Config()
    for key, value in method_defaults(probe.train.algo, probe.model.arch).items():
        set_value(cfg, key, value, f"defaults of --algo {probe.train.algo}")
    apply_user(cfg)
    validate(cfg, world_size)
    return cfg


def described_comments(cfg: Config) -> dict:
    """setting_comments() with the per-method defaults marked on the settings they set."""
    comments = setting_comments()
    values = cfg.to_dict()
    for key, value in method_defaults(cfg.train.algo, cfg.model.arch).items():
        sec, name = key.split(".")
        if values[sec][name] != value:   # set by the user
            continue
        above, beside = comments.get(key, ((), ""))
        note = f"[default for --algo {cfg.train.algo}]"
        comments[key] = (above, f"{beside} {note}".strip())
    return comments

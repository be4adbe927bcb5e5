"""Command line: `python -m radmm_hpc [train] …`, `eval`, `report`, `inspect`, `export`.

Flags override the TOML file (--config), which overrides the per-method defaults, which override
the section defaults. Every process parses its own command line before it joins MPI, so --help and
--version end on every rank under any launcher before any collective. Then the launcher is
checked (torchrun, srun without a usable PMI, a world smaller than the Slurm allocation), and rank
0 resolves and validates the configuration and broadcasts it. A bad input gives one line on rank 0
and the same non-zero exit on every rank. An unexpected error writes its traceback into the run
directory and aborts the whole MPI job so that no rank is left waiting. A closed stdout (`| head`)
is a normal exit.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import os
import sys
import tempfile
import traceback

from radmm_hpc import __version__
from radmm_hpc.config import (
    METHOD_SECTIONS,
    Config,
    apply_table,
    build_config,
    described_comments,
    load_toml,
    parse_set,
    render_toml,
    set_value,
)
from radmm_hpc.errors import EXIT_INTERNAL, CollectiveError, ConfigError, Preempted, UserError

COMMANDS = ("train", "eval", "report", "inspect", "export")
# flag -> config key
FLAG_KEYS = {"algo": "train.algo", "data": "data.name", "model": "model.arch", "iters": "train.iters",
             "seed": "train.seed", "device": "train.device", "dtype": "train.dtype",
             "run_dir": "train.run_dir", "checkpoint_every": "checkpoint.every",
             "train_subset": "data.train_subset"}
# the rank a launcher gives this process, read before MPI is joined (who prints --help)
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID", "RANK")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, through the same path as every other bad input
        raise ConfigError(f"{self.prog}: {message}")


class _TopParser(_Parser):
    """The top-level help also lists the training flags (training is the default command)."""
    train_parser = None

    def format_help(self):
        text = super().format_help()
        if self.train_parser is not None:
            text += ("\ntraining (the default command; `radmm-hpc --algo trgl ...` = "
                     "`radmm-hpc train --algo trgl ...`):\n\n")
            text += self.train_parser.format_help()
        return text


def build_parser() -> argparse.ArgumentParser:
    p = _TopParser(prog="radmm-hpc", description="Train residual networks across MPI ranks "
                   "(RADMM and baselines). With no subcommand: train.",
                   epilog="Every setting (with its meaning): radmm-hpc --print-config [--algo ALGO]; "
                   "change one with --set section.key=value. Docs: README.md and docs/.")
    p.add_argument("--version", action="version", version=f"radmm_hpc {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="{train,eval,report,inspect,export}")
    t = sub.add_parser("train", help="train a model (the default)",
                       epilog="Every setting (with its meaning): --print-config; change one with "
                       "--set section.key=value (e.g. --set backprop.lr=3e-4).")
    t.add_argument("--algo", help="training method: radmm (default), backprop, mac, trgl, asgd, dapsvrg, dapsgd")
    t.add_argument("--data", help="data set: wine, wine-red, wine-white, digits, csv:PATH, hdf5:PATH, "
                   "synthetic-regression, synthetic-classification, mnist:DIR, cifar10:DIR")
    t.add_argument("--model", help="model architecture: fcresnet, mlp, resnet20/32/56/110 (6n+2, basic blocks), "
                   "resnet29b/164b (9n+2, bottleneck)")
    t.add_argument("--train-subset", dest="train_subset", type=int, metavar="N",
                   help="train on N samples of the training split (data.train_subset; 0 = all)")
    t.add_argument("--config", metavar="FILE.toml", help="TOML file with [section] tables")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting (repeatable; --print-config lists them all)")
    t.add_argument("--run-dir", dest="run_dir", metavar="DIR",
                   help="output directory (default runs/<timestamp>, with -1, -2, ... when taken); "
                   "a directory that is not empty needs --resume or --overwrite")
    t.add_argument("--overwrite", action="store_true",
                   help="delete the run outputs already in --run-dir and start again")
    t.add_argument("--iters", type=int, help="iterations (train.iters; the default depends on --algo)")
    t.add_argument("--seed", type=int, help="initialisation and sampling seed (train.seed)")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), help="cuda: one GPU per rank (train.device)")
    t.add_argument("--dtype", choices=("float32", "float64"), help="train.dtype (float64: bit-identical resume)")
    t.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, metavar="N",
                   help="write a checkpoint every N iterations (checkpoint.every; 0 = off)")
    t.add_argument("--resume", metavar="auto|PATH",
                   help="resume from a checkpoint: 'auto' = the newest good one in the run directory "
                   "(none: start fresh), or a ckpt-NNNNNN directory (its run directory is the default "
                   "--run-dir)")
    t.add_argument("--print-config", action="store_true",
                   help="print the resolved config, every setting with its meaning, and exit")
    e = sub.add_parser("eval", help="score a trained model by a forward pass")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--data", help="another data set to score (default: the run's own), with the "
                   "model's stored preprocessing")
    r = sub.add_parser("report", help="draw PNG plots of runs' metrics (several runs overlaid)")
    r.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    r.add_argument("--out", metavar="PATH", help="a directory, or the .png of the metrics figure "
                   "(default: the first run directory)")
    i = sub.add_parser("inspect", help="describe a run directory, model or checkpoint")
    i.add_argument("path", metavar="PATH")
    x = sub.add_parser("export", help="write a run's trained network as a PyTorch state dict")
    x.add_argument("run_dir", metavar="RUN_DIR")
    x.add_argument("--format", choices=("pt", "safetensors"), default="pt",
                   help="pt: torch.save of the state dict; safetensors (pip install safetensors)")
    x.add_argument("--out", metavar="PATH", help="the file to write (default RUN_DIR/model.pt or .safetensors)")
    p.train_parser = t
    return p


def parse_args(argv):
    argv = list(argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv = ["train"] + argv
    args, extras = build_parser().parse_known_args(argv)
    if extras:
        raise ConfigError(f"unrecognized arguments: {' '.join(extras)}{_flag_hint(extras, args)}")
    return args


def _flag_hint(extras: list, args) -> str:
    """' (did you mean --set backprop.lr=0.1?)' for an unknown flag that names a setting."""
    cfg = Config().to_dict()
    keys = [f"{s}.{k}" for s, table in cfg.items() for k in table]
    algo = getattr(args, "algo", None) or next((s.split("=", 1)[1] for s in getattr(args, "set", [])
                                                 if s.startswith("train.algo=")), "radmm")
    for i, tok in enumerate(extras):
        if not tok.startswith("--"):
            continue
        name, eq, value = tok[2:].partition("=")
        if not eq and i + 1 < len(extras) and not extras[i + 1].startswith("-"):
            value = extras[i + 1]
        name = name.replace("-", "_")
        if "." in name:
            found = [k for k in keys if k == name] or difflib.get_close_matches(name, keys, n=1, cutoff=0.6)
        else:
            found = [k for k in keys if k.split(".")[1] == name]
            if not found:
                close = difflib.get_close_matches(name, sorted({k.split(".")[1] for k in keys}), n=1, cutoff=0.75)
                found = [k for k in keys if close and k.split(".")[1] == close[0]]
        if not found:
            continue
        mine = [k for k in found if k.split(".")[0] in METHOD_SECTIONS.get(algo, ())]
        best = (mine or found)[0]
        others = [k for k in found if k != best]
        also = f"; also {', '.join(others)}" if others else ""
        return f" (did you mean --set {best}={value or 'VALUE'}{also}?)"
    return ""


def resolve_config(args, world_size: int) -> Config:
    """Defaults < per-method defaults < --config file < flags, validated."""
    table = load_toml(args.config) if args.config else None

    def apply_user(cfg):
        if table is not None:
            apply_table(cfg, table, source=args.config)
        for flag, key in FLAG_KEYS.items():
            value = getattr(args, flag, None)
            if value is not None:
                set_value(cfg, key, value, f"--{flag.replace('_', '-')}")
        for item in args.set:
            key, value = parse_set(item)
            set_value(cfg, key, value, "--set")
    return build_config(apply_user, world_size)


def launcher_rank() -> int:
    """This process's rank as its launcher tells it (0 when started alone)."""
    for var in RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _report_user_error(rt, exc) -> int:
    if rt is None or rt.is_root:
        print(f"radmm-hpc: error: {exc}", file=sys.stderr, flush=True)
    return getattr(exc, "exit_code", 2)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    state = {"rt": None, "args": None}
    try:
        code = _main(argv, state)
        sys.stdout.flush()   # inside the try: a reader that went away is not an error
        return code
    except BrokenPipeError:   # `radmm-hpc inspect … | head`: the reader has all it wanted
        _silence_stdout()
        rt = state["rt"]
        if rt is not None and rt.size > 1:   # the other ranks would wait for this one
            _abort(rt, 0)
        return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _main(argv, state) -> int:
    # every process parses its own command line before it joins MPI: --help and --version end
    # here on every rank (printed by the launcher's rank 0), before any collective
    parse_error = None
    try:
        with contextlib.redirect_stdout(io.StringIO()) if launcher_rank() else contextlib.nullcontext():
            args = parse_args(argv)
    except SystemExit as exc:   # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except ConfigError as exc:   # the same on every rank: reported on rank 0 once MPI is up
        args, parse_error = None, exc
    state["args"] = args
    if args is not None:
        args.argv = list(argv)
    from radmm_hpc.runtime import init_world, launcher_problem
    rt = None
    try:
        rt = init_world()
        state["rt"] = rt
        problem = launcher_problem(rt)
        if problem:
            if launcher_rank() == 0:
                print(f"radmm-hpc: error: {problem}", file=sys.stderr, flush=True)
            return 2
        if parse_error is not None:
            raise CollectiveError(str(parse_error), parse_error.exit_code)
        if args.command == "train":
            return cmd_train(args, rt)
        if rt.size > 1:
            raise ConfigError(f"'{args.command}' runs on one process, not under mpirun with {rt.size} ranks")
        rt.run_dir = _given_run_dir(args)   # where a traceback goes
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "report":
            from radmm_hpc.report import report
            for path in report(args.run_dirs, args.out):
                print(path)
            return 0
        if args.command == "inspect":
            from radmm_hpc.inspect import inspect
            print(inspect(args.path))
            return 0
        if args.command == "export":
            from radmm_hpc.modelio import export
            print(export(args.run_dir, args.format, args.out))
            return 0
        return 0
    except BrokenPipeError:
        raise
    except CollectiveError as exc:   # every rank saw it: leave cleanly together
        return _report_user_error(rt, exc)
    except UserError as exc:
        code = exc.exit_code
        if rt is not None and rt.size > 1:   # only this rank saw it: end the whole job
            print(f"radmm-hpc: error (rank {rt.rank}): {exc}", file=sys.stderr, flush=True)
            _abort(rt, code)
        return _report_user_error(rt, exc)
    except Preempted as exc:   # every rank agreed on the signal and wrote its shard
        if rt.is_root:
            print(f"radmm-hpc: {exc}; exiting with status {exc.exit_code} (requeue)", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - a bug: keep the traceback in a file, end the job
        rank = rt.rank if rt else 0
        where = _write_traceback(_traceback_dir(rt, args), rank)
        print(f"radmm-hpc: internal error on rank {rank}: {type(exc).__name__}: {exc} ({where})",
              file=sys.stderr, flush=True)
        if rt is not None and rt.size > 1:
            _abort(rt, EXIT_INTERNAL)
        return EXIT_INTERNAL


def _given_run_dir(args) -> str:
    """The run directory named on the command line, when it exists ("" otherwise)."""
    asked = getattr(args, "run_dir", None) or (getattr(args, "run_dirs", None) or [None])[0]
    return asked if asked and os.path.isdir(asked) else ""


def _traceback_dir(rt, args) -> str:
    """The run directory once it is known (or the one named, when it exists), else the system's
    temporary directory: never the working directory."""
    return (getattr(rt, "run_dir", "") if rt is not None else "") or _given_run_dir(args) or tempfile.gettempdir()


def _write_traceback(directory: str, rank: int) -> str:
    path = os.path.abspath(os.path.join(directory, f"radmm-hpc-error-rank{rank}.log"))
    try:
        with open(path, "w") as fh:
            traceback.print_exc(file=fh)
        return f"traceback in {path}"
    except OSError:
        traceback.print_exc()
        return "traceback above"


def _abort(rt, code: int) -> None:
    """End every rank. The launcher forwards our stderr line asynchronously and Abort tears the
    job down at once, so give the line a moment to leave (seen lost in CI without the pause)."""
    import time
    time.sleep(0.5)
    rt.comm.abort(code)


def cmd_train(args, rt) -> int:
    from radmm_hpc.runtime import (
        agree,
        bind_device,
        check_world_size,
        on_root,
        pin_threads,
        set_determinism,
        startup_lines,
    )
    if args.resume not in (None, "auto") and not args.run_dir:
        # resuming a named checkpoint: keep writing into its run directory
        args.run_dir = os.path.dirname(os.path.normpath(args.resume.removesuffix("manifest.json")))
    cfg = Config.from_dict(on_root(rt, lambda: resolve_config(args, rt.size).to_dict()))
    if args.resume == "auto" and not cfg.train.run_dir:
        raise CollectiveError("--resume auto needs the run directory: --run-dir DIR (or train.run_dir)", 2)
    if args.resume and args.overwrite:
        raise CollectiveError("--resume and --overwrite exclude each other (continue the run, or start it again)", 2)
    if args.print_config:
        if rt.is_root:
            print(render_toml(cfg.to_dict(), described_comments(cfg)), end="")
        return 0
    rt.comm.timeout_s = cfg.comm.timeout_s
    agree(rt, check_world_size, rt, cfg.train.world_size)
    agree(rt, bind_device, rt, cfg.train.device)
    pin_threads(rt)
    set_determinism(rt, cfg.train.deterministic)
    for line in startup_lines(rt):
        print(line, file=sys.stderr, flush=True)
    rt.signals.install()
    import torch
    torch.manual_seed(cfg.train.seed)
    from radmm_hpc.loop import train
    train(cfg, rt, resume=args.resume, overwrite=args.overwrite, argv=args.argv)
    return 0


def cmd_eval(args) -> int:
    from radmm_hpc.modelio import load_model, load_preprocess
    from radmm_hpc.models import FC_ARCHS
    from radmm_hpc.scoring import score_weights
    cfg_path = os.path.join(args.run_dir, "config.toml")
    if not os.path.isfile(cfg_path):
        raise UserError(f"{args.run_dir}: no config.toml (is this a run directory?)")
    cfg = Config.from_dict(load_toml(cfg_path))
    if args.data:
        from radmm_hpc.data.loaders import check_name
        check_name(args.data)
        cfg.data.name = args.data
    model_path = os.path.join(args.run_dir, "model.h5")
    if cfg.model.arch not in FC_ARCHS:   # a convolutional ResNet: named parameters (docs/outputs.md)
        return _eval_named(cfg, model_path)
    weights, attrs = load_model(model_path)
    ds = _eval_data(cfg, attrs, load_preprocess(model_path))
    scores = score_weights(weights, ds, attrs["activation"], bool(attrs.get("input_bias", True)),
                           residual=attrs.get("arch") != "mlp")
    for k, v in scores.items():
        print(f"{k:<16} {v:.6g}")
    return 0


def _eval_data(cfg, attrs, preprocess):
    """The data set to score, standardised with the model's stored statistics (never refitted on
    the data being scored), checked against the model's input and output sizes."""
    from radmm_hpc.data import load_dataset
    ds = load_dataset(cfg.data, preprocess=preprocess)
    if ds.d_in != attrs["d_in"] or ds.d_out != attrs["d_out"]:
        raise UserError(f"data '{cfg.data.name}' has {ds.d_in} features / {ds.d_out} outputs, "
                        f"the model expects {attrs['d_in']} / {attrs['d_out']}")
    return ds


def _eval_named(cfg, model_path) -> int:
    import torch

    from radmm_hpc.modelio import load_named_params, load_preprocess
    from radmm_hpc.models import build_model
    from radmm_hpc.scoring import score_model
    arrays, attrs = load_named_params(model_path)
    ds = _eval_data(cfg, attrs, load_preprocess(model_path))
    model = build_model(cfg, ds, torch.Generator(), torch.float64)
    model.load_state_dict({k: torch.as_tensor(v, dtype=torch.float64) if v.dtype.kind == "f" else torch.as_tensor(v)
                           for k, v in arrays.items()})
    for k, v in score_model(model, ds).items():
        print(f"{k:<16} {v:.6g}")
    return 0

"""Command line: `python -m radmm_hpc [train] …`, `eval RUN_DIR`, `report RUN_DIR`, `inspect PATH`.

Flags override the TOML file (--config), which overrides the defaults. Rank 0 parses and
validates, then broadcasts; a bad input gives one line on rank 0 and the same non-zero exit on
every rank. An unexpected error writes its traceback to a file and aborts the whole MPI job so
that no rank is left waiting.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from radmm_hpc import __version__
from radmm_hpc.config import Config, apply_table, load_toml, parse_set, render_toml, set_value, validate
from radmm_hpc.errors import EXIT_INTERNAL, ConfigError, Preempted, UserError

COMMANDS = ("train", "eval", "report", "inspect")
# flag -> config key
FLAG_KEYS = {"algo": "train.algo", "data": "data.name", "model": "model.arch", "iters": "train.iters",
             "seed": "train.seed", "device": "train.device", "dtype": "train.dtype",
             "run_dir": "train.run_dir", "checkpoint_every": "checkpoint.every",
             "train_subset": "data.train_subset"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, through the same path as every other bad input
        raise ConfigError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="radmm-hpc", description="Train residual networks across MPI ranks "
                "(RADMM and baselines). With no subcommand: train.")
    p.add_argument("--version", action="version", version=f"radmm_hpc {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", help="train a model (the default)")
    t.add_argument("--algo", help="training method: radmm (default), backprop, mac, trgl, asgd, dapsvrg, dapsgd")
    t.add_argument("--data", help="data set: wine, wine-red, wine-white, digits, csv:PATH, hdf5:PATH, "
                   "synthetic-regression, synthetic-classification, mnist:DIR, cifar10:DIR")
    t.add_argument("--model", help="model architecture: fcresnet, mlp, resnet20/32/56/110 (6n+2, basic blocks), "
                   "resnet29b/164b (9n+2, bottleneck)")
    t.add_argument("--train-subset", dest="train_subset", type=int, metavar="N",
                   help="train on N samples of the training split (data.train_subset; 0 = all)")
    t.add_argument("--config", metavar="FILE.toml", help="TOML file with [section] tables")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting (repeatable)")
    t.add_argument("--run-dir", dest="run_dir", metavar="DIR", help="output directory (default runs/<timestamp>)")
    t.add_argument("--iters", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", choices=("auto", "cpu", "cuda"))
    t.add_argument("--dtype", choices=("float32", "float64"))
    t.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, metavar="N",
                   help="write a checkpoint every N iterations (checkpoint.every; 0 = off)")
    t.add_argument("--resume", metavar="auto|PATH",
                   help="resume from a checkpoint: 'auto' = the newest good one in the run directory "
                   "(none: start fresh), or a ckpt-NNNNNN directory (its run directory is the default "
                   "--run-dir)")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    e = sub.add_parser("eval", help="score a trained model by a forward pass")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--data", help="another data set to score (default: the run's own)")
    r = sub.add_parser("report", help="draw PNG plots of a run's metrics")
    r.add_argument("run_dir", metavar="RUN_DIR")
    i = sub.add_parser("inspect", help="describe a model or checkpoint file")
    i.add_argument("path", metavar="PATH")
    return p


def parse_args(argv):
    argv = list(argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv = ["train"] + argv
    return build_parser().parse_args(argv)


def resolve_config(args, world_size: int) -> Config:
    cfg = Config()
    if args.config:
        apply_table(cfg, load_toml(args.config), source=args.config)
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            set_value(cfg, key, value, f"--{flag.replace('_', '-')}")
    for item in args.set:
        key, value = parse_set(item)
        set_value(cfg, key, value, "--set")
    validate(cfg, world_size)
    return cfg


def _report_user_error(rt, exc) -> int:
    if rt is None or rt.is_root:
        print(f"radmm-hpc: error: {exc}", file=sys.stderr, flush=True)
    return getattr(exc, "exit_code", 2)


def main(argv=None) -> int:
    from radmm_hpc.runtime import CollectiveError, init_world, on_root
    argv = sys.argv[1:] if argv is None else argv
    rt = None
    try:
        rt = init_world()
        args = on_root(rt, parse_args, argv)
        if args.command == "train":
            return cmd_train(args, rt)
        if rt.size > 1:
            raise ConfigError(f"'{args.command}' runs on one process, not under mpirun with {rt.size} ranks")
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "report":
            from radmm_hpc.report import report
            for path in report(args.run_dir):
                print(path)
            return 0
        if args.command == "inspect":
            from radmm_hpc.inspect import inspect
            print(inspect(args.path))
            return 0
        return 0
    except SystemExit as exc:   # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
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
        path = os.path.abspath(f"radmm-hpc-error-rank{rank}.log")
        try:
            with open(path, "w") as fh:
                traceback.print_exc(file=fh)
            where = f"traceback in {path}"
        except OSError:
            traceback.print_exc()
            where = "traceback above"
        print(f"radmm-hpc: internal error on rank {rank}: {type(exc).__name__}: {exc} ({where})",
              file=sys.stderr, flush=True)
        if rt is not None and rt.size > 1:
            _abort(rt, EXIT_INTERNAL)
        return EXIT_INTERNAL


def _abort(rt, code: int) -> None:
    """End every rank. The launcher forwards our stderr line asynchronously and Abort tears the
    job down at once, so give the line a moment to leave (seen lost in CI without the pause)."""
    import time
    time.sleep(0.5)
    rt.comm.abort(code)


def cmd_train(args, rt) -> int:
    from radmm_hpc.runtime import agree, bind_device, check_world_size, on_root, pin_threads
    if args.resume not in (None, "auto") and not args.run_dir:
        # resuming a named checkpoint: keep writing into its run directory
        args.run_dir = os.path.dirname(os.path.normpath(args.resume.removesuffix("manifest.json")))
    cfg = Config.from_dict(on_root(rt, lambda: resolve_config(args, rt.size).to_dict()))
    if args.resume == "auto" and not cfg.train.run_dir:
        from radmm_hpc.runtime import CollectiveError
        raise CollectiveError("--resume auto needs the run directory: --run-dir DIR (or train.run_dir)", 2)
    if args.print_config:
        if rt.is_root:
            print(render_toml(cfg.to_dict()), end="")
        return 0
    rt.comm.timeout_s = cfg.comm.timeout_s
    agree(rt, check_world_size, rt, cfg.train.world_size)
    agree(rt, bind_device, rt, cfg.train.device)
    pin_threads(rt)
    rt.signals.install()
    import torch
    torch.manual_seed(cfg.train.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    from radmm_hpc.loop import train
    train(cfg, rt, resume=args.resume)
    return 0


def cmd_eval(args) -> int:
    from radmm_hpc.data import load_dataset
    from radmm_hpc.modelio import load_model
    from radmm_hpc.models import FC_ARCHS
    from radmm_hpc.scoring import score_weights
    cfg_path = os.path.join(args.run_dir, "config.toml")
    if not os.path.isfile(cfg_path):
        raise UserError(f"{args.run_dir}: no config.toml (is this a run directory?)")
    cfg = Config.from_dict(load_toml(cfg_path))
    if args.data:
        cfg.data.name = args.data
    if cfg.model.arch not in FC_ARCHS:   # a convolutional ResNet: named parameters (docs/outputs.md)
        return _eval_named(args, cfg)
    weights, attrs = load_model(os.path.join(args.run_dir, "model.h5"))
    ds = load_dataset(cfg.data)
    if ds.d_in != attrs["d_in"] or ds.d_out != attrs["d_out"]:
        raise UserError(f"data '{cfg.data.name}' has {ds.d_in} features / {ds.d_out} outputs, "
                        f"the model expects {attrs['d_in']} / {attrs['d_out']}")
    scores = score_weights(weights, ds, attrs["activation"], bool(attrs.get("input_bias", True)),
                           residual=attrs.get("arch") != "mlp")
    for k, v in scores.items():
        print(f"{k:<16} {v:.6g}")
    return 0


def _eval_named(args, cfg) -> int:
    import torch

    from radmm_hpc.data import load_dataset
    from radmm_hpc.modelio import load_named_params
    from radmm_hpc.models import build_model
    from radmm_hpc.scoring import score_model
    arrays, attrs = load_named_params(os.path.join(args.run_dir, "model.h5"))
    ds = load_dataset(cfg.data)
    if ds.d_in != attrs["d_in"] or ds.d_out != attrs["d_out"]:
        raise UserError(f"data '{cfg.data.name}' has {ds.d_in} features / {ds.d_out} outputs, "
                        f"the model expects {attrs['d_in']} / {attrs['d_out']}")
    model = build_model(cfg, ds, torch.Generator(), torch.float64)
    model.load_state_dict({k: torch.as_tensor(v, dtype=torch.float64) if v.dtype.kind == "f" else torch.as_tensor(v)
                           for k, v in arrays.items()})
    for k, v in score_model(model, ds).items():
        print(f"{k:<16} {v:.6g}")
    return 0

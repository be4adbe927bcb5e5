"""Test accuracy against wall-clock on digits: RADMM (conv, general path) vs TRGL vs end-to-end
backprop on the same ResNet, each through the real CLI on one process, one thread.

    OMP_NUM_THREADS=1 python -m bench.studies.digits_curves [--arch resnet8] [--subset 512] [--seconds 30]

Each method runs for about --seconds (its iteration count is set from a short timing probe) and
logs its forward-pass test accuracy at 15 points; the table shows the accuracy reached by 25%,
50% and 100% of the budget, and digits_curves.png in --out plots the curves (test accuracy vs
seconds of training, the wall_s of each metrics line).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from tests.support.launch import run_summary

OUT = os.path.join("runs", "bench", "digits_curves")


def methods(arch: str, width: int, subset: int) -> dict[str, list[str]]:
    net = ["--model", arch, "--data", "digits", "--set", f"model.base_width={width}",
           "--set", f"data.train_subset={subset}", "--set", "train.compare=false"]
    return {
        "RADMM (anchored, the default)": ["--algo", "radmm", "--set", "radmm.schedule=serial", *net],
        "RADMM (linearized sweep)": ["--algo", "radmm", "--set", "radmm.variant=linearized",
                                     "--set", "radmm.schedule=serial", *net],
        "TRGL (2 modules, parallel mode)": ["--algo", "trgl", "--set", "trgl.modules=2", *net],
        "end-to-end backprop (Adam, batch 256)": ["--algo", "backprop", *net],
    }


def curve(run_dir: str) -> list[tuple[float, float]]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [(r["wall_s"], r["test_accuracy"]) for r in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet8")
    ap.add_argument("--width", type=int, default=8, help="model.base_width")
    ap.add_argument("--subset", type=int, default=512, help="data.train_subset")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default=OUT, help="directory for the plot (docs/ keeps the one it shows)")
    args = ap.parse_args()
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cli in methods(args.arch, args.width, args.subset).items():
            probe = run_summary([*cli, "--iters", "10", "--set", "train.log_every=10"], 1,
                                os.path.join(tmp, f"probe{len(curves)}"))     # a run directory is never reused
            iters = max(15, int(args.seconds / max(probe["time_per_iter_s"], 1e-4)))
            iters -= iters % 15
            s = run_summary([*cli, "--iters", str(iters), "--set", f"train.log_every={iters // 15}"], 1,
                        os.path.join(tmp, f"m{len(curves)}"))
            curves[name] = (iters, s["wall_s"], curve(os.path.join(tmp, f"m{len(curves)}")))
    print(f"# {args.arch} (base width {args.width}), digits, {args.subset} training images, 359 test images; "
          f"one process, one thread; about {args.seconds:.0f} s each")
    print(f"{'method':<40}{'iters':>7}{'wall s':>8}{'acc @25%':>10}{'acc @50%':>10}{'acc @100%':>11}")
    for name, (iters, wall, pts) in curves.items():
        def at(frac):
            seen = [a for t, a in pts if t <= frac * wall + 1e-9]
            return f"{seen[-1]:.4f}" if seen else "-"
        print(f"{name:<40}{iters:>7}{wall:>8.1f}{at(0.25):>10}{at(0.5):>10}{at(1.0):>11}")
    if args.no_plot:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (_, _, pts) in curves.items():
        ax.plot([t for t, _ in pts], [a for _, a in pts], marker="o", ms=3, label=name)
    ax.set_xlabel("seconds of training (one process, one thread)")
    ax.set_ylabel("test accuracy (forward pass)")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"digits, {args.arch} (base width {args.width}), {args.subset} training images")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "digits_curves.png")
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()

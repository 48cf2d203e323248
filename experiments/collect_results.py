r"""Prints a markdown table of evaluation metrics from training workdirs.

  python experiments/collect_results.py --steps=250,500,1000,2000 \
      ema=$RUNS/mnist_vq_ema vq=$RUNS/mnist_vq

Each `label=workdir` reads `workdir/eval/metrics_<step>.json` (written by every
evaluation of the shared training loop) and, for the wall time, the modification
times of `config.json` and of each metrics file.

`--median=COLUMN` adds a table of COLUMN with a row per step, a column per run, and
the median over the runs (e.g. InfoGAN's categorical accuracy over seeds):

  python experiments/collect_results.py --steps=1000,2500,5000 --median=cat0_accuracy \
      --columns=cat0_accuracy,cat0_mi_lower_bound s0=/runs/seed0 s1=/runs/seed1 s2=/runs/seed2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

DEFAULT_COLUMNS = ("mse", "psnr", "perplexity", "codebook_usage")


def load(workdir: str, step: int) -> dict | None:
    path = os.path.join(workdir, "eval", f"metrics_{step:08d}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    start = os.path.getmtime(os.path.join(workdir, "config.json"))
    record["wall_minutes"] = (os.path.getmtime(path) - start) / 60
    return record


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.3f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="label=workdir")
    parser.add_argument("--steps", default="250,500,1000,2000")
    parser.add_argument("--columns", default=",".join(DEFAULT_COLUMNS + ("wall_minutes",)))
    parser.add_argument(
        "--median", default="", help="a column whose median over the runs is printed per step"
    )
    args = parser.parse_args()
    columns = args.columns.split(",")
    print("| run | step | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    steps = [int(s) for s in args.steps.split(",")]
    runs = [run.partition("=")[::2] for run in args.runs]
    for label, workdir in runs:
        for step in steps:
            record = load(workdir, step)
            if record is not None:
                print(f"| {label} | {step} | " + " | ".join(fmt(record.get(c, "")) for c in columns) + " |")
    if args.median:
        labels = [label for label, _ in runs]
        print(f"\n{args.median} per run and its median over the runs that reached the step:\n")
        print("| step | " + " | ".join(labels) + " | median |\n|---|" + "---|" * (len(labels) + 1))
        for step in steps:
            records = [load(w, step) for _, w in runs]
            values = [r[args.median] for r in records if r is not None]
            if values:
                cells = [fmt(r[args.median]) if r is not None else "" for r in records]
                print(f"| {step} | " + " | ".join(cells) + f" | {fmt(statistics.median(values))} |")


if __name__ == "__main__":
    main()

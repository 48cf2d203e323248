r"""Prints a markdown table of evaluation metrics from training workdirs.

  python benchmarks/collect_results.py --steps=250,500,1000,2000 \
      ema=/work/runs/mnist_vq_ema vq=/work/runs/mnist_vq

Each `label=workdir` reads `workdir/eval/metrics_<step>.json` (written by every
evaluation of the shared training loop) and, for the wall time, the modification
times of `config.json` and of each metrics file.
"""

from __future__ import annotations

import argparse
import json
import os

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
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"
  return str(value)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("runs", nargs="+", help="label=workdir")
  parser.add_argument("--steps", default="250,500,1000,2000")
  parser.add_argument("--columns", default=",".join(DEFAULT_COLUMNS + ("wall_minutes",)))
  args = parser.parse_args()
  columns = args.columns.split(",")
  print("| run | step | " + " | ".join(columns) + " |")
  print("|---|---|" + "---|" * len(columns))
  for run in args.runs:
    label, _, workdir = run.partition("=")
    for step in (int(s) for s in args.steps.split(",")):
      record = load(workdir, step)
      if record is not None:
        print(f"| {label} | {step} | " + " | ".join(fmt(record.get(c, "")) for c in columns) + " |")


if __name__ == "__main__":
  main()

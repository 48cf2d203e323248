r"""The categorical code's accuracy over training, per seed, from the runs' eval JSONs.

  python experiments/infogan_seeds_summary.py "$RUNS/issue14_seed*" [--metric=cat0_accuracy]

Reads WORKDIR/eval/metrics_<step>.json of every workdir matching the pattern(s) and prints a
markdown table: one row per evaluated step, one column per workdir, then the median and the
minimum over the workdirs that reached that step; and, where the evaluation has them, the
continuous codes' measures of each workdir's last step (vqlatent.infogan.measures).
"""

from __future__ import annotations

import glob
import json
import os
import re
import statistics

from absl import app, flags

_METRIC = flags.DEFINE_string("metric", "cat0_accuracy", "The eval metric to tabulate.")


def read_runs(patterns: list[str]) -> dict[str, dict[int, dict]]:
    runs = {}
    for pattern in patterns:
        for workdir in sorted(glob.glob(pattern)):
            evals = {}
            for path in glob.glob(os.path.join(workdir, "eval", "metrics_*.json")):
                step = int(re.search(r"metrics_(\d+)\.json$", path).group(1))
                with open(path) as f:
                    evals[step] = json.load(f)
            if evals:
                runs[os.path.basename(workdir.rstrip("/"))] = evals
    return runs


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("Give one or more workdir glob patterns.")
    runs = read_runs(argv[1:])
    metric = _METRIC.value
    names = list(runs)
    steps = sorted({s for evals in runs.values() for s in evals})
    print(f"| step | {' | '.join(names)} | median | min |")
    print("|---" * (len(names) + 3) + "|")
    for step in steps:
        values = [runs[n][step].get(metric) if step in runs[n] else None for n in names]
        present = [v for v in values if v is not None]
        cells = [f"{100 * v:.1f}" if v is not None else "" for v in values]
        summary = (
            [f"{100 * statistics.median(present):.1f}", f"{100 * min(present):.1f}"] if present else ["", ""]
        )
        print(f"| {step} | {' | '.join(cells + summary)} |")
    for name, evals in runs.items():
        last = evals[max(evals)]
        keys = sorted(
            k for k in last if re.match(r"cont\d+_(slant|width)_(correlation|slope)$|cont\d+_class_", k)
        )
        if keys:
            print(f"\n{name} step {max(evals)}: " + ", ".join(f"{k} {last[k]:.3f}" for k in keys))


if __name__ == "__main__":
    app.run(main)

"""The maintained benchmark suite runs end to end: `python benchmarks/run_all.py --quick` (CI's smoke test).

Every benchmark at its smallest size, one step, one round: the numbers mean nothing, but each script
must run and report. Without torch (CI installs `.[test]` only) the train rows time ours alone; without
dm-haiku the Haiku comparison reports that it was skipped.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from benchmarks import run_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_all_quick_runs_every_benchmark(tmp_path):
    cmd = [sys.executable, os.path.join("benchmarks", "run_all.py"), "--quick", f"--log_dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert "FAILED" not in out and "failed (exit" not in out
    for title in (
        "## Train step",
        "## Compile time",
        "## Upsampling layer",
        "## Strided convolutions",
        "## Quantizer hot paths",
        "## MNIST VQ-VAE train step per quantizer preset",
        "## Quantizer against DeepMind Haiku",
        "## PixelCNN sampling",
    ):
        assert title in out, title
    # One timed row per model of the quick suite, each with its parameter count and step time.
    for label, _ in run_all.QUICK_TRAIN_ROWS:
        row = [line for line in out.splitlines() if line.startswith(f"| {label} |")]
        assert len(row) == 1, label
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        assert int(cells[3].replace(",", "")) > 0 and float(cells[4]) > 0, row
    # The three compile runs, the warm one reading the cache the cold one wrote.
    assert all(
        f"| {run} |" in out
        for run in ("no persistent cache", "empty cache (cold)", "same cache again (warm)")
    )
    assert "| smoke |" in out  # Upsampling and strided convolutions at their smoke shape.
    assert "| argmin | 256 | 16 | two_level |" in out and "| ema_statistics | 256 | 16 | segment_sum |" in out
    assert "| vq_ema |" in out and "| fsq |" in out
    sampling = [line for line in out.splitlines() if line.startswith("| 4x4 |")]
    assert len(sampling) == 1 and sampling[0].rstrip().endswith("| True |")  # Cached codes == plain codes.
    if importlib.util.find_spec("haiku") is None:
        assert "(skipped: no dm-haiku" in out

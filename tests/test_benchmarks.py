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

import pytest

from benchmarks import run_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_quick(tmp_path, *flags: str) -> str:
    cmd = [
        sys.executable,
        os.path.join("benchmarks", "run_all.py"),
        "--quick",
        f"--log_dir={tmp_path}",
        *flags,
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert "FAILED" not in out and "failed (exit" not in out
    return out


# The train rows in two halves, so that pytest-xdist's workers share them.
_HALF = (len(run_all.QUICK_TRAIN_ROWS) + 1) // 2


@pytest.mark.parametrize(
    "rows", [range(_HALF), range(_HALF, len(run_all.QUICK_TRAIN_ROWS))], ids=["first", "second"]
)
def test_quick_train_rows(tmp_path, rows):
    out = _run_quick(tmp_path, "--only=train", f"--train_rows={','.join(map(str, rows))}")
    assert "## Train step" in out
    # One timed row per model, each with its parameter count and step time.
    for label, _ in (run_all.QUICK_TRAIN_ROWS[i] for i in rows):
        row = [line for line in out.splitlines() if line.startswith(f"| {label} |")]
        assert len(row) == 1, label
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        assert int(cells[3].replace(",", "")) > 0 and float(cells[4]) > 0, row


def test_quick_compile_time(tmp_path):
    out = _run_quick(tmp_path, "--only=compile")
    assert "## Compile time" in out
    # The three compile runs, the warm one reading the cache the cold one wrote.
    for run in ("no persistent cache", "empty cache (cold)", "same cache again (warm)"):
        assert f"| {run} |" in out, run


def test_quick_layers_and_quantizers(tmp_path):
    out = _run_quick(tmp_path, "--only=upsample,downsample,hotpaths,quantizer_step,haiku")
    for title in (
        "## Upsampling layer",
        "## Strided convolutions",
        "## Quantizer hot paths",
        "## MNIST VQ-VAE train step per quantizer preset",
        "## Quantizer against DeepMind Haiku",
    ):
        assert title in out, title
    assert "| smoke |" in out  # Upsampling and strided convolutions at their smoke shape.
    assert "| argmin | 256 | 16 | two_level |" in out and "| ema_statistics | 256 | 16 | segment_sum |" in out
    assert "| vq_ema |" in out and "| fsq |" in out
    if importlib.util.find_spec("haiku") is None:
        assert "(skipped: no dm-haiku" in out


def test_quick_sampling_and_loaded_models(tmp_path):
    out = _run_quick(tmp_path, "--only=sampling,models")
    assert "## PixelCNN sampling" in out and "## Loaded models" in out
    sampling = [line for line in out.splitlines() if line.startswith("| 4x4 |")]
    assert len(sampling) == 1 and sampling[0].rstrip().endswith("| True |")  # Cached codes == plain codes.

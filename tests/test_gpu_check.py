"""benchmarks/gpu_check.py end to end on the CPU, in its smoke mode (how CI checks the GPU script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_smoke_runs_every_stage_and_writes_its_report(tmp_path):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "gpu_check.py"),
        "--smoke",
        "--train_rows=0,3",  # An autoencoder and a prior,
        "--dtypes=bfloat16",  # in bfloat16 (the path the rest of the tests exercise least).
        f"--out_dir={tmp_path}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["backend"] == "cpu" and report["smoke"] and report["failed_stages"] == []
    assert report["tests"]["exit_code"] == 0
    rows = report["train"]
    assert [(r["config"], r["dtype"]) for r in rows] == [("vqvae", "bfloat16"), ("pixelcnn", "bfloat16")]
    for r in rows:
        assert r["jax_ms"] > 0 and r["compile_s"] > 0 and r["xla_memory_mib"] > 0
    assert "| smoke |" in report["hotpaths"]["upsample"]["table"]
    assert "| smoke |" in report["hotpaths"]["downsample"]["table"]
    quantizer_rows = report["hotpaths"]["quantizer"]["rows"]
    assert {r["section"] for r in quantizer_rows} >= {"argmin", "ema_statistics"}
    assert all(r["median_ms"] > 0 for r in quantizer_rows)
    sampling = report["sampling"]["rows"]
    assert sampling and all(r["codes_equal"] for r in sampling)  # Cached sampler == plain sampler.
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "## Train step" in markdown and "bfloat16" in markdown

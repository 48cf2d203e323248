"""benchmarks/gpu_check.py end to end on the CPU, in its smoke mode (how CI checks the GPU script)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import gpu_check  # pylint: disable=g-import-not-at-top

        yield gpu_check
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))


def test_gpu_check_smoke_runs_every_stage_and_writes_its_report(tmp_path):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "gpu_check.py"),
        "--smoke",
        "--train_rows=0,3",  # An autoencoder and a prior,
        "--dtypes=bfloat16",  # in bfloat16 (the path the rest of the tests exercise least).
        f"--out_dir={tmp_path}",
        *([] if HAVE_TORCH else ["--notorch"]),  # Without torch it would refuse to start.
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


def _fake_probe(missing):
    """A `probe(modules, torch_cuda)` under which the modules of `missing` do not import."""

    def probe(modules, torch_cuda):
        errors = {m: ([m.split(".")[0], f"No module named {m!r}"] if m in missing else None) for m in modules}
        if torch_cuda:
            errors["torch.cuda"] = (
                [None, "torch 2.13.0+cpu sees no CUDA device"] if "torch.cuda" in missing else None
            )
        return errors

    return probe


def test_missing_requirements_name_the_package_the_stage_and_the_way_out(gpu_check):
    problems = gpu_check.missing_requirements(
        ["tests", "train"], "cpu", True, _fake_probe({"pytest", "torch", "ml_collections.config_flags"})
    )
    assert len(problems) == 3
    pytest_line, config_line, torch_line = problems
    assert "tests import pytest" in pytest_line and "pip install pytest" in pytest_line
    assert (
        "train import ml_collections.config_flags" in config_line
        and "pip install ml-collections" in config_line
    )
    assert (
        "PyTorch reference (torch)" in torch_line
        and "torch==2.13.0" in torch_line
        and "--notorch" in torch_line
    )
    # --notorch drops the reference's needs; other stages never needed it.
    assert gpu_check.missing_requirements(["train"], "cpu", False, _fake_probe({"torch"})) == []
    assert gpu_check.missing_requirements(["hotpaths", "sampling"], "gpu", True, _fake_probe({"torch"})) == []
    # On a GPU, a torch without CUDA would time the reference on the CPU.
    (line,) = gpu_check.missing_requirements(["train"], "gpu", True, _fake_probe({"torch.cuda"}))
    assert "sees no CUDA device" in line and "--notorch" in line


def test_gpu_check_refuses_to_start_without_what_a_stage_needs(gpu_check, tmp_path, capsys):
    code = gpu_check.main(["--only=tests,sampling", f"--out_dir={tmp_path}"], probe=_fake_probe({"pytest"}))
    assert code == 2
    err = capsys.readouterr().err
    assert "not started" in err and "pip install pytest" in err
    assert not os.listdir(tmp_path)  # No stage ran, no report was written.


def test_the_import_probe_reports_a_module_that_fails_to_import(gpu_check, tmp_path):
    (tmp_path / "pytest.py").write_text("raise ImportError('a broken pytest', name='pytest')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), JAX_PLATFORMS="cpu")
    errors = gpu_check.probe_imports(["pytest", "vqlatent.quantizers"], torch_cuda=False, env=env)
    assert errors["vqlatent.quantizers"] is None
    assert errors["pytest"] == ["pytest", "ImportError: a broken pytest"]

r"""Everything worth measuring on an accelerator, in one run of a few minutes: tests, speed, memory.

  python benchmarks/gpu_check.py [--out_dir=DIR] [--smoke] [--only=tests,train,hotpaths,sampling]
      [--train_rows=0,1] [--dtypes=float32,bfloat16] [--steps=10 --rounds=3] [--notorch]

On whatever backend JAX finds (`jax.default_backend()`: gpu, tpu or cpu), in this order:

tests     the test files that exercise the backend's kernels and sharding (`TEST_FILES`: networks,
          quantizers, the sharded step) with `JAX_PLATFORMS` set to that backend, so nothing falls back
          to the CPU; pass/fail counts and the tail of pytest's output.
train     the jitted train step of every model config (`run_all.TRAIN_ROWS`, InfoGAN and VQGAN included) in float32 and in bfloat16, each beside the PyTorch reference of
          `benchmarks/reference/torch_models.py` on the same device (CUDA when JAX runs on a GPU; bf16 autocast for the
          bfloat16 rows); step time, ratio, compile time, init time, XLA's memory estimate and the
          allocator's peak (GPU/TPU).
hotpaths  each per-backend hot path beside its alternatives (`vqlatent.backend`): the upsampling
          layer (per-phase sub-pixel, 3x3 sub-pixel, `nn.ConvTranspose`), the strided convolutions' input
          gradient (XLA's against per phase, `downsample_bench.py`), and the quantizer's nearest-code
          search, EMA statistics and distance precision (`quantizer_hotpaths_bench.time_hot_paths`).
sampling  the PixelCNN samplers, cached against plain, at 32x32 and 64x64 code maps (the codes of the
          two are checked equal where the plain one runs).

Writes `DIR/gpu_check.json` (every number) and `DIR/gpu_check.md` (the tables, for
docs/lab/speed.md), and prints the markdown. `--smoke` runs every stage with the smallest shapes,
one step and one round: the numbers mean nothing, but it proves the script end to end on the CPU (this
is how the tests and CI check it). Each stage runs in its own processes; a failing stage is
recorded in the report and the others still run; the exit code is 1 if any stage failed.

Before any stage starts, one child process imports what the chosen stages need (`STAGE_IMPORTS`:
pytest for the tests; ml_collections, absl and the package for the benchmarks; `torch` for the
PyTorch reference of the train rows, and on a GPU a torch that sees CUDA) and the script stops
with exit code 2 and the list of what is missing and how to install it, instead of failing a stage
after minutes. `--notorch` times the train rows without the PyTorch reference (no torch needed);
`--only=` leaves out the stages whose needs cannot be met.

On the lent H200 (device tool; no network there; its image has jax, flax, optax, orbax, chex, torch,
but not ml_collections, grain, tensorflow-datasets, tensorboardX): carry their wheels (`.whl`, see the
device tool's README) and run
`pip install --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. python benchmarks/gpu_check.py --out_dir=$OUT`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import run_all  # benchmarks/ (the script's directory) is on sys.path.

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
STAGES = ("tests", "train", "hotpaths", "sampling")
TEST_FILES = (
    "tests/test_nets.py",
    "tests/test_quantizers.py",
    "tests/test_quantizer_variants.py",
    "tests/test_quantizer_hotpaths.py",
    "tests/test_scale.py",
)
# The smallest shapes of each train row (smoke mode): the row's model with tiny inputs.
SMOKE_TRAIN_FLAGS = {
    "vqvae": ["--batch_size=2"],
    "vqvae2": ["--batch_size=2", "--image_shape=16,16,3"],
    "pixelcnn": ["--batch_size=2", "--code_levels=bottom=4x4x16,top=2x2x16"],
    "infogan": ["--batch_size=4"],
    "vqgan": ["--batch_size=2"],
}

# What each stage's child processes import (benchmarks/ and the repository on their path): checked
# up front by `missing_requirements`. The PyTorch reference (`TORCH_IMPORTS`) is the train stage's
# unless --notorch.
STAGE_IMPORTS = {
    "tests": ("pytest", "vqlatent.trainers.loop", "vqlatent.nets.autoencoder", "vqlatent.quantizers"),
    "train": ("absl.app", "ml_collections.config_flags", "vqlatent.trainers.loop", "bench_inputs"),
    "hotpaths": (
        "absl.app",
        "flax.linen",
        "vqlatent.nets.layers",
        "vqlatent.nets.downsample",
        "quantizer_hotpaths_bench",
    ),
    "sampling": ("absl.app", "ml_collections.config_flags", "vqlatent.trainers.pixelcnn"),
}
TORCH_IMPORTS = ("torch", "benchmarks.reference.torch_models")
# Import name -> what to `pip install` (where the two differ, or a version matters).
PIP_NAMES = {
    "torch": "torch==2.13.0 (the version the reference was measured with; on a GPU, its CUDA build)",
    "ml_collections": "ml-collections",
    "absl": "absl-py",
    "tensorflow_datasets": "tensorflow-datasets",
    "orbax": "orbax-checkpoint",
    "sklearn": "scikit-learn",
    "PIL": "pillow",
}
# The probe's pseudo-module: whether torch sees a CUDA device (asked only when JAX runs on a GPU).
TORCH_CUDA = "torch.cuda"
_PROBE = """
import importlib, json, sys
sys.path[:0] = [{bench!r}, {root!r}]
errors = {{}}
for name in {modules!r}:
    try:
        importlib.import_module(name)
        errors[name] = None
    except Exception as e:  # noqa: BLE001 - report any failure to import, with its cause.
        errors[name] = [getattr(e, "name", None), f"{{type(e).__name__}}: {{e}}"]
if {cuda!r}:
    try:
        import torch
        errors[{torch_cuda!r}] = None if torch.cuda.is_available() else [None, f"torch {{torch.__version__}} sees no CUDA device"]
    except Exception as e:  # noqa: BLE001
        errors[{torch_cuda!r}] = [getattr(e, "name", None), f"{{type(e).__name__}}: {{e}}"]
print("PROBE" + json.dumps(errors))
"""


def probe_imports(modules, torch_cuda: bool, env) -> dict:
    """{module: None if it imports, else [missing module name or None, error]} in a child process
    with the stages' environment (`env`); with `torch_cuda`, also `TORCH_CUDA`."""
    code = _PROBE.format(
        bench=BENCH_DIR, root=REPO_ROOT, modules=list(modules), cuda=torch_cuda, torch_cuda=TORCH_CUDA
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=REPO_ROOT, env=env
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("PROBE")]
    if not lines:
        return {
            m: [None, f"the import check itself failed: {(out.stdout + out.stderr)[-500:]}"] for m in modules
        }
    return json.loads(lines[-1][len("PROBE") :])


def missing_requirements(stages, backend: str, use_torch: bool, probe) -> list[str]:
    """One line per unmet need of `stages` (empty if none), from `probe(modules, torch_cuda)`."""
    needs = {}  # module -> stages needing it, in order.
    for stage in stages:
        for module in STAGE_IMPORTS[stage] + (TORCH_IMPORTS if stage == "train" and use_torch else ()):
            needs.setdefault(module, []).append(stage)
    torch_cuda = use_torch and "train" in stages and backend == "gpu"
    errors = probe(list(needs), torch_cuda)
    # One line per missing package (torch and the reference both miss torch), else per module.
    unmet = {}  # key -> (stages, importing modules, error message, missing package or None)
    for module, stage_names in needs.items():
        error = errors.get(module)
        if error is None:
            continue
        missing, message = error
        key = missing.split(".")[0] if missing else module
        stages_of, modules_of, _, _ = unmet.setdefault(key, ([], [], message, missing))
        stages_of += [s for s in stage_names if s not in stages_of]
        modules_of.append(module)
    problems = []
    for key, (stage_names, modules, message, missing) in unmet.items():
        why = f"the stage{'s' if len(stage_names) > 1 else ''} {', '.join(stage_names)} import {', '.join(modules)}"
        fix = f"pip install {PIP_NAMES.get(key, key)}" if missing else "repair that install"
        if set(modules) <= set(TORCH_IMPORTS):
            why = f"the train stage times every row against the PyTorch reference ({', '.join(modules)})"
            fix += ", or pass --notorch to time ours alone"
        problems.append(f"{why}: {message} -> {fix}")
    if torch_cuda and errors.get(TORCH_CUDA) is not None:
        problems.append(
            f"JAX runs on the GPU, but {errors[TORCH_CUDA][1]}: the PyTorch reference would run on the CPU "
            f"-> install torch's CUDA build for this device, or pass --notorch to time ours alone"
        )
    return problems


def _backend() -> tuple[str, str]:
    """(jax.default_backend(), device kind) of this machine, asked in a child process so that this one
    starts no backend."""
    code = "import jax; d = jax.devices()[0]; print(jax.default_backend()); print(d.device_kind)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    backend, kind = out.stdout.strip().splitlines()[-2:]
    return backend, kind


def _platform_env(backend: str) -> dict[str, str]:
    """The environment of the child processes: JAX pinned to `backend`, the repository importable."""
    name = {"gpu": "cuda"}.get(backend, backend)
    path = REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    return dict(os.environ, JAX_PLATFORMS=name, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="3")


def run_tests(env, smoke: bool, log_dir: str) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES]
    if smoke:  # One fast test of each kind: enough to prove the stage runs.
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_nets.py",
            "-k",
            "auto_upsampling",
        ]
    code, out, wall = run_all._run(cmd, os.path.join(log_dir, "tests.log"), env)  # pylint: disable=protected-access
    summary = [
        line for line in out.splitlines() if " passed" in line or " failed" in line or " error" in line
    ]
    return {
        "command": " ".join(cmd[1:]),
        "exit_code": code,
        "summary": summary[-1:] or out.splitlines()[-1:],
        "seconds": wall,
    }


def run_train(
    env, rows, dtypes, smoke: bool, timing: list[str], log_dir: str, have_torch: bool
) -> list[dict]:
    results = []
    for i, (label, flags) in enumerate(rows):
        model = flags[0].split("configs/")[1].split(".py")[0]
        for dtype in dtypes:
            json_path = os.path.join(log_dir, f"train_{i}_{dtype}.json")
            extra = SMOKE_TRAIN_FLAGS.get(model, []) if smoke else []
            # The smoke shapes come after the row's flags: absl keeps a repeated flag's last value.
            cmd = [sys.executable, os.path.join("benchmarks", "train_step_bench.py"), *flags, *extra]
            cmd += [f"--config.dtype={dtype}", *timing, f"--json_out={json_path}"]
            if not have_torch:
                cmd.append("--notorch")
            print(f"[train] {label} {dtype}: {' '.join(cmd[1:])}", flush=True)
            code, out, _ = run_all._run(cmd, os.path.join(log_dir, f"train_{i}_{dtype}.log"), env)  # pylint: disable=protected-access
            row = {"label": label, "dtype": dtype, "command": " ".join(cmd[1:]), "exit_code": code}
            if code == 0:
                with open(json_path) as f:
                    row.update(json.load(f))
            else:
                row["error"] = out[-2000:]
            results.append(row)
    return results


def run_hotpaths(env, smoke: bool, log_dir: str) -> dict:
    out = {}
    flags = ["--conv_transpose"] + (["--repeats=1", "--rounds=1", "--smoke"] if smoke else [])
    cmd = [sys.executable, os.path.join("benchmarks", "upsample_bench.py"), *flags]
    code, text, _ = run_all._run(cmd, os.path.join(log_dir, "upsample.log"), env)  # pylint: disable=protected-access
    out["upsample"] = {"command": " ".join(cmd[1:]), "exit_code": code, "table": run_all._tables(text)}  # pylint: disable=protected-access
    if code != 0:
        out["upsample"]["error"] = text[-2000:]
    flags = ["--repeats=1", "--rounds=1", "--smoke"] if smoke else []
    cmd = [sys.executable, os.path.join("benchmarks", "downsample_bench.py"), *flags]
    code, text, _ = run_all._run(cmd, os.path.join(log_dir, "downsample.log"), env)  # pylint: disable=protected-access
    out["downsample"] = {"command": " ".join(cmd[1:]), "exit_code": code, "table": run_all._tables(text)}  # pylint: disable=protected-access
    if code != 0:
        out["downsample"]["error"] = text[-2000:]
    quantizer_code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import quantizer_hotpaths_bench as q; "
        f"rows = q.time_hot_paths({'shapes=((256, 16),), dim=8, repeats=1' if smoke else ''}); "
        "print('JSON' + json.dumps(rows)); print(q.format_table(rows))"
    )
    cmd = [sys.executable, "-c", quantizer_code]
    code, text, _ = run_all._run(cmd, os.path.join(log_dir, "quantizer_hotpaths.log"), env)  # pylint: disable=protected-access
    if code == 0:
        rows = json.loads([line for line in text.splitlines() if line.startswith("JSON")][-1][4:])
        out["quantizer"] = {"exit_code": 0, "rows": rows, "table": run_all._tables(text)}  # pylint: disable=protected-access
    else:
        out["quantizer"] = {"exit_code": code, "error": text[-2000:]}
    return out


def run_sampling(env, smoke: bool, log_dir: str) -> dict:
    flags = (
        ["--sizes=4", "--batch_size=2", "--repeats=1", "--num_codes=16"]
        if smoke
        else ["--sizes=32,64", "--batch_size=16", "--repeats=2", "--plain_max_positions=4096"]
    )
    json_path = os.path.join(log_dir, "sampling.json")
    cmd = [sys.executable, os.path.join("benchmarks", "sampling_bench.py"), *flags, f"--json_out={json_path}"]
    code, text, _ = run_all._run(cmd, os.path.join(log_dir, "sampling.log"), env)  # pylint: disable=protected-access
    result = {"command": " ".join(cmd[1:]), "exit_code": code, "table": run_all._tables(text)}  # pylint: disable=protected-access
    if code == 0:
        with open(json_path) as f:
            result["rows"] = json.load(f)
    else:
        result["error"] = text[-2000:]
    return result


def _fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def markdown(report: dict) -> str:
    lines = [
        f"# GPU check: {report['device_kind']} ({report['backend']}), {report['date']}\n",
        f"jax {report['jax']}, torch {report.get('torch', '–')}, {report['python']}; "
        f"{'SMOKE RUN (numbers not meaningful)' if report['smoke'] else 'full run'}; "
        f"command: `{report['command']}`\n",
    ]
    if "tests" in report:
        t = report["tests"]
        lines += [
            "## Tests\n",
            f"`{t['command']}` (JAX_PLATFORMS={report['backend']}): exit {t['exit_code']}, "
            f"{' '.join(t['summary'])} in {t['seconds']:.0f} s\n",
        ]
    if "train" in report:
        lines += [
            "## Train step, ours against PyTorch on the same device\n",
            "| model | dtype | batch | ours ms | PyTorch ms | ours/PyTorch | compile s | init s | XLA MiB "
            "| peak MiB ours / PyTorch |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["train"]:
            if r["exit_code"] != 0:
                lines.append(f"| {r['label']} | {r['dtype']} | failed (exit {r['exit_code']}) |")
                continue
            ratio = f"**{r['ratio']:.2f}x**" if "ratio" in r else "–"
            lines.append(
                f"| {r['label']} ({r['described']}) | {r['dtype']} | {r['batch_size']} | {_fmt(r['jax_ms'])} "
                f"| {_fmt(r.get('torch_ms'))} | {ratio} | {r['compile_s']:.1f} | {r['init_s']:.1f} "
                f"| {r['xla_memory_mib']:.0f} | {_fmt(r.get('peak_device_mib'), 0)} / "
                f"{_fmt(r.get('torch_peak_device_mib'), 0)} |"
            )
        lines.append("")
    if "hotpaths" in report:
        h = report["hotpaths"]
        lines += [
            "## Hot paths\n",
            "Upsampling layer, forward + backward:\n",
            h["upsample"].get("table", "–"),
            "",
            "Strided 4x4 / stride-2 convolutions, XLA's gradients against per-phase ones:\n",
            h.get("downsample", {}).get("table", "–"),
            "",
        ]
        q = h.get("quantizer", {})
        lines += [
            "Quantizer hot paths (`quantizer_hotpaths_bench.time_hot_paths`):\n",
            q.get("table") or f"failed: {q}",
        ]
        lines.append("")
    if "sampling" in report:
        s = report["sampling"]
        lines += [
            "## PixelCNN sampling, cached against plain\n",
            s.get("table") or f"failed: exit {s['exit_code']}",
            "",
        ]
    failed = report.get("failed_stages")
    if failed:
        lines.append(
            f"**Failed stages:** {', '.join(failed)} (see the JSON and the logs in {report['log_dir']})."
        )
    return "\n".join(lines)


def main(argv=None, probe=None) -> int:
    """Runs the check; `probe(modules, torch_cuda)` replaces `probe_imports` (tests)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out_dir", default="", help="where gpu_check.json / .md and the logs go (default: a temp dir)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="smallest shapes, one step: proves the script runs"
    )
    parser.add_argument("--only", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    parser.add_argument("--train_rows", default="", help="indices of the train rows (default: all)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes of the train rows")
    parser.add_argument("--steps", type=int, default=10, help="train: steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="train: alternating rounds")
    parser.add_argument(
        "--notorch", action="store_true", help="train: time ours alone, without the PyTorch reference"
    )
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    if sorted(set(only) - set(STAGES)):
        parser.error(f"--only: unknown stages {sorted(set(only) - set(STAGES))}; choose from {list(STAGES)}.")
    dtypes = [d for d in args.dtypes.split(",") if d]
    if sorted(set(dtypes) - {"float32", "bfloat16"}):
        parser.error(f"--dtypes={args.dtypes}: choose from float32, bfloat16.")

    backend, kind = _backend()
    env = _platform_env(backend)
    if probe is None:
        probe = functools.partial(probe_imports, env=env)
    problems = missing_requirements(only, backend, not args.notorch, probe)
    if problems:
        print(
            f"benchmarks/gpu_check.py: not started, the stages {','.join(only)} need what this Python "
            f"({sys.executable}) cannot import:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\n`pip install -e '.[test,bench]'` installs all of it; --only=... leaves stages out.",
            file=sys.stderr,
        )
        return 2
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="vqlatent_gpu_check_")
    log_dir = os.path.join(out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    rows = list(run_all.TRAIN_ROWS)
    if args.train_rows:
        rows = [rows[int(i)] for i in args.train_rows.split(",")]
    timing = (
        ["--steps=1", "--rounds=1"] if args.smoke else [f"--steps={args.steps}", f"--rounds={args.rounds}"]
    )

    import jax  # pylint: disable=g-import-not-at-top  (after the child asked for the backend)

    report = {
        "backend": backend,
        "device_kind": kind,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "jax": jax.__version__,
        "python": f"Python {platform.python_version()}",
        "smoke": args.smoke,
        "command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "log_dir": log_dir,
        "failed_stages": [],
    }
    report["torch"] = None
    if not args.notorch:  # Checked importable above.
        import torch  # pylint: disable=g-import-not-at-top

        report["torch"] = torch.__version__
    start = time.time()
    if "tests" in only:
        report["tests"] = run_tests(env, args.smoke, log_dir)
        if report["tests"]["exit_code"] != 0:
            report["failed_stages"].append("tests")
    if "train" in only:
        report["train"] = run_train(
            env, rows, dtypes, args.smoke, timing, log_dir, report["torch"] is not None
        )
        if any(r["exit_code"] != 0 for r in report["train"]):
            report["failed_stages"].append("train")
    if "hotpaths" in only:
        report["hotpaths"] = run_hotpaths(env, args.smoke, log_dir)
        if (
            report["hotpaths"]["upsample"]["exit_code"] != 0
            or report["hotpaths"]["downsample"]["exit_code"] != 0
            or report["hotpaths"]["quantizer"]["exit_code"] != 0
        ):
            report["failed_stages"].append("hotpaths")
    if "sampling" in only:
        report["sampling"] = run_sampling(env, args.smoke, log_dir)
        if report["sampling"]["exit_code"] != 0:
            report["failed_stages"].append("sampling")
    report["seconds"] = time.time() - start
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(report)
    with open(os.path.join(out_dir, "gpu_check.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 1 if report["failed_stages"] else 0


if __name__ == "__main__":
    sys.exit(main())

r"""Runs every maintained benchmark of the project and prints one markdown table each.

  python benchmarks/run_all.py [--quick] [--only=train,compile,...] [--steps=N --rounds=N] \
      [--train_rows=0,1] [--log_dir=DIR] [--torch_threads=N] [--haiku_python=VENV/bin/python]

Each benchmark runs in its own process (clean memory and compile numbers):

train           `train_step_bench.py`, ours against our PyTorch reference (`benchmarks/reference`),
                for the rows of `TRAIN_ROWS`: the MNIST VQ-VAE (batch 128), the ImageNet VQ-VAE-2 at
                64x64 (batch 16) and 256x256 (batch 4), the MNIST PixelCNN priors (top: 7x7 codes with
                attention; bottom: 14x14 codes conditioned on the top; batch 64, K=512), the MNIST
                InfoGAN (batch 128) and the MNIST VQGAN (batch 128, the discriminator on). Without torch installed, ours alone (`--notorch`). With
                `--quick`, `QUICK_TRAIN_ROWS`: the digits variant of each model.
compile         The time to compile the jitted init and train step of `COMPILE_ROW` (the 256x256
                VQ-VAE-2), three fresh processes in a row: no persistent compilation cache, an empty
                one (cold: compiles and writes), the same one again (warm: reads the programs back).
upsample        `upsample_bench.py`: one upsampling layer as a 3x3 sub-pixel convolution against four
                per-phase 2x2 convolutions (the CPU's `model.upsample='auto'`).
downsample      `downsample_bench.py`: the strided convolutions' gradients, XLA's against per phase
                (the CPU's `model.downsample='auto'`).
hotpaths        `quantizer_hotpaths_bench.py`: the quantizer's nearest-code search, EMA statistics and
                distance precision in every form (the `'auto'` choices of `vqlatent.backend`).
quantizer_step  `quantizer_step_bench.py`: the MNIST VQ-VAE train step with each quantizer preset.
haiku           `quantizer_bench.py` against DeepMind Haiku (agreement and speed), run by
                `--haiku_python` (default: this Python); skipped, with a message, where Haiku is not
                installed (`bash benchmarks/haiku_env.sh VENV` makes a venv with it).
sampling        `sampling_bench.py`: PixelCNN sampling, cached against plain.
models          `model_bench.py`: a shipped class -> pixels chain loaded with `vqlatent.load`: images/s of
                encode, decode, reconstruct and sample beside the jitted eval step.

`--quick` runs every one at its smallest size, one step and one round: a smoke test that the suite
runs (tests/test_benchmarks.py runs it in CI); its numbers mean nothing. The exit code is 1 if any
benchmark failed. The load average before and after each benchmark is printed with it, because
timings on a shared machine are only comparable side by side; docs/results.md and docs/lab/speed.md
hold the measured tables and how they were taken.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)

# (label, flags of train_step_bench.py). Configs are relative to the repository root.
TRAIN_ROWS = (
    ("VQ-VAE, MNIST 28x28", ["--config=configs/vqvae.py:mnist", "--batch_size=128"]),
    (
        "VQ-VAE-2, 64x64",
        ["--config=configs/vqvae2.py:imagenet256", "--image_shape=64,64,3", "--batch_size=16"],
    ),
    ("VQ-VAE-2, 256x256", ["--config=configs/vqvae2.py:imagenet256", "--batch_size=4"]),
    (
        "PixelCNN top prior, MNIST 7x7 codes",
        ["--config=configs/pixelcnn.py:mnist,level=top", "--codes_config=configs/vqvae2.py:mnist"],
    ),
    (
        "PixelCNN bottom prior, MNIST 14x14 codes",
        ["--config=configs/pixelcnn.py:mnist,level=bottom", "--codes_config=configs/vqvae2.py:mnist"],
    ),
    ("InfoGAN, MNIST 28x28", ["--config=configs/infogan.py:mnist", "--batch_size=128"]),
    ("VQGAN, MNIST 28x28", ["--config=configs/vqgan.py:mnist", "--batch_size=128"]),
)
# --quick: the digits variant of each model (8x8 images, 2x2 / 4x4 codes), batch 2 (InfoGAN: 4).
QUICK_TRAIN_ROWS = (
    ("VQ-VAE, digits 8x8", ["--config=configs/vqvae.py", "--batch_size=2"]),
    ("VQ-VAE-2, digits 8x8", ["--config=configs/vqvae2.py", "--batch_size=2"]),
    (
        "PixelCNN top prior, digits 2x2 codes",
        [
            "--config=configs/pixelcnn.py:digits,level=top",
            "--codes_config=configs/vqvae2.py",
            "--batch_size=2",
        ],
    ),
    (
        "PixelCNN bottom prior, digits 4x4 codes",
        [
            "--config=configs/pixelcnn.py:digits,level=bottom",
            "--codes_config=configs/vqvae2.py",
            "--batch_size=2",
        ],
    ),
    ("InfoGAN, digits 8x8", ["--config=configs/infogan.py", "--batch_size=4"]),
    ("VQGAN, digits 8x8", ["--config=configs/vqgan.py", "--batch_size=2"]),
)
# The compile-time row (the model of the goal: <= 10 s on a 2-core CPU), and its --quick stand-in.
COMPILE_ROW = ("VQ-VAE-2, 256x256, batch 4", ["--config=configs/vqvae2.py:imagenet256", "--batch_size=4"])
QUICK_COMPILE_ROW = ("VQ-VAE-2, digits 8x8, batch 2", ["--config=configs/vqvae2.py", "--batch_size=2"])
# --quick times the quantizer hot paths at one tiny shape (N vectors, K codes, D dims).
QUICK_HOTPATHS = "shapes=((256, 16),), dim=8, repeats=1"
BENCHMARKS = (
    "train",
    "compile",
    "upsample",
    "downsample",
    "hotpaths",
    "quantizer_step",
    "haiku",
    "sampling",
    "models",
)


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _script(name: str) -> str:
    return os.path.join("benchmarks", name)


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _run(cmd: list[str], log_path: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Runs `cmd` in the repository root; returns (exit code, stdout+stderr, wall seconds); logs it."""
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    wall = time.perf_counter() - start
    with open(log_path, "w") as f:
        f.write(" ".join(cmd) + "\n\n" + proc.stdout)
    return proc.returncode, proc.stdout, wall


def _tables(text: str) -> str:
    """The markdown table lines of a benchmark's output."""
    return "\n".join(line for line in text.splitlines() if line.startswith("|"))


def _fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _failed(name: str, code: int, out: str, log_dir: str, failures: list[str]) -> str:
    print(out[-3000:], file=sys.stderr)
    failures.append(name)
    return f"failed (exit {code}, see {log_dir}/{name}.log)"


def train_table(
    rows,
    quick: bool,
    log_dir: str,
    torch_threads: int | None,
    failures: list[str],
    timing: list[str] | None = None,
) -> str:
    header = (
        "| model | input | batch | params | ours ms/step | PyTorch ms/step | ours/PyTorch (speed) "
        "| compile s | init s | XLA MiB | load before/after |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    timing = ["--steps=1", "--rounds=1"] if quick else (timing or [])
    have_torch = _have("torch")
    if not have_torch:
        lines.insert(0, "(torch is not installed: ours alone; `pip install -e '.[bench]'` adds PyTorch.)\n")
    for i, (label, flags) in enumerate(rows):
        json_path = os.path.join(log_dir, f"train_{i}.json")
        cmd = [sys.executable, _script("train_step_bench.py"), *flags, *timing, f"--json_out={json_path}"]
        cmd += [f"--torch_threads={torch_threads}"] if torch_threads else []
        cmd += [] if have_torch else ["--notorch"]
        print(f"[train] {label}: {' '.join(cmd[1:])}", flush=True)
        before = _load()
        code, out, _ = _run(cmd, os.path.join(log_dir, f"train_{i}.log"))
        load = f"{before} / {_load()}"
        if code != 0:
            lines.append(f"| {label} | {_failed(f'train_{i}', code, out, log_dir, failures)} |")
            continue
        with open(json_path) as f:
            r = json.load(f)
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "–"
        lines.append(
            f"| {label} | {r['described']} | {r['batch_size']} | {r['params']:,} | {_fmt(r['jax_ms'])} "
            f"| {_fmt(r.get('torch_ms'))} | {ratio} | {r['compile_s']:.1f} | {r['init_s']:.1f} "
            f"| {r['xla_memory_mib']:.0f} | {load} |"
        )
    return "\n".join(lines)


def compile_table(quick: bool, log_dir: str, failures: list[str]) -> str:
    label, flags = QUICK_COMPILE_ROW if quick else COMPILE_ROW
    cache_dir = os.path.join(log_dir, "compilation_cache")
    runs = (
        ("no persistent cache", []),
        ("empty cache (cold)", [f"--compilation_cache_dir={cache_dir}"]),
        ("same cache again (warm)", [f"--compilation_cache_dir={cache_dir}"]),
    )
    lines = [
        f"{label}; each row a fresh process, in this order.\n",
        "| run | init s (compile + run) | train step compile s (lower + XLA) | process wall s | load before/after |",
        "|---|---|---|---|---|",
    ]
    for i, (name, extra) in enumerate(runs):
        json_path = os.path.join(log_dir, f"compile_{i}.json")
        cmd = [sys.executable, _script("train_step_bench.py"), *flags, *extra, "--notorch"]
        cmd += ["--steps=1", "--rounds=1", f"--json_out={json_path}"]
        print(f"[compile] {name}: {' '.join(cmd[1:])}", flush=True)
        before = _load()
        code, out, wall = _run(cmd, os.path.join(log_dir, f"compile_{i}.log"))
        if code != 0:
            lines.append(f"| {name} | {_failed(f'compile_{i}', code, out, log_dir, failures)} |")
            continue
        with open(json_path) as f:
            r = json.load(f)
        lines.append(
            f"| {name} | {r['init_s']:.1f} | {r['compile_s']:.1f} | {wall:.1f} | {before} / {_load()} |"
        )
    return "\n".join(lines)


def _script_table(
    name: str, cmd: list[str], log_dir: str, failures: list[str], env: dict | None = None
) -> str:
    """Runs one benchmark script; its markdown tables (else its last lines) and the load around it."""
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    before = _load()
    code, out, _ = _run(cmd, os.path.join(log_dir, f"{name}.log"), env)
    if code != 0:
        return _failed(name, code, out, log_dir, failures)
    text = _tables(out) or "\n".join(out.strip().splitlines()[-3:])
    return text + f"\n\nLoad average before / after: {before} / {_load()}."


def upsample_table(quick: bool, log_dir: str, failures: list[str]) -> str:
    flags = ["--smoke", "--repeats=1", "--rounds=1"] if quick else []
    return _script_table(
        "upsample", [sys.executable, _script("upsample_bench.py"), *flags], log_dir, failures
    )


def downsample_table(quick: bool, log_dir: str, failures: list[str]) -> str:
    flags = ["--smoke", "--repeats=1", "--rounds=1"] if quick else []
    return _script_table(
        "downsample", [sys.executable, _script("downsample_bench.py"), *flags], log_dir, failures
    )


def models_table(quick: bool, log_dir: str, failures: list[str]) -> str:
    """Loaded models (`vqlatent.load`): encode / decode / sample beside the jitted eval step."""
    from vqlatent.models import pretrained  # pylint: disable=g-import-not-at-top

    full = "mnist_vqvae2_chain" if "mnist_vqvae2_chain" in pretrained.names() else "digits_vqvae2_chain"
    model = f"pretrained:{'digits_vqvae2_chain' if quick else full}"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.model_bench",
        f"--model={model}",
        *(["--quick"] if quick else []),
    ]
    return _script_table("models", cmd, log_dir, failures)


def hotpaths_table(quick: bool, log_dir: str, failures: list[str]) -> str:
    cmd = [sys.executable, _script("quantizer_hotpaths_bench.py")]
    if quick:  # The script's own --quick still times N=2048, K=512: one tiny shape instead.
        code = "from benchmarks import quantizer_hotpaths_bench as q; "
        code += f"print(q.format_table(q.time_hot_paths({QUICK_HOTPATHS})))"
        cmd = [sys.executable, "-c", code]
    return _script_table("hotpaths", cmd, log_dir, failures)


def quantizer_step_table(quick: bool, log_dir: str, failures: list[str]) -> str:
    flags = ["--presets=vq_ema,fsq", "--extra=", "--batch_size=2", "--steps=1", "--rounds=1"] if quick else []
    return _script_table(
        "quantizer_step", [sys.executable, _script("quantizer_step_bench.py"), *flags], log_dir, failures
    )


def haiku_table(quick: bool, log_dir: str, haiku_python: str, failures: list[str]) -> str:
    python = haiku_python or sys.executable
    if python == sys.executable:
        found = _have("haiku")
    else:
        found = (
            os.path.exists(python)
            and subprocess.run([python, "-c", "import haiku"], check=False).returncode == 0
        )
    if not found:
        return (
            f"(skipped: no dm-haiku for {python}; create a venv with it by "
            f"`bash benchmarks/haiku_env.sh VENV` and pass --haiku_python=VENV/bin/python)"
        )
    flags = ["--mode=agreement"] if quick else ["--mode=all", "--repeats=5"]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return _script_table("haiku", [python, _script("quantizer_bench.py"), *flags], log_dir, failures, env)


def sampling_table(
    quick: bool, log_dir: str, failures: list[str], extra_flags: list[str] | None = None
) -> str:
    flags = ["--sizes=4", "--batch_size=2", "--repeats=1", "--num_codes=16"] if quick else []
    cmd = [sys.executable, _script("sampling_bench.py"), *flags, *(extra_flags or [])]
    return _script_table("sampling", cmd, log_dir, failures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smallest sizes, one step (smoke test)")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}"
    )
    parser.add_argument(
        "--train_rows", default="", help="comma-separated indices of TRAIN_ROWS (default: all)"
    )
    parser.add_argument(
        "--log_dir", default="", help="where each benchmark's full output goes (default: a temp dir)"
    )
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=None,
        help="torch.set_num_threads of the PyTorch reference (default: PyTorch's)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="train: steps per timed round (train_step_bench's default)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="train: alternating rounds (train_step_bench's default)"
    )
    parser.add_argument(
        "--sampling_flags", default="", help="extra flags of sampling_bench.py, space-separated"
    )
    parser.add_argument(
        "--haiku_python",
        default="",
        help="python of a venv with dm-haiku (benchmarks/haiku_env.sh; default: this Python)",
    )
    args = parser.parse_args(argv)
    only = [b for b in args.only.split(",") if b]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}.")
    rows = QUICK_TRAIN_ROWS if args.quick else TRAIN_ROWS
    if args.train_rows:
        indices = [int(i) for i in args.train_rows.split(",")]
        if any(not 0 <= i < len(rows) for i in indices):
            parser.error(f"--train_rows={args.train_rows}: indices must be in [0, {len(rows)}).")
        rows = [rows[i] for i in indices]
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="vqlatent_bench_")
    os.makedirs(log_dir, exist_ok=True)
    print(
        f"# Benchmarks{' (quick: not meaningful numbers)' if args.quick else ''}\n\n"
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {_load()}; logs in {log_dir}\n",
        flush=True,
    )
    if os.getloadavg()[0] > 1.0 and not args.quick:
        print(
            "WARNING: the machine is not quiet (load average above 1). Timings are then only rough, and "
            "PyTorch's OpenMP threads slow down far more than XLA's (measured under load 3: the 64x64 "
            "VQ-VAE-2 step took 4.2 s with PyTorch's 2 default threads, 0.31 s with --torch_threads=1), "
            "so the ours/PyTorch ratios are not meaningful. Pause other jobs, or compare with "
            "--torch_threads=1.\n",
            flush=True,
        )
    failures: list[str] = []
    quick = args.quick
    timing = ([f"--steps={args.steps}"] if args.steps else []) + (
        [f"--rounds={args.rounds}"] if args.rounds else []
    )
    runners = {
        "train": (
            "Train step, ours against the PyTorch reference",
            lambda: train_table(rows, quick, log_dir, args.torch_threads, failures, timing),
        ),
        "compile": ("Compile time", lambda: compile_table(quick, log_dir, failures)),
        "upsample": (
            "Upsampling layer (4x4, stride 2), forward + backward",
            lambda: upsample_table(quick, log_dir, failures),
        ),
        "downsample": (
            "Strided convolutions (4x4, stride 2): XLA's gradients against per phase",
            lambda: downsample_table(quick, log_dir, failures),
        ),
        "hotpaths": ("Quantizer hot paths, every form", lambda: hotpaths_table(quick, log_dir, failures)),
        "quantizer_step": (
            "MNIST VQ-VAE train step per quantizer preset",
            lambda: quantizer_step_table(quick, log_dir, failures),
        ),
        "haiku": (
            "Quantizer against DeepMind Haiku",
            lambda: haiku_table(quick, log_dir, args.haiku_python, failures),
        ),
        "sampling": (
            "PixelCNN sampling, cached against plain",
            lambda: sampling_table(quick, log_dir, failures, args.sampling_flags.split()),
        ),
        "models": (
            "Loaded models: encode, decode, sample beside the eval step",
            lambda: models_table(quick, log_dir, failures),
        ),
    }
    for name in BENCHMARKS:
        if name in only:
            title, run = runners[name]
            print(f"\n## {title}\n\n{run()}", flush=True)
    if failures:
        print(f"\nFAILED: {', '.join(failures)} (logs in {log_dir})", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

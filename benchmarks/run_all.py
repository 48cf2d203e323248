r"""Runs every speed benchmark of the project and prints one markdown table each.

  python benchmarks/run_all.py [--quick] [--only=train,compile,quantizer,sampling] [--steps=N --rounds=N] \
      [--train_rows=0,1] [--log_dir=DIR] [--torch_threads=N] [--haiku_python=/work/venv_bench/bin/python]

Each benchmark runs in its own process (clean memory and compile numbers):

train      `train_step_bench.py`, ours against our PyTorch reference, for the
           rows of `TRAIN_ROWS`: the MNIST VQ-VAE (batch 128), the ImageNet
           VQ-VAE-2 at 64x64 (batch 16) and 256x256 (batch 4), and the MNIST
           PixelCNN priors (top: 7x7 codes with attention; bottom: 14x14 codes
           conditioned on the top; batch 64, K=512).
compile    The time to compile the jitted init and train step of `COMPILE_ROW`
           (the 256x256 VQ-VAE-2), three fresh processes in a row: no
           persistent compilation cache, an empty one (cold: compiles and
           writes), the same one again (warm: reads the programs back).
quantizer  `quantizer_bench.py` against DeepMind Haiku, in the separate venv of
           `haiku_env.sh` (skipped, with a message, when that venv is missing).
upsample   `upsample_bench.py`: one upsampling layer as a 3x3 sub-pixel
           convolution against four per-phase 2x2 convolutions.
sampling   `sampling_bench.py` (PixelCNN sampling: cached against plain), if present.

`--quick` runs each with the fewest steps and rounds (a smoke test: the numbers
are not meaningful). The tables are meant for benchmarks/RESULTS.md; the load
average before and after each benchmark is printed with it, because timings
on a shared machine are only comparable side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
DEFAULT_HAIKU_PYTHON = "/work/venv_bench/bin/python"

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
)
# The compile-time row (the model of the goal: <= 10 s on a 2-core CPU).
COMPILE_ROW = ("VQ-VAE-2, 256x256, batch 4", ["--config=configs/vqvae2.py:imagenet256", "--batch_size=4"])
BENCHMARKS = ("train", "compile", "upsample", "quantizer", "sampling")


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


def train_table(
    rows, quick: bool, log_dir: str, torch_threads: int | None, timing: list[str] | None = None
) -> str:
    header = (
        "| model | input | batch | params | ours ms/step | PyTorch ms/step | ours/PyTorch (speed) "
        "| compile s | init s | XLA MiB | load before/after |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    timing = ["--steps=1", "--rounds=1"] if quick else (timing or [])
    for i, (label, flags) in enumerate(rows):
        json_path = os.path.join(log_dir, f"train_{i}.json")
        cmd = [
            sys.executable,
            os.path.join("benchmarks", "train_step_bench.py"),
            *flags,
            *timing,
            f"--json_out={json_path}",
        ] + ([f"--torch_threads={torch_threads}"] if torch_threads else [])
        print(f"[train] {label}: {' '.join(cmd[1:])}", flush=True)
        before = _load()
        code, out, _ = _run(cmd, os.path.join(log_dir, f"train_{i}.log"))
        load = f"{before} / {_load()}"
        if code != 0:
            print(out[-3000:], file=sys.stderr)
            lines.append(f"| {label} | failed (exit {code}, see {log_dir}/train_{i}.log) |")
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


def compile_table(log_dir: str) -> str:
    label, flags = COMPILE_ROW
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
        cmd = [
            sys.executable,
            os.path.join("benchmarks", "train_step_bench.py"),
            *flags,
            *extra,
            "--notorch",
            "--steps=1",
            "--rounds=1",
            f"--json_out={json_path}",
        ]
        print(f"[compile] {name}: {' '.join(cmd[1:])}", flush=True)
        before = _load()
        code, out, wall = _run(cmd, os.path.join(log_dir, f"compile_{i}.log"))
        if code != 0:
            print(out[-3000:], file=sys.stderr)
            lines.append(f"| {name} | failed (exit {code}, see {log_dir}/compile_{i}.log) |")
            continue
        with open(json_path) as f:
            r = json.load(f)
        lines.append(
            f"| {name} | {r['init_s']:.1f} | {r['compile_s']:.1f} | {wall:.1f} | {before} / {_load()} |"
        )
    return "\n".join(lines)


def _script_table(name: str, cmd: list[str], log_dir: str, env: dict | None = None) -> str:
    """Runs one benchmark script; its markdown tables and the load average around it."""
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    before = _load()
    code, out, _ = _run(cmd, os.path.join(log_dir, f"{name}.log"), env)
    if code != 0:
        print(out[-3000:], file=sys.stderr)
        return f"(failed: exit {code}, see {log_dir}/{name}.log)"
    return _tables(out) + f"\n\nLoad average before / after: {before} / {_load()}."


def quantizer_table(quick: bool, log_dir: str, haiku_python: str) -> str:
    if not os.path.exists(haiku_python):
        return (
            f"(skipped: no Haiku venv at {haiku_python}; create it with "
            f"`bash benchmarks/haiku_env.sh DIR` and pass --haiku_python=DIR/bin/python)"
        )
    flags = ["--mode=speed", "--shapes=8192x512", "--repeats=1"] if quick else ["--mode=all", "--repeats=5"]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return _script_table(
        "quantizer", [haiku_python, os.path.join("benchmarks", "quantizer_bench.py"), *flags], log_dir, env
    )


def upsample_table(quick: bool, log_dir: str) -> str:
    flags = ["--repeats=1", "--rounds=1"] if quick else []
    return _script_table(
        "upsample", [sys.executable, os.path.join("benchmarks", "upsample_bench.py"), *flags], log_dir
    )


def sampling_table(quick: bool, log_dir: str, extra_flags: list[str] | None = None) -> str:
    if not os.path.exists(os.path.join(BENCH_DIR, "sampling_bench.py")):
        return "(skipped: benchmarks/sampling_bench.py is not there)"
    flags = ["--sizes=8", "--repeats=1", "--batch_size=8"] if quick else []
    return _script_table(
        "sampling",
        [sys.executable, os.path.join("benchmarks", "sampling_bench.py"), *flags, *(extra_flags or [])],
        log_dir,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewest steps and rounds (smoke test)")
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
        default=DEFAULT_HAIKU_PYTHON,
        help="python of the venv made by benchmarks/haiku_env.sh",
    )
    args = parser.parse_args()
    only = [b for b in args.only.split(",") if b]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}.")
    rows = TRAIN_ROWS
    if args.train_rows:
        indices = [int(i) for i in args.train_rows.split(",")]
        if any(not 0 <= i < len(TRAIN_ROWS) for i in indices):
            parser.error(f"--train_rows={args.train_rows}: indices must be in [0, {len(TRAIN_ROWS)}).")
        rows = [TRAIN_ROWS[i] for i in indices]
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="vqlatent_bench_")
    os.makedirs(log_dir, exist_ok=True)
    print(
        f"# Benchmarks{' (quick: not meaningful numbers)' if args.quick else ''}\n\n"
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {_load()}; logs in {log_dir}\n",
        flush=True,
    )
    if os.getloadavg()[0] > 1.0:
        print(
            "WARNING: the machine is not quiet (load average above 1). Timings are then only rough, and "
            "PyTorch's OpenMP threads slow down far more than XLA's (measured under load 3: the 64x64 "
            "VQ-VAE-2 step took 4.2 s with PyTorch's 2 default threads, 0.31 s with --torch_threads=1), "
            "so the ours/PyTorch ratios are not meaningful. Pause other jobs, or compare with "
            "--torch_threads=1.\n",
            flush=True,
        )
    sections = []
    if "train" in only:
        timing = ([f"--steps={args.steps}"] if args.steps else []) + (
            [f"--rounds={args.rounds}"] if args.rounds else []
        )
        table = train_table(rows, args.quick, log_dir, args.torch_threads, timing)
        sections.append(("Train step, ours against the PyTorch reference", table))
    if "compile" in only:
        sections.append(("Compile time", compile_table(log_dir)))
    if "upsample" in only:
        sections.append(
            ("Upsampling layer (4x4, stride 2), forward + backward", upsample_table(args.quick, log_dir))
        )
    if "quantizer" in only:
        sections.append(
            ("Quantizer step against Haiku", quantizer_table(args.quick, log_dir, args.haiku_python))
        )
    if "sampling" in only:
        sections.append(
            ("PixelCNN sampling", sampling_table(args.quick, log_dir, args.sampling_flags.split()))
        )
    for title, table in sections:
        print(f"\n## {title}\n\n{table}", flush=True)


if __name__ == "__main__":
    main()

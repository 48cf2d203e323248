r"""Where the time of one train step goes: XLA's cost analysis, a per-op profile, timed pieces.

  python experiments/profile_step.py [--config=configs/vqvae2.py:imagenet256] \
      [--image_shape=64,64,3] [--batch_size=16] [--steps=3] [--repeats=5] [--top=15] \
      [--trace_dir=DIR]

Default: the ImageNet VQ-VAE-2 at 64x64, batch 16 (a row of the PyTorch
comparison). Any config of train_step_bench.py works (a prior with
--codes_config or --code_levels). Prints:

1. XLA's cost analysis of the compiled train step (flops, bytes accessed) and
   its memory analysis.
2. A per-op profile of the compiled train step: `jax.profiler` traces
   `--steps` steps with XLA:CPU's per-thunk trace events on
   (`--xla_cpu_enable_xprof_traceme`); each thunk is an instruction of the
   compiled HLO, whose metadata names the JAX operation and the module path
   it came from. Thunk times are summed per step and grouped
   - by phase: forward (`jvp(...)`), backward (`transpose(jvp(...))`), update
     (optimizer, EMA writes, everything outside the model);
   - by kind: convolution forward / input gradient / kernel gradient
     (the gradient whose output has the kernel's shape), matmul, reduction,
     gather/scatter, elementwise and copies;
   - by module (the first level of the model's module path: encoders,
     quantizers, decoders, ...);
   and the `--top` most expensive instructions. Two threads run independent
   thunks concurrently, so the summed thunk time can exceed the step's wall
   time; the shares are what matters.
3. Separately jitted pieces, median of `--repeats` calls: the forward loss, the
   forward + backward (gradients), the whole train step (gradients, Adam, EMA
   updates), and the optimizer update alone on gradients of the parameters'
   shapes.

`--trace_dir` keeps the trace (view it with TensorBoard's profile plugin or
Perfetto); by default it goes to a temporary directory.
"""

from __future__ import annotations

import collections
import functools
import glob
import os
import re
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The package's XLA:CPU flags (what a training run gets; skipped when the user set XLA_FLAGS), plus
# per-thunk trace events; both must be set before jax is imported.
import vqlatent  # noqa: E402, F401  (its import sets the package's flags: vqlatent/backend.py)

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
from ml_collections import config_flags

# Run as a file: the repository root makes `benchmarks` importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import bench_inputs, bench_timing  # noqa: E402

_DEFAULT_CONFIG = (
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "vqvae2.py") + ":imagenet256"
)
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Model config.", lock_config=True)
_CODES_CONFIG = config_flags.DEFINE_config_file(
    "codes_config", None, "For a prior: the VQ-VAE-2 config whose code levels it models.", lock_config=True
)
_CODE_LEVELS = flags.DEFINE_string("code_levels", None, "For a prior: LEVEL=HxWxK,...")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size.")
_IMAGE = flags.DEFINE_string("image_shape", "64,64,3", "H,W,C of the random images (autoencoders).")
_STEPS = flags.DEFINE_integer("steps", 3, "Traced steps.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls of each separately jitted piece (median).")
_TOP = flags.DEFINE_integer("top", 15, "Most expensive instructions to list.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", None, "Keep the profiler trace here.")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)(?:\{[^}]*\})? ([\w\-]+)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def hlo_instructions(hlo_text: str) -> dict[str, dict[str, Any]]:
    """Instruction name -> {'shape', 'opcode', 'op_name', 'ops', 'kernel_gradient'} from compiled HLO text.

    XLA drops the metadata of some fusions (e.g. a convolution gradient fused
    with its layout change); their `op_name` is then taken from the first
    instruction inside the fused computation that has one, and `ops` lists the
    opcodes inside it (to tell a convolution from elementwise work).
    """
    bodies: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            match = _COMPUTATION.match(line)
            current = match.group(1) if match else None
            bodies[current] = []
        elif current is not None:
            bodies[current].append(line)
    out = {}
    for lines in bodies.values():
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            op_name = _OP_NAME.search(line)
            calls = _CALLS.search(line)
            inner = bodies.get(calls.group(1), []) if calls else []
            if op_name is None:
                op_name = next((m for m in map(_OP_NAME.search, inner) if m), None)
            ops = [m.group(3) for m in map(_INSTRUCTION.match, inner) if m]
            conv = next((l for l in [line, *inner] if " convolution(" in l), None)
            out[match.group(1)] = {
                "shape": match.group(2),
                "opcode": match.group(3),
                "op_name": op_name.group(1) if op_name else "",
                "ops": ops,
                "kernel_gradient": conv is not None and _is_kernel_gradient(conv),
            }
    return out


def _is_kernel_gradient(conv_line: str) -> bool:
    """A convolution computing a kernel gradient slides a window as large as the activations
    over them, so its window is larger than its (kernel-sized) output; a forward or
    input-gradient convolution has a kernel-sized window and an activation-sized output."""
    shape = _INSTRUCTION.match(conv_line)
    window = re.search(r"window=\{size=([\dx]+)", conv_line)
    labels = re.search(r"dim_labels=\w+_\w+->(\w+)", conv_line)
    if not (shape and window and labels):
        return False
    dims = [int(d) for d in re.findall(r"\[([\d,]*)\]", shape.group(2))[0].split(",") if d]
    spatial = [dims[i] for i, label in enumerate(labels.group(1)) if label.isdigit()]
    return int(np.prod([int(d) for d in window.group(1).split("x")])) > int(np.prod(spatial))


def phase_of(info: dict[str, Any], kind: str) -> str:
    op_name = info["op_name"]
    if "transpose(jvp(" in op_name or kind == "convolution kernel gradient":
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    if not op_name:
        return "(no metadata)"
    return "update (optimizer, outside the model)"


def module_of(op_name: str) -> str:
    """The first module below the model in a metadata path, e.g. 'encoders_bottom'.

    'jvp(VQVAE2)/VQVAE2.decode/decoder/up_0/conv_general_dilated' -> 'decoder'.
    """
    parts = [
        p
        for p in re.split(r"[/()]", op_name)
        if p and p not in ("jit", "jvp", "transpose", "vmap") and not p.startswith("_")
    ]
    for i, part in enumerate(parts):
        if part[:1].isupper():  # The model class (VQVAE2, GatedPixelCNN), then its methods (VQVAE2.decode).
            rest = [p for p in parts[i + 1 :] if not p[:1].isupper()]
            return rest[0] if len(rest) > 1 else "(the model's own ops)"
    return "(outside the model)" if op_name else "(no metadata)"


def kind_of(info: dict[str, Any]) -> str:
    """What an instruction computes, from the JAX operation it came from, its contents and its output shape."""
    op_name, ops = info["op_name"], [info["opcode"], *info["ops"]]
    last = op_name.rsplit("/", 1)[-1]
    if "conv_general_dilated" in last or "convolution" in ops:
        if info["kernel_gradient"]:
            return "convolution kernel gradient"
        return "convolution input gradient" if "transpose(jvp(" in op_name else "convolution forward"
    if "dot_general" in last or "dot" in ops:
        return "matmul"
    if any(k in last for k in ("reduce", "argmin", "argmax")) or "reduce" in ops:
        return "reduction"
    if any(k in last for k in ("gather", "scatter", "take")) or {"gather", "scatter"} & set(ops):
        return "gather/scatter"
    if info["opcode"] in ("copy", "transpose") or "copy" in info["opcode"]:
        return "copy/transpose"
    return "elementwise and other"


def trace_step(compiled, state, batch, steps: int, trace_dir: str) -> tuple[dict[str, float], float]:
    """Per-instruction thunk seconds per step, and the wall seconds per step, from a profiler trace."""
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    wall = (time.perf_counter() - start) / steps
    jax.profiler.stop_trace()
    path = sorted(
        glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime
    )[-1]
    seconds = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            for event in line.events:
                seconds[event.name] += event.duration_ns / 1e9 / steps
    return seconds, wall


def _table(title: str, totals: collections.Counter, total: float) -> None:
    print(f"\n| {title} | ms/step | share |\n|---|---|---|")
    for key, value in totals.most_common():
        print(f"| {key} | {value * 1e3:.1f} | {value / total:.0%} |")


def timed_pieces(task, state, batch) -> list[tuple[str, float]]:
    """Separately jitted forward, forward + backward, train step and optimizer update (seconds)."""
    params, model_state = state.params, state.model_state

    def loss(p):  # Every task's loss_fn(params, model_state, batch, rng).
        return task.loss_fn(p, model_state, batch, state.rng)[0]

    grads = jax.tree.map(jnp.ones_like, params)

    def update(opt_state, p):
        updates, opt_state = task.tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    timed = functools.partial(bench_timing.median_seconds, repeats=_REPEATS.value)
    pieces = [
        ("forward (loss)", timed(jax.jit(loss), params)),
        ("forward + backward (gradients)", timed(jax.jit(jax.grad(loss)), params)),
        ("train step (gradients, optimizer, EMA)", timed(jax.jit(task.train_step), state, batch)),
        ("optimizer update alone", timed(jax.jit(update), state.opt_state, params)),
    ]
    return pieces


def main(argv):
    del argv
    config = _CONFIG.value
    try:
        task, np_batch, _, described = bench_inputs.task_and_batch(
            config,
            _BATCH.value,
            np.random.default_rng(0),
            image_override=_IMAGE.value,
            code_levels=_CODE_LEVELS.value,
            codes_config=_CODES_CONFIG.value,
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    batch = jax.tree.map(jnp.asarray, np_batch)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0), task.dummy_batch())
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    start = time.perf_counter()
    compiled = jax.jit(task.train_step).lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    print(
        f"model={config.model_name} {described} batch={_BATCH.value} params={num_params:,} "
        f"(compile {compile_s:.1f} s; load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())})"
    )

    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    print(
        f"\nXLA cost analysis: {cost.get('flops', float('nan')) / 1e9:.2f} GFLOP, "
        f"{cost.get('bytes accessed', float('nan')) / 2**20:.0f} MiB accessed per step; memory: "
        f"temp {memory.temp_size_in_bytes / 2**20:.0f} MiB, arguments {memory.argument_size_in_bytes / 2**20:.0f} MiB, "
        f"outputs {memory.output_size_in_bytes / 2**20:.0f} MiB"
    )

    trace_dir = _TRACE_DIR.value or tempfile.mkdtemp(prefix="vqlatent_profile_")
    seconds, wall = trace_step(compiled, state, batch, _STEPS.value, trace_dir)
    instructions = hlo_instructions(compiled.as_text())
    by_phase, by_kind, by_module, by_instruction = (collections.Counter() for _ in range(4))
    for name, value in seconds.items():
        info = instructions.get(name)
        if info is None:  # Executor bookkeeping, Python frames: not an instruction.
            continue
        kind = kind_of(info)
        by_phase[phase_of(info, kind)] += value
        by_kind[kind] += value
        by_module[module_of(info["op_name"])] += value
        label = info["op_name"].removeprefix("jit(train_step)/") or "no metadata"
        by_instruction[f"{name} {info['shape']} ({label})"] += value
    total = sum(by_phase.values())
    print(
        f"\nProfiled step: {wall * 1e3:.0f} ms wall; {total * 1e3:.0f} ms of thunk time over "
        f"{sum(1 for n in seconds if n in instructions)} instructions (trace: {trace_dir})"
    )
    _table("phase", by_phase, total)
    _table("kind", by_kind, total)
    _table("module", by_module, total)
    print("\n| instruction (JAX operation) | ms/step | share |\n|---|---|---|")
    for key, value in by_instruction.most_common(_TOP.value):
        print(f"| {key} | {value * 1e3:.1f} | {value / total:.0%} |")

    print("\n| separately jitted | ms |\n|---|---|")
    for label, value in timed_pieces(task, state, batch):
        print(f"| {label} | {value * 1e3:.1f} |")


if __name__ == "__main__":
    app.run(main)

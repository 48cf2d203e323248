"""Lowering jitted programs for accelerators on any machine, and reading the StableHLO they become.

`jax.export.export(jax.jit(f), platforms=("cuda", "tpu"))(*args)` traces `f` and lowers it to the
StableHLO module that XLA:GPU and the TPU compiler would compile, without either device: a
CPU-only machine can prove that a program lowers for them, with the forms those backends pick,
the ops and custom calls it uses and the dtypes of its inputs and outputs. What it cannot prove
is what needs the device: the numbers it computes there, its speed and its memory.

* `force_forms(config, platform)`: a copy of a config whose per-backend fields (`backend.CHOICES`:
  `upsample`, `downsample`, `argmin_form`, `distance_precision`, `ema_statistics`) left at 'auto'
  are set to the form 'auto' picks on `platform`, in every section (quantizer configs get the fields
  their module has even when the preset leaves them out). Tasks built from it trace the platform's
  forms here, whatever `jax.default_backend()` is.
* `export(fn, *args, platforms=...)`: the `jax.export.Exported` of `fn` (jitted if it is not) for
  `platforms`; `args` may be arrays or `jax.ShapeDtypeStruct`s (with shardings over a mesh of this
  machine's devices: the module then has as many partitions, and `Exported.nr_devices` says so).
  Platforms whose forms differ (cpu and cuda) share one trace only with `forms=` naming whose forms.
* `custom_call_targets`, `composite_names`, `cpu_only_custom_calls`, `check_portable`, `op_counts`, `convolutions`,
  `index_reductions`, `find_ops` (with the Python functions each op was traced in),
  `scatter_result_types`: what a module's text holds (`Exported.mlir_module()`).

Serialising an `Exported` (`Exported.serialize()`, `jax.export.deserialize`) needs the
`flatbuffers` package; nothing here does.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections

from vqlatent import backend

DEFAULT_PLATFORMS: tuple[str, ...] = ("cuda", "tpu")

# Substrings of custom-call targets that only XLA:CPU implements: its own runtime calls
# (`xla_cpu_*`, `__cpu_*`), LAPACK and DUCC (linear algebra and FFT on the host), and the host
# libraries it fuses into (XNNPACK, YNNPACK, oneDNN, MKL).
CPU_ONLY_MARKERS: tuple[str, ...] = ("cpu", "lapack", "ducc", "xnn", "ynn", "onednn", "mkl")

_CUSTOM_CALL = re.compile(r"stablehlo\.custom_call\s+@([\w.$-]+)|call_target_name\s*=\s*\"([^\"]+)\"")
_COMPOSITE = re.compile(r'stablehlo\.composite\s+"([^"]+)"')
# An op at the start of a line, after its results if any: `%1:2 = stablehlo.reduce(`, `"stablehlo.case"(`.
_OP = re.compile(r"^\s*(?:%[\w:#]+(?:\s*,\s*%[\w:#]+)*\s*=\s*)?\"?((?:stablehlo|chlo|mhlo|sdy)\.\w+)", re.M)
# A variadic reduction of (values, int32 indices): what argmin and argmax lower to.
_INDEX_REDUCTION = re.compile(
    r"stablehlo\.reduce\([^)]*\),\s*\([^)]*\)\s+across dimensions = \[([\d, ]*)\]\s*:\s*"
    r"\(tensor<((?:\d+x)*)(?:f32|bf16|f16)>, tensor<(?:\d+x)*i32>"
)
# The signature of an op (on its line, or on the line that closes its regions) and its location.
_SIGNATURE = re.compile(r":\s*\(?(.*?)\)?\s*->\s*\(?(tensor<[^>]*>).*?(?:loc\((#loc\d*)\))?\s*$")
_LOCATION_DEF = re.compile(r"^(#loc\d*) = (loc\(.*\))$", re.M)
_LOCATION_NAME = re.compile(r'loc\("([^"]+)"\(')
_CONVOLUTION = re.compile(
    r"stablehlo\.convolution\((.*?)\)\s*dim_numbers\s*=\s*(.*?):\s*\((.*?)\)\s*->\s*(tensor<[^>]*>)"
)


class PortabilityError(ValueError):
    """A lowered program calls something only XLA:CPU has, or does not lower for a platform."""


def forms_agree(platforms: Sequence[str]) -> bool:
    """Whether every platform of `platforms` picks the same forms (so one trace serves them all)."""
    tables = [backend.forms_for(p) for p in platforms]
    return all(t == tables[0] for t in tables)


def _quantizer_class(node: ml_collections.ConfigDict) -> type | None:
    """The quantizer module class a config section describes (its `name`), or None."""
    from vqlatent import quantizers  # pylint: disable=g-import-not-at-top  # Heavy; only when used.

    name = node.get("name") if "name" in node else None
    return quantizers.QUANTIZERS.get(name) if isinstance(name, str) else None


def force_forms(config: ml_collections.ConfigDict, platform: str) -> ml_collections.ConfigDict:
    """A copy of `config` with every per-backend field that is 'auto' set to `platform`'s form.

    Fields set to a form keep it (a forced form is used on every backend). Quantizer sections
    (a section whose `name` is a `vqlatent.quantizers.QUANTIZERS` key) also get the per-backend
    fields their module has but the section leaves out; `ema_statistics` follows its size guard
    (`backend.CHOICES`: the scatter above `backend.ONE_HOT_MAX_CODES` codes on every backend).
    Other sections get no field they do not have (a config written before a field existed keeps
    the module's default 'auto', which `export` resolves for its platforms).
    """
    from vqlatent import quantizers  # pylint: disable=g-import-not-at-top

    forms = backend.forms_for(platform)
    config = config.copy_and_resolve_references()

    def visit(node: ml_collections.ConfigDict) -> None:
        for key in list(node.keys()):
            value = node[key]
            if isinstance(value, ml_collections.ConfigDict):
                visit(value)
        quantizer = _quantizer_class(node)
        fields = set(forms)
        if quantizer is not None:
            fields &= set(quantizers.config_fields(quantizer))
        for field in sorted(fields):
            if node.get(field, "auto" if quantizer is not None else None) != "auto":
                continue
            form = forms[field]
            if field == "ema_statistics" and "num_embeddings" in node:
                with backend.resolving_for(platform):
                    form = backend.resolve(field, "auto", num_codes=int(node.num_embeddings))
            with node.unlocked():
                node[field] = form

    visit(config)
    return config


def export(
    fn: Callable[..., Any],
    *args: Any,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    forms: str | None = None,
) -> jax.export.Exported:
    """`jax.export.export(jit(fn), platforms=platforms)(*args)`: `fn` lowered for `platforms`.

    `fn` is jitted unless it already is (keeping its shardings and donations). The trace runs inside
    `backend.resolving_for(forms or platforms[0])`, so forms left at 'auto' that are resolved during
    this trace are those of that platform; a function jax traced before keeps its first trace, so
    build tasks from `force_forms(config, platform)` to be sure. One trace has one set of forms:
    `ValueError` if the platforms pick different ones, unless `forms` names the platform whose forms
    all of them get (e.g. an inference artefact for cpu, cuda and tpu with the accelerators' forms,
    which compute the same function on the CPU, only slower).
    """
    platforms = tuple(platforms)
    if not platforms:
        raise ValueError("platforms is empty: name at least one of 'cpu', 'cuda', 'rocm', 'tpu'.")
    if forms is None and not forms_agree(platforms):
        raise ValueError(
            f"The platforms {platforms} pick different per-backend forms "
            f"({[backend.forms_for(p) for p in platforms]}): export each group separately, or pass "
            f"forms='cuda' (say) to give all of them that platform's forms."
        )
    jitted = fn if hasattr(fn, "lower") and hasattr(fn, "trace") else jax.jit(fn)
    with backend.resolving_for(forms or platforms[0]):
        return jax.export.export(jitted, platforms=platforms)(*args)


def abstract(tree: Any, sharding: Any = None) -> Any:
    """`jax.ShapeDtypeStruct`s of the arrays of `tree` (with `sharding`: one sharding, or a tree of them)."""
    if sharding is None or isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sharding)


def module_text(program: jax.export.Exported | str) -> str:
    return program if isinstance(program, str) else program.mlir_module()


def custom_call_targets(program: jax.export.Exported | str) -> collections.Counter:
    """{custom-call target: number of calls} of a StableHLO module (text or `Exported`)."""
    found = collections.Counter()
    for match in _CUSTOM_CALL.finditer(module_text(program)):
        found[match.group(1) or match.group(2)] += 1
    return found


def composite_names(program: jax.export.Exported | str) -> collections.Counter:
    """{composite op name (e.g. 'chlo.top_k'): occurrences}: ops a backend may implement itself or
    replace by their decomposition, which the module also holds."""
    return collections.Counter(_COMPOSITE.findall(module_text(program)))


def cpu_only_custom_calls(program: jax.export.Exported | str) -> list[str]:
    """The custom-call targets and composites whose names mark them as XLA:CPU's own (`CPU_ONLY_MARKERS`)."""
    names = set(custom_call_targets(program)) | set(composite_names(program))
    return sorted(t for t in names if any(m in t.lower() for m in CPU_ONLY_MARKERS))


def op_counts(program: jax.export.Exported | str) -> collections.Counter:
    """{op name ('stablehlo.convolution', 'stablehlo.scatter', ...): occurrences} of a module."""
    return collections.Counter(_OP.findall(module_text(program)))


@dataclasses.dataclass(frozen=True)
class Convolution:
    """One `stablehlo.convolution` of a module: its attributes (as written) and its types."""

    attributes: str
    operand_types: str
    result_type: str

    def attribute(self, name: str) -> tuple[int, ...] | None:
        """An integer-list attribute of its window ('stride', 'lhs_dilate', 'rhs_dilate'), or None if
        absent (the module leaves out the default 1s)."""
        match = re.search(rf"\b{name}\s*=\s*\[([^\]]*)\]", self.attributes)
        return None if match is None else tuple(int(v) for v in match.group(1).split(",") if v.strip())

    @property
    def is_transposed(self) -> bool:
        """Whether the input is dilated (lhs_dilate > 1): a transposed (fractionally strided) convolution."""
        return any(d > 1 for d in self.attribute("lhs_dilate") or ())

    @property
    def is_strided(self) -> bool:
        return any(s > 1 for s in self.attribute("stride") or ())


def convolutions(program: jax.export.Exported | str) -> list[Convolution]:
    """Every `stablehlo.convolution` of a module, in order."""
    return [
        Convolution(attributes=m.group(2), operand_types=m.group(3), result_type=m.group(4))
        for m in _CONVOLUTION.finditer(module_text(program))
    ]


def index_reductions(program: jax.export.Exported | str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(operand shape, reduced dimensions) of every reduction of (values, int32 indices) of a module:
    the argmin and argmax ops (e.g. ((256, 64), (1,)): an argmin over 64 codes)."""
    return [
        (
            tuple(int(d) for d in m.group(2).split("x") if d),
            tuple(int(d) for d in m.group(1).split(",") if d.strip()),
        )
        for m in _INDEX_REDUCTION.finditer(module_text(program))
    ]


@dataclasses.dataclass(frozen=True)
class Op:
    """One op of a module: its name, first result type, and `sources`: the names in its location,
    innermost first (JAX records the op's name stack and the Python functions it was traced in, e.g.
    ('scatter-add', 'kmeans.<locals>.lloyd_step', ...)), empty where the module gives none."""

    name: str
    result_type: str
    sources: tuple[str, ...]

    def traced_in(self, function: str) -> bool:
        """Whether `function` (a Python function's name, e.g. 'cluster_statistics') is among `sources`."""
        return any(
            s == function or s.endswith("." + function) or s.startswith(function + ".") for s in self.sources
        )


def _locations(text: str) -> Callable[[str], tuple[str, ...]]:
    """location reference ('#loc12') -> the names in its expansion, innermost first."""
    definitions = dict(_LOCATION_DEF.findall(text))

    @functools.cache
    def expand(ref: str) -> str:  # Definitions only refer to earlier ones: no cycles.
        if ref not in definitions:
            return ""
        return re.sub(r"#loc\d*", lambda m: expand(m.group(0)), definitions[ref])

    return lambda ref: tuple(_LOCATION_NAME.findall(expand(ref))) if ref else ()


def find_ops(program: jax.export.Exported | str, name: str) -> list[Op]:
    """Every op `name` ('stablehlo.scatter', 'stablehlo.convolution', ...) of a module, in order.

    An op with regions (a scatter's combiner) has its signature on the line closing them.
    """
    text = module_text(program)
    sources = _locations(text)
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        match = _OP.match(line)
        if match is None or match.group(1) != name:
            continue
        depth, j = line.count("{") - line.count("}"), i
        while depth > 0 and j + 1 < len(lines):
            j += 1
            depth += lines[j].count("{") - lines[j].count("}")
        signature = _SIGNATURE.search(lines[j])
        if signature is not None:
            found.append(Op(name, signature.group(2), sources(signature.group(3) or "")))
    return found


def scatter_result_types(program: jax.export.Exported | str) -> list[str]:
    """The result type of every `stablehlo.scatter` of a module (e.g. 'tensor<16x8xf32>')."""
    return [op.result_type for op in find_ops(program, "stablehlo.scatter")]


def check_portable(exported: jax.export.Exported, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> str:
    """The module text of `exported`, after checking that it was lowered for exactly `platforms` and
    calls nothing only XLA:CPU has; `PortabilityError` otherwise."""
    if tuple(exported.platforms) != tuple(platforms):
        raise PortabilityError(
            f"{exported.fun_name} was lowered for {exported.platforms}, not {tuple(platforms)}."
        )
    text = exported.mlir_module()
    cpu_only = cpu_only_custom_calls(text)
    if cpu_only:
        raise PortabilityError(
            f"{exported.fun_name} lowered for {tuple(platforms)} calls CPU-only custom calls {cpu_only}: "
            f"find the op that lowers to them (a host library call) and give it a form for accelerators."
        )
    return text


def avals_by_path(tree_def: Any, avals: Sequence[Any]) -> Mapping[str, Any]:
    """{path: aval} of an exported function's inputs or outputs (`Exported.in_tree` / `in_avals`, or
    `out_tree` / `out_avals`), for checking their dtypes by name; paths as `jax.tree_util.keystr`
    writes them (inputs are `(args, kwargs)`: "[0][0].params['encoder']..." is the first argument's)."""
    leaves = jax.tree_util.tree_unflatten(tree_def, list(avals))
    return {jax.tree_util.keystr(path): aval for path, aval in jax.tree_util.tree_leaves_with_path(leaves)}

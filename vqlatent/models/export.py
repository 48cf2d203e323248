"""Export a trained model into a self-contained model directory (`format.py`), with its model card.

  python -m vqlatent.main --mode=export --workdir=W --config.export.dir=OUT [--config.export.step=N]

W is a training workdir (a top prior's workdir exports the whole class -> pixels chain: its lower
priors and the autoencoder that decodes them) or a model directory. When the training data is
readable, the model is evaluated on its eval split by the loaded model itself (`evaluate.py`), and
the numbers go into config.json and the card; anyone can recompute them the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from vqlatent import data as data_lib
from vqlatent.codes import layout
from vqlatent.models import evaluate
from vqlatent.models import format as fmt
from vqlatent.models.autoencoder import Autoencoder
from vqlatent.models.components import Component
from vqlatent.models.infogan import InfoGAN
from vqlatent.models.prior_chain import PriorChain
from vqlatent.utils.version import code_version


def default_config() -> ml_collections.ConfigDict:
    """`config.export`: the output directory, the checkpoint, and the evaluation on the eval split."""
    return ml_collections.ConfigDict(
        dict(
            dir=ml_collections.config_dict.placeholder(str),
            step=ml_collections.config_dict.placeholder(int),
            evaluate=True,  # Evaluate on the training data's eval split when it is readable.
            eval_examples=ml_collections.config_dict.placeholder(int),  # None: the whole split.
            eval_batch_size=256,
            # A top prior's lower priors, 'bottom=WORKDIR[,...]' (None: its config's sample.lower_priors).
            lower_priors=ml_collections.config_dict.placeholder(str),
            # Also write jax.export programs (encode/decode, sample, generate) for cpu, cuda and tpu
            # that run with plain jax (`portable.py`).
            portable=False,
        )
    )


def components_of(model: Any) -> dict[str, Component]:
    if isinstance(model, PriorChain):
        return {c.name: c for c in model.components}
    return {model.component.name: model.component}


def eval_batches(
    component: Component, num_examples: int | None, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uint8 images, labels) of the component's eval split (padding rows dropped)."""
    for batch in data_lib.make_eval_batches(
        component.config.data, global_batch_size=batch_size, num_examples=num_examples
    ):
        keep = np.asarray(batch["mask"]) > 0
        if keep.any():
            yield np.asarray(batch["image"])[keep], np.asarray(batch["label"])[keep]


# The size of the spot check recorded beside an evaluation of more images (`with_spot_check`).
SPOT_CHECK_EXAMPLES = 1000


def evaluation_record(model: Any, num_examples: int | None = None, batch_size: int = 256) -> dict[str, Any]:
    """{'data': the dataset config, 'split', 'metrics'} of the model on its training data's eval split."""
    data_owner = model.autoencoder.component if isinstance(model, PriorChain) else model.component
    data_cfg = data_owner.config.data

    def batches():
        return eval_batches(data_owner, num_examples, batch_size)

    if isinstance(model, Autoencoder):
        metrics = evaluate.autoencoder_metrics(model, batches())
    elif isinstance(model, PriorChain):
        metrics = evaluate.autoencoder_metrics(model.autoencoder, batches())
        metrics.update(evaluate.prior_bits_per_code(model, batches()))
    else:
        num_classes = data_owner.spec.num_classes
        if not num_classes or not model.latent_spec.num_categorical:
            return {}
        metrics = evaluate.infogan_accuracy(model, batches(), num_classes)
    return {
        "data": {k: v for k, v in layout_data(data_cfg).items() if v is not None},
        "split": data_cfg.get("eval_split"),
        "num_examples": num_examples,
        "metrics": metrics,
    }


def with_spot_check(model: Any, record: dict[str, Any], batch_size: int = 256) -> dict[str, Any]:
    """`record` (an `evaluation_record`) with `spot_check`: the same metrics on the split's first
    SPOT_CHECK_EXAMPLES images, when the record covers more of them.

    The evaluation is deterministic, so anyone can check an export against its card in seconds
    (tests/test_pretrained.py does, for the shipped models) without the whole split's minutes: the
    spot check and the full evaluation are computed by the same code on the same weights.
    """
    num_images = (record.get("metrics") or {}).get("num_images") or 0
    if num_images <= SPOT_CHECK_EXAMPLES:
        return record
    spot = evaluation_record(model, SPOT_CHECK_EXAMPLES, batch_size)
    return {**record, "spot_check": {"num_examples": SPOT_CHECK_EXAMPLES, "metrics": spot["metrics"]}}


def layout_data(data_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The fields of a data config that name the data (not where it is on this machine)."""
    return {k: data_cfg.get(k) for k in ("name", "image_size", "eval_split", "train_split", "num_classes")}


def export(
    model: Any, out_dir: str, evaluation: Mapping[str, Any] | None = None, portable: bool = False
) -> dict[str, Any]:
    """Writes `model` (a loaded `Autoencoder`, `PriorChain` or `InfoGAN`) to `out_dir`; returns config.json.

    `out_dir` must be new, empty, or a model directory (which is overwritten). The files depend only
    on the model's checkpoint(s), `evaluation` and the code version: exporting the same checkpoint
    again writes the same bytes. `portable` adds the `jax.export` programs of `portable.py`.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.isfile(out_dir):
        raise fmt.ModelFormatError(f"config.export.dir={out_dir} is a file: give a new or empty directory.")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not fmt.is_model_dir(out_dir):
        raise fmt.ModelFormatError(
            f"config.export.dir={out_dir} is not empty and holds no exported model: give a new or empty "
            f"directory (an existing export there would be replaced)."
        )
    os.makedirs(out_dir, exist_ok=True)
    parts = components_of(model)
    files = {}
    for name, component in parts.items():
        files[name + fmt.WEIGHTS_SUFFIX] = fmt.write_weights(
            os.path.join(out_dir, name + fmt.WEIGHTS_SUFFIX), component.variables()
        )
    record = {
        "format": fmt.FORMAT,
        "format_version": fmt.FORMAT_VERSION,
        "family": model.family,
        "components": {name: component.record() for name, component in parts.items()},
        "files": files,
        "evaluation": dict(evaluation or {}),
        "provenance": {
            name: {**training_run(component), "step": int(component.step)}
            for name, component in parts.items()
        },
        "exported_by": code_version(),
    }
    if isinstance(model, PriorChain):
        record["priors"] = [p.name for p in model.priors]
    if portable:
        from vqlatent.models import portable as portable_lib  # pylint: disable=g-import-not-at-top

        record["portable"] = portable_lib.write(model, out_dir)
    fmt.write_json(os.path.join(out_dir, fmt.CONFIG_FILE), record)
    with open(os.path.join(out_dir, fmt.CARD_FILE), "w") as f:
        f.write(model_card(model, record))
    logging.info("Exported %s to %s (%s).", model.family, out_dir, ", ".join(sorted(files)))
    return record


def training_run(component: Component) -> dict[str, Any]:
    """The command and code version that trained the component (from its workdir's spec.json, or
    from the model directory it was loaded from)."""
    if fmt.is_model_dir(component.source):
        recorded = fmt.read_model_config(component.source).get("provenance", {}).get(component.name, {})
        return {k: recorded.get(k, "not recorded") for k in ("command", "code")}
    path = os.path.join(component.source, "spec.json")
    run = layout.read_json(path).get("run", {}) if os.path.isfile(path) else {}
    return {"command": run.get("command", "not recorded"), "code": run.get("code", "not recorded")}


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def describe(model: Any) -> list[str]:
    """Lines of the card's 'What it is' section."""
    lines = []
    if isinstance(model, (Autoencoder, PriorChain)):
        ae = model.autoencoder if isinstance(model, PriorChain) else model
        arch = "VQ-VAE" if ae.task.model.architecture == "vqvae" else f"{len(ae.level_names)}-level VQ-VAE-2"
        quantizer = ae.component.config.quantizer
        qname = quantizer.get("name") or ", ".join(f"{k}: {v.get('name')}" for k, v in quantizer.items())
        levels = ", ".join(f"{n} {_shape(s.shape)} (K={s.num_codes})" for n, s in ae.code_levels.items())
        lines.append(
            f"- Autoencoder: {arch} on {_shape(ae.image_shape)} images, quantizer {qname}; code maps {levels}; "
            f"takes any H, W that are multiples of {ae.total_stride}."
        )
    if isinstance(model, PriorChain):
        for prior in model.priors:
            cond = f", conditioned on the {prior.task.cond_level} codes" if prior.task.cond_level else ""
            classes = f", {prior.task.model.num_classes} classes" if prior.task.model.num_classes else ""
            kind = getattr(prior.task, "description", "Gated PixelCNN")
            lines.append(f"- Prior of the {prior.task.level} codes: {kind}{classes}{cond}.")
    if isinstance(model, InfoGAN):
        s = model.latent_spec
        lines.append(
            f"- InfoGAN on {_shape(model.image_shape)} images: {s.noise_dim} noise variables, categorical "
            f"codes {list(s.categorical_sizes)}, {s.num_continuous} continuous codes in {s.continuous_range}."
        )
    return lines


USAGE = {
    "autoencoder": (
        "codes = model.encode(images)  # uint8 [B, H, W, C] or float in [0, 1] -> {level: int32 maps}",
        "recon = model.decode(codes)  # -> float32 [B, H, W, C] in [0, 1]",
    ),
    "prior_chain": (
        "out = model.sample(16, labels=[3] * 16, temperature=1.0, seed=0)",
        "out.images, out.codes  # [16, H, W, C] in [0, 1]; {level: int32 maps}",
    ),
    "infogan": (
        "images = model.generate(categorical=[3] * 8, continuous=[[0.5, 0.0]] * 8, seed=0)",
        "q = model.infer(images)  # q['categorical'], q['continuous']",
    ),
}


def model_card(model: Any, record: Mapping[str, Any]) -> str:
    """The model card (README.md of the model directory); its code block is as `ruff format` writes it."""
    lines = [f"# vqlatent {model.family}", "", "## What it is", *describe(model), ""]
    lines += [
        "## Use it",
        "```python",
        "import vqlatent",
        "",
        "model = vqlatent.load(PATH)  # this directory",
    ]
    lines += [*USAGE[model.family], "```", ""]
    if record.get("portable"):
        first = sorted(record["portable"])[0]
        lines += [
            "## Without vqlatent (compiled programs)",
            "",
            "`portable/` holds the model's functions as `jax.export` programs with the weights inside "
            "(`.cpu.jax`: for the CPU; `.cuda_tpu.jax`: for CUDA GPUs and TPUs); any batch size. With plain jax:",
            "",
            "```python",
            "import jax, numpy as np",
            f'program = jax.export.deserialize(bytearray(open("{first}", "rb").read()))',
            "outputs = program.call(*inputs)  # program.in_avals lists the inputs' shapes and dtypes",
            "```",
            "",
            *[f"- `{name}`: {platforms}" for name, platforms in sorted(record["portable"].items())],
            "",
        ]
    lines += ["## How it was trained", ""]
    for name, prov in record["provenance"].items():
        data = layout_data(record_config(record, name).data)
        lines += [
            f"- `{name}`: step {prov['step']}, data {data.get('name')} ({data.get('train_split')} split), "
            f"code {prov['code']}.",
            f"  `{prov['command']}`",
        ]
    lines += ["", f"Exported by {record['exported_by']}.", "", "## Evaluation", ""]
    evaluation = record.get("evaluation") or {}
    if evaluation.get("metrics"):
        data = evaluation.get("data", {})
        lines += [
            f"On the {evaluation.get('split')!r} split of {data.get('name')} "
            f"({evaluation['metrics'].get('num_images', '?')} images), computed by the exported model itself "
            f"(`vqlatent.models.evaluate`):",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.6g} |" for k, v in evaluation["metrics"].items() if isinstance(v, float)]
        if evaluation.get("spot_check"):
            lines += [
                "",
                f"config.json's `evaluation.spot_check` holds the same metrics on the first "
                f"{evaluation['spot_check']['num_examples']} of these images, to check this export in seconds.",
            ]
    else:
        lines.append("Not evaluated (the training data was not readable at export).")
    lines.append("")
    return "\n".join(lines)


def record_config(record: Mapping[str, Any], name: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(record["components"][name]["config"])

r"""Writes the one weights file of VQGAN's perceptual loss (`vqlatent.nets.lpips`).

  python scripts/convert_lpips.py --vgg=vgg16-397923af.pth --out=lpips_vgg.safetensors \
      [--lin=PATH/lpips/weights/v0.1/vgg.pth]

--vgg   torchvision's VGG16 state dict (https://download.pytorch.org/models/vgg16-397923af.pth;
        torchvision caches it in ~/.cache/torch/hub/checkpoints/): `features.N.weight` (Cout, Cin,
        3, 3) and `features.N.bias` of the 13 convolutions (the classifier is not used).
--lin   LPIPS v0.1's linear heads, `lin{l}.model.1.weight` (1, C_l, 1, 1); default: the file inside
        the installed `lpips` package (`pip install lpips`; torchvision is not needed for this).

The output holds `vgg16/conv{b}_{i}/kernel` (3, 3, Cin, Cout), `.../bias` and `lin{l}` (C_l,),
float32, with metadata naming the sources. Needs torch (to read .pth files) and safetensors.
Train with it: --config.loss.perceptual_weight=1.0 --config.loss.perceptual_weights=OUT.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vqlatent.nets import lpips as lpips_lib  # noqa: E402


def default_lin_path() -> str:
    """lpips/weights/v0.1/vgg.pth of the installed `lpips` package (found without importing it:
    `import lpips` imports torchvision)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "The `lpips` package is not installed: `pip install --no-deps lpips` (its linear heads are "
            "lpips/weights/v0.1/vgg.pth), or pass --lin=PATH/vgg.pth."
        )
    return os.path.join(spec.submodule_search_locations[0], "weights", "v0.1", "vgg.pth")


def _load_torch(path: str) -> dict[str, np.ndarray]:
    import torch  # pylint: disable=g-import-not-at-top

    if not os.path.isfile(path):
        raise SystemExit(f"{path} does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise SystemExit(f"{path} is not a state dict (a mapping of tensor names to tensors).")
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def convert(vgg_state: dict[str, np.ndarray], lin_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision VGG16 + LPIPS heads state dicts -> the tensors of `lpips_lib.param_shapes()`."""
    out = {}
    index = lpips_lib.torchvision_feature_index()
    expected = lpips_lib.param_shapes()
    for name, cin, cout in lpips_lib.vgg16_layer_names():
        for suffix, torch_shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
            key = f"features.{index[name]}.{suffix}"
            if key not in vgg_state:
                raise SystemExit(f"--vgg lacks {key!r} ({name}): it is not torchvision's vgg16 state dict.")
            if tuple(vgg_state[key].shape) != torch_shape:
                raise SystemExit(
                    f"--vgg: {key!r} ({name}) has shape {tuple(vgg_state[key].shape)}, VGG16 has {torch_shape} "
                    f"(is it another VGG, e.g. vgg16_bn or vgg19?)."
                )
        out[f"vgg16/{name}/kernel"] = np.transpose(vgg_state[f"features.{index[name]}.weight"], (2, 3, 1, 0))
        out[f"vgg16/{name}/bias"] = vgg_state[f"features.{index[name]}.bias"]
    for l in range(len(lpips_lib.VGG16_BLOCKS)):
        key = f"lin{l}.model.1.weight"
        if key not in lin_state or lin_state[key].size != expected[f"lin{l}"][0]:
            raise SystemExit(
                f"--lin lacks {key!r} of {expected[f'lin{l}'][0]} weights: not LPIPS v0.1's vgg.pth."
            )
        out[f"lin{l}"] = lin_state[key].reshape(-1)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vgg", required=True, help="torchvision's vgg16-*.pth")
    parser.add_argument("--lin", default=None, help="LPIPS v0.1 vgg.pth (default: the lpips package's)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

    lin_path = args.lin or default_lin_path()
    tensors = convert(_load_torch(args.vgg), _load_torch(lin_path))
    metadata = {
        "format": lpips_lib.FORMAT,
        "vgg": os.path.basename(args.vgg),
        "lin": os.path.basename(lin_path),
    }
    save_file(tensors, args.out, metadata=metadata)
    print(f"wrote {args.out}: {len(tensors)} tensors from {args.vgg} and {lin_path}")
    return args.out


if __name__ == "__main__":
    main()

#!/bin/bash
# Trains and exports the models that ship in vqlatent/pretrained/ (`vqlatent.load("pretrained:NAME")`).
#
#   bash scripts/pretrained.sh RUNS_DIR [MNIST_DIR]
#
# digits_vqvae         configs/vqvae.py (the default run of README's first command)
# digits_vqvae2_chain  configs/vqvae2.py, its codes, and configs/pixelcnn.py:digits top and bottom priors
# digits_infogan       configs/infogan.py
# mnist_vqvae2_chain   configs/vqvae2.py:mnist and configs/pixelcnn.py:mnist top and bottom priors
#                      (scripts/pretrained_mnist_chain.sh; hours on one CPU core; skipped without MNIST)
# Every training resumes exactly when the command runs again; each export is evaluated on its data's
# eval split by the exported model itself (the numbers of its card, checked by tests/test_pretrained.py).
set -euo pipefail
RUNS=${1:?usage: pretrained.sh RUNS_DIR [MNIST_DIR]}
MNIST=${2:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/mnist}
cd "$(dirname "$0")/.."
OUT=vqlatent/pretrained
PY=${PYTHON:-python}
set -x
$PY -m vqlatent.main --config=configs/vqvae.py --workdir="$RUNS/digits_vqvae"
$PY -m vqlatent.main --config=configs/vqvae2.py --workdir="$RUNS/digits_vqvae2"
[ -f "$RUNS/digits_vqvae2/codes/manifest.json" ] || \
  $PY -m vqlatent.main --config=configs/vqvae2.py --workdir="$RUNS/digits_vqvae2" --mode=extract_codes
$PY -m vqlatent.main --config="configs/pixelcnn.py:digits,level=bottom,codes_dir=$RUNS/digits_vqvae2/codes" \
  --workdir="$RUNS/digits_prior_bottom"
$PY -m vqlatent.main --config="configs/pixelcnn.py:digits,level=top,codes_dir=$RUNS/digits_vqvae2/codes" \
  --workdir="$RUNS/digits_prior_top" --config.sample.lower_priors="bottom=$RUNS/digits_prior_bottom"
$PY -m vqlatent.main --config=configs/infogan.py --workdir="$RUNS/digits_infogan"
for pair in digits_vqvae:digits_vqvae digits_vqvae2_chain:digits_prior_top digits_infogan:digits_infogan; do
  rm -rf "${OUT:?}/${pair%%:*}"
  $PY -m vqlatent.main --mode=export --workdir="$RUNS/${pair#*:}" --config.export.dir="$OUT/${pair%%:*}"
done
if [ -f "$MNIST/train-images-idx3-ubyte.gz" ]; then
  bash scripts/pretrained_mnist_chain.sh "$RUNS" "$MNIST"
  rm -rf "${OUT:?}/mnist_vqvae2_chain"
  $PY -m vqlatent.main --mode=export --workdir="$RUNS/mnist_prior_top" --config.export.dir="$OUT/mnist_vqvae2_chain" \
    --config.export.lower_priors="bottom=$RUNS/mnist_prior_bottom"
fi

#!/bin/bash
# Trains the MNIST class -> codes -> pixels chain that ships as `pretrained:mnist_vqvae2_chain`:
# the VQ-VAE-2 (configs/vqvae2.py:mnist, 2000 steps), its codes, a class-conditional top prior and a
# bottom prior conditioned on the class and the top codes (configs/pixelcnn.py:mnist), and the MNIST
# classifier that judges the chain's samples (configs/classifier.py:mnist).
#
#   bash scripts/pretrained_mnist_chain.sh RUNS_DIR [MNIST_DIR]
#
# Every step resumes exactly when the same command runs again (a finished step is a no-op: its
# checkpoint is at the final step). Pin it to a core with `taskset -c 1` beside other work.
set -euo pipefail
RUNS=${1:?usage: pretrained_mnist_chain.sh RUNS_DIR [MNIST_DIR]}
MNIST=${2:-$(cd "$(dirname "$0")/../../shared/data/mnist" && pwd)}
PY=${PYTHON:-python}
AE=$RUNS/mnist_vqvae2
set -x
$PY -m vqlatent.main --config=configs/vqvae2.py:mnist --config.data.manual_dir="$MNIST" --workdir="$AE"
[ -f "$AE/codes/manifest.json" ] || $PY -m vqlatent.main --config=configs/vqvae2.py:mnist \
  --config.data.manual_dir="$MNIST" --workdir="$AE" --mode=extract_codes
$PY -m vqlatent.main --config=configs/classifier.py:mnist --config.data.manual_dir="$MNIST" --workdir="$RUNS/mnist_classifier"
$PY -m vqlatent.main --config="configs/pixelcnn.py:mnist,level=top,codes_dir=$AE/codes" --workdir="$RUNS/mnist_prior_top"
$PY -m vqlatent.main --config="configs/pixelcnn.py:mnist,level=bottom,codes_dir=$AE/codes" --workdir="$RUNS/mnist_prior_bottom"

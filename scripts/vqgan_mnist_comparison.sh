#!/bin/bash
# VQGAN (L1 + PatchGAN) against L2 on MNIST at 7x7 codes, K=16 (configs/vqgan.py:mnist), seeds 0 and 1:
# trains the four autoencoders, the MNIST classifier that judges them, then each one's reconstruction
# Frechet distance (W/eval/rfd_<step>.json) and the side-by-side grid of seed 0.
#
#   bash scripts/vqgan_mnist_comparison.sh RUNS_DIR [MNIST_DIR]
#
# Every step resumes exactly when the same command runs again (a finished one is a no-op). About 10
# (L2) and 25 (VQGAN) minutes per run on one free core; pin it with `taskset -c 1` beside other work.
set -euo pipefail
RUNS=${1:?usage: vqgan_mnist_comparison.sh RUNS_DIR [MNIST_DIR]}
MNIST=${2:-$(cd "$(dirname "$0")/../../shared/data/mnist" && pwd)}
PY=${PYTHON:-python}
set -x
$PY -m vqlatent.main --config=configs/classifier.py:mnist --config.data.manual_dir="$MNIST" --workdir="$RUNS/mnist_classifier"
for seed in 0 1; do
  for loss in l2 vqgan; do
    W=$RUNS/vqgan_${loss}_s$seed
    $PY -m vqlatent.main --config="configs/vqgan.py:mnist,loss=$loss" --config.data.manual_dir="$MNIST" \
      --config.seed=$seed --workdir="$W"
    ls "$W"/eval/rfd_*.json > /dev/null 2>&1 || $PY -m vqlatent.models.reconstruction_fd --workdir="$W" \
      --classifier_workdir="$RUNS/mnist_classifier"
  done
done
$PY scripts/compare_reconstructions.py --models="$RUNS/vqgan_l2_s0,$RUNS/vqgan_vqgan_s0" --manual_dir="$MNIST" \
  --num=16 --output="$RUNS/vqgan_mnist_reconstructions.png"

#!/bin/bash
# MaskGIT against PixelCNN top priors on MNIST, in the chain of pretrained:mnist_vqvae2_chain: both are
# trained on that model's codes (seeds 0 and 1; the same batch, steps and about the same parameters) and
# judged above its PixelCNN bottom prior by the project's MNIST classifier (label accuracy, Frechet
# distance), MaskGIT at 4, 8 and 12 decoding steps; the shipped chain itself is judged beside them.
#
# With LEVEL=bottom, the bottom priors instead (seed 0, BOTTOM_STEPS steps each, default 1000; MaskGIT's
# warmup a tenth of them, its config's rule): a PixelCNN and a MaskGIT bottom prior on the same codes,
# each judged below the chain's PixelCNN top prior.
#
#   [LEVEL=top|bottom] bash scripts/maskgit_mnist_comparison.sh RUNS_DIR [MNIST_DIR]
#
# Writes RUNS_DIR/eval/<name>/sample_eval.{json,png}. Every step resumes exactly when the same command
# runs again. About 40 minutes per top prior and 30-50 per bottom prior (1000 steps) on one free core;
# pin it with `taskset -c 1`.
set -euo pipefail
RUNS=${1:?usage: [LEVEL=top|bottom] maskgit_mnist_comparison.sh RUNS_DIR [MNIST_DIR]}
MNIST=${2:-$(cd "$(dirname "$0")/../../shared/data/mnist" && pwd)}
LEVEL=${LEVEL:-top}
PY=${PYTHON:-python}
CHAIN=pretrained:mnist_vqvae2_chain
CODES=$RUNS/mnist_codes
set -x
$PY -m vqlatent.main --config=configs/classifier.py:mnist --config.data.manual_dir="$MNIST" --workdir="$RUNS/mnist_classifier"
[ -f "$CODES/manifest.json" ] || $PY -m vqlatent.main --mode=encode --workdir=$CHAIN \
  --config.encode.input=training_data --config.encode.manual_dir="$MNIST" --config.encode.output_dir="$CODES"
judge() {  # judge NAME MODEL [flags...]
  local name=$1 model=$2
  shift 2
  [ -f "$RUNS/eval/$name/sample_eval.json" ] || $PY -m vqlatent.models.chain_eval --model="$model" \
    --classifier_workdir="$RUNS/mnist_classifier" --manual_dir="$MNIST" --output_dir="$RUNS/eval/$name" "$@"
}
judge shipped $CHAIN
if [ "$LEVEL" = bottom ]; then
  steps=${BOTTOM_STEPS:-1000}
  $PY -m vqlatent.main --config="configs/pixelcnn.py:mnist,level=bottom,codes_dir=$CODES" --config.seed=0 \
    --config.num_train_steps="$steps" --workdir="$RUNS/pixelcnn_bottom_s0"
  $PY -m vqlatent.main --config="configs/maskgit.py:mnist,level=bottom,codes_dir=$CODES" --config.seed=0 \
    --config.num_train_steps="$steps" --config.optimizer.warmup_steps=$((steps / 10)) \
    --workdir="$RUNS/maskgit_bottom_s0"
  judge pixelcnn_bottom_s0 $CHAIN --lower_priors=bottom="$RUNS/pixelcnn_bottom_s0"
  for steps in 4 8 12; do
    judge maskgit_bottom_s0_T$steps $CHAIN --lower_priors=bottom="$RUNS/maskgit_bottom_s0" --num_steps=$steps
  done
  exit 0
fi
for seed in 0 1; do
  for prior in pixelcnn maskgit; do
    $PY -m vqlatent.main --config="configs/$prior.py:mnist,level=top,codes_dir=$CODES" --config.seed=$seed \
      --workdir="$RUNS/${prior}_top_s$seed"
  done
  judge pixelcnn_s$seed "$RUNS/pixelcnn_top_s$seed" --lower_priors=bottom=$CHAIN
  for steps in 4 8 12; do
    judge maskgit_s${seed}_T$steps "$RUNS/maskgit_top_s$seed" --lower_priors=bottom=$CHAIN --num_steps=$steps
  done
done

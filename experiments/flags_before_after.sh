#!/bin/bash
# Usage: bash experiments/flags_before_after.sh  (OUT=DIR to keep the JSON; CLOCK=process on a shared machine)
# Issue 13: every train-step row, ours vs PyTorch (alternating in one process), before (jaxlib's
# default XLA:CPU flags: VQLATENT_XLA_FLAGS=0) and after (the package's flags), pinned to core 0,
# PyTorch with one thread. Run on a quiet machine (the InfoGAN seed paused with SIGSTOP).
cd "$(dirname "$0")/.." || exit 1
CLOCK=${CLOCK:-wall}
OUT=${OUT:-$(mktemp -d)}; echo "results in $OUT"
ROWS=(
  "vqvae_mnist|--config=configs/vqvae.py:mnist --batch_size=128"
  "vqvae2_64|--config=configs/vqvae2.py:imagenet256 --image_shape=64,64,3 --batch_size=16"
  "vqvae2_256|--config=configs/vqvae2.py:imagenet256 --batch_size=4"
  "prior_top|--config=configs/pixelcnn.py:mnist,level=top --codes_config=configs/vqvae2.py:mnist"
  "prior_bottom|--config=configs/pixelcnn.py:mnist,level=bottom --codes_config=configs/vqvae2.py:mnist"
  "infogan_mnist|--config=configs/infogan.py:mnist"
)
for row in "${ROWS[@]}"; do
  name=${row%%|*}; args=${row#*|}
  for when in before after; do
    if [ $when = before ]; then export VQLATENT_XLA_FLAGS=0; else unset VQLATENT_XLA_FLAGS; fi
    json=$OUT/${name}_${when}.json; log=${json%.json}.log
    read -r -a flags <<< "$args"
    taskset -c 0 python benchmarks/train_step_bench.py "${flags[@]}" --steps=4 --rounds=3 --torch_threads=1 \
      --clock="$CLOCK" --json_out="$json" > "$log" 2>&1
    echo "$(date -u +%T) $name $when: $(grep -h 'ratio' "$log") | $(grep -h '^jax:' "$log" | cut -c1-60)"
  done
done

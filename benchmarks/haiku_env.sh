#!/usr/bin/env bash
# Creates the separate virtual environment for benchmarks/quantizer_bench.py:
# the project's JAX/Flax pins plus DeepMind Haiku, the reference the quantizer
# is compared with. Haiku is not a dependency of vqlatent, so it lives in its
# own venv; the benchmark imports vqlatent from the source tree (PYTHONPATH).
#
# Checked (2026-11-24, Python 3.11): dm-haiku 0.0.17 (the newest on PyPI) runs
# with jax/jaxlib 0.10.2 and flax 0.12.8 -- hk.nets.VectorQuantizer and
# hk.nets.VectorQuantizerEMA initialise, train and agree with ours (see the
# benchmark's --mode=agreement), so no older JAX is needed.
#
# Usage: bash benchmarks/haiku_env.sh VENV_DIR
# Then:  PYTHONPATH=. VENV_DIR/bin/python benchmarks/quantizer_bench.py --mode=all
#   or:  python benchmarks/run_all.py --only=haiku --haiku_python=VENV_DIR/bin/python
set -euo pipefail
VENV_DIR="${1:?usage: bash benchmarks/haiku_env.sh VENV_DIR (where to create the venv)}"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m venv "$VENV_DIR"
"$VENV_DIR/bin/pip" install -q --upgrade pip
"$VENV_DIR/bin/pip" install -q "jax==0.10.2" "jaxlib==0.10.2" "flax==0.12.8" \
  "ml-collections>=1.0,<2" "dm-haiku==0.0.17" "psutil>=5"
"$VENV_DIR/bin/python" -c "import jax, haiku; print('jax', jax.__version__, 'haiku', haiku.__version__)"

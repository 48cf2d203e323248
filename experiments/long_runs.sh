#!/bin/bash
# The long experiments behind the lab log (docs/lab/), as one queue that two workers (one per core) share.
# Archived: the job names are those of the lab-log entries (issue14_..., issue16_...) they produced.
#
#   bash experiments/long_runs.sh CORE JOB [JOB ...]
#
# Runs each JOB pinned to CPU core CORE, one after another, under /usr/bin/time -v (CPU time in the log).
# A job is claimed atomically (mkdir), so two workers given the same list split it between them; a job
# that finished is skipped and a job that was interrupted resumes exactly from its last checkpoint when
# the same command runs again (in a later session too). Start a worker in the background with e.g.
#
#   setsid nohup bash experiments/long_runs.sh 1 issue14_seed3 issue14_seed4 >> $RUNS/worker1.log 2>&1 < /dev/null &
#
# Environment: RUNS (required: the directory of the workdirs, logs and claims), CODE (the source tree to
# run, default this checkout; the lab log names the commit of each table, e.g. a `git archive` of it), MNIST (the idx
# files, default ../shared/data/mnist next to the checkout), PYTHON (default: python on PATH).
# After a machine restart, stale claims of jobs that were running are removed by `--reset-claims`.
#
# Jobs:
#   issue15_vqvae2, issue15_vqvae1_14x14    VQ-VAE-2 (2 levels) vs VQ-VAE (1 level, 14x14), 2000 steps
#   issue16_PRESET                          one row of the issue-16 quantizer table (configs/vqvae.py:mnist,
#                                           quantizer=PRESET, 2000 steps); also issue16_residual_vq2
#                                           (2 stages) and the LFQ ablations issue16_lfq_entropy0 and
#                                           issue16_lfq_commit1, SimVQ with its linear map at M times
#                                           the learning rate issue16_simvq_lrM (e.g. lr10), and residual FSQ without
#                                           quantize dropout issue16_residual_fsq_nodrop
#   issue14_seedN                           configs/infogan.py:mnist_invariant with the affine map alone
#                                           (no thickness change, no shear), seed N, ISSUE14_STEPS steps
#                                           (default 5000; the learning rates are constant, so a shorter run
#                                           is the start of a longer one and extends exactly); with
#                                           ISSUE14_CLASSIFIER=1 its evaluations measure class keeping too
#                                           (needs classifier_mnist)
#   issue14_VARIANT_seedN                   the same with a changed transformation, ISSUE14_STEPS steps:
#                                           thick (info.augment.max_thickness=0.5), rot30thick (and
#                                           max_rotation_degrees=30), shear03thick (thickness 0.5 and
#                                           max_shear=0.3: the config's default since 2026-12-06),
#                                           VARIANTlstd (any of them with Q's continuous std learned and
#                                           lambda_cont 0.1, e.g. shear03thicklstd)
#   issue14_eval_seedN, issue14_traverse_seedN (and issue14_VARIANT_eval_seedN, issue14_VARIANT_traverse_seedN)
#                                           seed N's newest checkpoint: --mode=eval with the MNIST
#                                           classifier (the continuous codes' class-keeping measures;
#                                           needs classifier_mnist) and --mode=traverse (10-column grids)
#   classifier_mnist                        configs/classifier.py:mnist (for InfoGAN's class measures and
#                                           the priors' sample evaluation)
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:?set RUNS=DIR: the directory of the workdirs, logs and claims}
CODE=${CODE:-$HERE}
PYTHON=${PYTHON:-python}
mkdir -p "$RUNS/claims" "$RUNS/logs"
if [ "${1:-}" = "--reset-claims" ]; then
  find "$RUNS/claims" -mindepth 1 -maxdepth 1 -type d -exec rmdir {} \; ; exit 0
fi
MNIST=$(cd "${MNIST:-$HERE/../shared/data/mnist}" && pwd) || { echo "no MNIST idx files: set MNIST=DIR" >&2; exit 2; }
CORE=${1:?usage: long_runs.sh CORE JOB...}; shift
cd "$CODE" || exit 2

for JOB in "$@"; do
  [ -e "$RUNS/claims/$JOB.done" ] && continue
  mkdir "$RUNS/claims/$JOB" 2>/dev/null || continue
  WORKDIR=$RUNS/$JOB
  case $JOB in
    issue15_vqvae2) ARGS=(--config=configs/vqvae2.py:mnist --config.num_train_steps=2000);;
    issue15_vqvae1_14x14) ARGS=(--config=configs/vqvae.py:mnist --config.model.num_downsamples=1 --config.num_train_steps=2000);;
    issue16_residual_vq2) ARGS=("--config=configs/vqvae.py:mnist,quantizer=residual_vq" --config.quantizer.num_stages=2);;
    issue16_lfq_entropy0) ARGS=("--config=configs/vqvae.py:mnist,quantizer=lfq" --config.quantizer.entropy_weight=0.0);;
    issue16_lfq_commit1) ARGS=("--config=configs/vqvae.py:mnist,quantizer=lfq" --config.quantizer.commitment_cost=1.0);;
    issue16_simvq_lr*) ARGS=("--config=configs/vqvae.py:mnist,quantizer=simvq" "--config.optimizer.lr_multipliers=codebook_transform=${JOB#issue16_simvq_lr}");;
    issue16_residual_fsq_nodrop) ARGS=("--config=configs/vqvae.py:mnist,quantizer=residual_fsq" --config.quantizer.quantize_dropout=False);;
    issue16_*) ARGS=("--config=configs/vqvae.py:mnist,quantizer=${JOB#issue16_}");;
    issue14_*seed*)
      # issue14_[VARIANT_][eval_|traverse_]seedN: the variant's extra flags, the mode, and the training workdir.
      NAME=${JOB#issue14_}; SEED=${NAME##*seed}; NAME=${NAME%seed*}; MODE="train"
      case $NAME in *eval_) MODE="eval"; NAME=${NAME%eval_};; *traverse_) MODE="traverse"; NAME=${NAME%traverse_};; esac
      # A trailing "lstd" adds Q's learned continuous std with lambda_cont 0.1 to any variant.
      Q_EXTRA=(); VARIANT=$NAME
      case $VARIANT in *lstd_) Q_EXTRA=(--config.model.q.continuous_std=learned --config.info.lambda_continuous=0.1)
                                VARIANT=${VARIANT%lstd_}; VARIANT=${VARIANT:+${VARIANT}_};; esac
      case $VARIANT in
        "") EXTRA=(--config.info.augment.max_thickness=0.0 --config.info.augment.max_shear=0.0);;  # Affine only.
        thick_) EXTRA=(--config.info.augment.max_thickness=0.5 --config.info.augment.max_shear=0.0);;
        rot30thick_) EXTRA=(--config.info.augment.max_thickness=0.5 --config.info.augment.max_shear=0.0
                            --config.info.augment.max_rotation_degrees=30);;
        shear03thick_) EXTRA=(--config.info.augment.max_thickness=0.5 --config.info.augment.max_shear=0.3);;
        *) echo "unknown issue-14 variant in $JOB" >&2; rmdir "$RUNS/claims/$JOB"; continue;;
      esac
      WORKDIR=$RUNS/issue14_${NAME}seed$SEED
      ARGS=(--config=configs/infogan.py:mnist_invariant "--config.seed=$SEED" "--mode=$MODE" "${EXTRA[@]}" "${Q_EXTRA[@]}"
            "--config.num_train_steps=${ISSUE14_STEPS:-5000}" --config.eval_every_steps=250 --config.checkpoint_every_steps=250)
      # Eval and traverse always measure class keeping with the classifier; training runs' evaluations
      # too when ISSUE14_CLASSIFIER=1.
      if [ "$MODE" != train ] || [ "${ISSUE14_CLASSIFIER:-0}" = 1 ]; then
        ARGS+=("--config.traversal.classifier_workdir=$RUNS/classifier_mnist")
      fi;;
    classifier_mnist) ARGS=(--config=configs/classifier.py:mnist);;
    *) echo "unknown job $JOB" >&2; rmdir "$RUNS/claims/$JOB"; continue;;
  esac
  echo "$(date -u +%FT%T) core $CORE start $JOB"
  /usr/bin/time -v taskset -c "$CORE" "$PYTHON" -m vqlatent.main "${ARGS[@]}" \
    --config.data.manual_dir="$MNIST" --workdir="$WORKDIR" >> "$RUNS/logs/$JOB.log" 2>&1
  rc=$?
  echo "$(date -u +%FT%T) core $CORE end $JOB exit $rc"
  [ $rc -eq 0 ] && touch "$RUNS/claims/$JOB.done"
  rmdir "$RUNS/claims/$JOB"
done

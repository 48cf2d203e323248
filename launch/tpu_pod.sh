#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (one host or a pod slice): create the slice, copy this
# repository to every worker, install it, start the same training command on all workers
# (JAX connects them with jax.distributed), stream the output, delete the slice.
#
#   launch/tpu_pod.sh --name=vq2 --zone=us-central2-b --accelerator=v4-32 \
#       --gcs_bucket=my-bucket --workdir=/mnt/gcs/runs/vqvae_imagenet128 \
#       -- --config=configs/vqvae.py:imagenet128 --config.data.data_dir=/mnt/gcs/tfds
#
# Everything after `--` is passed to `python -m vqlatent.main`.
#
# Options:
#   --name=NAME            TPU VM name (required).
#   --zone=ZONE            e.g. us-central2-b (required).
#   --accelerator=TYPE     e.g. v4-8, v4-32, v5litepod-16 (required).
#   --version=RUNTIME      TPU VM software version (default tpu-ubuntu2204-base; v5e:
#                          v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e).
#   --project=PROJECT      Google Cloud project (default: gcloud's configured one).
#   --workdir=DIR          Checkpoints/logs directory, on a filesystem EVERY worker sees
#                          (required): a gcsfuse mount (--gcs_bucket) or NFS/Filestore.
#   --gcs_bucket=BUCKET    Install gcsfuse on every worker and mount gs://BUCKET at /mnt/gcs.
#   --spot                 Create a Spot slice. When it is preempted the run saves and exits;
#                          rerun this script with the same --workdir to resume.
#   --reuse                Use an existing slice NAME (skip create and install).
#   --keep                 Do not delete the slice at the end.
#   --dry_run              Print the commands instead of running them.
set -euo pipefail

NAME="" ZONE="" ACCELERATOR="" VERSION="tpu-ubuntu2204-base" PROJECT="" WORKDIR=""
GCS_BUCKET="" SPOT=0 REUSE=0 KEEP=0 DRY_RUN=0
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRAIN_ARGS=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCELERATOR="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --gcs_bucket=*) GCS_BUCKET="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --reuse) REUSE=1 ;;
    --keep) KEEP=1 ;;
    --dry_run) DRY_RUN=1 ;;
    -h|--help) usage 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) die "unknown option '$1' (training flags go after '--'; see --help)" ;;
  esac
  shift
done
[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ -n "$ACCELERATOR" || "$REUSE" == 1 ]] || die "--accelerator is required (e.g. v4-32)"
[[ -n "$WORKDIR" ]] || die "--workdir is required (a directory every worker sees)"
((${#TRAIN_ARGS[@]})) || die "no training flags after '--' (at least --config=...)"

# Prints a command the way it can be pasted into a shell.
show() {
  local arg out=()
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$arg"); else out+=("${arg@Q}"); fi
  done
  echo "+ ${out[*]}"
}
run() { show "$@"; if [[ "$DRY_RUN" == 0 ]]; then "$@"; fi; }

GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")
on_all_workers() { run "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"; }

if [[ "$REUSE" == 0 ]]; then
  create=("${GCLOUD_TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR"
          --version="$VERSION")
  [[ "$SPOT" == 1 ]] && create+=(--spot)
  run "${create[@]}"
fi
if [[ "$KEEP" == 0 ]]; then
  delete_slice() { run "${GCLOUD_TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet; }
  trap delete_slice EXIT
fi

if [[ "$REUSE" == 0 ]]; then
  # The working tree as it is (uncommitted edits included), without git history or venvs.
  TARBALL="${TMPDIR:-/tmp}/vqlatent_${NAME}.tgz"
  run tar -C "$REPO" -czf "$TARBALL" --exclude=.git --exclude=.venv --exclude='*.egg-info' \
    --exclude=__pycache__ .
  run "${GCLOUD_TPU[@]}" scp "$TARBALL" "$NAME":vqlatent.tgz "${WHERE[@]}" --worker=all
  on_all_workers "rm -rf ~/vqlatent && mkdir -p ~/vqlatent && tar -xzf ~/vqlatent.tgz -C ~/vqlatent \
&& python3 -m pip install -q --upgrade pip && python3 -m pip install -q -e ~/vqlatent 'jax[tpu]>=0.9,<0.11'"
  if [[ -n "$GCS_BUCKET" ]]; then
    # gcsfuse renames directories only with --rename-dir-limit; orbax commits a checkpoint
    # by renaming its temporary directory.
    on_all_workers "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null \
&& echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \
gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null \
&& sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse \
&& sudo mkdir -p /mnt/gcs && sudo chown \"\$USER\" /mnt/gcs \
&& gcsfuse --implicit-dirs --rename-dir-limit=100000 $(printf '%q' "$GCS_BUCKET") /mnt/gcs"
  fi
fi

# The same command on every worker; jax.distributed.initialize() finds the others from the
# TPU metadata. Each worker keeps its own log in ~/vqlatent_train.log; gcloud streams them all.
if [[ "$WORKDIR" == \~/* ]]; then  # ~ means the worker's home, not this machine's.
  workdir_q="\"\$HOME\"/$(printf '%q' "${WORKDIR#\~/}")"
else
  workdir_q="$(printf '%q' "$WORKDIR")"
fi
train_cmd="python3 -m vqlatent.main --distributed --workdir=$workdir_q"
train_cmd+="$(printf ' %q' "${TRAIN_ARGS[@]}")"
on_all_workers "set -o pipefail; cd ~/vqlatent && $train_cmd 2>&1 | tee -a ~/vqlatent_train.log"

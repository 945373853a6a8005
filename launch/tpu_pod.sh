#!/usr/bin/env bash
# Train BaryIR on a Cloud TPU VM slice (one host or a multi-host pod slice) with gcloud.
#
#   launch/tpu_pod.sh --name NAME --zone ZONE --workdir gs://BUCKET/runs/3d [options] [-- --config.x=... ...]
#
# Steps (each can be skipped):
#   1. create the TPU VM slice                         (--create; off by default: the slice may exist already)
#   2. install the package on every worker             (--install / --no-install; on by default)
#   3. run baryir-train on every worker at once        (--no-train to skip)
# Every worker runs the same baryir-train command; jax.distributed.initialize finds the other workers by
# itself on TPU VMs. The workdir must be one location all workers see (a gs:// bucket or a shared disk), and
# so must the prepared data (--data-dir). Arguments after `--` are passed to baryir-train unchanged, e.g.
# `-- --config.dtype=bfloat16 --config.data.batch_size=64`.
#
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --name NAME              TPU VM name (required)
  --zone ZONE              e.g. us-central2-b (required)
  --workdir DIR            checkpoints, logs and the exported model; gs:// or shared (required unless --no-train)
  --config FILE[:ARG]      training config, relative to the repository (default configs/three_task.py)
  --data-dir DIR           prepared data (sets --config.data.data_dir)
  --project PROJECT        gcloud project (default: gcloud's configured one)
  --accelerator-type TYPE  for --create, e.g. v5litepod-16, v4-32 (default v5litepod-8)
  --version VERSION        TPU VM software version for --create (default v2-alpha-tpuv5-lite)
  --spot                   create a Spot (preemptible) slice; the run resumes from its workdir when restarted
  --repo URL               git URL to install from (default: this checkout's `origin` remote)
  --ref REF                branch, tag or commit to install (default main)
  --create                 create the slice first
  --no-install             skip the installation step
  --no-train               skip the training step
  --dry-run                print the commands, run nothing
  -h, --help               this help
EOF
}

name="" zone="" workdir="" config="configs/three_task.py" data_dir="" project=""
accel="v5litepod-8" version="v2-alpha-tpuv5-lite" spot=0 repo="" ref="main"
create=0 install=1 train=1 dry_run=0
extra=()

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --name) need_value "$@"; name=$2; shift 2 ;;
    --zone) need_value "$@"; zone=$2; shift 2 ;;
    --workdir) need_value "$@"; workdir=$2; shift 2 ;;
    --config) need_value "$@"; config=$2; shift 2 ;;
    --data-dir) need_value "$@"; data_dir=$2; shift 2 ;;
    --project) need_value "$@"; project=$2; shift 2 ;;
    --accelerator-type) need_value "$@"; accel=$2; shift 2 ;;
    --version) need_value "$@"; version=$2; shift 2 ;;
    --repo) need_value "$@"; repo=$2; shift 2 ;;
    --ref) need_value "$@"; ref=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --create) create=1; shift ;;
    --install) install=1; shift ;;
    --no-install) install=0; shift ;;
    --no-train) train=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option '$1' (baryir-train overrides go after '--'; see --help)" ;;
  esac
done

[ -n "$name" ] || die "--name is required"
[ -n "$zone" ] || die "--zone is required"
if [ "$train" -eq 1 ] && [ -z "$workdir" ]; then
  die "--workdir is required (a gs:// path or a disk every worker shares)"
fi
if [ "$install" -eq 1 ] && [ -z "$repo" ]; then
  here=$(cd "$(dirname "$0")/.." && pwd)
  repo=$(git -C "$here" remote get-url origin 2>/dev/null || true)
  [ -n "$repo" ] || die "--repo URL is required: this checkout has no 'origin' remote to install from"
fi
if [ "$dry_run" -eq 0 ] && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) or use --dry-run"
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[ -n "$project" ] && where+=(--project="$project")

run() {
  if [ "$dry_run" -eq 1 ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# The commands run on the workers: a virtual environment in ~/baryir-venv and a checkout in ~/baryir_jax.
# shellcheck disable=SC2016  # $HOME is expanded on the worker, not here
remote_install=$(printf 'set -e; if [ -d ~/baryir_jax/.git ]; then git -C ~/baryir_jax fetch -q origin; else git clone -q %q ~/baryir_jax; fi; git -C ~/baryir_jax checkout -q %q; git -C ~/baryir_jax pull -q --ff-only origin %q 2>/dev/null || true; python3 -m venv ~/baryir-venv; ~/baryir-venv/bin/pip install -q -U pip; ~/baryir-venv/bin/pip install -q -e "$HOME/baryir_jax[tpu]"' \
  "$repo" "$ref" "$ref")

train_args=(--config="$config" --workdir="$workdir")
[ -n "$data_dir" ] && train_args+=(--config.data.data_dir="$data_dir")
train_args+=("${extra[@]}")
remote_train="cd ~/baryir_jax && ~/baryir-venv/bin/baryir-train"
for a in "${train_args[@]}"; do
  remote_train+=" $(printf '%q' "$a")"
done

if [ "$create" -eq 1 ]; then
  create_cmd=("${gcloud_tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accel" --version="$version")
  [ "$spot" -eq 1 ] && create_cmd+=(--spot)
  run "${create_cmd[@]}"
fi
if [ "$install" -eq 1 ]; then
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$remote_install"
fi
if [ "$train" -eq 1 ]; then
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$remote_train"
fi

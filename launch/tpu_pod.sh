#!/usr/bin/env bash
# Train BaryIR on a Cloud TPU VM slice (one host or a multi-host pod slice) with gcloud.
#
#   launch/tpu_pod.sh --name NAME --zone ZONE --workdir gs://BUCKET/runs/3d [options] [-- --config.x=... ...]
#
# Steps (each can be skipped):
#   0. compile the training step for the slice here, on this machine's CPU, and stop if it does not fit
#      (--preflight; needs the package with its tpu extra installed locally: pip install -e ".[tpu]")
#   1. create the TPU VM slice                         (--create; off by default: the slice may exist already)
#   2. install the package on every worker             (--install / --no-install; on by default)
#   3. run baryir-train on every worker at once        (--no-train to skip)
# The Cloud TPU images for JAX (tpu-ubuntu2204-base, v2-alpha-tpuv5-lite, ...) ship Python 3.10 and baryir_jax
# needs >= 3.11, so step 2 installs uv (pip install --user uv) and makes ~/baryir-venv with a uv-managed
# Python 3.12 (--python VERSION to choose another, --python system to use the image's python3 when it is
# >= 3.11; an older one stops the install with a message naming it).
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
  --python VERSION         Python of the workers' venv, installed with uv (default 3.12; >= 3.11), or
                           'system' for the image's python3 (refused if older than 3.11)
  --preflight              first compile the step for --accelerator-type locally (baryir-preflight) and stop
                           if it does not fit the chips' memory (the overrides after `--` are applied)
  --create                 create the slice first
  --no-install             skip the installation step
  --no-train               skip the training step
  --dry-run                print the commands, run nothing
  -h, --help               this help
EOF
}

name="" zone="" workdir="" config="configs/three_task.py" data_dir="" project=""
accel="v5litepod-8" version="v2-alpha-tpuv5-lite" spot=0 repo="" ref="main"
create=0 install=1 train=1 dry_run=0 python="3.12" preflight=0
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
    --python) need_value "$@"; python=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --preflight) preflight=1; shift ;;
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

case "$python" in
  system) ;;
  3.1[1-9]|3.[2-9][0-9]) ;;
  *) die "--python takes a Python version >= 3.11 such as 3.12 (installed with uv), or 'system'; got '$python'" ;;
esac
[ -n "$name" ] || die "--name is required"
[ -n "$zone" ] || die "--zone is required"
if [ "$train" -eq 1 ] && [ -z "$workdir" ]; then
  die "--workdir is required (a gs:// path or a disk every worker shares)"
fi
here=$(cd "$(dirname "$0")/.." && pwd)  # this checkout: the preflight runs here, --config is relative to it
if [ "$install" -eq 1 ] && [ -z "$repo" ]; then
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

# What step 2 runs on every worker, one statement a line (joined with '; ' into one ssh command): a checkout in
# ~/baryir_jax and a virtual environment in ~/baryir-venv whose Python is checked (pyver prints MAJOR.MINOR).
# shellcheck disable=SC2016  # $HOME, $(...) and the functions are expanded on the worker, not here
install_steps=(
  'set -e'
  'pyver() { "$1" -c "import sys; print(\"%d.%d\" % sys.version_info[:2])" 2>/dev/null || echo none; }'
  'new_enough() { case "$1" in 3.1[1-9]|3.[2-9][0-9]) return 0 ;; *) return 1 ;; esac; }'
  "$(printf 'if [ -d ~/baryir_jax/.git ]; then git -C ~/baryir_jax fetch -q origin; else git clone -q %q ~/baryir_jax; fi' "$repo")"
  "$(printf 'git -C ~/baryir_jax checkout -q %q' "$ref")"
  "$(printf 'git -C ~/baryir_jax pull -q --ff-only origin %q 2>/dev/null || true' "$ref")"
)
if [ "$python" = system ]; then
  # shellcheck disable=SC2016
  install_steps+=(
    'v=$(pyver python3)'
    'if ! new_enough "$v"; then echo "tpu_pod.sh: this worker'"'"'s python3 is Python $v (the image'"'"'s own); baryir_jax needs Python >= 3.11. Rerun without --python system: uv then installs Python 3.12 into ~/baryir-venv" >&2; exit 3; fi'
    'if [ "$(pyver ~/baryir-venv/bin/python)" != "$v" ]; then rm -rf ~/baryir-venv; python3 -m venv ~/baryir-venv; fi'
    '"$HOME/baryir-venv/bin/pip" install -q -U pip'
    '"$HOME/baryir-venv/bin/pip" install -q -e "$HOME/baryir_jax[tpu]"'
  )
else
  # shellcheck disable=SC2016
  install_steps+=(
    'export PATH="$HOME/.local/bin:$PATH"'
    'if ! command -v uv >/dev/null; then python3 -m pip install -q --user uv || curl -LsSf https://astral.sh/uv/install.sh | sh; fi'
    "$(printf 'if [ "$(pyver ~/baryir-venv/bin/python)" != %q ]; then rm -rf ~/baryir-venv; uv venv -q --seed --python %q ~/baryir-venv; fi' "$python" "$python")"
    'v=$(pyver ~/baryir-venv/bin/python)'
    "$(printf 'if ! new_enough "$v"; then echo "tpu_pod.sh: ~/baryir-venv has Python $v, not the %s that uv was asked for; baryir_jax needs Python >= 3.11" >&2; exit 3; fi' "$python")"
    'uv pip install -q --python ~/baryir-venv/bin/python -e "$HOME/baryir_jax[tpu]"'
  )
fi
remote_install=$(printf '%s; ' "${install_steps[@]}")
remote_install=${remote_install%; }

train_args=(--config="$config" --workdir="$workdir")
[ -n "$data_dir" ] && train_args+=(--config.data.data_dir="$data_dir")
train_args+=("${extra[@]}")
remote_train="cd ~/baryir_jax && ~/baryir-venv/bin/baryir-train"
for a in "${train_args[@]}"; do
  remote_train+=" $(printf '%q' "$a")"
done

if [ "$preflight" -eq 1 ]; then
  # The overrides after `--` that change the config (the rest are baryir-train's own flags).
  preflight_cmd=(baryir-preflight --config "$config" --accelerator "$accel")
  for a in "${extra[@]}"; do
    case "$a" in --config.*|--noconfig.*) preflight_cmd+=("$a") ;; esac
  done
  if [ "$dry_run" -eq 1 ]; then
    run "${preflight_cmd[@]}"
  else
    command -v baryir-preflight >/dev/null 2>&1 \
      || die "baryir-preflight not found: install the package here with its tpu extra (pip install -e \".[tpu]\")"
    if ! (cd "$here" && "${preflight_cmd[@]}"); then
      echo "tpu_pod.sh: the preflight for $accel failed (its message is above); nothing was created or launched" >&2
      exit 1
    fi
  fi
fi
if [ "$create" -eq 1 ]; then
  create_cmd=("${gcloud_tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accel" --version="$version")
  [ "$spot" -eq 1 ] && create_cmd+=(--spot)
  run "${create_cmd[@]}"
fi
if [ "$install" -eq 1 ]; then
  if [ "$dry_run" -eq 1 ]; then
    echo "# step 2, on every worker (python $python):" >&2
    printf '#   %s\n' "${install_steps[@]}" >&2
  fi
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$remote_install"
fi
if [ "$train" -eq 1 ]; then
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$remote_train"
fi

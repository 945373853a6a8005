#!/usr/bin/env bash
# Train BaryIR on one host with all (or some) of its NVIDIA GPUs: one process, the batch split over the GPUs.
#
#   launch/gpu_host.sh --workdir runs/3d [--config configs/three_task.py] [--gpus 0,1,2,3] [-- --config.x=...]
#
# One process drives every visible GPU (no jax.distributed needed on one host). Unless you set
# --config.data.batch_size yourself, the global batch is the official per-GPU batch (3) times the number of
# GPUs, or --batch-per-gpu N times it. Install first with: pip install -e ".[cuda]"
# Arguments after `--` are passed to baryir-train unchanged. --dry-run prints the command instead of running it.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --workdir DIR          checkpoints, logs and the exported model (required)
  --config FILE[:ARG]    training config (default configs/three_task.py)
  --data-dir DIR         prepared data (sets --config.data.data_dir)
  --gpus LIST            GPU indices to use, e.g. 0,1 (default: all; sets CUDA_VISIBLE_DEVICES)
  --batch-per-gpu N      per-GPU batch (default 3, the official batch)
  --bf16                 bfloat16 compute with float32 parameters (--config.dtype=bfloat16)
  --dry-run              print the command, run nothing
  -h, --help             this help
EOF
}

die() { echo "gpu_host.sh: $*" >&2; exit 2; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
# The Python that baryir-train runs with (its #! line, or the python beside it in a virtual environment):
# baryir_jax needs >= 3.11. Says nothing when it cannot tell (no baryir-train yet, an unusual launcher).
check_python() {
  local exe py ver
  exe=$(command -v baryir-train 2>/dev/null) || return 0
  py=$(head -n 1 "$exe" | sed -n 's/^#![[:space:]]*\([^[:space:]]*\).*/\1/p')
  case "${py##*/}" in python*) ;; *) py="$(dirname "$exe")/python" ;; esac
  [ -x "$py" ] || return 0
  ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || return 0
  case "$ver" in
    3.1[1-9]|3.[2-9][0-9]) ;;
    *) die "$exe runs on $py, which is Python $ver; baryir_jax needs Python >= 3.11: make an environment with one (e.g. uv venv --python 3.12 ~/baryir-venv) and pip install -e \".[cuda]\" in it" ;;
  esac
}

workdir="" config="configs/three_task.py" data_dir="" gpus="" per_gpu=3 bf16=0 dry_run=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --workdir) need_value "$@"; workdir=$2; shift 2 ;;
    --config) need_value "$@"; config=$2; shift 2 ;;
    --data-dir) need_value "$@"; data_dir=$2; shift 2 ;;
    --gpus) need_value "$@"; gpus=$2; shift 2 ;;
    --batch-per-gpu) need_value "$@"; per_gpu=$2; shift 2 ;;
    --bf16) bf16=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option '$1' (baryir-train overrides go after '--'; see --help)" ;;
  esac
done

[ -n "$workdir" ] || die "--workdir is required"
case "$per_gpu" in ''|*[!0-9]*|0) die "--batch-per-gpu must be a positive integer, got '$per_gpu'" ;; esac

if [ -n "$gpus" ]; then
  case "$gpus" in *[!0-9,]*|,*|*,|*,,*) die "--gpus takes comma-separated indices such as 0,1,3; got '$gpus'" ;; esac
  IFS=, read -r -a gpu_list <<<"$gpus"
  n_gpus=${#gpu_list[@]}
elif command -v nvidia-smi >/dev/null 2>&1; then
  n_gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
  [ "$n_gpus" -gt 0 ] || die "nvidia-smi lists no GPU on this host"
elif [ "$dry_run" -eq 1 ]; then
  n_gpus=1
  echo "# nvidia-smi not found: assuming 1 GPU for the dry run (use --gpus to say which)" >&2
else
  die "nvidia-smi not found: is this a GPU host with the NVIDIA driver? (--gpus 0,1 to name GPUs explicitly)"
fi

if [ "$dry_run" -eq 0 ] && ! command -v baryir-train >/dev/null 2>&1; then
  die "baryir-train not found: install the package first (Python >= 3.11; pip install -e \".[cuda]\")"
fi
check_python

cmd=(baryir-train --config="$config" --workdir="$workdir")
[ -n "$data_dir" ] && cmd+=(--config.data.data_dir="$data_dir")
[ "$bf16" -eq 1 ] && cmd+=(--config.dtype=bfloat16)
user_batch=0
for a in "${extra[@]}"; do
  case "$a" in --config.data.batch_size=*) user_batch=1 ;; esac
done
[ "$user_batch" -eq 1 ] || cmd+=(--config.data.batch_size=$((per_gpu * n_gpus)))
cmd+=("${extra[@]}")

env_prefix=()
[ -n "$gpus" ] && env_prefix=(env CUDA_VISIBLE_DEVICES="$gpus")

echo "# $n_gpus GPU(s)" >&2
if [ "$dry_run" -eq 1 ]; then
  printf '%q ' "${env_prefix[@]}" "${cmd[@]}"
  printf '\n'
else
  exec "${env_prefix[@]}" "${cmd[@]}"
fi

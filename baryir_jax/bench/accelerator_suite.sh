#!/usr/bin/env bash
# Full-size training-step measurements on one accelerator, in one go, in priority order:
# JAX float32 and bfloat16 against the official PyTorch iteration (float32 and bf16 autocast) at the official
# batch (3) and patch (128), then batch 8. Every result is appended to OUTDIR/results.jsonl as soon as it
# exists, so a run cut short still leaves what it measured; stderr goes to OUTDIR/log.txt.
#
#   baryir_jax/bench/accelerator_suite.sh OUTDIR [OFFICIAL_REPO]
#
# Environment: PYTHON (default python3), PATCH (128), STEPS (10), WARMUP (2), EACH_TIMEOUT (240 s),
# BATCHES ("3 8"), CONFIG (configs/three_task.py).
set -u
out=${1:?usage: accelerator_suite.sh OUTDIR [OFFICIAL_REPO]}
official=${2:-}
py=${PYTHON:-python3}
patch=${PATCH:-128}
steps=${STEPS:-10}
warmup=${WARMUP:-2}
each=${EACH_TIMEOUT:-240}
config=${CONFIG:-configs/three_task.py}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

measure() {  # measure WHAT BATCH
  local what=$1 batch=$2 t0 rc
  t0=$(date +%s)
  echo "== $what batch $batch" | tee -a "$out/log.txt"
  timeout "$each" "$py" -m baryir_jax.bench.train_step --config "$config" --only "$what" --batch "$batch" \
    --patch "$patch" --steps "$steps" --warmup "$warmup" ${official:+--official-repo "$official"} \
    >>"$out/results.jsonl" 2>>"$out/log.txt"
  rc=$?
  echo "   rc=$rc wall=$(($(date +%s) - t0))s" | tee -a "$out/log.txt"
  [ "$rc" -eq 0 ] && tail -n 1 "$out/results.jsonl"
  return 0
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  "$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'
} | tee -a "$out/log.txt"

for batch in ${BATCHES:-3 8}; do
  measure float32 "$batch"
  [ -n "$official" ] && measure official "$batch"
  measure bfloat16 "$batch"
  [ -n "$official" ] && measure official-bf16 "$batch"
done
echo "== done" | tee -a "$out/log.txt"

#!/usr/bin/env bash
# Full-size training-step figures on one accelerator, in one run: the official 3D step (patch 128) in JAX float32
# and bfloat16 at per-device batch 3, 8, 16 and 32 (images/s, peak device memory, XLA's FLOPs per step and the
# model FLOP utilisation against the chip's bf16 peak), and the official PyTorch iteration at batch 3 and 8 for
# the JAX/PyTorch ratio. Each measurement runs in a fresh process, in priority order (batch 3 first); a failure
# (out of memory, timeout) is recorded and the run goes on. Results are appended to OUTDIR/results.jsonl as soon
# as they exist, so a run cut short keeps what it measured; OUTDIR/summary.json holds all of them and the ratios;
# stderr goes to OUTDIR/log.txt.
#
#   baryir_jax/bench/accelerator_suite.sh OUTDIR [OFFICIAL_REPO]
#
# Environment: PYTHON (default python3), PATCH (128), STEPS (10), WARMUP (2), EACH_TIMEOUT (240 s), BUDGET (total
# seconds after which the remaining measurements are skipped; default none), BATCHES ("3 8 16 32"),
# OFFICIAL_BATCHES ("3 8"), OFFICIAL_BF16 (1 = also the official iteration under bf16 autocast), CONFIG
# (configs/three_task.py), DTYPES (float32,bfloat16), PEAK_TFLOPS (the chip's peak if the table lacks it),
# PRECOMPILE (N: compile every JAX measurement first, N processes at a time, into a persistent compilation cache
# that the timed processes load; on a many-core GPU host 8 turns eight 2-4 minute compiles into about the longest
# one; default 0 = each timed process compiles its own), PRECOMPILE_TIMEOUT (seconds per compiling process).
set -u
out=${1:?usage: accelerator_suite.sh OUTDIR [OFFICIAL_REPO]}
official=${2:-}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  "$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'
} | tee -a "$out/log.txt"

args=(
  --config "${CONFIG:-configs/three_task.py}" --dtypes "${DTYPES:-float32,bfloat16}"
  --batches "${BATCHES:-3 8 16 32}" --official-batches "${OFFICIAL_BATCHES:-3 8}"
  --patch "${PATCH:-128}" --steps "${STEPS:-10}" --warmup "${WARMUP:-2}"
  --each-timeout "${EACH_TIMEOUT:-240}" --jsonl "$out/results.jsonl" --out "$out/summary.json"
)
[ -n "${BUDGET:-}" ] && args+=(--budget "$BUDGET")
[ -n "${PRECOMPILE:-}" ] && args+=(--precompile "$PRECOMPILE")
[ -n "${PRECOMPILE_TIMEOUT:-}" ] && args+=(--precompile-timeout "$PRECOMPILE_TIMEOUT")
[ -n "${PEAK_TFLOPS:-}" ] && args+=(--peak-tflops "$PEAK_TFLOPS")
[ "${OFFICIAL_BF16:-0}" = 1 ] && args+=(--official-bf16)
[ -n "$official" ] && args+=(--official-repo "$official")
"$py" -m baryir_jax.bench.train_step "${args[@]}" 2>>"$out/log.txt"
rc=$?
echo "== done rc=$rc" | tee -a "$out/log.txt"
exit "$rc"

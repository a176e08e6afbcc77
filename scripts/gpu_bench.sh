#!/usr/bin/env bash
# The benchmark runs behind docs/benchmarks.md, for a GPU machine, in bounded steps that go on after a failure.
# Logs, JSON and tuned tables are packed into $OUT/bench.tar.gz (else ./gpu_logs), plots copied beside it (the
# device tool brings back at most 8 files).
#   gpu_bench.sh [STEP ...]   steps: layers (per-issue layer scripts), int8 (INT8 GEMM + stage scripts),
#                             bench (moejit bench defaults), bench2 (deepseek-v3 + qwen3.6, TP 1 and 8, plot),
#                             tune (moejit tune for the issue-4 shapes, tables written into moejit/triton/configs)
#   MOEJIT_STEP_TIMEOUT       seconds per step (default 280); a device command has 600 s: two or three steps a call
# The pack is refreshed after every step, so a command killed at the device's limit still returns the steps done.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
DEST="${OUT:-$PWD/gpu_logs}"
LOG="$(mktemp -d)/bench"
mkdir -p "$DEST" "$LOG/logs"
LIMIT="${MOEJIT_STEP_TIMEOUT:-280}"
status=0

pack() {
  tar -czf "$DEST/bench.tar.gz" -C "$(dirname "$LOG")" bench
  cp "$LOG"/*.png "$DEST/" 2>/dev/null
}

step() {  # step NAME CMD...: run with a time limit, log to $LOG/logs/NAME.log, keep going on failure
  local name=$1; shift
  echo "== $name: $* ==" | tee "$LOG/logs/$name.log"
  local t0=$SECONDS
  # -k: a process stuck in a hung kernel never acts on SIGTERM
  timeout -k 15 "$LIMIT" "$@" 2>&1 | tee -a "$LOG/logs/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: rc=$rc, $((SECONDS - t0)) s ==" | tee -a "$LOG/logs/$name.log"
  [ "$rc" -eq 0 ] || status=1
  pack
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(layers int8 bench)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$LOG/logs/gpu.log"
for s in "${steps[@]}"; do
  case "$s" in
    layers)
      step cutlass_fp8 python3 scripts/bench_cutlass_fp8.py --check --breakdown --json "$LOG/cutlass_fp8.json"
      step triton_fp8 python3 scripts/bench_triton_fp8.py --breakdown --align --json "$LOG/triton_fp8.json" ;;
    int8)
      step int8_gemm python3 scripts/bench_int8_gemm.py --tile-m auto 64 128 --json "$LOG/int8_gemm.json"
      step int8_ops python3 -m moejit.int8.stage_bench --model qwen --ops ;;
    bench)
      step bench_default python3 -m moejit.cli bench --iters 50 --json "$LOG/bench_default.json" \
        --plot "$LOG/bench_default.png" ;;
    bench2)
      step bench_ds_qwen python3 -m moejit.cli bench --models deepseek-v3 qwen3.6-35b-a3b --tp-sizes 1 8 --iters 30 \
        --json "$LOG/bench_ds_qwen.json" --plot "$LOG/bench_ds_qwen.png" ;;
    tune)
      step tune_qwen python3 -m moejit.cli tune --models qwen3.6-35b-a3b --batch-sizes 4 64 1024 8192 \
        --output moejit/triton/configs
      step tune_mixtral python3 -m moejit.cli tune --models mixtral-8x7b --batch-sizes 4 64 2048 8192 \
        --output moejit/triton/configs
      step tune_deepseek python3 -m moejit.cli tune --models deepseek-v3 --batch-sizes 64 8192 \
        --output moejit/triton/configs
      mkdir -p "$LOG/configs" && cp moejit/triton/configs/*.json "$LOG/configs/" && pack ;;
    *) echo "unknown step $s" ; status=1 ;;
  esac
done
pack
echo "packed: $DEST/bench.tar.gz"
exit $status

#!/usr/bin/env bash
# moejit bench-int8 on a GPU machine (H100/H200), in one call that fits ~8-9 minutes. Run from the repo root with
# the package importable:
#     OUT=/some/dir bash scripts/gpu_bench_int8.sh
# Logs and JSON go to $OUT (default ./gpu_logs/bench_int8). Steps, each bounded by `timeout` (SIGTERM: the
# benchmark still prints and exports the cells it finished), run in order of importance and the script goes on
# after a failure:
#   1. build the JIT modules the benchmark needs (cached builds take seconds)
#   2. moejit bench-int8                                  (the seed's default shape, seed defaults)
#   3. moejit bench-int8 --fused-permute-quant
#   4. moejit bench-int8 --models qwen3.6-35b-a3b mixtral-8x7b --batch-sizes 64 512 2048 8192 (moderate replays)
#   5. GPU tests: tests/test_triton_int8_gpu.py tests/test_bench_int8_gpu.py
# A step gets at most its budget (seconds, overridable: T_BUILD T_DEFAULT T_FUSED T_SWEEP T_TESTS) and never more
# than what is left of T_TOTAL (default 520 s, inside the device's 600 s with room for setup); a step with less
# than 20 s left is skipped. The pack in $OUT is refreshed after every step. Exit status: 0 when every step
# succeeded.
set -u
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
# With $OUT set, everything is written to a scratch folder and packed into $OUT/bench_int8.tar.gz at the end (the
# device tool brings back at most 8 files); summary.log is copied beside it.
LOG="${OUT:-$PWD/gpu_logs}/bench_int8"
[ -n "${OUT:-}" ] && LOG="$(mktemp -d)/bench_int8"
mkdir -p "$LOG"
export COLUMNS="${COLUMNS:-200}"
export MOEJIT_ERR_LOG="$LOG/errors_measured.log"
T_TOTAL="${T_TOTAL:-520}"
T_BUILD="${T_BUILD:-90}" T_DEFAULT="${T_DEFAULT:-100}" T_FUSED="${T_FUSED:-70}" T_SWEEP="${T_SWEEP:-140}"
T_TESTS="${T_TESTS:-170}"
START=$(date +%s)
status=0
summary=()

left() { echo $(( T_TOTAL - ($(date +%s) - START) )); }

pack() {  # the device tool brings back at most 8 files: one archive, plus the summary
  if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/bench_int8.tar.gz" -C "$(dirname "$LOG")" bench_int8
    [ -f "$LOG/summary.log" ] && cp "$LOG/summary.log" "$OUT/int8_summary.log"
  fi
  return 0
}

# step NAME BUDGET LOGFILE -- command...
step() {
  local name="$1" budget="$2" logfile="$3"
  shift 4
  local remaining
  remaining=$(left)
  if [ "$remaining" -lt 20 ]; then
    echo "== $name: SKIPPED (only ${remaining}s of T_TOTAL left) ==" | tee -a "$LOG/summary.log"
    summary+=("$name: skipped")
    status=1
    return
  fi
  [ "$budget" -gt "$remaining" ] && budget=$remaining
  echo "== $name (timeout ${budget}s): $* ==" | tee "$logfile"
  local t0 rc
  t0=$(date +%s)
  timeout -s TERM -k 15 "$budget" "$@" 2>&1 | tee -a "$logfile"
  rc=${PIPESTATUS[0]}
  local dt=$(( $(date +%s) - t0 ))
  [ "$rc" -eq 124 ] && echo "!! $name: timed out after ${budget}s (partial results above)" | tee -a "$logfile"
  [ "$rc" -ne 0 ] && status=1
  summary+=("$name: rc=$rc in ${dt}s")
  pack
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
  git rev-parse --short HEAD 2>/dev/null
  python3 -m moejit.cli info
} 2>&1 | tee "$LOG/info.log"

step "build" "$T_BUILD" "$LOG/build.log" -- python3 - <<'PY'
import time
from moejit import jit
arch = jit.detect_arch()
for name in ("common", "sm80_int8", "sm90_fp8"):
    t0 = time.time()
    try:
        if not jit.get_module(name).supports(arch):
            print(f"{name}: not for sm_{arch}")
            continue
        r = jit.build(name, arch)
        print(f"{name:10s} sm_{arch}: {time.time() - t0:6.1f} s (cached={r.cached})")
    except Exception as exc:  # the benchmark shows the affected backends as errors
        print(f"{name:10s} sm_{arch}: FAILED {type(exc).__name__}: {exc}")
PY

step "bench-int8 (defaults)" "$T_DEFAULT" "$LOG/bench_default.log" -- \
  python3 -m moejit.cli bench-int8 --json "$LOG/bench_default.json" --csv "$LOG/bench_default.csv"

step "bench-int8 --fused-permute-quant" "$T_FUSED" "$LOG/bench_fused_permute.log" -- \
  python3 -m moejit.cli bench-int8 --fused-permute-quant --json "$LOG/bench_fused_permute.json"

step "bench-int8 sweep" "$T_SWEEP" "$LOG/bench_sweep.log" -- \
  python3 -m moejit.cli bench-int8 --models qwen3.6-35b-a3b mixtral-8x7b --batch-sizes 64 512 2048 8192 \
    --warmup 3 --iters 20 --ops-per-graph 5 --json "$LOG/bench_sweep.json" --csv "$LOG/bench_sweep.csv"

step "GPU tests" "$T_TESTS" "$LOG/tests.log" -- \
  python3 -m pytest -q -rs -m gpu -p no:cacheprovider --durations=8 tests/test_triton_int8_gpu.py \
    tests/test_bench_int8_gpu.py

{
  echo "== summary ($(( $(date +%s) - START ))s) =="
  printf '%s\n' "${summary[@]}"
  echo "exit status: $status"
} | tee -a "$LOG/summary.log"
pack
exit $status

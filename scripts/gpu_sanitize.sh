#!/usr/bin/env bash
# compute-sanitizer memcheck over the GPU tests that reach the kernels' edges (empty and hot experts, dropped slots,
# rows past the offsets, every CUTLASS tile configuration, zero-row batches), for a GPU machine. An out-of-bounds
# read or write that happens to leave the outputs right passes the tests; memcheck reports it.
# The caching allocator is turned off so that every tensor is its own allocation and memcheck sees past its end;
# CUDA-graph tests are left out (capture needs the caching allocator's private pools).
# Needs a runtime where compute-sanitizer works (Firecracker machines; on gVisor it refuses the device).
#   MOEJIT_SANITIZE_TOOL   memcheck (default), racecheck, initcheck or synccheck
#   MOEJIT_SANITIZE_TESTS  pytest arguments, shell-quoted (default: the selection below, ~170 tests)
#   MOEJIT_SANITIZE_TIMEOUT seconds before the run is stopped (default 400; the log keeps what finished, one line
#                          per test: ~145 tests took 190 s on an H200)
# Log: $OUT/sanitize.log (else ./gpu_logs). Exit status non-zero when the sanitizer or a test reports an error.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
LOG="${OUT:-$PWD/gpu_logs}"
mkdir -p "$LOG"
SAN="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
DEFAULT_TESTS=(
  tests/test_common_ops_gpu.py tests/test_fp8_quant_gpu.py tests/test_cutlass_fp8_gpu.py tests/test_int8_gemm_gpu.py
  tests/test_int8_hybrid_gpu.py tests/test_triton_fp8_gpu.py tests/test_triton_int8_gpu.py
  -k "(permute or dropped or int64 or num_rows or all_zero or hot or topk1 or every_config or empty or rows_past or forced_tile or m0 or alignment_large or fully_written) and not graph"
)
if [ -n "${MOEJIT_SANITIZE_TESTS:-}" ]; then
  eval "TESTS=($MOEJIT_SANITIZE_TESTS)"
else
  TESTS=("${DEFAULT_TESTS[@]}")
fi
# pytest runs in one process (no xdist): the sanitizer follows it and every kernel it launches
timeout -k 15 "${MOEJIT_SANITIZE_TIMEOUT:-400}" \
  "$SAN" --tool "${MOEJIT_SANITIZE_TOOL:-memcheck}" --error-exitcode 3 --print-limit 20 --target-processes all \
  python3 -m pytest -v -rfs -m gpu -p no:xdist -p no:cacheprovider "${TESTS[@]}" 2>&1 | tee "$LOG/sanitize.log"
rc=${PIPESTATUS[0]}
echo "compute-sanitizer ${MOEJIT_SANITIZE_TOOL:-memcheck}: rc=$rc" | tee -a "$LOG/sanitize.log"
exit "$rc"

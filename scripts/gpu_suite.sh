#!/usr/bin/env bash
# The whole GPU suite in one call, for a GPU machine: cold build of every module (timed), warm load (timed),
# the GPU tests, and a smoke benchmark. Logs go to $OUT when set (else ./gpu_logs).
#   MOEJIT_SUITE_TESTS   pytest arguments (default: the GPU tests, 4 workers, a whole test file per worker so each
#                        file's weight cache lives on one worker and is dropped when the file ends:
#                        -m gpu -n 4 --dist loadfile --timeout 300 tests)
#   MOEJIT_SUITE_BENCH   extra args for the smoke benchmark (default: a short mixtral sweep); "skip" to skip
#   MOEJIT_SUITE_TIMEOUT seconds for the whole pytest run (default 0: none); at the limit pytest gets SIGINT, so it
#                        still prints the failures and the summary of what ran (a device command has 600 s)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
LOG="${OUT:-$PWD/gpu_logs}"
mkdir -p "$LOG"
status=0
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -m moejit.cli info
} 2>&1 | tee "$LOG/info.log"

echo "== cold build (per module) ==" | tee "$LOG/build.log"
python3 - <<'PY' 2>&1 | tee -a "$LOG/build.log" || status=1
import time
from moejit import jit
arch = jit.detect_arch()
for name, module in jit.MODULES.items():
    if not module.supports(arch):
        continue
    t0 = time.time()
    r = jit.build(name, arch)
    print(f"cold build {name:12s} sm_{arch}: {time.time() - t0:7.1f} s (cached={r.cached})")
PY
echo "== warm load (fresh process per module) ==" | tee -a "$LOG/build.log"
python3 - <<'PY' 2>&1 | tee -a "$LOG/build.log" || status=1
import subprocess, sys
from moejit import jit
arch = jit.detect_arch()
for name, module in jit.MODULES.items():
    if module.supports(arch):
        code = ("import time, torch; torch.cuda.init(); from moejit import jit; t0 = time.perf_counter(); "
                f"jit.load({name!r}); print(f'warm load {name:12s}: {{time.perf_counter() - t0:.3f}} s')")
        print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip())
PY

echo "== GPU tests ==" | tee "$LOG/tests.log"
# thread method: a test stuck in a hung kernel is reported and stopped (the signal method cannot interrupt C code)
timeout -s INT -k 30 "${MOEJIT_SUITE_TIMEOUT:-0}" python3 -m pytest -rs -q --timeout-method=thread \
  ${MOEJIT_SUITE_TESTS:--m gpu -n 4 --dist loadfile --timeout 300 tests} 2>&1 \
  | tee -a "$LOG/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

if [ "${MOEJIT_SUITE_BENCH:-}" != "skip" ]; then
  echo "== smoke benchmark ==" | tee "$LOG/bench.log"
  timeout -k 15 240 python3 -m moejit.cli bench ${MOEJIT_SUITE_BENCH:---models mixtral-8x7b --batch-sizes 4 64 \
    --iters 20} 2>&1 | tee -a "$LOG/bench.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
exit $status

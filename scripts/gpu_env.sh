#!/usr/bin/env bash
# The environment every GPU script shares; source it from the repository root:
# - the carried wheels (.whl) for what the machine's python3 lacks (scripts/device_setup.sh);
# - the package on PYTHONPATH, unbuffered output;
# - MOEJIT_CACHE_DIR, when unset: the carried JIT cache .jitcache_dev if there is one (no cold CUTLASS builds),
#   else /tmp/moejit-cache; TRITON_CACHE_DIR beside it.
# MOEJIT_GIT_REV, when set, names the revision in the reports where the copy has no .git.
[ -d .whl ] && source scripts/device_setup.sh .whl
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${MOEJIT_CACHE_DIR:-}" ]; then
  MOEJIT_CACHE_DIR=/tmp/moejit-cache
  [ -d .jitcache_dev ] && MOEJIT_CACHE_DIR="$PWD/.jitcache_dev"
  export MOEJIT_CACHE_DIR
fi
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$MOEJIT_CACHE_DIR/triton}"

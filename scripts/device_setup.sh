#!/usr/bin/env bash
# Make an offline GPU machine ready for moejit: source this from the repository root.
#   source scripts/device_setup.sh [WHEEL_DIR]      (default .whl)
# WHEEL_DIR holds wheels downloaded on a machine with a package index, e.g.
#   pip download --no-deps -d .whl nvidia-cutlass==4.2.0.0 click rich markdown-it-py mdurl pygments \
#       pytest pluggy iniconfig packaging pytest-xdist execnet pytest-timeout
#   pip download --no-deps -d .whl --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: \
#       matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing python-dateutil six
# The CUTLASS wheel is always installed (its headers build the kernels); every other package only when the
# machine's python3 cannot import it, so nothing the machine already has is shadowed. Installs go to
# /tmp/moejit-site, put first on PYTHONPATH with the repository.
_whl="${1:-.whl}"
_site=/tmp/moejit-site
mkdir -p "$_site"
_wanted=()
for _f in "$_whl"/nvidia_cutlass-*.whl; do [ -e "$_f" ] && _wanted+=("$_f"); done
# module name → wheel name prefix
for _pair in click:click rich:rich markdown_it:markdown_it_py mdurl:mdurl pygments:pygments \
             pytest:pytest pluggy:pluggy iniconfig:iniconfig packaging:packaging xdist:pytest_xdist \
             execnet:execnet pytest_timeout:pytest_timeout matplotlib:matplotlib contourpy:contourpy \
             cycler:cycler fontTools:fonttools kiwisolver:kiwisolver PIL:pillow pyparsing:pyparsing \
             dateutil:python_dateutil six:six; do
  _mod="${_pair%%:*}"; _pkg="${_pair#*:}"
  if ! python3 -c "import $_mod" 2>/dev/null; then
    for _f in "$_whl/$_pkg"-[0-9]*.whl; do [ -e "$_f" ] && _wanted+=("$_f"); done
  fi
done
if [ "${#_wanted[@]}" -gt 0 ]; then
  echo "device_setup: installing ${_wanted[*]##*/}"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$_site" "${_wanted[@]}" 2>/dev/null || \
    for _f in "${_wanted[@]}"; do  # one bad wheel (wrong Python, say) must not keep the others out
      python3 -m pip install -q --no-index --no-deps --no-compile --target "$_site" "$_f" 2>/dev/null || \
        echo "device_setup: could not install ${_f##*/}"
    done
fi
export PYTHONPATH="$_site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset _whl _site _wanted _pair _mod _pkg _f

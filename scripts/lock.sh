#!/usr/bin/env bash
# `make lock`: resolve requirements/*.txt, the lock every install pins its versions from, with uv.
# pyproject.toml says which versions are allowed; a lock says which one each install gets:
#   dev-cpu, dev-gpu      make test (ORT=cpu|gpu): serve, train, batch, import and dev extras, CPU torch 2.13.0
#   serve-cpu, serve-gpu  make serve (ORT=cpu|gpu), the CPU image (Dockerfile.cpu), the serving-venv test
#   train-cpu             the training image (Dockerfile.train), CPU torch
#   train-gpu             the training image on a GPU: everything but torch (from PyTorch's CUDA index)
#   image-gpu             the GPU serving image (Dockerfile.gpu: Python 3.12; TensorRT's stub is outside)
# The dev locks are resolved first; the others are constrained by the dev lock of their flavour, so every
# lock installs the versions `make test` tested. A re-run keeps the pins a lock has (uv prefers them) and
# moves only what pyproject.toml no longer allows: `UPGRADE=1 make lock` takes the newest allowed releases.
# torch must resolve to the CPU wheel on this machine's disk (pip's find-links): a CUDA torch is refused.
# Usage: bash scripts/lock.sh [uv]   (default .venv/bin/uv)
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${1:-.venv/bin/uv}
PY=${PY:-.venv/bin/python}
OUT=requirements
mkdir -p "$OUT"

# pip's find-links (where the CPU torch wheel lies), which uv does not read from pip's configuration
links=()
for dir in ${PIP_FIND_LINKS:-} $("$PY" -m pip config get global.find-links 2>/dev/null || true); do
  [ -d "$dir" ] && links+=(--find-links "$dir")
done
upgrade=()
[ "${UPGRADE:-0}" = 1 ] && upgrade=(--upgrade)

compile() {  # name, then uv's arguments
  local name=$1
  shift
  "$UV" pip compile pyproject.toml --quiet --no-header "${links[@]}" "${upgrade[@]}" \
    --python-platform x86_64-manylinux_2_28 -o "$OUT/$name.txt.new" "$@"
  {
    echo "# The lock of $name (scripts/lock.sh: \`make lock\`; do not edit)."
    echo "# uv pip compile pyproject.toml $*"
    cat "$OUT/$name.txt.new"
  } >"$OUT/$name.txt.tmp"
  rm "$OUT/$name.txt.new"
  mv "$OUT/$name.txt.tmp" "$OUT/$name.txt"
}

keep() {  # uv prefers the pins of the output file it writes: start from the current lock
  [ -e "$OUT/$1.txt" ] && grep -v '^#' "$OUT/$1.txt" >"$OUT/$1.txt.new" || true
}

DEV=(--extra serve --extra train --extra batch --extra import --extra dev)
for flavour in cpu gpu; do
  keep "dev-$flavour"
  compile "dev-$flavour" --python-version 3.11 "${DEV[@]}" --extra "$flavour"
  keep "serve-$flavour"
  compile "serve-$flavour" --python-version 3.11 --extra serve --extra "$flavour" -c "$OUT/dev-$flavour.txt"
done
keep train-cpu
compile train-cpu --python-version 3.11 --extra train --extra cpu -c "$OUT/dev-cpu.txt"
keep train-gpu
compile train-gpu --python-version 3.11 --extra train --extra gpu --no-emit-package torch -c "$OUT/dev-gpu.txt"
keep image-gpu
compile image-gpu --python-version 3.12 --extra serve --extra gpu -c "$OUT/dev-gpu.txt"

# never a CUDA torch in a lock, nor its CUDA libraries beside a CPU build
for lock in "$OUT"/dev-*.txt "$OUT"/train-cpu.txt; do
  if ! grep -q '^torch==2\.13\.0+cpu$' "$lock"; then
    echo "error: $lock pins $(grep '^torch==' "$lock" || echo 'no torch'), not the CPU build torch==2.13.0+cpu:" \
      "its wheel must be in pip's find-links" >&2
    exit 1
  fi
done
if grep -l '^nvidia-\|^triton==' "$OUT"/*.txt; then
  echo "error: CUDA libraries in the locks above (a CUDA torch was resolved)" >&2
  exit 1
fi
echo "requirements/: $(ls "$OUT"/*.txt | wc -l) locks"

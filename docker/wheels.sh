#!/usr/bin/env bash
# Hand the images their Python wheels from the host: `pip download` everything the CPU serving image and the
# CPU training image install (serve + cpu + train extras, CPU torch, setuptools to build the project) into
# docker/wheels/. When that folder holds wheels, the Dockerfiles install from it alone (pip --no-index), so
# a build needs no network inside the build container. Uses the host's pip configuration (its CA bundle,
# mirrors and local CPU torch wheel). A stamp named by the hash of pyproject.toml and the locks makes a
# re-run a no-op.
# Usage: bash docker/wheels.sh [python]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
OUT=docker/wheels
stamp="$OUT/.stamp-$(cat pyproject.toml requirements/serve-cpu.txt requirements/train-cpu.txt | sha256sum | cut -c1-12)"
[ -e "$stamp" ] && exit 0
mkdir -p "$OUT"
# the versions of the images' locks (`make lock`; the CPU torch where the host's pip finds it), and what
# building the project takes
"$PY" -m pip download -q --only-binary=:all: --dest "$OUT" -c requirements/serve-cpu.txt ".[serve,cpu]"
"$PY" -m pip download -q --only-binary=:all: --dest "$OUT" -c requirements/train-cpu.txt \
    "torch==2.13.0" ".[train,cpu]"
"$PY" -m pip download -q --only-binary=:all: --dest "$OUT" -c requirements/serve-cpu.txt "setuptools>=77" wheel
rm -f "$OUT"/.stamp-*
touch "$stamp"
echo "docker/wheels: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1)"

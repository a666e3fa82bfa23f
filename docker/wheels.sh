#!/usr/bin/env bash
# Hand the images their Python wheels from the host: `pip download` everything the CPU serving image and the
# CPU training image install (serve + cpu + train extras, CPU torch, setuptools to build the project) into
# docker/wheels/. When that folder holds wheels, the Dockerfiles install from it alone (pip --no-index), so
# a build needs no network inside the build container. Uses the host's pip configuration (its CA bundle,
# mirrors and local CPU torch wheel). A stamp named by the hash of pyproject.toml makes a re-run a no-op.
# Usage: bash docker/wheels.sh [python]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
OUT=docker/wheels
stamp="$OUT/.stamp-$(sha256sum pyproject.toml | cut -c1-12)"
[ -e "$stamp" ] && exit 0
mkdir -p "$OUT"
# the same torch pin as the Makefile: the CPU build where the host's pip finds one
"$PY" -m pip download -q --only-binary=:all: --dest "$OUT" \
    "torch==2.13.0" ".[serve,cpu,train]" "setuptools>=77" wheel
rm -f "$OUT"/.stamp-*
touch "$stamp"
echo "docker/wheels: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1)"

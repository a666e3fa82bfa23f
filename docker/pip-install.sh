#!/bin/sh
# `pip install` inside an image build. When the build context carries wheels in docker/wheels/ (made on the
# host by docker/wheels.sh), pip installs from them alone and needs no network; otherwise from the index.
# Extra indexes (PIP_EXTRA_INDEX_URL, e.g. PyTorch's CPU wheels) apply only in the second case.
# WHEELS=none ignores the handed-in wheels (they hold CPU builds).
set -eu
wheels=${WHEELS:-/wheels}
if [ "$wheels" != none ] && ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "pip: installing from the handed-in wheels in docker/wheels/ only"
    exec pip install --no-cache-dir --no-index --find-links "$wheels" "$@"
fi
exec pip install --no-cache-dir "$@"

#!/usr/bin/env bash
# Carry onnxruntime-gpu (and, with --service, what the service needs besides) to a GPU machine that cannot
# download, in parts small enough for a transfer limit, then install it there. Made for the lent GPU
# machines of this project's sessions (Python 3.12 with torch and the nvidia-* CUDA 13 wheels, no
# onnxruntime-gpu, 64 MiB per transfer including the working tree, ignored folders kept between calls).
#
#   bash bench/gpu_carry.sh prepare [--service]   here: wheels for CPython 3.12 into .gpu-carry/p01..pNN
#                                                 (git-ignored through .git/info/exclude), one part per call
#   bash bench/gpu_carry.sh install               there, once every part has arrived: the wheels into
#                                                 /tmp/site; then export what it prints
#
# The onnxruntime-gpu wheel alone is 256 MB, so it takes about 10 calls of ~25 MiB beside the ~39 MB tree.
# Each call but the last carries one part and runs `true`; the last also runs `install` and the check:
#   bash bench/gpu_carry.sh install && eval "$(bash bench/gpu_carry.sh env)" && python3 -m bench.gpu_check ...
set -euo pipefail

DIR=.gpu-carry
ORT="onnxruntime-gpu==1.31.1"
# what `import service.app` needs beyond the GPU machine's image (it has numpy, httpx, anyio, typer,
# prometheus-client, pillow, pyyaml, onnx, torch)
SERVICE=(fastapi starlette pydantic pydantic-core annotated-types typing-inspection pydantic-settings
    python-dotenv python-multipart uvicorn av)
LIMIT_MIB=60 # a margin under the 64 MiB transfer limit

wheels_for_312() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$DIR/wheels" "$@"
}

case "${1:?usage: gpu_carry.sh prepare [--service] | install | env}" in
prepare)
    grep -qx "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >>.git/info/exclude
    rm -rf "$DIR" && mkdir -p "$DIR/wheels"
    wheels_for_312 "$ORT"
    if [ "${2:-}" = "--service" ]; then
        for p in "${SERVICE[@]}"; do
            wheels_for_312 "$p"
        done
    fi
    tree_mib=$(git ls-files -z | du -cb --files0-from=- | tail -1 | awk '{print int($1 / 1048576) + 1}')
    part_mib=$((LIMIT_MIB - tree_mib))
    [ "$part_mib" -ge 4 ] || { echo "the working tree ($tree_mib MiB) leaves no room to carry parts" >&2; exit 1; }
    tar -C "$DIR/wheels" -cf - . | split -b "${part_mib}M" -d -a 2 - "$DIR/part-"
    (cd "$DIR/wheels" && sha256sum ./*) >"$DIR/SHA256SUMS"
    rm -rf "$DIR/wheels"
    n=0
    for part in "$DIR"/part-*; do
        n=$((n + 1))
        mkdir -p "$(printf '%s/p%02d' "$DIR" "$n")"
        mv "$part" "$(printf '%s/p%02d/' "$DIR" "$n")"
    done
    mv "$DIR/SHA256SUMS" "$(printf '%s/p%02d/' "$DIR" "$n")"
    echo "$n parts of at most $part_mib MiB (tree: $tree_mib MiB); carry one per call, in order:"
    for p in "$DIR"/p*; do echo "  carry: [\"$p\"]"; done
    ;;
install)
    rm -rf /tmp/gpu-wheels && mkdir -p /tmp/gpu-wheels
    cat "$DIR"/p*/part-* | tar -C /tmp/gpu-wheels -xf -
    sums=$(realpath "$DIR"/p*/SHA256SUMS) # in the last part: a missing or damaged part fails here
    (cd /tmp/gpu-wheels && sha256sum -c --quiet "$sums")
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        /tmp/gpu-wheels/*.whl
    echo "installed into /tmp/site: $(ls /tmp/gpu-wheels)"
    ;;
env)
    # onnxruntime-gpu from /tmp/site before the image's CPU onnxruntime; the CUDA 13 and cuDNN libraries
    # of the image's nvidia-* wheels on the loader's path (they live in another site-packages than ORT)
    libs=$(python3 -c 'import nvidia, os; print(":".join(os.path.join(p, d, "lib") for p in nvidia.__path__
for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, d, "lib"))))')
    echo "export PYTHONPATH=/tmp/site:\${PYTHONPATH:-} LD_LIBRARY_PATH=$libs:\${LD_LIBRARY_PATH:-}"
    ;;
*)
    echo "usage: gpu_carry.sh prepare [--service] | install | env" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Carry onnxruntime-gpu (and, with --service, what the service and its benchmark need besides) to a GPU
# machine that cannot download, in parts small enough for a transfer limit, then unpack it there. Made for
# the lent GPU machines of this project's sessions (Python 3.12 with torch and the nvidia-* CUDA 13 wheels,
# no onnxruntime-gpu, no FastAPI, no wrk; 64 MiB per call including the ~37 MiB working tree; ignored
# folders kept between calls only while the machine stays warm, 30 s after a call).
#
#   bash bench/gpu_carry.sh prepare [--service]   here: the wheels unpacked, the CUDA provider slimmed to
#                                                 one GPU generation (bench/slim_fatbin.py; GPU_SM_MAJOR,
#                                                 default 9 = H100/H200), one .tar.xz split into
#                                                 .gpu-carry/p01..pNN (git-ignored through .git/info/exclude)
#   bash bench/gpu_carry.sh install               there, once every part has arrived: unpacked into /tmp
#   bash bench/gpu_carry.sh env                   there: the exports that put it first on the paths
#
# With --service it came to 97 MB, 4 parts: carry one per call, back to back (each call's command `true`),
# the last with the check, e.g. (results/gpu/README.md has the session that did it):
#   bash bench/gpu_carry.sh install && eval "$(bash bench/gpu_carry.sh env)" && python3 -m bench.gpu_check
set -euo pipefail

DIR=.gpu-carry
ORT="onnxruntime-gpu==1.31.1"
# what `import bridle.service.app` needs beyond the GPU machine's image (it has numpy, httpx, anyio, typer,
# prometheus-client, pillow, pyyaml, onnx, torch)
SERVICE=(fastapi starlette pydantic pydantic-core annotated-types annotated-doc typing-inspection
    typing-extensions opentelemetry-api importlib-metadata zipp pydantic-settings python-dotenv
    python-multipart uvicorn httptools av)
DEBS=(wrk libluajit-5.1-2 libluajit-5.1-common) # bench.service_load drives the service with wrk
LIMIT_MIB=62                                    # a margin under the 64 MiB transfer limit
PY=${PYTHON:-.venv/bin/python}                  # here: the project's Python (typer for slim_fatbin)

wheels_for_312() {
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
        -d "$DIR/wheels" "$@"
}

case "${1:?usage: gpu_carry.sh prepare [--service] | install | env}" in
prepare)
    grep -qx "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >>.git/info/exclude
    rm -rf "$DIR" && mkdir -p "$DIR/wheels" "$DIR/bundle/site" "$DIR/bundle/root" "$DIR/debs"
    wheels_for_312 "$ORT"
    if [ "${2:-}" = "--service" ]; then
        for p in "${SERVICE[@]}"; do
            wheels_for_312 "$p"
        done
        (cd "$DIR/debs" && apt-get download "${DEBS[@]}")
        for deb in "$DIR"/debs/*.deb; do dpkg -x "$deb" "$DIR/bundle/root"; done
    fi
    for wheel in "$DIR"/wheels/*.whl; do "$PY" -m zipfile -e "$wheel" "$DIR/bundle/site"; done
    "$PY" -m bench.slim_fatbin "$DIR/bundle/site/onnxruntime/capi/libonnxruntime_providers_cuda.so" \
        --keep-major "${GPU_SM_MAJOR:-9}"
    tar -C "$DIR/bundle" -cf - site root | xz -9e -T0 >"$DIR/bundle.tar.xz"
    rm -rf "$DIR/wheels" "$DIR/debs" "$DIR/bundle"
    tree_mib=$(git ls-files -z | du -cb --files0-from=- | tail -1 | awk '{print int($1 / 1048576) + 1}')
    part_mib=$((LIMIT_MIB - tree_mib))
    [ "$part_mib" -ge 4 ] || { echo "the working tree ($tree_mib MiB) leaves no room to carry parts" >&2; exit 1; }
    split -b "${part_mib}M" -d -a 2 "$DIR/bundle.tar.xz" "$DIR/part-"
    sum=$(sha256sum "$DIR/bundle.tar.xz" | cut -d" " -f1)
    rm "$DIR/bundle.tar.xz"
    n=0
    for part in "$DIR"/part-*; do
        n=$((n + 1))
        mkdir -p "$(printf '%s/p%02d' "$DIR" "$n")"
        mv "$part" "$(printf '%s/p%02d/' "$DIR" "$n")"
    done
    echo "$sum" >"$(printf '%s/p%02d/SHA256' "$DIR" "$n")"
    echo "$n parts of at most $part_mib MiB (tree: $tree_mib MiB); carry one per call, in order:"
    for p in "$DIR"/p*; do echo "  carry: [\"$p\"]"; done
    ;;
install)
    cat "$DIR"/p*/part-* >/tmp/bundle.tar.xz
    # the sum sits in the last part: a missing or damaged part fails here
    echo "$(cat "$DIR"/p*/SHA256)  /tmp/bundle.tar.xz" | sha256sum -c --quiet
    python3 -c "import tarfile; tarfile.open('/tmp/bundle.tar.xz').extractall('/tmp', filter='fully_trusted')"
    echo "unpacked into /tmp/site (Python packages) and /tmp/root (wrk, if carried)"
    ;;
env)
    # the carried packages before the image's CPU onnxruntime; the CUDA 13 and cuDNN libraries of the
    # image's nvidia-* wheels on the loader's path (they live in another site-packages than ORT); wrk
    libs=$(python3 -c 'import nvidia, os; print(":".join(os.path.join(p, d, "lib") for p in nvidia.__path__
for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, d, "lib"))))')
    echo "export PYTHONPATH=/tmp/site:$PWD:\${PYTHONPATH:-} PATH=/tmp/root/usr/bin:\$PATH" \
        "LD_LIBRARY_PATH=$libs:/tmp/root/usr/lib/x86_64-linux-gnu:\${LD_LIBRARY_PATH:-}"
    ;;
*)
    echo "usage: gpu_carry.sh prepare [--service] | install | env" >&2
    exit 2
    ;;
esac

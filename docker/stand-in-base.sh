#!/usr/bin/env bash
# Build a local stand-in for Docker Hub's python:3.11-slim where the registry cannot be reached:
# Debian bookworm minbase (its python3 is 3.11.2) + python3, python3-venv, python3-pip, ca-certificates,
# shaped like the official image where the Dockerfiles rely on it:
#   - /usr/local/bin/python, python3, pip, pip3 exist (official: Python built from source in /usr/local)
#   - no PEP 668 EXTERNALLY-MANAGED marker (the official image lets `pip install` into the system Python)
#   - ENV PATH, LANG=C.UTF-8, CMD ["python3"], like the official image's config
# The host's CA bundle (EXTRA_CA, default /etc/ssl/certs/ca-certificates.crt when present) is trusted in the
# image too, so pip and apt inside a build work where HTTPS goes through an intercepting proxy.
# Usage: [EXTRA_CA=/path/ca.crt] [MIRROR=http://...] bash docker/stand-in-base.sh [tag]
# Needs root, debootstrap and a running Docker engine; about 45-90 s.
set -euo pipefail
TAG=${1:-python:3.11-slim}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
EXTRA_CA=${EXTRA_CA-/etc/ssl/certs/ca-certificates.crt}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/rootfs

mkdir -p "$ROOT"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,netbase,tzdata \
    bookworm "$ROOT" "$MIRROR"

# security + updates suites, like the official image's apt sources
cat > "$ROOT/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES

if [ -n "$EXTRA_CA" ] && [ -f "$EXTRA_CA" ]; then
    cp "$EXTRA_CA" "$ROOT/usr/local/share/ca-certificates/host-$(basename "$EXTRA_CA" .crt).crt"
    chroot "$ROOT" update-ca-certificates >/dev/null
fi

# python / pip on PATH as in the official image (there they are real files in /usr/local/bin)
for n in python python3 pip pip3; do
    case $n in python|python3) tgt=/usr/bin/python3 ;; pip|pip3) tgt=/usr/bin/pip3 ;; esac
    ln -sf "$tgt" "$ROOT/usr/local/bin/$n"
done
rm -f "$ROOT"/usr/lib/python3*/EXTERNALLY-MANAGED

# slim it like the official image: no apt lists, no docs/man, no caches
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/archives/*.deb \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
       "$ROOT"/var/log/*.log "$ROOT"/root/.cache
find "$ROOT"/usr/lib/python3* -name __pycache__ -prune -exec rm -rf {} +

tar -C "$ROOT" --numeric-owner -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["python3"]' \
    -m "stand-in for $TAG: debootstrap bookworm minbase + Debian python3 (3.11.2)" \
    - "$TAG"
docker run --rm "$TAG" python -c "import sys, ssl; print(sys.version.split()[0], ssl.OPENSSL_VERSION)"

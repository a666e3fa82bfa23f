#!/usr/bin/env bash
# Debian packages the tests and the demo data need (espeak-ng, docker-compose), plus any named as
# arguments (a package whose command has its name, e.g. `wrk` for the service benchmark).
# Installs only what is missing.
set -euo pipefail
need=()
for extra in "$@"; do
  command -v "$extra" >/dev/null 2>&1 || need+=("$extra")
done
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
# a real compose parser, to check docker/compose.yaml (there is no Docker engine on CI)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

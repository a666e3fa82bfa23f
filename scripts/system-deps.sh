#!/usr/bin/env bash
# Debian packages the tests and the demo data need, plus any named as arguments (a package whose command
# has its name, e.g. `wrk` for the service benchmark). Installs only what is missing.
#   espeak-ng    the demo speech and spoken test audio
#   chromium     the browser the page's tests drive with Playwright (tests/service/test_page.py)
#   docker.io    a Docker engine for the image tests (they start `dockerd` when none runs)
#   debootstrap  the local stand-in for python:3.11-slim when Docker Hub cannot be reached
#   fonts-*      the fonts the printed digits of the image demo data are rendered from
#                (bridle/data/printed_digits.py; about 30 MB of downloads)
set -euo pipefail
need=()
for extra in "$@"; do
  command -v "$extra" >/dev/null 2>&1 || need+=("$extra")
done
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
fonts=(fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-urw-base35 fonts-noto-core fonts-croscore
  fonts-crosextra-carlito fonts-crosextra-caladea fonts-open-sans fonts-roboto-unhinted fonts-lato
  fonts-cantarell fonts-inconsolata fonts-ebgaramond fonts-linuxlibertine)
for font in "${fonts[@]}"; do
  dpkg-query -W -f='${Status}' "$font" 2>/dev/null | grep -q "install ok installed" || need+=("$font")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

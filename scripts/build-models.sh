#!/usr/bin/env bash
# Rebuild the bundled default models in models/: train each demo recipe on the demo data (make demo-data),
# then export its servable checkpoint to a verified model directory. Usage:
#   bash scripts/build-models.sh [audio-digits image-digits video-motion]
# Each model: .venv/bin/bridle-train run training/recipes/<recipe>.yaml
#             .venv/bin/bridle-export export runs/<recipe>/servable models/<recipe> --force
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
recipes=("$@")
[ ${#recipes[@]} -gt 0 ] || recipes=(audio-digits image-digits video-motion)
for recipe in "${recipes[@]}"; do
  echo "== $recipe: training"
  start=$(date +%s)
  "$BIN/bridle-train" run "training/recipes/$recipe.yaml" --resume
  echo "== $recipe: trained in $(( $(date +%s) - start )) s; exporting"
  "$BIN/bridle-export" export "runs/$recipe/servable" "models/$recipe" --name "$recipe" --force
done
du -sh models/*

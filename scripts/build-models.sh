#!/usr/bin/env bash
# Rebuild the bundled default models in models/: train each demo recipe on the demo data (make demo-data),
# calibrate its scores on held-out data, export its servable checkpoint to a verified model directory
# and evaluate it. Usage:
#   bash scripts/build-models.sh [audio-digits image-digits video-motion]
# Each model: .venv/bin/bridle-train run training/recipes/<recipe>.yaml
#             .venv/bin/bridle-train calibrate runs/<recipe>/servable --data <held-out>   (where listed below)
#             .venv/bin/bridle-export export runs/<recipe>/servable models/<recipe> --force
#             <its evaluation command>                                                      (where listed below)
# The model card models/<recipe>/README.md is kept across the export (which replaces the folder).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MODELS=${MODELS:-models}
# Held-out data each model's softmax temperature is fitted on (training/calibration.py): never a test split.
# image-digits: val (scikit-learn's digits moved out of train, and the val font families).
declare -A CALIBRATION=(
  [audio-digits]="runs/audio-digits/data/calibration.csv"
  [image-digits]="data/image-digits/val"
)
# audio-digits: its held-out takes come from the speakers it trained on, easier than new ones; fitted on 4
# draws of each through the recipe's augmentation, T suits speakers never heard (training/calibration.py;
# CALIBRATION_REPEATS in experiments/eval_audio.py, which calibrates the leave-one-speaker-out folds alike).
declare -A CALIBRATE_OPTIONS=(
  [audio-digits]="--augment training/recipes/audio-digits.yaml --repeats 4"
)
# How a model is trained when not by `bridle-train run` alone. audio-digits: pretraining on the synthetic
# voices, the classifier on them + the real FSDD speakers (experiments/eval_audio.py; writes its calibration.csv).
declare -A TRAIN=(
  [audio-digits]="$BIN/python -m experiments.eval_audio train"
)
# The command that writes each model's evaluation tables (results/<recipe>/eval.md), run after the export.
declare -A EVALUATE=(
  [image-digits]="$BIN/python -m experiments.eval_image $MODELS/image-digits --data data/image-digits --out results/image-digits"
  [audio-digits]="$BIN/python -m experiments.eval_audio evaluate runs/audio-digits/servable-calibrated --out results/audio-digits"
)
recipes=("$@")
[ ${#recipes[@]} -gt 0 ] || recipes=(audio-digits image-digits video-motion)
for recipe in "${recipes[@]}"; do
  echo "== $recipe: training"
  start=$(date +%s)
  if [ -n "${TRAIN[$recipe]:-}" ]; then
    ${TRAIN[$recipe]}
  else
    "$BIN/bridle-train" run "training/recipes/$recipe.yaml" --resume
  fi
  echo "== $recipe: trained in $(( $(date +%s) - start )) s"
  if [ -n "${CALIBRATION[$recipe]:-}" ]; then
    echo "== $recipe: calibrating on ${CALIBRATION[$recipe]}"
    # from the uncalibrated head each time, so a rebuild does not fit on top of an earlier fit
    rm -rf "runs/$recipe/servable-calibrated"
    # shellcheck disable=SC2086  # the options are words
    "$BIN/bridle-train" calibrate "runs/$recipe/servable" --data "${CALIBRATION[$recipe]}" \
      --out "runs/$recipe/servable-calibrated" ${CALIBRATE_OPTIONS[$recipe]:-}
    servable="runs/$recipe/servable-calibrated"
  else
    servable="runs/$recipe/servable"
  fi
  echo "== $recipe: exporting"
  card=""
  if [ -f "$MODELS/$recipe/README.md" ]; then
    card=$(mktemp)
    cp "$MODELS/$recipe/README.md" "$card"
  fi
  "$BIN/bridle-export" export "$servable" "$MODELS/$recipe" --name "$recipe" --force
  if [ -n "$card" ]; then
    cp "$card" "$MODELS/$recipe/README.md"
    rm -f "$card"
  fi
  if [ -n "${EVALUATE[$recipe]:-}" ]; then
    echo "== $recipe: evaluating"
    ${EVALUATE[$recipe]}
  fi
done
du -sh "$MODELS"/*

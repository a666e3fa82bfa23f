#!/usr/bin/env bash
# Rebuild the bundled default models in models/: train each demo recipe on the demo data (make demo-data),
# calibrate its scores on held-out data, export its servable checkpoint to a verified model directory
# and evaluate it. Usage:
#   bash scripts/build-models.sh [audio-digits image-digits video-motion audio-urban image-cifar10]
# Each model: .venv/bin/bridle-train run bridle/training/recipes/<recipe>.yaml
#             .venv/bin/bridle-train calibrate runs/<recipe>/servable --data <held-out>   (where listed below)
#             .venv/bin/bridle-export export runs/<recipe>/servable models/<recipe> --force
#             <its evaluation command>                                                      (where listed below)
# The model card models/<recipe>/README.md is kept across the export (which replaces the folder).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MODELS=${MODELS:-models}
# Held-out data each model's softmax temperature is fitted on (bridle/training/calibration.py): never a test split.
# image-digits: val (scikit-learn's digits moved out of train, and the val font families).
declare -A CALIBRATION=(
  [audio-digits]="runs/audio-digits/data/calibration.csv"
  [image-digits]="data/image-digits/val"
)
# audio-digits: its held-out takes come from the speakers it trained on, easier than new ones; fitted on 4
# draws of each through the recipe's augmentation, T suits speakers never heard (bridle/training/calibration.py;
# CALIBRATION_REPEATS in experiments/eval_audio.py, which calibrates the leave-one-speaker-out folds alike).
declare -A CALIBRATE_OPTIONS=(
  [audio-digits]="--augment bridle/training/recipes/audio-digits.yaml --repeats 4"
)
# Models whose recipe has another name (runs/<recipe>/ is where they train).
declare -A RECIPE=(
  [audio-urban]=urban-sounds
  [image-cifar10]=cifar10
)
# Where the real data sets are (recipe overrides for `bridle-train run`).
declare -A OVERRIDES=(
  [audio-urban]="data.dataset.root=${URBANSOUND8K:-../shared/data/urbansound8k}"
  [image-cifar10]="data.dataset.root=${CIFAR10:-../shared/data/cifar10}"
)
# int8 siblings written beside the float32 model (models/<name>-int8), each only if it passes the accuracy
# gate on this labelled data (bridle/export/gate.py): the data is in the model's training set (the model trained
# on all the project has), so the gate measures int8 against float32, not generalisation.
declare -A INT8_GATE=(
  [audio-urban]="${URBANSOUND8K:-../shared/data/urbansound8k}/fold2"
  [image-cifar10]="data/cifar10-val"
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
for model in "${recipes[@]}"; do
  recipe=${RECIPE[$model]:-$model}
  echo "== $model: training (bridle/training/recipes/$recipe.yaml)"
  start=$(date +%s)
  if [ -n "${TRAIN[$model]:-}" ]; then
    ${TRAIN[$model]}
  else
    # shellcheck disable=SC2086  # the overrides are words
    "$BIN/bridle-train" run "bridle/training/recipes/$recipe.yaml" ${OVERRIDES[$model]:-} --resume
  fi
  echo "== $model: trained in $(( $(date +%s) - start )) s"
  if [ -n "${CALIBRATION[$model]:-}" ]; then
    echo "== $model: calibrating on ${CALIBRATION[$model]}"
    # from the uncalibrated head each time, so a rebuild does not fit on top of an earlier fit
    rm -rf "runs/$recipe/servable-calibrated"
    # shellcheck disable=SC2086  # the options are words
    "$BIN/bridle-train" calibrate "runs/$recipe/servable" --data "${CALIBRATION[$model]}" \
      --out "runs/$recipe/servable-calibrated" ${CALIBRATE_OPTIONS[$model]:-}
    servable="runs/$recipe/servable-calibrated"
  else
    servable="runs/$recipe/servable"
  fi
  recipe=$model  # the model folder's name from here on
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
  if [ -n "${INT8_GATE[$recipe]:-}" ]; then
    echo "== $recipe: int8 variant, gated on ${INT8_GATE[$recipe]}"
    "$BIN/bridle-export" quantize "$MODELS/$recipe" --precision int8 --data "${INT8_GATE[$recipe]}" \
      --out "$MODELS/$recipe-int8" --force
  fi
  if [ -n "${EVALUATE[$recipe]:-}" ]; then
    echo "== $recipe: evaluating"
    ${EVALUATE[$recipe]}
  fi
done
du -sh "$MODELS"/*

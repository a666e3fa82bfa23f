"""The audio-digits model: its build, and its honest evaluation on real speakers it never heard.

    python -m experiments.eval_audio train      the recipe's stages (scripts/build-models.sh then calibrates,
                                             exports and evaluates)
    python -m experiments.eval_audio loso       leave-one-speaker-out over the 4 real FSDD speakers
    python -m experiments.eval_audio evaluate SERVABLE [--speakers ...]   the tables for one trained model

The recipe's (bridle/training/recipes/audio-digits.yaml) pretrain and tokenizer stages train on the synthetic
espeak-ng voices (data/audio-digits/train) only; its classifier stage trains on those voices plus real FSDD
speakers (data/fsdd, CC BY-SA 4.0): takes 5-49 of each training speaker, while takes 0-4 are held out to
fit the softmax temperature, drawn through the recipe's augmentation (bridle/training/calibration.py). As no
real speech reaches the pretraining, a leave-one-speaker-out fold copies the pretrained stages and
retrains only the classifier without its test speaker: no fold ever sees the speaker it is scored on.

The tables (printed as markdown and written as JSON + markdown next to the model):
  - accuracy and ECE on the held-out synthetic voices (data/audio-digits/test) and on each real speaker
    (for a fold: the one it never heard);
  - what the model says for inputs that are no digit: white and pink noise, music-like tones, silence.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from bridle.data.fsdd import FSDD_CREDIT, FSDD_SPEAKERS
from bridle.model.checkpoint import load_servable
from bridle.model.graphs import EncoderGraph
from bridle.model.windowing import audio_windows
from bridle.training.audio_augment import coloured_noise
from bridle.training.calibration import (
    expected_calibration_error,
    fit_temperature,
    held_out_logits,
    servable_logits,
    softmax,
)
from bridle.training.data import MediaDataset
from bridle.training.recipe import load_recipe

RECIPE = Path("bridle/training/recipes/audio-digits.yaml")
SYNTHETIC = Path("data/audio-digits")
FSDD = Path("data/fsdd")
CALIBRATION_TAKES = 5  # FSDD takes 0-4 of each training speaker fit the temperature (FSDD's own test split)
# ... each drawn this often through the recipe's augmentation (as scripts/build-models.sh calibrates): the
# plain takes are easier than unseen speakers and their temperature over-confident
# (bridle/training/calibration.py)
CALIBRATION_REPEATS = 4
REAL_REPEATS = 2  # each real training clip is listed this often (each copy draws its own augmentation)
PRETRAINED_STAGES = ("pretrain1", "tokenizer1", "pretrain2")  # the recipe's stages before the classifier
CLASSIFIER_STAGE = 3  # the recipe's first classifier stage: it and every later one train on the real speech
SAMPLE_SECONDS = 1.2  # length of the non-digit inputs
NON_DIGIT_EACH = 40  # examples of each non-digit kind

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


# ---- the data of a model (or fold): training, calibration and test manifests -----------------------------


@dataclass(frozen=True)
class Split:
    train: Path  # synthetic training voices + FSDD takes 5-49 of the training speakers
    calibration: Path  # FSDD takes 0-4 of the training speakers
    speakers: tuple[str, ...]  # the real speakers the classifier trains on


def _rows(metadata: Path, split: str | None = None) -> list[dict[str, str]]:
    with open(metadata, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if split is None or r["split"] == split]


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_split(
    out: Path, speakers: tuple[str, ...], synthetic: Path = SYNTHETIC, fsdd: Path = FSDD
) -> Split:
    """Manifests (absolute paths) for a classifier trained on the synthetic voices + `speakers`."""
    unknown = set(speakers) - set(FSDD_SPEAKERS)
    if unknown:
        raise ValueError(f"unknown FSDD speakers {sorted(unknown)}; choose from {FSDD_SPEAKERS}")
    syn = [
        {"path": str((synthetic / r["path"]).resolve()), "label": r["label"], "speaker": r["voice"]}
        for r in _rows(synthetic / "metadata.csv", "train")
    ]
    real = [r for r in _rows(fsdd / "metadata.csv") if r["speaker"] in speakers]
    as_row = [
        {"path": str((fsdd / r["path"]).resolve()), "label": r["label"], "speaker": r["speaker"]}
        for r in real
    ]
    takes = [int(r["index"]) for r in real]
    train = syn + [r for r, k in zip(as_row, takes, strict=True) if k >= CALIBRATION_TAKES] * REAL_REPEATS
    calibration = [r for r, k in zip(as_row, takes, strict=True) if k < CALIBRATION_TAKES]
    return Split(_write(out / "train.csv", train), _write(out / "calibration.csv", calibration), speakers)


# ---- evaluation -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    data: str
    examples: int
    accuracy: float
    ece: float
    mean_top_score: float


@dataclass(frozen=True)
class NonDigit:
    kind: str
    examples: int
    mean_top_score: float
    above_half: float  # share with a top score > 0.5
    above_0_9: float  # share with a top score > 0.9
    most_said: str  # the label it names most often
    most_said_share: float


def non_digit_inputs(rate: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Inputs that are no spoken digit, `NON_DIGIT_EACH` of each kind, SAMPLE_SECONDS at `rate`."""

    rng = np.random.default_rng(seed)
    n = int(SAMPLE_SECONDS * rate)
    t = np.arange(n) / rate
    kinds: dict[str, list[np.ndarray]] = {
        "white noise": [],
        "pink noise": [],
        "music-like tones": [],
        "silence": [],
    }
    for _ in range(NON_DIGIT_EACH):
        level = 10 ** rng.uniform(-2.5, -0.7)  # RMS from -50 to -14 dBFS
        kinds["white noise"].append(level * coloured_noise(rng, n, 0.0))
        kinds["pink noise"].append(level * coloured_noise(rng, n, 1.0))
        notes = 220.0 * 2 ** (rng.integers(0, 24, size=(4, 3)) / 12)  # 4 chords of 3 notes, 2 octaves
        music = np.zeros(n)
        for k, chord in enumerate(notes):  # each chord a quarter of the clip, with 3 harmonics per note
            part = slice(k * n // 4, (k + 1) * n // 4)
            for f in chord:
                music[part] += sum(np.sin(2 * np.pi * f * h * t[part]) / h for h in (1, 2, 3))
        kinds["music-like tones"].append(0.3 * music / np.abs(music).max())
        kinds["silence"].append(rng.standard_normal(n) * 10 ** rng.uniform(-5, -3.5))  # -100 to -70 dBFS
    return {k: [w.astype(np.float32) for w in v] for k, v in kinds.items()}


def _probabilities(servable: Any, data: Any) -> tuple[np.ndarray, np.ndarray]:

    logits, labels = servable_logits(servable, data)
    return softmax(logits), labels


def score(servable: Any, source: Path | str, name: str) -> Score:
    """Accuracy, ECE and mean top score of `servable` on a labelled folder or manifest."""

    data = MediaDataset(source, servable.config, labels=servable.labels, cache=True, labelled=True)
    probs, labels = _probabilities(servable, data)
    accuracy = float(np.mean(probs.argmax(1) == labels))
    return Score(
        name, len(labels), accuracy, expected_calibration_error(probs, labels), float(probs.max(1).mean())
    )


def non_digit_scores(servable: Any) -> list[NonDigit]:
    """What `servable` says for `non_digit_inputs`, through the same windowing as the service."""
    import torch

    rate = servable.config.input.sample_rate
    window = servable.config.input.window_samples
    graph = EncoderGraph(servable.eval()).eval()
    out = []
    for kind, waves in non_digit_inputs(rate).items():
        x = np.concatenate([audio_windows(w, window, rate)[0][:1] for w in waves])  # (N, window)
        with torch.no_grad():
            probs = softmax(graph(torch.from_numpy(x))[2].float().numpy())
        top = probs.max(1)
        said = probs.argmax(1)
        most = int(np.bincount(said, minlength=len(servable.labels)).argmax())
        out.append(
            NonDigit(
                kind,
                len(waves),
                float(top.mean()),
                float(np.mean(top > 0.5)),
                float(np.mean(top > 0.9)),
                servable.labels[most],
                float(np.mean(said == most)),
            )
        )
    return out


def evaluate_servable(servable_dir: Path, speakers: tuple[str, ...], synthetic: Path, fsdd: Path) -> dict:
    """The tables of one trained model: synthetic held-out voices, the given real speakers, non-digits."""

    servable = load_servable(servable_dir)
    scores = [score(servable, synthetic / "test", "synthetic held-out voices")]
    for speaker in speakers:
        rows = [
            {"path": str((fsdd / r["path"]).resolve()), "label": r["label"], "speaker": speaker}
            for r in _rows(fsdd / "metadata.csv", speaker)
        ]
        manifest = _write(Path(servable_dir).parent / "data" / f"{speaker}.csv", rows)
        scores.append(score(servable, manifest, f"FSDD {speaker}"))
    calibration = servable.provenance.get("calibration")
    return {
        "model": str(servable_dir),
        "calibration": calibration,
        "scores": [asdict(s) for s in scores],
        "non_digits": [asdict(n) for n in non_digit_scores(servable)],
    }


# ---- tables ----------------------------------------------------------------------------------------------


def score_table(scores: list[dict]) -> str:
    lines = ["| data | clips | accuracy | ECE | mean top score |", "|---|---:|---:|---:|---:|"]
    for s in scores:
        lines.append(
            f"| {s['data']} | {s['examples']} | {s['accuracy']:.1%} | {s['ece']:.3f} "
            f"| {s['mean_top_score']:.3f} |"
        )
    return "\n".join(lines)


def non_digit_table(rows: list[dict]) -> str:
    lines = [
        "| input (no digit) | clips | mean top score | top > 0.5 | top > 0.9 | named most often |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['examples']} | {r['mean_top_score']:.3f} | {r['above_half']:.0%} | "
            f"{r['above_0_9']:.0%} | {r['most_said']} ({r['most_said_share']:.0%}) |"
        )
    return "\n".join(lines)


def write_report(out: Path, title: str, result: dict, tables: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    text = "\n\n".join([f"## {title}", *tables, f"Real speech: {FSDD_CREDIT}."]) + "\n"
    (out / "eval.md").write_text(text)
    typer.echo(text)


# ---- the commands ---------------------------------------------------------------------------------------


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _run(cmd: list[str]) -> None:
    typer.echo("+ " + " ".join(cmd), err=True)
    if subprocess.run(cmd).returncode != 0:
        typer.echo(f"error: {cmd[0]} failed", err=True)
        raise typer.Exit(1)


def _train(recipe: Path, stage: int, overrides: list[str]) -> None:
    """One recipe stage through `bridle-train stage` (finished stages are skipped: --resume)."""
    _run([_bin("bridle-train"), "stage", str(recipe), *overrides, "--stage", str(stage), "--resume"])


def _classifier_and_calibration(recipe: Path, out: Path, split: Split, extra: list[str]) -> Path:
    """The classifier stage on `split.train`, then the temperature fitted on `split.calibration` under the
    recipe's augmentation; returns the calibrated servable checkpoint."""
    for stage in _classifier_stages(recipe):
        _train(recipe, stage, [*extra, f"data.train={split.train.resolve()}"])
    calibrated = out / "servable-calibrated"
    shutil.rmtree(calibrated, ignore_errors=True)  # fitted from the uncalibrated head every time
    _run(
        [
            _bin("bridle-train"),
            "calibrate",
            str(out / "servable"),
            "--data",
            str(split.calibration),
            "--out",
            str(calibrated),
            "--augment",
            str(recipe),
            "--repeats",
            str(CALIBRATION_REPEATS),
        ]
    )
    return calibrated


def _classifier_stages(recipe: Path) -> range:

    return range(CLASSIFIER_STAGE, len(load_recipe(recipe).stages))


def _out_dir(recipe: Path) -> Path:

    return Path(load_recipe(recipe).out_dir)


@app.command()
def train(
    recipe: Path = typer.Option(RECIPE, help="the audio-digits recipe"),
    synthetic: Path = typer.Option(SYNTHETIC, help="the synthetic demo set (make demo-data)"),
    fsdd: Path = typer.Option(FSDD, help="the real-speech demo set (make demo-data)"),
) -> None:
    """Train the recipe: pretraining on the synthetic voices, the classifier on them + all 4 real speakers
    (takes 5-49); writes <out_dir>/data/calibration.csv (takes 0-4) for `bridle-train calibrate`."""
    out = _out_dir(recipe)
    for stage in range(CLASSIFIER_STAGE):
        _train(recipe, stage, [])
    split = write_split(out / "data", FSDD_SPEAKERS, synthetic, fsdd)
    for stage in _classifier_stages(recipe):
        _train(recipe, stage, [f"data.train={split.train.resolve()}"])


@app.command()
def loso(
    recipe: Path = typer.Option(RECIPE, help="the audio-digits recipe"),
    speakers: list[str] = typer.Option(list(FSDD_SPEAKERS), help="the held-out speakers (folds) to run"),
    out: Path = typer.Option(Path("runs/audio-loso"), help="a folder per fold and the summary"),
    pretrained: Path = typer.Option(
        None, help="run holding the pretrained stages (default: the recipe's out_dir)"
    ),
    synthetic: Path = typer.Option(SYNTHETIC, help="the synthetic demo set"),
    fsdd: Path = typer.Option(FSDD, help="the real-speech demo set"),
    overrides: list[str] = typer.Option(
        [], "--set", help="a recipe override for the classifier stages, key=value (e.g. stages.3.steps=6000)"
    ),
    heard: list[str] = typer.Option(
        [],
        help="the real speakers every fold trains on (default: all but its held-out one); fewer of them "
        "measure how accuracy on a new voice grows with the number of real speakers",
    ),
) -> None:
    """Leave-one-speaker-out: per fold, the classifier on synthetic voices + the other real speakers (its
    pretrained stages copied from PRETRAINED, which saw no real speech), scored on the held-out speaker."""
    pretrained = pretrained or _out_dir(recipe)
    unknown, clash = set(heard) - set(FSDD_SPEAKERS), set(heard) & set(speakers)
    if unknown or clash:
        problem = f"unknown speakers {sorted(unknown)}" if unknown else f"{sorted(clash)} cannot be both"
        typer.echo(f"error: {problem} heard and held out (FSDD speakers: {FSDD_SPEAKERS})", err=True)
        raise typer.Exit(1)
    missing = [s for s in PRETRAINED_STAGES if not (pretrained / s).is_dir()]
    if missing:
        typer.echo(f"error: {pretrained} lacks the pretrained stages {missing}: run `train` first", err=True)
        raise typer.Exit(1)
    for speaker in speakers:
        fold = out / speaker
        for name in PRETRAINED_STAGES:
            if not (fold / name).is_dir():
                shutil.copytree(pretrained / name, fold / name)
        shutil.copy(pretrained / "model_config.json", fold / "model_config.json")
        trained_on = tuple(heard) or tuple(s for s in FSDD_SPEAKERS if s != speaker)
        split = write_split(fold / "data", trained_on, synthetic, fsdd)
        in_split = {r["speaker"] for r in _rows(split.train) + _rows(split.calibration)}
        if speaker in in_split:  # the whole point of the fold
            raise RuntimeError(f"fold {speaker}: the held-out speaker is in its training data")
        calibrated = _classifier_and_calibration(recipe, fold, split, [*overrides, f"out_dir={fold}"])
        result = evaluate_servable(calibrated, (speaker,), synthetic, fsdd)
        write_report(fold, f"fold: {speaker} held out", result, [score_table(result["scores"])])
    summarise(out)


def summarise(out: Path) -> None:
    """The leave-one-speaker-out table from every finished fold under `out`."""
    folds = sorted(p.parent for p in out.glob("*/eval.json"))
    rows, synthetic_rows, non_digits = [], [], []
    for fold in folds:
        result = json.loads((fold / "eval.json").read_text())
        held_out, synthetic = result["scores"][1], result["scores"][0]
        rows.append({**held_out, "data": f"{held_out['data']} (never heard)"})
        synthetic_rows.append({**synthetic, "data": f"synthetic held-out voices, fold {fold.name}"})
        non_digits += result["non_digits"]
    if not rows:
        typer.echo(f"error: no finished fold under {out}", err=True)
        raise typer.Exit(1)
    correct = sum(r["accuracy"] * r["examples"] for r in rows)
    total = sum(r["examples"] for r in rows)
    mean = {
        "data": "all held-out real speakers",
        "examples": total,
        "accuracy": correct / total,
        "ece": float(np.mean([r["ece"] for r in rows])),
        "mean_top_score": float(np.mean([r["mean_top_score"] for r in rows])),
    }
    result = {"folds": [f.name for f in folds], "real": [*rows, mean], "synthetic": synthetic_rows}
    tables = [score_table([*rows, mean]), score_table(synthetic_rows)]
    write_report(out, "leave-one-speaker-out (real FSDD speakers)", result, tables)


@app.command()
def summary(out: Path = typer.Option(Path("runs/audio-loso"), help="the loso output folder")) -> None:
    """Print (and rewrite) the leave-one-speaker-out table from the finished folds."""
    summarise(out)


def cross_speaker_calibration(folds: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> list[dict]:
    """Per fold: the ECE on its unseen speaker with the temperature it was calibrated with (fitted on held-out
    takes of the speakers it heard), with one fitted on the other folds' unseen speakers, and with none.
    `folds`: name -> (uncalibrated logits (N, C), labels (N,), the fold's own temperature)."""

    rows = []
    for name, (logits, labels, own) in folds.items():
        others = [f for f in folds if f != name]
        if not others:
            raise ValueError("cross-speaker calibration needs at least two folds")
        pooled = np.concatenate([folds[f][0] for f in others]), np.concatenate([folds[f][1] for f in others])
        crossed = fit_temperature(*pooled)
        rows.append(
            {
                "fold": name,
                "accuracy": float(np.mean(logits.argmax(1) == labels)),
                "own_temperature": own,
                "own_ece": expected_calibration_error(softmax(logits, own), labels),
                "cross_temperature": crossed,
                "cross_ece": expected_calibration_error(softmax(logits, crossed), labels),
                "uncalibrated_ece": expected_calibration_error(softmax(logits), labels),
            }
        )
    return rows


@app.command("cross-calibration")
def cross_calibration(
    out: Path = typer.Option(Path("runs/audio-loso"), help="the loso output folder"),
) -> None:
    """How well each calibration suits speakers never heard: per finished fold, the ECE on its held-out
    speaker with its own temperature, with one fitted on the other folds' held-out speakers, and with none."""

    folds = {}
    for fold in sorted(p.parent for p in out.glob("*/eval.json")):
        servable = load_servable(fold / "servable")  # uncalibrated
        own = load_servable(fold / "servable-calibrated").provenance["calibration"]["temperature"]
        folds[fold.name] = (*held_out_logits(servable, fold / "data" / f"{fold.name}.csv"), float(own))
    if len(folds) < 2:
        typer.echo(f"error: cross-speaker calibration needs two finished folds under {out}", err=True)
        raise typer.Exit(1)
    rows = cross_speaker_calibration(folds)
    lines = [
        "| held-out speaker | accuracy | T (own: augmented held-out takes of heard speakers) | ECE "
        "| T (other folds' unseen speakers) | ECE | ECE, T = 1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['fold']} | {r['accuracy']:.1%} | {r['own_temperature']:.2f} | {r['own_ece']:.3f} | "
            f"{r['cross_temperature']:.2f} | {r['cross_ece']:.3f} | {r['uncalibrated_ece']:.3f} |"
        )
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("own_ece", "cross_ece", "uncalibrated_ece")}
    lines.append(
        f"| mean | | | {mean['own_ece']:.3f} | | {mean['cross_ece']:.3f} | {mean['uncalibrated_ece']:.3f} |"
    )
    text = "\n".join(lines)
    (out / "cross-calibration.md").write_text(text + "\n")
    typer.echo(text)


@app.command()
def evaluate(
    servable: Path = typer.Argument(..., help="a servable checkpoint folder"),
    speakers: list[str] = typer.Option(
        [], help="real FSDD speakers to score (only ones it never heard are honest)"
    ),
    synthetic: Path = typer.Option(SYNTHETIC),
    fsdd: Path = typer.Option(FSDD),
    out: Path = typer.Option(None, help="where to write the tables (default: next to SERVABLE)"),
) -> None:
    """The evaluation tables for one trained model."""
    result = evaluate_servable(servable, tuple(speakers), synthetic, fsdd)
    tables = [score_table(result["scores"]), non_digit_table(result["non_digits"])]
    write_report(out or servable.parent, f"evaluation of {servable}", result, tables)


if __name__ == "__main__":
    app()

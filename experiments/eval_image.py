"""Evaluation of an image-digits model as the service runs it: the tables of its model card and README.

    python -m experiments.eval_image models/image-digits --data data/image-digits --out results/image-digits

The model directory's `encoder.onnx` runs in ONNX Runtime on images decoded by the service's own
`decode_image` (shorter side resized to the model's size, centre crop), and scores are the manifest's
softmax of the `logits` output, so the figures are what a user of `bridle-serve` gets. Writes
`<out>/eval.json` and `<out>/eval.md` (markdown tables), and prints the tables:

- digits: scikit-learn's test split (handwritten, never trained on), the printed digits in the held-out
  font families (bridle/data/printed_digits.py, both polarities and each alone), and `val` (what the
  temperature was fitted on, for reference): accuracy, mean top score, and the expected calibration error
  with the stored temperature and without it (the raw logits are the calibrated ones times T, the
  temperature recorded in the manifest's provenance.calibration; T = 1 when uncalibrated);
- not digits: crops of scikit-learn's two bundled photos (`load_sample_images`), noise and blank images,
  each sent as a file: the share of answers at or above CONFIDENT and the mean top score. A digit
  classifier has no "none of these" label, so a low top score is the only sign that an input is not a digit.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import typer
from PIL import Image
from tqdm import tqdm

from bridle.model.decoding import decode_image
from bridle.model.manifest import Manifest, read_manifest
from bridle.training.calibration import expected_calibration_error, fit_temperature, softmax

CONFIDENT = 0.9  # a top score at or above this is a confident answer
BATCH = 64
DIGIT_SPLITS = {  # table row -> (folder under the data set, metadata filter)
    "scikit-learn test split (handwritten)": ("test", None),
    "held-out fonts, both polarities": ("printed-test", None),
    "held-out fonts, dark on light": ("printed-test", "dark-on-light"),
    "held-out fonts, light on dark": ("printed-test", "light-on-dark"),
    "val (calibration data: sklearn + val fonts)": ("val", None),
}


@dataclass(frozen=True)
class DigitRow:
    name: str
    examples: int
    accuracy: float
    mean_top_score: float
    ece: float  # with the stored temperature
    ece_uncalibrated: float  # T = 1


@dataclass(frozen=True)
class OtherRow:
    name: str
    images: int
    confident: float  # share with top score >= CONFIDENT
    mean_top_score: float
    most_common: str  # the label it gives most often


class OnnxClassifier:
    """The exported encoder's `logits` for decoded images (B, 3, S, S) uint8 -> (B, C) float32."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort

        self.manifest: Manifest = read_manifest(model_dir)
        if not self.manifest.has_classifier or self.manifest.modality != "image":
            raise ValueError(f"{model_dir} is not an image classifier")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_dir / self.manifest.encoder.path), options, providers=["CPUExecutionProvider"]
        )
        self.size = int(self.manifest.input.image_size or 0)
        calibration = self.manifest.provenance.get("calibration") or {}
        self.temperature = float(calibration.get("temperature", 1.0))

    def logits(self, images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), BATCH):
            batch = images[start : start + BATCH]
            out.append(self.session.run(["logits"], {self.manifest.input.name: batch})[0])
        return np.concatenate(out).astype(np.float32)  # (N, C)


# ---- digits ---------------------------------------------------------------------------------------------


def labelled_images(folder: Path, size: int, labels: list[str], keep: set[str] | None) -> Iterator:
    """(image (3, S, S) uint8, label index) of `<folder>/<label>/<file>` (only `keep` paths when given)."""
    index = {name: i for i, name in enumerate(labels)}
    for path in sorted(folder.glob("*/*")):
        rel = f"{folder.name}/{path.parent.name}/{path.name}"
        if path.is_file() and (keep is None or rel in keep):
            yield decode_image(path, size), index[path.parent.name]


def metadata_paths(data: Path, **where: str) -> set[str]:
    """Paths of the rows of `<data>/metadata.csv` whose columns have the given values."""
    with open(data / "metadata.csv", newline="") as f:
        return {r["path"] for r in csv.DictReader(f) if all(r.get(k) == v for k, v in where.items())}


def paths_with_polarity(data: Path, polarity: str) -> set[str]:
    return metadata_paths(data, polarity=polarity)


def temperature_check(model_dir: Path, data: Path) -> list[dict]:
    """What a temperature fitted on `val` (all of it, or its scikit-learn part) would do to the ECE of the
    test sets: the raw logits are the model's times its stored temperature."""
    model = OnnxClassifier(model_dir)
    val_all = folder_logits(model, data, "val")
    val_sklearn = folder_logits(model, data, "val", metadata_paths(data, split="val", source="sklearn"))
    tests = {
        name: folder_logits(model, data, folder)
        for name, folder in (("sklearn test", "test"), ("held-out fonts", "printed-test"))
    }
    rows = []
    for fitted_on, (logits, labels) in (("val", val_all), ("val, scikit-learn part", val_sklearn)):
        t = fit_temperature(logits * model.temperature, labels)
        row = {"fitted_on": fitted_on, "temperature": t}
        for name, (test_logits, test_labels) in tests.items():
            raw = test_logits * model.temperature
            row[f"{name} ECE"] = expected_calibration_error(softmax(raw), test_labels)
            row[f"{name} ECE at T"] = expected_calibration_error(softmax(raw, t), test_labels)
        rows.append(row)
    return rows


def folder_logits(
    model: OnnxClassifier, data: Path, folder: str, keep: set[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The model's logits (N, C) and the labels (N,) of `<data>/<folder>` (only `keep` paths when given)."""
    pairs = list(labelled_images(data / folder, model.size, model.manifest.labels, keep))
    if not pairs:
        raise ValueError(f"no images under {data / folder}")
    images = np.stack([p[0] for p in pairs])  # (N, 3, S, S)
    return model.logits(images), np.array([p[1] for p in pairs])


def digit_row(model: OnnxClassifier, name: str, data: Path, folder: str, polarity: str | None) -> DigitRow:
    keep = paths_with_polarity(data, polarity) if polarity else None
    logits, labels = folder_logits(model, data, folder, keep)
    probs = softmax(logits)
    return DigitRow(
        name=name,
        examples=len(labels),
        accuracy=float(np.mean(probs.argmax(1) == labels)),
        mean_top_score=float(probs.max(1).mean()),
        ece=expected_calibration_error(probs, labels),
        ece_uncalibrated=expected_calibration_error(softmax(logits * model.temperature), labels),
    )


# ---- not digits -----------------------------------------------------------------------------------------


def as_file(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """(H, W, 3) uint8 -> the bytes of an image file, as a user would upload it."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


def not_digits(seed: int = 0, per_kind: int = 40) -> dict[str, list[bytes]]:
    """Image files that show no digit: photo crops, noise, blank (deterministic given the seed)."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images  # two (427, 640, 3) photos (a temple, a flower)
    crops = []
    for k in range(per_kind):
        photo = photos[k % len(photos)]
        side = int(rng.integers(96, 420))
        y = int(rng.integers(0, photo.shape[0] - side + 1))
        x = int(rng.integers(0, photo.shape[1] - side + 1))
        crops.append(as_file(np.ascontiguousarray(photo[y : y + side, x : x + side]), "JPEG"))
    noise = []
    for k in range(per_kind):
        shape = (int(rng.integers(32, 200)), int(rng.integers(32, 200)))
        if k % 2:  # grey Gaussian noise around a random level
            grey = np.clip(rng.normal(rng.uniform(60, 200), 40, size=shape), 0, 255)
            noise.append(as_file(np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)))
        else:  # uniform colour noise
            noise.append(as_file(rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)))
    blank = []
    for k in range(per_kind):
        level = [255, 0, 128][k] if k < 3 else rng.integers(0, 256, size=3)
        blank.append(as_file(np.broadcast_to(np.asarray(level, np.uint8), (64, 64, 3)).copy()))
    return {"photo crops (scikit-learn's sample photos)": crops, "noise": noise, "blank": blank}


def other_row(model: OnnxClassifier, name: str, files: list[bytes]) -> OtherRow:
    images = np.stack([decode_image(f, model.size) for f in files])
    probs = softmax(model.logits(images))
    top = probs.max(1)
    answers = Counter(model.manifest.labels[i] for i in probs.argmax(1))
    return OtherRow(
        name=name,
        images=len(files),
        confident=float(np.mean(top >= CONFIDENT)),
        mean_top_score=float(top.mean()),
        most_common=f"{answers.most_common(1)[0][0]} ({answers.most_common(1)[0][1]}/{len(files)})",
    )


# ---- the tables -----------------------------------------------------------------------------------------


def evaluate(model_dir: Path, data: Path) -> dict:
    model = OnnxClassifier(model_dir)
    digits = [
        digit_row(model, name, data, folder, polarity)
        for name, (folder, polarity) in tqdm(DIGIT_SPLITS.items(), desc="digits", leave=False)
        if (data / folder).is_dir()
    ]
    others = [other_row(model, name, files) for name, files in not_digits().items()]
    return {
        "model": str(model_dir),
        "temperature": model.temperature,
        "confident_threshold": CONFIDENT,
        "digits": [asdict(r) for r in digits],
        "not_digits": [asdict(r) for r in others],
    }


def markdown(result: dict) -> str:
    t = result["temperature"]
    lines = [
        f"| data | images | accuracy | mean top score | ECE (T = {t:.3g}) | ECE (uncalibrated) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["digits"]:
        lines.append(
            f"| {r['name']} | {r['examples']} | {100 * r['accuracy']:.1f} % | {r['mean_top_score']:.3f} "
            f"| {r['ece']:.3f} | {r['ece_uncalibrated']:.3f} |"
        )
    lines += [
        "",
        f"| not a digit | images | top score >= {result['confident_threshold']} | mean top score "
        "| most common answer |",
        "|---|---|---|---|---|",
    ]
    for r in result["not_digits"]:
        lines.append(
            f"| {r['name']} | {r['images']} | {100 * r['confident']:.0f} % | {r['mean_top_score']:.3f} "
            f"| {r['most_common']} |"
        )
    return "\n".join(lines) + "\n"


def main(
    model_dir: Path = typer.Argument(Path("models/image-digits"), help="exported model directory"),
    data: Path = typer.Option(Path("data/image-digits"), help="the image-digits demo set (make demo-data)"),
    out: Path | None = typer.Option(None, help="folder for eval.json and eval.md"),
    temperature: bool = typer.Option(
        False, "--temperature-check", help="only: what a temperature fitted on val would do to the ECE"
    ),
) -> None:
    try:
        if temperature:
            for row in temperature_check(model_dir, data):
                typer.echo(json.dumps(row))
            return
        result = evaluate(model_dir, data)
    except (ValueError, FileNotFoundError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    table = markdown(result)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "eval.md").write_text(table)
    typer.echo(table)


if __name__ == "__main__":
    typer.run(main)

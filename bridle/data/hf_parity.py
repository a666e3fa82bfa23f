"""End-to-end parity of imported Hugging Face models from file bytes: what the service answers for a file
against what `transformers` answers for the same file with the folder's own processor and model.

The files (`image_cases`, `audio_cases`, `video_cases`) are made here, seeded: photograph-like JPEGs of
several sizes and aspect ratios, a greyscale JPEG, an RGBA and a greyscale PNG; recordings at 8, 16, 44.1
and 48 kHz, mono and stereo, shorter and longer than the window; clips of several lengths and frame rates.
The references (`reference_windows`) follow transformers' own ways:

- images: `transformers.image_utils.load_image` (EXIF orientation, `convert("RGB")`), or for a processor
  with `do_convert_rgb` the upright file as it is (the processor composites transparency over white), then
  `AutoImageProcessor` (transformers' PIL backend: torchvision is not installed) and the model;
- audio (AST): the clip at 16 kHz mono, `ASTFeatureExtractor` (it pads or cuts the fbank to `max_length`)
  and the model, on the whole clip (the first window: AST cuts a longer clip) and on each further window's
  samples. The decoding to 16 kHz mono is FFmpeg's (libswresample) on both sides: transformers' pipeline
  runs the ffmpeg command line (`-ac 1 -ar 16000`), which is not installed here, so the reference decodes
  with `decode_audio`, the same library through PyAV. This compares everything after the decoding;
- video (VideoMAE): every frame decoded with PyAV as RGB; per window, the frames transformers' video
  processors sample (`default_sample_indices_fn`: frame i * n // T of the window's n), then the image
  processor (resize, crop) and the model.

`python -m bridle.data.hf_parity` builds the six families (seeded small random models written by
transformers, each with its Hub family's processor configuration), imports and exports them, serves them
(the service app in process, through its ASGI interface), and prints the parity table, then the same
table for the same graphs decoded as before the processor was recorded (`as_before`), the baseline; the
test suite (tests/importers/test_hf_parity.py) does the same over real HTTP and asserts it. Needs the
`import` extra.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageOps

from bridle.data.media_files import encode_audio
from bridle.model.decoding import decode_audio

IMAGE_FAMILIES = ("vit", "deit", "beit", "dinov2")
FAMILIES = (*IMAGE_FAMILIES, "ast", "videomae")
MODALITY = {**dict.fromkeys(IMAGE_FAMILIES, "image"), "ast": "audio", "videomae": "video"}
PROB_TOLERANCE = 1e-3  # the issue's goal: every class probability within this of transformers'


@dataclass(frozen=True)
class Case:
    """One file: its name (what it is), bytes and media type."""

    name: str
    data: bytes
    content_type: str


# ---- the files -------------------------------------------------------------------------------------


def _photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A photograph-like RGB picture (w, h): smooth colour regions, edges and sensor-like noise."""
    w, h = size
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64)
    y, x = np.mgrid[0:h, 0:w]
    disc = ((x - w * 0.6) ** 2 + (y - h * 0.4) ** 2) < (min(w, h) * 0.25) ** 2
    base[disc] = base[disc] * 0.3 + np.array([230.0, 200.0, 40.0]) * 0.7
    base += rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def image_cases() -> list[Case]:
    """JPEG photographs of several sizes and aspect ratios, a greyscale JPEG, an RGBA and a greyscale
    PNG."""
    cases = [
        Case(f"photo {w}x{h}.jpg", _encode(_photo((w, h), seed), "JPEG"), "image/jpeg")
        for seed, (w, h) in enumerate([(500, 375), (375, 500), (333, 500), (640, 427), (97, 61)])
    ]
    cases.append(Case("grey 300x200.jpg", _encode(_photo((300, 200), 7).convert("L"), "JPEG"), "image/jpeg"))
    rgba = _photo((120, 90), 8).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 120, dtype=np.uint8), (90, 1))  # transparent left, opaque right
    rgba.putalpha(Image.fromarray(alpha))
    cases.append(Case("rgba 120x90.png", _encode(rgba, "PNG"), "image/png"))
    cases.append(Case("grey 64x96.png", _encode(_photo((64, 96), 9).convert("L"), "PNG"), "image/png"))
    return cases


def _recording(seconds: float, rate: int, channels: int, seed: int) -> np.ndarray:
    """(channels, samples) float32: a gliding harmonic voice-like tone and noise, each channel its own."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    out = []
    for c in range(channels):
        f0 = 150 + 100 * c + 80 * np.sin(2 * np.pi * (0.7 + c) * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        voice = sum(np.sin(k * phase) / k for k in range(1, 8) if k * 330 < rate / 2)
        out.append(0.2 * voice * (0.6 - 0.4 * np.cos(2 * np.pi * 3 * t)) + 0.03 * rng.standard_normal(t.size))
    return np.clip(np.stack(out), -1, 1).astype(np.float32)


def audio_cases(window_seconds: float) -> list[Case]:
    """wav recordings at 8, 16, 44.1 and 48 kHz, mono and stereo, shorter and longer than the window."""
    short, long = 0.6 * window_seconds, 2.3 * window_seconds
    plan = [
        (8_000, 1, short), (8_000, 2, long), (16_000, 1, short), (16_000, 1, long), (16_000, 2, short),
        (44_100, 1, long), (44_100, 2, short), (48_000, 2, long), (48_000, 1, short),
    ]  # fmt: skip
    cases = []
    for seed, (rate, channels, seconds) in enumerate(plan):
        data = encode_audio(_recording(seconds, rate, channels, seed), "wav", rate)
        kind = "mono" if channels == 1 else "stereo"
        cases.append(Case(f"{rate / 1000:g} kHz {kind} {seconds:.2f} s.wav", data, "audio/wav"))
    return cases


def make_clip(seconds: float, fps: int, size: tuple[int, int], seed: int) -> bytes:
    """An mp4 (h264) of a textured picture drifting right and a disc moving down: (w, h) even."""
    w, h = size
    picture = np.asarray(_photo((w * 2, h), seed))
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(round(seconds * fps)):
            frame = picture[:, (i * 3) % w : (i * 3) % w + w].copy()
            y, x = np.mgrid[0:h, 0:w]
            frame[((x - w / 2) ** 2 + (y - (i * 2) % h) ** 2) < (h / 5) ** 2] = (250, 250, 250)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return buf.getvalue()


def video_cases() -> list[Case]:
    """Clips shorter than a window's frames, of one window and of two (overlapping), at 10-30 fps."""
    plan = [(0.3, 10, (64, 48)), (1.0, 12, (48, 80)), (2.0, 25, (80, 60)), (3.0, 30, (64, 48))]
    return [
        Case(f"{seconds:g} s at {fps} fps {w}x{h}.mp4", make_clip(seconds, fps, (w, h), seed), "video/mp4")
        for seed, (seconds, fps, (w, h)) in enumerate(plan)
    ]


def cases_for(family: str, window_seconds: float) -> list[Case]:
    modality = MODALITY[family]
    if modality == "image":
        return image_cases()
    return audio_cases(window_seconds) if modality == "audio" else video_cases()


# ---- transformers' answers -------------------------------------------------------------------------


def _activate(logits: np.ndarray, family: str) -> np.ndarray:
    if family == "ast":  # AST's AudioSet heads are multi-label: sigmoid
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_windows(
    family: str, folder: Path, model: Any, case: Case, spans: list[tuple[float, float]]
) -> np.ndarray:
    """transformers' probabilities (W, C) for each of the windows `spans` (seconds; one for an image)."""
    import torch
    import transformers as T

    def run(inputs: dict[str, Any]) -> np.ndarray:
        with torch.no_grad():
            return _activate(model(**inputs).logits.numpy()[0], family)

    if family == "ast":
        fe = T.ASTFeatureExtractor.from_pretrained(folder)
        wave = decode_audio(case.data, fe.sampling_rate)  # (samples,) 16 kHz mono
        out = []
        for i, (start, _) in enumerate(spans):
            first = round(start * fe.sampling_rate)
            piece = wave if i == 0 else wave[first:]  # AST cuts what is longer than max_length itself
            out.append(run(dict(fe(piece, sampling_rate=fe.sampling_rate, return_tensors="pt"))))
        return np.stack(out)
    proc = T.AutoImageProcessor.from_pretrained(folder)
    if family == "videomae":
        frames, fps = _video_frames(case.data)
        num = model.config.num_frames
        out = []
        for start, end in spans:
            first, count = round(start * fps), max(1, round((end - start) * fps))
            chosen = [frames[first + i * count // num] for i in range(num)]  # default_sample_indices_fn
            out.append(run(dict(proc(chosen, return_tensors="pt"))))
        return np.stack(out)
    with Image.open(io.BytesIO(case.data)) as raw:
        if getattr(proc, "do_convert_rgb", False):
            image = ImageOps.exif_transpose(raw)  # the processor converts (alpha over white)
            image.load()
        else:
            image = T.image_utils.load_image(raw)
    return run(dict(proc(image, return_tensors="pt")))[None]


def _video_frames(data: bytes) -> tuple[list[np.ndarray], float]:
    """Every frame (H, W, 3) uint8 in presentation order, and the stream's frame rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        decoded = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
        fps = float(stream.average_rate)
    decoded.sort(key=lambda x: x[0])
    return [f for _, f in decoded], fps


# ---- the comparison ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One family and input kind: files, the largest probability difference, files with another top-1."""

    family: str
    kind: str
    files: int = 0
    windows: int = 0
    max_diff: float = 0.0
    top1_differs: int = 0

    def add(self, served: np.ndarray, reference: np.ndarray) -> None:
        self.files += 1
        self.windows += len(served)
        self.max_diff = max(self.max_diff, float(np.abs(served - reference).max()))
        self.top1_differs += int((served.argmax(-1) != reference.argmax(-1)).any())


def kind_of(case: Case) -> str:
    """The input kind of a file, for the table's rows."""
    if case.content_type.startswith("image/"):
        return {"image/jpeg": "JPEG", "image/png": "PNG"}[case.content_type] + (
            " greyscale" if case.name.startswith("grey") else " RGBA" if "rgba" in case.name else ""
        )
    if case.content_type.startswith("audio/"):
        rate, _, channels, seconds = case.name.removesuffix(" s.wav").split(" ")
        return f"wav {rate} kHz {channels}, {seconds} s"
    seconds, _, _, fps = case.name.split(" ")[:4]
    return f"mp4 {seconds} s at {fps} fps"


def served_windows(answer: dict[str, Any], labels: list[str]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """(W, C) the probabilities a /classify answer (top_k = all) gives each window, by class index, and
    the windows' spans (an image: one window, no span)."""
    windows = answer.get("windows") or [{"start": None, "end": None, "labels": answer["labels"]}]
    probs = np.array(
        [[{x["label"]: x["score"] for x in w["labels"]}[name] for name in labels] for w in windows]
    )
    return probs, [(w["start"], w["end"]) for w in windows]


def compare(
    families: Iterable[str],
    folders: dict[str, Path],
    model_names: dict[str, str],
    window_seconds: dict[str, float],
    classify: Callable[[str, Case], dict[str, Any]],
) -> tuple[list[Row], dict[str, dict[str, Any]]]:
    """Each family's files through `classify(model name, case)` (the service's /classify answer) against
    transformers: the table's rows, and one answer per family (its first file's)."""
    from bridle.data.hf_models import load_model

    rows: dict[tuple[str, str], Row] = {}
    samples: dict[str, dict[str, Any]] = {}
    for family in families:
        folder = folders[family]
        model = load_model(folder)
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        labels = [f"{n} ({i})" if labels.count(n) > 1 else n for i, n in enumerate(labels)]
        for case in cases_for(family, window_seconds[family]):
            answer = classify(model_names[family], case)
            samples.setdefault(family, {"file": case.name, **answer})
            served, spans = served_windows(answer, labels)
            reference = reference_windows(family, folder, model, case, spans)
            kind = kind_of(case)
            rows.setdefault((family, kind), Row(family, kind)).add(served, reference)
    return list(rows.values()), samples


def table(rows: list[Row]) -> str:
    lines = [
        "| family | input | files | windows | max abs diff of a class probability | another top-1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.family} | {r.kind} | {r.files} | {r.windows} | {r.max_diff:.2e} | {r.top1_differs} |"
        )
    return "\n".join(lines)


# ---- the command ------------------------------------------------------------------------------------


def build(root: Path, families: Iterable[str] = FAMILIES) -> dict[str, tuple[Path, Path]]:
    """family -> (the transformers folder, the exported model directory), through the importer and the
    exporter (verified against PyTorch)."""
    from bridle.data.hf_models import make_folder
    from bridle.export.model_dir import export_model_dir
    from bridle.importers.hf import write_import

    out = {}
    for seed, family in enumerate(families):
        folder = make_folder(family, root, seed=10 + seed)
        servable = root / f"{family}-servable"
        write_import(servable, folder)
        model_dir = root / f"{family}-model"
        export_model_dir(servable, model_dir)
        out[family] = (folder, model_dir)
    return out


def as_before(model_dir: Path) -> Callable[[str, Case], dict[str, Any]]:
    """A stand-in for /classify that decodes as the service did before the processor was recorded (the
    manifest's `processing`, `frame_sampling` and `pad` left out: shorter side bicubic + crop, nearest
    frames, short clips centred in silence) and runs the same encoder graph: the baseline row."""
    import dataclasses

    import onnxruntime as ort

    from bridle.model.manifest import read_manifest
    from bridle.model.windowing import clip_scores
    from bridle.runtime.windows import Limits, to_windows

    manifest = read_manifest(model_dir)
    plain = dataclasses.replace(
        manifest, input=dataclasses.replace(manifest.input, processing=None, frame_sampling=None, pad=None)
    )
    session = ort.InferenceSession(str(model_dir / manifest.encoder.path), providers=["CPUExecutionProvider"])
    family = "ast" if manifest.classifier.activation == "sigmoid" else "softmax"

    def classify(_name: str, case: Case) -> dict[str, Any]:
        windows = to_windows(plain, case.data, Limits(600.0, 100_000_000, 600.0))
        (logits,) = session.run(["logits"], {"signal": windows.signal})
        probs = _activate(logits, family)  # (W, C)

        def labels(p: np.ndarray) -> list[dict[str, Any]]:
            return [{"label": name, "score": float(x)} for name, x in zip(manifest.labels, p, strict=True)]

        aggregate = "max" if family == "ast" else "mean"
        return {
            "labels": labels(clip_scores(probs, windows.spans, aggregate)),
            "windows": [
                {"start": a, "end": b, "labels": labels(p)}
                for (a, b), p in zip(windows.spans, probs, strict=True)
            ]
            if manifest.modality != "image"
            else None,
        }

    return classify


def main() -> None:
    import json
    import tempfile

    from starlette.testclient import TestClient

    from bridle.model.manifest import read_manifest
    from bridle.service.app import create_app
    from bridle.service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bridle-hf-parity-") as tmp:
        built = build(Path(tmp))
        dirs = {family: model_dir for family, (_, model_dir) in built.items()}
        manifests = {family: read_manifest(d) for family, d in dirs.items()}
        app = create_app(Settings(model_dirs=list(dirs.values()), providers=["CPUExecutionProvider"]))
        with TestClient(app) as client:

            def classify(name: str, case: Case) -> dict[str, Any]:
                r = client.post(
                    "/classify",
                    params={"model": name, "top_k": 5},
                    files={"file": (case.name, case.data, case.content_type)},
                )
                r.raise_for_status()
                return r.json()["results"][0]

            rows, samples = compare(
                FAMILIES,
                {f: folder for f, (folder, _) in built.items()},
                {f: m.name for f, m in manifests.items()},
                {f: float(m.input.window_seconds or 0.0) for f, m in manifests.items()},
                classify,
            )
            before: list[Row] = []
            for family in FAMILIES:
                stand_in = as_before(dirs[family])
                before += compare(
                    [family],
                    {family: built[family][0]},
                    {family: manifests[family].name},
                    {family: float(manifests[family].input.window_seconds or 0.0)},
                    stand_in,
                )[0]
    print("served:")
    print(table(rows))
    print()
    print("the same files and graphs, decoded as before this change (no processor in the manifest):")
    print(table(before))
    print()
    for family, answer in samples.items():
        answer = {**answer, "windows": answer.get("windows", [])[:1]}
        print(f"{family}: {json.dumps(answer)}")


if __name__ == "__main__":
    main()

"""Media bytes -> the graphs' input windows, by the model's manifest (shared by the service and batch).

Audio and video are cut into the model's windows by bridle/model/windowing.py under a `WindowPolicy`
(the service's and the batch job's settings): a short clip is one window, a longer one full windows
whose last ends at the clip's end; video into clips of the manifest's `window_seconds` (the model's
`clip_seconds`), each sampled to T frames. Images are one window. An imported model's processor,
recorded in the manifest's input (`processing`, `frame_sampling`, `pad`), decides its geometry, frame
choice and padding; manifests without these fields decode as before. Decoding errors are
`bridle.model.decoding.MediaError`s; the front end reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bridle.model.decoding import decode_audio, decode_image, decode_video, looks_like_plain_wav
from bridle.model.manifest import Manifest
from bridle.model.windowing import DEFAULT_POLICY, WindowPolicy, audio_windows, video_windows

# A plain wav at the model's rate up to this size decodes in under ~100 µs (28 µs for 20 KB, linear in
# the size), less than handing it to a thread and back costs (~150 µs): callers that keep their event
# loop free of long work may decode it in place (`decodes_quickly`).
QUICK_DECODE_BYTES = 64 * 1024


def decodes_quickly(manifest: Manifest, data: bytes) -> bool:
    """Whether `to_windows(manifest, data, ...)` is sure to be quick: a small plain wav at the model's
    rate (no FFmpeg, no resampling); anything else may take milliseconds."""
    return (
        manifest.modality == "audio"
        and len(data) <= QUICK_DECODE_BYTES
        and looks_like_plain_wav(data, int(manifest.input.sample_rate))
    )


@dataclass(frozen=True)
class Limits:
    max_audio_seconds: float
    max_image_pixels: int
    max_video_seconds: float


@dataclass(frozen=True)
class Windows:
    """A decoded upload as the graphs' input: `signal` (W, ...) and each window's span in seconds."""

    signal: np.ndarray  # audio (W, samples) float32; image (1, 3, S, S) uint8; video (W, T, 3, S, S) uint8
    spans: list[tuple[float | None, float | None]]  # (start, end) seconds; (None, None) for an image
    duration: float | None  # seconds of media (audio, video)


def to_windows(
    manifest: Manifest, data: bytes, limits: Limits, policy: WindowPolicy = DEFAULT_POLICY
) -> Windows:
    """Decode `data` for the model of `manifest` and cut it into the graphs' fixed-size windows."""
    spec = manifest.input  # read_manifest refuses manifests without the fields used here
    shape = [int(d) for d in spec.shape[1:]]
    if manifest.modality == "audio":
        wave = decode_audio(data, spec.sample_rate, max_seconds=limits.max_audio_seconds)  # (samples,)
        windows, spans = audio_windows(
            wave, shape[0], spec.sample_rate, policy, pad=spec.pad or "waveform"
        )  # (W, samples)
        return Windows(windows, spans, len(wave) / spec.sample_rate)
    if manifest.modality == "image":
        image = decode_image(
            data,
            int(spec.image_size or shape[-1]),
            max_pixels=limits.max_image_pixels,
            processing=spec.processing,
        )
        return Windows(image[None], [(None, None)], None)  # (1, 3, S, S)
    video = decode_video(
        data,
        int(spec.image_size or shape[-1]),
        max_seconds=limits.max_video_seconds,
        max_pixels=limits.max_image_pixels,
        processing=spec.processing,
    )
    clips, spans = video_windows(
        video, shape[0], spec.window_seconds, policy, rule=spec.frame_sampling or "nearest"
    )  # (W, T, 3, S, S)
    return Windows(clips, spans, video.duration)

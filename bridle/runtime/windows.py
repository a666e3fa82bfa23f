"""Media bytes -> the graphs' input windows, by the model's manifest (shared by the service and batch).

Each modality's spec (bridle/model/modalities.py) decodes an upload and cuts it into the model's windows
under a `WindowPolicy` (the service's and the batch job's settings): audio and video into windows of the
manifest's `window_seconds`, a short clip one window; images one window. An imported model's processor,
recorded in the manifest's input (`processing`, `frame_sampling`, `pad`), decides its geometry, frame
choice and padding. Decoding errors are `bridle.model.decoding.MediaError`s, and a manifest of a modality
that is not registered an `UnknownModality`; the front end reports them.
"""

from __future__ import annotations

from bridle.model.manifest import Manifest
from bridle.model.modalities import Limits, Windows, spec_for
from bridle.model.windowing import DEFAULT_POLICY, WindowPolicy

# A plain wav at the model's rate up to this size decodes in under ~100 µs (28 µs for 20 KB, linear in
# the size), less than handing it to a thread and back costs (~150 µs): callers that keep their event
# loop free of long work may decode it in place (`decodes_quickly`).
QUICK_DECODE_BYTES = 64 * 1024


def decodes_quickly(manifest: Manifest, data: bytes) -> bool:
    """Whether `to_windows(manifest, data, ...)` is sure to be quick: small, and one its modality decodes
    without FFmpeg (a plain wav at an audio model's rate, no resampling); anything else may take
    milliseconds."""
    spec = spec_for(manifest.modality)
    return len(data) <= QUICK_DECODE_BYTES and spec.decodes_quickly(manifest.input, data)


def to_windows(
    manifest: Manifest, data: bytes, limits: Limits, policy: WindowPolicy = DEFAULT_POLICY
) -> Windows:
    """Decode `data` for the model of `manifest` and cut it into the graphs' fixed-size windows."""
    return spec_for(manifest.modality).to_windows(manifest.input, data, limits, policy)


__all__ = ["QUICK_DECODE_BYTES", "Limits", "Windows", "decodes_quickly", "to_windows"]

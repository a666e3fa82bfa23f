"""What the service does differently per modality, in one registry (`SERVED`).

Decoding and windowing per modality are the runtime's (bridle/runtime/windows.py, by the manifest); here is
only what the HTTP service adds: which uploads a model of each modality reads, and how `/features` describes
the tensor it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridle.model.config import Modality


@dataclass(frozen=True)
class Served:
    # the uploads a model of this modality reads: audio and video files share containers, so an audio
    # model reads the sound of a video, and a video model given a file without pictures says so (422
    # no_frames) from its decoder
    reads: tuple[Modality, ...]
    features_layout: str  # the axes and normalisation of the `features` tensor (POST /features)


SERVED: dict[Modality, Served] = {
    "audio": Served(
        reads=("audio", "video"),
        features_layout="(windows, 1, frames, mel): the log-mel fbank, (log-mel - mean) / (2 std)",
    ),
    "image": Served(
        reads=("image",),
        features_layout="(windows, 3, height, width): RGB, (pixel / 255 - mean) / std per channel",
    ),
    "video": Served(
        reads=("video", "audio"),
        features_layout="(windows, 3, frames, height, width): RGB, (pixel / 255 - mean) / std per channel",
    ),
}

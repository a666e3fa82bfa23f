"""The modality registry (bridle/model/modalities.py): one spec per modality, looked up by every layer, and
an unknown modality a named error wherever it is looked up, never a fall-through to another modality."""

from __future__ import annotations

import copy
import dataclasses
import io
import wave
from pathlib import Path

import numpy as np
import pytest

from bridle.model.config import ModelConfig, preset
from bridle.model.decoding import MediaError
from bridle.model.manifest import GraphFile, InputSpec, Manifest, ManifestError, QuantizerSpec, TensorSpec
from bridle.model.media_sets import decode_example, media_files
from bridle.model.modalities import (
    AUDIO,
    Limits,
    UnknownModality,
    modality_choices,
    modality_names,
    register,
    sniff_modality,
    spec_for,
)
from bridle.runtime.windows import decodes_quickly, to_windows

LIMITS = Limits(600.0, 10**7, 600.0)


def wav(seconds: float, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(int(seconds * rate), "<i2").tobytes())
    return out.getvalue()


def test_the_three_modalities_are_registered_with_their_input_types() -> None:
    assert modality_names() == ("audio", "image", "video")
    assert modality_choices() == "audio, image or video"
    for name in modality_names():
        config = preset(f"micro-{name}")
        spec = spec_for(name)
        assert spec.name == name and isinstance(config.input, spec.input_type)
        assert len(spec.grid_axes) == len(config.grid), name
        assert ModelConfig.from_dict(config.to_dict()) == config


def test_an_unknown_modality_is_a_named_error_not_a_fall_through() -> None:
    with pytest.raises(UnknownModality, match=r"unknown modality 'smell'; registered: \['audio'"):
        spec_for("smell")
    audio = preset("micro-audio")
    with pytest.raises(UnknownModality, match="smell"):
        dataclasses.replace(audio, modality="smell")
    with pytest.raises(UnknownModality, match="smell"):
        ModelConfig.from_dict({**audio.to_dict(), "modality": "smell"})


def test_every_lookup_refuses_an_unknown_modality(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(wav(0.1))
    with pytest.raises(UnknownModality):
        media_files(tmp_path, "smell")
    # a config of a registered modality that a stale object calls something else: no silent decoding as video
    stale = copy.copy(preset("micro-video"))
    object.__setattr__(stale, "modality", "smell")
    with pytest.raises(UnknownModality):
        decode_example(tmp_path / "a.wav", stale)


def test_the_runtime_refuses_a_manifest_of_an_unknown_modality_where_it_used_to_decode_video() -> None:
    manifest = manifest_of("audio")
    assert to_windows(manifest, wav(0.2), LIMITS).signal.shape == (1, 5360)  # one window of 0.335 s
    assert decodes_quickly(manifest, wav(0.5))
    unknown = dataclasses.replace(manifest, modality="smell")
    with pytest.raises(UnknownModality, match="smell"):
        to_windows(unknown, wav(0.5), LIMITS)
    with pytest.raises(UnknownModality):
        decodes_quickly(unknown, wav(0.5))


def test_a_manifest_of_an_unknown_modality_is_refused_on_reading() -> None:
    d = manifest_of("image").to_dict()
    with pytest.raises(ManifestError, match=r"manifest modality 'smell' must be one of \['audio', 'image'"):
        Manifest.from_dict({**d, "modality": "smell"})


def test_a_manifest_lacking_the_input_fields_of_its_modality_is_refused() -> None:
    d = manifest_of("audio").to_dict()
    del d["input"]["sample_rate"]
    with pytest.raises(ManifestError, match=r"lacks \['sample_rate'\]"):
        Manifest.from_dict(d)


def test_a_modality_is_registered_once() -> None:
    with pytest.raises(ValueError, match="registered already"):
        register(AUDIO)


def test_sniffing_names_the_registered_modalities_it_reads() -> None:
    assert sniff_modality(wav(0.1), None) == "audio"
    assert sniff_modality(b"\x00\x00\x00\x18ftypM4A " + bytes(20), None) == "audio"
    assert sniff_modality(b"\x00\x00\x00\x18ftypisom" + bytes(20), None) == "video"
    assert sniff_modality(b"OggS" + bytes(24) + b"\x80theora", None) == "video"
    assert sniff_modality(b"OggS" + bytes(24) + b"\x01vorbis", None) == "audio"
    # a file that starts with another format's signature is that format, whatever bytes 4..12 hold
    assert sniff_modality(b"BM\x00\x00ftypM4A " + bytes(20), None) == "image"
    assert sniff_modality(b"OggSftypM4A " + bytes(20) + b"\x80theora", None) == "video"
    with pytest.raises(MediaError, match="is not audio, image or video this service reads"):
        sniff_modality(b"just text", "text/plain")


def manifest_of(modality: str) -> Manifest:
    """A manifest as the exporter writes it for the micro preset (no graphs needed to read its input)."""
    config = preset(f"micro-{modality}")
    signal: list[int | str] = ["batch", *config.input.signal_shape()]

    graph = GraphFile("encoder.onnx", "0" * 64, [TensorSpec("signal", config.input.signal_dtype, signal)], [])
    return Manifest(
        name=f"micro-{modality}",
        modality=modality,
        input=InputSpec("signal", config.input.signal_dtype, signal, **config.input.manifest_fields()),
        patch_grid=list(config.grid),
        grid_axes=list(spec_for(modality).grid_axes),
        embedding_dim=config.encoder.dim,
        quantizer=QuantizerSpec(
            config.quantizer.levels, config.quantizer.codebook_size, config.quantizer.dim
        ),
        tokenizer_kind="random",
        labels=[],
        opset=18,
        files={"encoder": graph, "tokenizer": dataclasses.replace(graph, path="tokenizer.onnx")},
        model_config=config.to_dict(),
    )

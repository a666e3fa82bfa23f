"""Model loading and the execution-provider choice."""

from __future__ import annotations

import io
import shutil
import wave
from pathlib import Path

import onnxruntime as ort
import pytest

from bridle.model.manifest import read_manifest
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.models import find_model_dirs, load_model, load_models
from bridle.runtime.sessions import CPU, CUDA, CpuThreads, ProviderChooser, session_options
from bridle.runtime.windows import QUICK_DECODE_BYTES, Limits, decodes_quickly, to_windows


def test_the_provider_probe_is_quiet_and_matches_the_session(model_root: Path, capfd) -> None:
    chooser = ProviderChooser()
    model = load_model(model_root / "audio", chooser)
    err = capfd.readouterr().err
    assert "Failed to load" not in err and "LoadLibrary" not in err, err
    assert model.providers == model.sessions["encoder"].get_providers()
    if CUDA in ort.get_available_providers():  # onnxruntime-gpu: the probe says whether CUDA really loaded
        assert chooser._cuda_works is (CUDA in model.providers)
    if not chooser._cuda_works:
        assert model.providers == [CPU] and chooser.requested() == [CPU]


def test_providers_override(model_root: Path) -> None:
    assert load_model(model_root / "image", ProviderChooser([CPU])).providers == [CPU]
    with pytest.raises(ModelLoadError, match="not available"):
        ProviderChooser(["NoSuchExecutionProvider"]).requested()


def test_model_dirs_are_found_under_a_folder_and_names_must_be_unique(
    model_root: Path, tmp_path: Path
) -> None:
    assert [p.name for p in find_model_dirs([model_root])] == ["audio", "image", "video"]
    assert find_model_dirs([model_root / "audio"]) == [model_root / "audio"]
    with pytest.raises(ModelLoadError, match="holds no model directory"):
        find_model_dirs([tmp_path])
    shutil.copytree(model_root / "audio", tmp_path / "again")
    with pytest.raises(ModelLoadError, match="two model directories are named 'micro-audio'"):
        load_models([model_root / "audio", tmp_path / "again"], ProviderChooser([CPU]))


def test_dummy_batch_runs_both_graphs(model_root: Path) -> None:
    model = load_model(model_root / "video", ProviderChooser([CPU]))
    out = model.run("tokenizer", model.dummy_batch(2))
    assert out["codes"].shape == (2, 32, 2) and out["quantized"].shape == (2, 32, 16)
    out = model.run("encoder", model.dummy_batch(2))
    assert out["embedding"].shape == (2, 32) and out["logits"].shape == (2, 4)


@pytest.mark.parametrize("threads", [CpuThreads(), CpuThreads(intra_op=1, spin=True)])
def test_session_options_follow_the_thread_settings(threads: CpuThreads) -> None:
    options = session_options(threads)
    assert options.intra_op_num_threads == threads.intra_op
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == (
        "1" if threads.spin else "0"
    )


def wav(rate: int, seconds: float, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\0" * int(rate * seconds) * channels * width)
    return buf.getvalue()


def test_only_small_plain_wavs_at_the_models_rate_are_decoded_in_place(model_root: Path) -> None:
    """`decodes_quickly` predicts which uploads the front end decodes on its event loop: those must be
    quick (no FFmpeg, no resampling, small); the rest go to a thread."""
    manifest = read_manifest(model_root / "audio")
    rate = int(manifest.input.sample_rate)
    assert decodes_quickly(manifest, wav(rate, 1.0))
    assert not decodes_quickly(manifest, wav(rate * 2, 1.0))  # resampled
    assert not decodes_quickly(manifest, wav(rate, 1.0, channels=2))  # mixed down
    assert not decodes_quickly(manifest, wav(rate, 1.0, width=4))
    assert not decodes_quickly(manifest, wav(rate, QUICK_DECODE_BYTES / 2 / rate + 1))  # too big
    assert not decodes_quickly(manifest, b"RIFF" + b"\0" * 40)
    assert not decodes_quickly(read_manifest(model_root / "image"), wav(rate, 1.0))
    # and it is the wav the model sees: silence, in windows of the model's length
    windows = to_windows(manifest, wav(rate, 0.5), Limits(60, 10**7, 60)).signal
    assert windows.shape[1:] == (manifest.input.shape[1],) and not windows.any()

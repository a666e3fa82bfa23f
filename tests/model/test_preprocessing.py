"""build_preprocessor per modality: shapes, values, cropping / padding, fbank_stats, ONNX export."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bridle.model.config import IMAGENET_MEAN, IMAGENET_STD, AudioInput, ModelConfig, preset
from bridle.model.fbank import KaldiFbank
from bridle.model.preprocessing import build_preprocessor, fbank_stats
from tests.fbank_rounding import U, log_mel_difference_bound


def waves(batch: int, samples: int, seed: int) -> torch.Tensor:
    """A tone under noise that swells and fades, different per row: fbank values vary in time and mel.

    The noise never falls below -20 dB re the tone: next to a pure tone, bands sit so far down that
    any two float32 DFTs (torch's, ONNX Runtime's, Kaldi's) round differently by ~1e-3 in the log, in a
    narrow 128-bin band most; here all bands stay well above that rounding noise.
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16_000
    tone = 0.2 * torch.sin(2 * torch.pi * (200 + 300 * torch.rand(batch, 1, generator=g)) * t)
    swell = 0.02 + 0.1 * (torch.sin(2 * torch.pi * 3 * t) > 0)
    return (tone + swell * torch.randn(batch, samples, generator=g)).float()


def pixels(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ---- audio --------------------------------------------------------------------------------------------
def test_audio_shape_and_normalisation() -> None:
    cfg = preset("micro-audio")
    audio = cfg.input
    x = waves(3, audio.window_samples, 0)
    with torch.no_grad():
        out = build_preprocessor(cfg)(x)
        fbank = KaldiFbank(audio)(x)
    assert out.shape == (3, 1, audio.num_frames, audio.num_mel_bins) == (3, 1, 32, 32)
    assert fbank.shape[1] == audio.num_frames  # window_samples is exactly num_frames frames
    torch.testing.assert_close(out[:, 0], (fbank - audio.mean) / (2 * audio.std), atol=1e-5, rtol=0)


def test_audio_longer_input_is_cropped_to_the_first_frames() -> None:
    cfg = preset("micro-audio")
    audio = cfg.input
    long = waves(2, audio.window_samples + 3000, 1)
    pre = build_preprocessor(cfg)
    with torch.no_grad():
        out = pre(long)
        full = (KaldiFbank(audio)(long) - audio.mean) / (2 * audio.std)
        head = pre(long[:, : audio.window_samples])
    assert full.shape[1] > audio.num_frames
    assert out.shape == (2, 1, audio.num_frames, audio.num_mel_bins)
    # the two fbanks run on inputs of different lengths, whose matmuls may round differently
    bound = normalised_bound(long[:, : audio.window_samples].numpy(), audio, out[:, 0].numpy())
    assert np.all((out[:, 0] - full[:, : audio.num_frames]).abs().numpy() <= bound)
    torch.testing.assert_close(out, head, atol=0, rtol=0)


def test_audio_shorter_input_is_zero_padded_after_normalisation() -> None:
    cfg = preset("micro-audio")
    audio = cfg.input
    short = waves(2, 400 + 9 * 160, 2)  # 10 frames
    with torch.no_grad():
        out = build_preprocessor(cfg)(short)
        fbank = (KaldiFbank(audio)(short) - audio.mean) / (2 * audio.std)
    assert out.shape == (2, 1, audio.num_frames, audio.num_mel_bins)
    torch.testing.assert_close(out[:, 0, :10], fbank, atol=1e-5, rtol=0)
    assert torch.all(out[:, 0, 10:] == 0)
    assert torch.all(out[:, 0, :10] != 0)
    tiny = build_preprocessor(cfg)(torch.zeros(2, 100))  # not one frame: all padding
    assert tiny.shape == out.shape and torch.all(tiny == 0)


def test_audio_uses_the_configured_statistics() -> None:
    cfg = preset("micro-audio")
    other = cfg.replace(input=AudioInput(num_mel_bins=32, num_frames=32, mean=1.5, std=0.5))
    x = waves(1, cfg.input.window_samples, 3)
    with torch.no_grad():
        a, b = build_preprocessor(cfg)(x), build_preprocessor(other)(x)
    # (f - m1) / (2 s1) = a  =>  f = 2 s1 a + m1, and b = (f - m2) / (2 s2)
    f = 2 * cfg.input.std * a + cfg.input.mean
    torch.testing.assert_close(b, (f - 1.5) / 1.0, atol=1e-4, rtol=0)


def test_audio_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match="batch, samples"):
        build_preprocessor(preset("micro-audio"))(torch.zeros(5360))


# ---- image / video ------------------------------------------------------------------------------------
def test_image_normalisation_values() -> None:
    cfg = preset("micro-image")
    x = pixels((2, 3, 16, 16), 4)
    x[0, :, 0, 0] = torch.tensor([0, 128, 255], dtype=torch.uint8)
    out = build_preprocessor(cfg)(x)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    expected = [(0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (128 / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]]
    expected.append((1 - IMAGENET_MEAN[2]) / IMAGENET_STD[2])
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor(expected), atol=1e-6, rtol=0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (x.double() / 255 - mean) / std, atol=1e-6, rtol=0, check_dtype=False)
    # float input already in 0..255 gives the same
    torch.testing.assert_close(build_preprocessor(cfg)(x.float()), out, atol=0, rtol=0)


def test_image_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="batch, 3, 16, 16"):
        build_preprocessor(preset("micro-image"))(pixels((1, 3, 32, 32), 0))


def test_video_layout_and_values() -> None:
    cfg = preset("micro-video")
    x = pixels((2, 4, 3, 16, 16), 5)
    out = build_preprocessor(cfg)(x)
    assert out.shape == (2, 3, 4, 16, 16) and out.is_contiguous()
    frames = build_preprocessor(preset("micro-image"))(x.reshape(8, 3, 16, 16)).reshape(2, 4, 3, 16, 16)
    torch.testing.assert_close(out, frames.permute(0, 2, 1, 3, 4), atol=0, rtol=0)
    with pytest.raises(ValueError, match="video input"):
        build_preprocessor(cfg)(x[:, :3])


# ---- fbank_stats --------------------------------------------------------------------------------------
def test_fbank_stats_over_all_values_of_mixed_inputs() -> None:
    audio = AudioInput(num_mel_bins=32)
    items = [waves(1, 8000, 6)[0].numpy(), waves(1, 3000, 7)[0], waves(2, 5000, 8), np.zeros(200, np.float32)]
    mean, std = fbank_stats(iter(items), audio)
    fbank = KaldiFbank(audio)
    with torch.no_grad():
        values = torch.cat([fbank(torch.as_tensor(w).reshape(-1, w.shape[-1])).flatten() for w in items[:3]])
    values = values.double()
    assert isinstance(mean, float) and isinstance(std, float)
    assert mean == pytest.approx(values.mean().item(), abs=1e-6)
    assert std == pytest.approx(values.std(unbiased=False).item(), abs=1e-6)
    with pytest.raises(ValueError, match="long enough"):
        fbank_stats([np.zeros(100, np.float32)], audio)


def normalised_bound(wave: np.ndarray, audio: AudioInput, normalised: np.ndarray) -> np.ndarray:
    """Bound on |run_1 - run_2| of the normalised fbank: the log-mel bound times the scale, plus each
    run's rounding of the subtraction and the multiplication."""
    scale = 1.0 / (2.0 * audio.std)
    rounding = 2 * 2 * U * (np.abs(normalised) + abs(audio.mean) * scale)
    return log_mel_difference_bound(wave, audio) * scale + rounding


# ---- ONNX ---------------------------------------------------------------------------------------------
def example_input(cfg: ModelConfig, batch: int, seed: int) -> torch.Tensor:
    if cfg.modality == "audio":
        return waves(batch, cfg.input.window_samples, seed)
    s = cfg.input.image_size
    if cfg.modality == "image":
        return pixels((batch, 3, s, s), seed)
    return pixels((batch, cfg.input.num_frames, 3, s, s), seed)


@pytest.mark.parametrize(
    ("name", "dynamo"),
    [
        ("micro-audio", True),
        ("micro-image", True),
        ("micro-video", True),
        ("tiny-audio", True),
        ("tiny-audio", False),  # the legacy exporter works too
        ("micro-video", False),
    ],
)
def test_exports_to_onnx_with_dynamic_batch(name: str, dynamo: bool, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    cfg = preset(name)
    module = build_preprocessor(cfg).eval()
    path = tmp_path / f"{name}.onnx"
    if dynamo:
        axes = {"dynamic_shapes": {"signal": {0: torch.export.Dim("batch", min=1, max=4096)}}}
    else:
        axes = {"dynamic_axes": {"signal": {0: "batch"}}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer warnings are not ours
        torch.onnx.export(
            module,
            (example_input(cfg, 2, 0),),
            str(path),
            dynamo=dynamo,
            external_data=False,
            opset_version=18,
            input_names=["signal"],
            **axes,
        )
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 18
    model.ir_version = min(model.ir_version, 10)
    onnx.save(model, str(path))
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = example_input(cfg, batch, 10 + batch)
        (got,) = session.run(None, {"signal": x.numpy()})
        with torch.no_grad():
            expected = module(x).numpy()
        assert got.shape == expected.shape and got.shape[0] == batch
        diff = np.abs(got - expected)
        if cfg.modality == "audio":
            # torch and ORT sum in different orders: bounded by float32 rounding through the fbank
            assert np.all(diff[:, 0] <= normalised_bound(x.numpy(), cfg.input, expected[:, 0]))
        else:
            # x * scale + bias, fused or not: at most U (|x * scale| + |result|) apart from exact, and
            # |x * scale| <= |result| + |bias| <= 2 max |result| (a black pixel's result is -bias)
            assert diff.max() <= 2 * 3 * U * np.abs(expected).max()

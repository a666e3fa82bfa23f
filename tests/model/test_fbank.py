"""KaldiFbank against an independent float64 numpy implementation, which is checked against
kaldi-native-fbank.

Ours is compared with the float64 reference within the float32 rounding bound of tests/fbank_rounding.py,
which holds on any CPU. The reference and kaldi-native-fbank are both the same on every x86 machine (a
float64 FFT; one compiled binary), so their agreement is checked against a fixed bound; ours then
agrees with Kaldi through the reference. kaldi-native-fbank refuses 128 mel bins at 16 kHz with a
512-point FFT (a triangle holds no FFT bin: "You may have set num_mel_bins too large"); 128 bins are
checked against the reference only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bridle.model.config import AudioInput
from bridle.model.fbank import KaldiFbank, num_frames
from tests.fbank_rounding import log_mel_difference_bound

knf = pytest.importorskip("kaldi_native_fbank")

SR = 16_000
EPS = float(np.finfo(np.float32).eps)


def knf_fbank(wave: np.ndarray, bins: int, window: str = "hanning") -> np.ndarray:
    """kaldi-native-fbank of `wave * 2**15` with the options KaldiFbank implements -> (frames, bins)."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SR
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.window_type = window
    opts.frame_opts.round_to_power_of_two = True
    opts.mel_opts.num_bins = bins
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    opts.use_power = True
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(SR, (wave.astype(np.float32) * 32768).tolist())
    fb.input_finished()
    n = fb.num_frames_ready
    return np.stack([fb.get_frame(i) for i in range(n)]) if n else np.zeros((0, bins), np.float32)


KALDI_WINDOWS = {  # n = 0 .. N - 1, a = 2 pi / (N - 1), as Kaldi's feature-window.cc defines them
    "hanning": lambda n, a: 0.5 - 0.5 * np.cos(a * n),
    "hamming": lambda n, a: 0.54 - 0.46 * np.cos(a * n),
    "povey": lambda n, a: (0.5 - 0.5 * np.cos(a * n)) ** 0.85,
    "rectangular": lambda n, a: np.ones_like(n, dtype=np.float64),
}


def numpy_fbank(wave: np.ndarray, bins: int, window: str = "hanning") -> np.ndarray:
    """Kaldi's algorithm step by step in float64 with np.fft, written from Kaldi's description."""
    x = wave.astype(np.float64) * 32768
    length, shift, padded = 400, 160, 512
    frames = np.stack([x[i * shift : i * shift + length] for i in range(1 + (len(x) - length) // shift)])
    frames = frames - frames.mean(axis=1, keepdims=True)
    emphasised = np.empty_like(frames)
    emphasised[:, 1:] = frames[:, 1:] - 0.97 * frames[:, :-1]
    emphasised[:, 0] = frames[:, 0] - 0.97 * frames[:, 0]
    shape = KALDI_WINDOWS[window](np.arange(length), 2 * math.pi / (length - 1))  # (length,)
    power = np.abs(np.fft.rfft(emphasised * shape, n=padded)) ** 2  # (F, 257)

    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(20.0), mel(SR / 2)
    delta = (hi - lo) / (bins + 1)
    banks = np.zeros((padded // 2, bins))
    for b in range(bins):
        left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        for k in range(padded // 2):  # Kaldi's banks cover bins 0 .. padded/2 - 1
            m = mel(k * SR / padded)
            if left < m < right:
                banks[k, b] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    return np.log(np.maximum(power[:, : padded // 2] @ banks, EPS))


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Harmonics of a gliding f0 through formant resonances, under a syllable-rate envelope.

    A faint noise floor (-80 dB re full scale) is added as in any recording: without it the highest
    bands sit 120 dB under the strongest, where any float32 FFT, Kaldi's included, returns rounding
    noise (both then differ from a float64 FFT by ~1 in the log).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 + 50 * np.sin(2 * math.pi * 0.8 * t) + 20 * np.sin(2 * math.pi * 3.1 * t)
    phase = 2 * math.pi * np.cumsum(f0) / SR
    wave = np.zeros_like(t)
    for k in range(1, 60):
        fk = k * f0
        gain = sum(
            a / (1 + ((fk - fc) / bw) ** 2)
            for fc, bw, a in ((700, 130, 1.0), (1200, 150, 0.5), (2600, 250, 0.2))
        )
        wave += gain * np.sin(k * phase) * (fk < SR / 2)
    envelope = np.clip(np.sin(2 * math.pi * 2.5 * t), 0, None) ** 2 + 0.01
    wave = 0.6 * wave * envelope / np.abs(wave * envelope).max()
    return (wave + 1e-4 * rng.standard_normal(t.shape)).astype(np.float32)


def white_noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


SIGNALS = {"speech": speech_like(2.0, 0) + 0.002, "noise": white_noise(1.3, 1)}  # speech with a DC offset


def ours(wave: np.ndarray, bins: int, window: str = "hanning") -> np.ndarray:
    with torch.no_grad():
        fbank = KaldiFbank(AudioInput(num_mel_bins=bins, window=window))
        return fbank(torch.from_numpy(wave)[None])[0].numpy()


def assert_within_rounding(
    got: np.ndarray, reference: np.ndarray, wave: np.ndarray, audio: AudioInput
) -> None:
    """|ours - float64 reference| within the float32 rounding bound, element by element."""
    bound = log_mel_difference_bound(wave[None], audio)[0]  # (frames, mel)
    assert got.shape == reference.shape == bound.shape
    assert np.all(np.abs(got - reference) <= bound), np.max(np.abs(got - reference) / bound)


@pytest.mark.parametrize("bins", [80, 64])
@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_matches_kaldi_native_fbank(signal: str, bins: int) -> None:
    wave = SIGNALS[signal]
    kaldi = knf_fbank(wave, bins)
    reference = numpy_fbank(wave, bins)
    assert kaldi.shape == reference.shape == (num_frames(len(wave), AudioInput()), bins)
    assert np.abs(reference - kaldi).max() < 1e-3  # Kaldi's float32 FFT against float64
    assert_within_rounding(ours(wave, bins), reference, wave, AudioInput(num_mel_bins=bins))


@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_128_bins_match_reference_with_empty_bins_at_log_eps(signal: str) -> None:
    wave = SIGNALS[signal]
    with pytest.raises(ValueError, match="num_mel_bins too large"):
        knf_fbank(wave, 128)
    expected = numpy_fbank(wave, 128)
    got = ours(wave, 128)
    assert_within_rounding(got, expected, wave, AudioInput(num_mel_bins=128))
    empty = np.all(expected == np.log(EPS), axis=0)  # bands that hold no FFT bin
    assert empty.any() and not empty[10:].any()  # only the narrowest, lowest bands can be empty
    np.testing.assert_array_equal(got[:, empty], np.float32(np.log(EPS)))


def test_large_dc_offset_is_removed_at_least_as_precisely_as_kaldi() -> None:
    wave = (0.3 * speech_like(1.0, 3) + 0.5).astype(np.float32)
    reference = numpy_fbank(wave, 80)
    ours_error = np.abs(ours(wave, 80) - reference).max()
    assert ours_error < 0.1
    assert ours_error < np.abs(knf_fbank(wave, 80) - reference).max()


@pytest.mark.parametrize("window", ["hamming", "povey", "rectangular"])
def test_other_kaldi_windows_match(window: str) -> None:
    wave = SIGNALS["speech"][:8000]
    reference = numpy_fbank(wave, 40, window)
    assert np.abs(reference - knf_fbank(wave, 40, window)).max() < 1e-3
    assert_within_rounding(
        ours(wave, 40, window), reference, wave, AudioInput(num_mel_bins=40, window=window)
    )
    with pytest.raises(ValueError, match="unsupported window"):
        KaldiFbank(AudioInput(window="blackmann"))


@pytest.mark.parametrize("samples", [400, 401, 559, 560, 561, 16_000, 20_720])
def test_frame_count_equals_kaldi(samples: int) -> None:
    wave = white_noise(samples / SR, 2)[:samples]
    kaldi = knf_fbank(wave, 23)
    assert num_frames(samples, AudioInput()) == kaldi.shape[0]
    reference = numpy_fbank(wave, 23)
    assert np.abs(reference - kaldi).max() < 1e-3
    assert_within_rounding(ours(wave, 23), reference, wave, AudioInput(num_mel_bins=23))


def test_shorter_than_one_frame_is_refused() -> None:
    assert num_frames(399, AudioInput()) == 0
    with pytest.raises(ValueError, match="at least 400 samples"):
        KaldiFbank(AudioInput())(torch.zeros(1, 399))


def test_batch_rows_are_independent() -> None:
    waves = np.stack([speech_like(0.5, 3), white_noise(0.5, 4), np.zeros(8000, np.float32)])
    fbank = KaldiFbank(AudioInput(num_mel_bins=64))
    with torch.no_grad():
        batch = fbank(torch.from_numpy(waves))
        rows = [fbank(torch.from_numpy(w)[None])[0] for w in waves]
    assert batch.shape == (3, 48, 64)
    # a batch and a single row may take different matmul kernels, which round differently
    bound = log_mel_difference_bound(waves, AudioInput(num_mel_bins=64))
    for got, row, limit in zip(batch, rows, bound, strict=True):
        assert np.all(np.abs(got.numpy() - row.numpy()) <= limit)
    # silence has zero energy everywhere: Kaldi's floor
    assert torch.all(batch[2] == math.log(EPS))


def test_graph_has_no_fft_op_and_matches_in_onnxruntime(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    fbank = KaldiFbank(AudioInput(num_mel_bins=80)).eval()
    example = torch.from_numpy(np.stack([white_noise(0.3, 5), speech_like(0.3, 6)]))
    path = tmp_path / "fbank.onnx"
    torch.onnx.export(
        fbank,
        (example,),
        str(path),
        dynamo=True,
        external_data=False,
        opset_version=18,
        dynamic_shapes={"waveform": {0: torch.export.Dim("batch")}},
    )
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"DFT", "STFT"}
    model.ir_version = min(model.ir_version, 10)
    onnx.save(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    test = np.stack([speech_like(0.3, 7), white_noise(0.3, 8), speech_like(0.3, 9)])
    (got,) = session.run(None, {session.get_inputs()[0].name: test})
    with torch.no_grad():
        expected = fbank(torch.from_numpy(test)).numpy()
    assert got.shape == (3, 28, 80)
    # the bound follows float32 rounding through each step, so it holds whatever order a CPU's kernels
    # sum in; it is tight enough that a wrong constant in the graph (pre-emphasis 0.96) breaks it
    bound = log_mel_difference_bound(test, AudioInput(num_mel_bins=80))
    assert np.all(np.abs(got - expected) <= bound)
    with torch.no_grad():
        wrong = KaldiFbank(AudioInput(num_mel_bins=80, preemphasis=0.96))(torch.from_numpy(test)).numpy()
    assert np.any(np.abs(wrong - expected) > bound)
    for row, wave in zip(got, test, strict=True):
        assert_within_rounding(row, numpy_fbank(wave, 80), wave, AudioInput(num_mel_bins=80))


def test_energy_floor_puts_digital_silence_near_a_recordings_noise_floor() -> None:
    # issue 13: with Kaldi's float32-eps floor, the zero padding of a short clip (and espeak-ng's digital
    # silence) sat at log-mel -15.9, ~23 below the quietest frames of real recordings (FSDD: ~7); the
    # floor of the bundled audio model is 1.0 (log 0), just below 16-bit quantisation noise (~1.8)
    import dataclasses

    audio = AudioInput(sample_rate=8000, num_mel_bins=64, num_frames=16)
    kaldi, floored = KaldiFbank(audio), KaldiFbank(dataclasses.replace(audio, energy_floor=1.0))
    silence = torch.zeros(1, audio.window_samples)
    assert float(kaldi(silence).max()) == pytest.approx(np.log(np.finfo(np.float32).eps))
    assert float(floored(silence).min()) == 0.0 and float(floored(silence).max()) == 0.0
    rng = np.random.default_rng(0)
    speech = torch.from_numpy((0.1 * rng.standard_normal((1, audio.window_samples))).astype(np.float32))
    torch.testing.assert_close(floored(speech), kaldi(speech))  # above the floor nothing changes
    quantisation = torch.from_numpy(
        (rng.uniform(-0.5, 0.5, (1, audio.window_samples)) / 2**15).astype(np.float32)
    )
    assert float(floored(quantisation).median()) > 0.5  # 16-bit noise stays above the floor

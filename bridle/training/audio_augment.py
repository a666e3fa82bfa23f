"""Audio augmentation for how people record: the voice, the room, the microphone and the line.

`AudioAugment(settings, cfg)(wave, rng) -> wave` takes a whole float32 waveform (samples,) at the model's
rate and returns another (of a different length when speed, pitch or silence change it). It is applied by
the training set before the window is cut (bridle/training/augment.py); evaluation sets never get it. numpy
only, one example at a time, a few milliseconds per 1 s clip.

The chain, each step applied with its own probability `<step>_p` (0 = off), in recording order:
    speed      resample by a factor: faster speech is also higher (a tape sped up)
    pitch      shift by semitones at the same duration (resample, then granular overlap-add back)
    silence    leading and trailing silence, each up to `silence_seconds` (also shifts the speech in time)
    reverb     a synthetic room: exponentially decaying noise with RT60 in `reverb_rt60`, mixed wet/dry
    noise      white, pink or brown noise at an SNR in `noise_snr_db` relative to the speech
    telephone  the telephone band, 300 - 3400 Hz (what 8 kHz recordings and phone lines keep)
    gain       a level change in dB, clipped to [-1, 1] like a recorder would
    eq         a microphone's (or a voice's) frequency response: a smooth random gain curve, up to
               `eq_db` dB, over `EQ_POINTS` log-spaced frequencies
    band_mask  one frequency band up to `band_mask_hz` wide removed (SpecAugment's frequency mask, done on
               the waveform so that it lives in this one chain)
    time_mask  one stretch up to `time_mask_seconds` long silenced (SpecAugment's time mask)
    shift      a circular time shift of up to `shift_seconds` either way (drawn last, so the steps above
               draw the same with or without it)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bridle.model.config import AudioInput, ModelConfig
from bridle.training.augment_settings import AugmentSettings

Range = tuple[float, float]
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f**exponent
TELEPHONE_BAND = (300.0, 3400.0)  # Hz
GRAIN_SECONDS = 0.04  # pitch shift: overlap-add grain length
EQ_POINTS = 6  # eq: control points of the random gain curve, log-spaced from 100 Hz to Nyquist


@dataclass(frozen=True)
class AudioAugmentSettings(AugmentSettings):
    """Probabilities and ranges of each step (a recipe's `data.augment` for audio data)."""

    speed_p: float = 0.0
    speed: Range = (0.85, 1.15)  # resampling factor (> 1: faster and higher)
    pitch_p: float = 0.0
    pitch_semitones: Range = (-3.0, 3.0)
    silence_p: float = 0.0
    silence_seconds: float = 0.4  # most leading (and trailing) silence added
    reverb_p: float = 0.0
    reverb_rt60: Range = (0.1, 0.6)  # seconds
    reverb_wet: Range = (0.2, 0.8)  # share of the reverberant signal in the mix
    noise_p: float = 0.0
    noise_snr_db: Range = (5.0, 40.0)
    telephone_p: float = 0.0
    gain_p: float = 0.0
    gain_db: Range = (-20.0, 6.0)
    eq_p: float = 0.0
    eq_db: float = 10.0  # most boost or cut at a control point
    band_mask_p: float = 0.0
    band_mask_hz: float = 600.0  # widest band removed
    time_mask_p: float = 0.0
    time_mask_seconds: float = 0.1  # longest stretch silenced
    shift_p: float = 0.0  # drawn after the steps above
    shift_seconds: float = 0.5  # most circular time shift either way

    kind = "audio"

    def check(self) -> None:
        super().check()
        if self.speed[0] <= 0 or self.reverb_rt60[0] <= 0 or self.silence_seconds < 0:
            raise ValueError("speed and reverb_rt60 must be positive, silence_seconds >= 0")
        if min(self.eq_db, self.band_mask_hz, self.time_mask_seconds, self.shift_seconds) < 0:
            raise ValueError("eq_db, band_mask_hz, time_mask_seconds and shift_seconds must be >= 0")
        if not 0.0 <= self.reverb_wet[0] <= self.reverb_wet[1] <= 1.0:
            raise ValueError(f"reverb_wet must lie in [0, 1], got {list(self.reverb_wet)}")


class AudioAugment:
    """The augmentation chain above for one model's input (its sample rate)."""

    Settings = AudioAugmentSettings

    def __init__(self, settings: AudioAugmentSettings, cfg: ModelConfig) -> None:
        if not isinstance(cfg.input, AudioInput):
            raise ValueError(f"audio augmentation needs an audio model, got {cfg.modality!r}")
        self.settings = settings
        self.rate = cfg.input.sample_rate

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = self.settings
        x = np.asarray(wave, np.float32)  # (samples,)
        # One draw per step whether or not it applies, so a step's settings do not shift the others' draws.
        apply = rng.random(10) < [
            s.speed_p,
            s.pitch_p,
            s.silence_p,
            s.reverb_p,
            s.noise_p,
            s.telephone_p,
            s.gain_p,
            s.eq_p,
            s.band_mask_p,
            s.time_mask_p,
        ]
        if apply[0]:
            x = resample(x, 1.0 / rng.uniform(*s.speed))
        if apply[1]:
            x = pitch_shift(x, rng.uniform(*s.pitch_semitones), int(GRAIN_SECONDS * self.rate))
        if apply[2]:
            lead, trail = (int(v) for v in rng.uniform(0, s.silence_seconds * self.rate, size=2))
            x = np.pad(x, (lead, trail))
        if apply[3]:
            x = reverberate(x, rng, rng.uniform(*s.reverb_rt60), rng.uniform(*s.reverb_wet), self.rate)
        if apply[4]:
            colour = list(NOISE_COLOURS)[int(rng.integers(len(NOISE_COLOURS)))]
            x = add_noise(x, rng, rng.uniform(*s.noise_snr_db), colour)
        if apply[5]:
            x = band_limit(x, *TELEPHONE_BAND, self.rate)
        if apply[6]:
            x = x * np.float32(10 ** (rng.uniform(*s.gain_db) / 20))
        if apply[7]:
            x = equalise(x, rng.uniform(-s.eq_db, s.eq_db, EQ_POINTS), self.rate)
        if apply[8]:
            width = rng.uniform(0, s.band_mask_hz)
            low = rng.uniform(0, self.rate / 2 - width)
            x = band_stop(x, low, low + width, self.rate)
        if apply[9]:
            length = int(rng.uniform(0, s.time_mask_seconds) * self.rate)
            start = int(rng.integers(0, max(1, len(x) - length)))
            x = x.copy()
            x[start : start + length] = 0.0
        if rng.random() < s.shift_p:
            x = np.roll(x, int(rng.uniform(-s.shift_seconds, s.shift_seconds) * self.rate))
        return np.clip(x, -1.0, 1.0).astype(np.float32)  # (samples',)


# ---- the steps --------------------------------------------------------------------------------------------


def resample(x: np.ndarray, factor: float) -> np.ndarray:
    """`x` stretched to `factor` times its length by linear interpolation (factor < 1: faster, higher)."""
    n = max(1, round(len(x) * factor))
    positions = np.linspace(0, len(x) - 1, n)
    return np.interp(positions, np.arange(len(x)), x).astype(np.float32)


def time_stretch(x: np.ndarray, factor: float, grain: int) -> np.ndarray:
    """`x` at `factor` times its duration, pitch kept: Hann grains read at hop / factor, written at hop."""
    hop = grain // 2
    n_out = max(1, round(len(x) * factor))
    count = n_out // hop + 1
    reads = np.round(np.arange(count) * hop / factor).astype(int)  # (count,)
    padded = np.pad(x, (0, grain + int(reads[-1]) + 1 - len(x)) if reads[-1] + grain > len(x) else (0, 0))
    grains = padded[reads[:, None] + np.arange(grain)] * np.hanning(grain)  # (count, grain)
    out = np.zeros(count * hop + grain)
    norm = np.zeros_like(out)
    for k in range(count):
        out[k * hop : k * hop + grain] += grains[k]
        norm[k * hop : k * hop + grain] += np.hanning(grain)
    return (out / np.maximum(norm, 1e-3))[:n_out].astype(np.float32)


def pitch_shift(x: np.ndarray, semitones: float, grain: int) -> np.ndarray:
    """`x` shifted by `semitones` at (nearly) the same length: resample, then time-stretch back."""
    ratio = 2.0 ** (semitones / 12)
    return time_stretch(resample(x, 1.0 / ratio), ratio, grain)


def reverberate(x: np.ndarray, rng: np.random.Generator, rt60: float, wet: float, rate: int) -> np.ndarray:
    """`x` in a synthetic room (decaying noise impulse response of `rt60` s), the tail kept."""
    n = max(2, int(rt60 * rate))
    t = np.arange(n) / rate
    response = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    response[0] = 0.0
    response /= np.sqrt(np.sum(response**2)) + 1e-12
    size = len(x) + n - 1
    fft = 1 << (size - 1).bit_length()
    tail = np.fft.irfft(np.fft.rfft(x, fft) * np.fft.rfft(response, fft), fft)[:size]
    dry = np.pad(x, (0, n - 1))
    mixed = (1 - wet) * dry + wet * tail * (_rms(x) / (_rms(tail) + 1e-12))
    return mixed.astype(np.float32)


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Unit-RMS noise (n,) with a power spectrum ~ 1 / f**exponent."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return noise / (_rms(noise) + 1e-12)


def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db: float, colour: str) -> np.ndarray:
    """`x` plus `colour` noise `snr_db` below the RMS of its louder half (the speech, not the pauses)."""
    level = _speech_rms(x) / 10 ** (snr_db / 20)
    return (x + level * coloured_noise(rng, len(x), NOISE_COLOURS[colour])).astype(np.float32)


def _filtered(x: np.ndarray, rate: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`x` with its spectrum multiplied by `gain(frequencies in Hz)` (one FFT, zero phase)."""
    f = np.fft.rfftfreq(len(x), 1.0 / rate)
    return np.fft.irfft(np.fft.rfft(x) * gain(f), len(x)).astype(np.float32)


def band_limit(x: np.ndarray, low: float, high: float, rate: int) -> np.ndarray:
    """`x` with only [low, high] Hz kept (FFT mask with 100 Hz linear edges)."""
    return _filtered(
        x, rate, lambda f: np.clip((f - low + 100) / 100, 0, 1) * np.clip((high + 100 - f) / 100, 0, 1)
    )


def equalise(x: np.ndarray, gains_db: np.ndarray, rate: int) -> np.ndarray:
    """`x` through a smooth filter: `gains_db` at log-spaced frequencies from 100 Hz to Nyquist,
    interpolated in log frequency (flat beyond the ends)."""
    points = np.log(np.geomspace(100.0, rate / 2, len(gains_db)))
    return _filtered(x, rate, lambda f: 10 ** (np.interp(np.log(np.maximum(f, 1.0)), points, gains_db) / 20))


def band_stop(x: np.ndarray, low: float, high: float, rate: int) -> np.ndarray:
    """`x` with [low, high] Hz removed."""
    return _filtered(x, rate, lambda f: ~((f >= low) & (f <= high)))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _speech_rms(x: np.ndarray, frame: int = 256) -> float:
    """RMS over the louder half of `frame`-sample frames (silence does not lower the reference)."""
    n = len(x) // frame
    if n < 2:
        return _rms(x)
    energy = np.mean(np.square(x[: n * frame], dtype=np.float64).reshape(n, frame), axis=1)
    return float(np.sqrt(np.mean(np.sort(energy)[n // 2 :])))

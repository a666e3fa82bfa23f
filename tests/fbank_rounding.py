"""How far two float32 computations of KaldiFbank's log-mel output may differ, derived from float32 rounding.

Two runs of the same float32 graph (torch and ONNX Runtime, or one batch and its rows one by one) sum
in different orders, with or without FMA, so they round differently. No fixed bound on the log-mel
difference holds on every CPU: the log turns a small absolute energy error into a large one where the
energy is small against the terms summed into it. This bound follows each step instead, computed in
float64 from the float32 input, with the standard result for a float32 dot product of n terms in any
order (Higham, Accuracy and Stability of Numerical Algorithms, section 3.1):

    |fl(x . y) - x . y| <= gamma_n |x| . |y|,    gamma_n = n u / (1 - n u),    u = 2**-24.

1. DC removal  f = x - mean(x), L samples:  |df| <= u |f| + gamma_L mean(|x|)
2. spectrum    S = f @ dft, L terms:       |dS| <= (gamma_L + u) |f| @ |dft| + |df| @ |dft|
3. energies    E = S^2 @ mel, 2K terms >= 0:
               |dE| <= (2 |S| |dS| + dS^2) @ mel + (gamma_2K + 2 u) (S^2 + 2 |S| |dS| + dS^2) @ mel
4. log of the clamp at the floor: two energies within dE of E have logs within
   log(max(E + dE, floor) / max(E - dE, floor)); each log adds its own rounding, a few ulp of |log E|.

The extra u in steps 2 and 3 is the float32 rounding of the dft and mel constants, so that each run's
energy lies within dE of the exact one of the float64 algorithm (a float64 reference such as
test_fbank's numpy_fbank, whose own rounding is 2**29 times smaller). Two runs then differ by at most
the log ratio of step 4 plus each run's log rounding, and so does one run from the reference. Where dE
reaches E the bound is large on purpose: there the rounding alone can decide the energy.
"""

from __future__ import annotations

import numpy as np

from bridle.model.config import AudioInput
from bridle.model.fbank import LOG_FLOOR, KaldiFbank

U = 2.0**-24  # float32 unit roundoff
LOG_ULPS = 4  # rounding of float32 log itself (libm and ORT's vectorised log are within a few ulp)


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


def log_mel_difference_bound(waves: np.ndarray, audio: AudioInput) -> np.ndarray:
    """(B, samples) float32 waveforms -> (B, frames, mel) bound on |run_1 - run_2| of KaldiFbank, and on
    |run - float64 reference|."""
    fbank = KaldiFbank(audio)
    length, shift = fbank.length, fbank.shift
    dft = np.abs(fbank.dft.double().numpy())  # (L, 2K): the float32 constants both runs use
    dft_signed = fbank.dft.double().numpy()
    mel = fbank.mel.double().numpy()  # (2K, mel)
    x = waves.astype(np.float32).astype(np.float64)
    count = fbank.num_frames(x.shape[-1])
    index = np.arange(count)[:, None] * shift + np.arange(length)[None, :]  # (F, L)
    frames = x[:, index]  # (B, F, L)
    f = frames - frames.mean(axis=-1, keepdims=True)
    df = U * np.abs(f) + gamma(length) * np.abs(frames).mean(axis=-1, keepdims=True)  # (B, F, L)
    spectrum = f @ dft_signed  # (B, F, 2K)
    d_spectrum = (gamma(length) + U) * (np.abs(f) @ dft) + df @ dft  # (B, F, 2K)
    energy = (spectrum * spectrum) @ mel  # (B, F, mel)
    cross = 2 * np.abs(spectrum) * d_spectrum + d_spectrum**2  # (B, F, 2K)
    d_energy = cross @ mel + (gamma(mel.shape[0]) + 2 * U) * ((spectrum * spectrum + cross) @ mel)
    upper = np.maximum(energy + d_energy, LOG_FLOOR)
    lower = np.maximum(energy - d_energy, LOG_FLOOR)
    return np.log(upper / lower) + 2 * LOG_ULPS * U * np.abs(np.log(np.maximum(energy, LOG_FLOOR)))

"""Throughput of our batched KaldiFbank against kaldi-native-fbank looping over the same waves.

Run: `python -m bench.fbank [--threads 2 --batch 32 --seconds 2 --bins 80]`.

Ours takes the whole (batch, samples) tensor in one call (how training and the exported graphs use
it); kaldi-native-fbank is fed one wave at a time, its Python lists made before the clock starts so
that only its C++ work and frame read-out are timed (the baseline's best case). Both compute the same
features (waveform * 2**15, dither 0, hanning, pre-emphasis 0.97, 20 Hz .. Nyquist). The default is 80
mel bins because kaldi-native-fbank refuses 128 at 16 kHz (a band with no FFT bin). Prints waves/s,
seconds of audio per second, the ratio ours / kaldi and the largest difference of the log-mel values.

Run it on an otherwise idle machine: when other processes keep the cores busy, every parallel torch
op waits for its descheduled second thread, which costs ours several times its idle time, while the
single-threaded baseline hardly moves.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import typer

from bridle.model.config import AudioInput
from bridle.model.fbank import KaldiFbank


def _time_interleaved(fns: list[Callable[[], object]], warmup: int, repeats: int) -> list[float]:
    """Median seconds per call of each fn, the calls alternating so that both see the same machine load."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _waves(batch: int, samples: int, seed: int) -> np.ndarray:
    """Speech-like rows: harmonics of a gliding f0 under a syllable envelope, over a faint noise floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16_000
    out = np.empty((batch, samples), np.float32)
    for i in range(batch):
        f0 = rng.uniform(90, 220) * (1 + 0.2 * np.sin(2 * math.pi * rng.uniform(0.5, 2) * t))
        phase = 2 * math.pi * np.cumsum(f0) / 16_000
        wave = sum(np.sin(k * phase) / k for k in range(1, 30))
        envelope = np.clip(np.sin(2 * math.pi * rng.uniform(2, 5) * t), 0, None) + 0.05
        wave = 0.5 * wave * envelope / np.abs(wave * envelope).max()
        out[i] = wave + 1e-3 * rng.standard_normal(samples)
    return out


def main(
    threads: int = typer.Option(torch.get_num_threads(), help="torch threads (default: torch's)"),
    batch: int = 32,
    seconds: float = 2.0,
    bins: int = 80,
    warmup: int = 2,
    repeats: int = 10,
) -> None:
    """Waves/s of our batched KaldiFbank and of kaldi-native-fbank, and their ratio."""
    try:
        import kaldi_native_fbank as knf
    except ImportError as e:  # a dev extra
        raise SystemExit("install the dev extra (kaldi-native-fbank) to run this benchmark") from e

    torch.set_num_threads(threads)
    audio = AudioInput(num_mel_bins=bins)
    waves = _waves(batch, int(seconds * audio.sample_rate), seed=0)

    fbank = KaldiFbank(audio).eval()
    signal = torch.from_numpy(waves)  # (batch, samples)

    def ours() -> torch.Tensor:
        with torch.inference_mode():
            return fbank(signal)

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = audio.sample_rate
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.window_type = audio.window
    opts.frame_opts.preemph_coeff = audio.preemphasis
    opts.mel_opts.num_bins = bins
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    lists = [(w * 2.0**15).tolist() for w in waves]

    def kaldi() -> np.ndarray:
        out = []
        for samples in lists:
            online = knf.OnlineFbank(opts)
            online.accept_waveform(audio.sample_rate, samples)
            online.input_finished()
            out.append(np.stack([online.get_frame(i) for i in range(online.num_frames_ready)]))
        return np.stack(out)

    diff = float(np.abs(ours().numpy() - kaldi()).max())
    t_ours, t_kaldi = _time_interleaved([ours, kaldi], warmup, repeats)

    n, secs = batch, batch * seconds
    print(f"log-mel fbank: {n} waves x {seconds:g} s, {bins} mel bins, {threads} torch threads")
    print(f"{'implementation':<34}{'ms / batch':>12}{'waves / s':>12}{'audio s / s':>14}")
    for name, t in (("ours (KaldiFbank, batched)", t_ours), ("kaldi-native-fbank (loop)", t_kaldi)):
        print(f"{name:<34}{t * 1e3:>12.1f}{n / t:>12.0f}{secs / t:>14.0f}")
    print(f"ratio ours / kaldi (throughput): {t_kaldi / t_ours:.2f}x (goal >= 1.0)")
    print(f"max |ours - kaldi| of log-mel:   {diff:.2e}")


if __name__ == "__main__":
    typer.run(main)

"""Training throughput: today's eager fp32 step against the new options, the data-wait share with 0 and 2
DataLoader workers, and what bf16 does to the residual quantizer's numbers.

Run: `python -m bench.train [step|data|rq] [--preset tiny-audio --batch 16 --repeats 6]`
(`make bench-train` runs all three).

- step: one pretraining step (E + D forward/backward on a frozen random tokenizer's codes, AdamW) on
  fbank features of real speech (FSDD in data/fsdd, or --clips), the variants timed in turn,
  round after round, so that they share the machine's load: eager fp32 (the baseline, today's loop),
  bf16 autocast, bf16 + fused AdamW, and with --compile the torch.compile'd transformer stacks. Prints
  samples/s and the ratio to the baseline measured in the same run.
- data: the real training loop's stream (bridle/training/loader.py) over the clips, decoded per item (no
cache),
  with 0 and 2 workers: samples/s and the share of the time spent waiting for a batch.
- rq: a trained tokenizer's features on real speech, quantized (a) all in fp32 (the reference), (b) with
  the distances and residuals in bf16, (c) with the tokenizer network in bf16 autocast but the quantizer
  in fp32 (what training does); per-level code agreement with (a). And one EMA step of the codebooks
  held in bf16: the share of the intended update that bf16 rounding loses.

Report the machine load (`uptime`) beside the figures: the ratios are measured under the same load, the
absolute samples/s are not comparable across runs.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import typer

from bridle.model.bridle import Pretraining, quantizers
from bridle.model.config import ModelConfig, preset
from bridle.model.preprocessing import build_preprocessor
from bridle.model.tokenizer import RandomProjectionTokenizer, fit_codebooks
from bridle.training.precision import autocast, compile_transformers

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])
FSDD = Path("data/fsdd")  # real speech, written by `make demo-data` (bridle/data/fsdd.py)
CPU = torch.device("cpu")


def _load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _clip_paths(clips: Path, n: int) -> list[Path]:
    paths = sorted(clips.rglob("*.wav"))[:n]
    if not paths:
        raise typer.BadParameter(f"no .wav files under {clips} (make demo-data writes data/fsdd)")
    return paths


def _features(cfg: ModelConfig, clips: Path, batch: int) -> torch.Tensor:
    """fbank features of `batch` real clips (start-aligned windows) -> (B, 1, frames, bins)."""
    from bridle.model.decoding import decode_audio
    from bridle.model.windowing import fit_window

    waves = [decode_audio(p, cfg.input.sample_rate) for p in _clip_paths(clips, batch)]
    signal = torch.from_numpy(np.stack([fit_window(w, cfg.input.window_samples) for w in waves]))
    with torch.no_grad():
        return build_preprocessor(cfg)(signal)


# ---- step -----------------------------------------------------------------------------------------------


def _step_fn(
    cfg: ModelConfig, x: torch.Tensor, precision: str, fused: bool, compiled: bool
) -> Callable[[], None]:
    torch.manual_seed(0)
    objective = Pretraining(cfg, RandomProjectionTokenizer(cfg), "random").train()
    fit_codebooks(objective.tokenizer, x)
    if compiled:
        compile_transformers(objective)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True if fused else None)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, CPU):
            loss, _ = objective(x)
        loss.backward()
        optimizer.step()

    return step


@app.command()
def step(
    preset_name: str = typer.Option(
        "tiny-audio", "--preset", help="model preset (base-audio: the paper's ViT-B)"
    ),
    batch: int = typer.Option(16, min=1),
    repeats: int = typer.Option(6, min=1, help="timed rounds; each round runs every variant once"),
    warmup: int = typer.Option(2, min=0),
    compile_too: bool = typer.Option(
        False, "--compile", help="also time torch.compile'd stacks (slow to build)"
    ),
    threads: int = typer.Option(torch.get_num_threads(), help="torch threads"),
    clips: Path = typer.Option(FSDD, help="a folder of .wav clips"),
) -> None:
    """Samples/s of one pretraining step: eager fp32 (baseline) vs bf16 autocast (+ fused AdamW, compile)."""
    torch.set_num_threads(threads)
    cfg = preset(preset_name)
    x = _features(cfg, clips, batch)
    variants = {
        "eager fp32 (today)": ("fp32", False, False),
        "fp32 + fused AdamW": ("fp32", True, False),
        "bf16 autocast": ("bf16", False, False),
        "bf16 autocast + fused AdamW": ("bf16", True, False),
    }
    if compile_too:
        variants |= {"compile fp32": ("fp32", False, True), "compile bf16 + fused": ("bf16", True, True)}
    fns = {name: _step_fn(cfg, x, *v) for name, v in variants.items()}
    print(f"{preset_name}, batch {batch}, {threads} torch threads, {_load()} (before)")
    for name, fn in fns.items():
        tic = time.perf_counter()
        for _ in range(warmup):
            fn()
        print(f"  warm-up {name}: {time.perf_counter() - tic:.1f} s")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            tic = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - tic)
    base = statistics.median(times["eager fp32 (today)"])
    print(f"{'variant':<30}{'s / step':>10}{'samples / s':>13}{'ratio':>8}")
    for name, t in times.items():
        median = statistics.median(t)
        print(f"{name:<30}{median:>10.3f}{batch / median:>13.3g}{base / median:>7.2f}x")
    print(f"{_load()} (after)")


# ---- data -----------------------------------------------------------------------------------------------


@app.command()
def data(
    preset_name: str = typer.Option("tiny-audio", "--preset"),
    batch: int = typer.Option(16, min=1),
    steps: int = typer.Option(20, min=2),
    files: int = typer.Option(400, min=1, help="clips of --clips to stream"),
    threads: int = typer.Option(1, help="torch threads of the training process"),
    clips: Path = typer.Option(FSDD, help="a folder of .wav clips"),
) -> None:
    """samples/s and data-wait share of the training stream, decoding per item, with 0 and 2 workers."""
    from bridle.model.media_sets import Entry
    from bridle.training.data import MediaDataset
    from bridle.training.distributed import DistInfo
    from bridle.training.loader import train_batches
    from bridle.training.monitor import Throughput
    from bridle.training.recipe import DataSpec

    torch.set_num_threads(threads)
    cfg = preset(preset_name)
    entries = [Entry(p) for p in _clip_paths(clips, files)]
    dataset = MediaDataset(entries, cfg, cache=False, random_crop=True)
    preprocess = build_preprocessor(cfg)
    train_step = _step_fn(cfg, _features(cfg, clips, batch), "fp32", False, False)  # codebooks fitted
    print(f"{preset_name}, batch {batch}, {steps} steps, {len(dataset)} clips decoded per item, {_load()}")
    print(f"{'workers':<10}{'samples / s':>13}{'data wait':>11}")
    for workers in (0, 2):
        spec = DataSpec(train=str(clips), modality="audio", batch_size=batch, workers=workers, cache=False)
        stream = train_batches(dataset, batch, 0, DistInfo(), spec)
        next(stream)  # worker start-up is not the steady state
        meter = Throughput()
        for _ in range(steps):
            with meter.waiting():
                b = next(stream)
            meter.count(len(b.ids))
            with torch.no_grad():
                preprocess(b.signal)
            train_step()
        w = meter.window()
        print(f"{workers:<10}{w['samples_per_s']:>13.3g}{100 * w['data_wait']:>10.0f}%")
        del stream
    print(_load())


# ---- rq -------------------------------------------------------------------------------------------------


def _codes_low_precision(z: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """RQ codes with distances and residuals in bf16 (what autocast around the quantizer would do)."""
    r, codes = z.bfloat16(), []
    for book in books.bfloat16():
        idx = (r @ F.normalize(book.float(), dim=-1).bfloat16().t()).argmax(-1)
        codes.append(idx)
        r = r - book[idx]
    return torch.stack(codes, -1)


@app.command()
def rq(
    servable: Path = typer.Option(
        Path("runs/audio-digits/servable"), help="a servable with a trained tokenizer"
    ),
    files: int = typer.Option(64, min=1),
    clips: Path = typer.Option(FSDD, help="a folder of .wav clips"),
) -> None:
    """Code agreement of bf16 vs fp32 quantization on a trained tokenizer's features of real speech."""
    from bridle.model.checkpoint import CheckpointError, load_servable

    try:
        model = load_servable(servable)
    except (CheckpointError, OSError) as e:
        raise typer.BadParameter(f"{servable}: {e} (train one first, e.g. make models)") from e
    tokenizer = model.tokenizer.eval()
    quantizer = quantizers(tokenizer)[0]
    x = _features(model.config, clips, files)
    with torch.no_grad():
        z = tokenizer.embed(x).reshape(-1, quantizer.cfg.dim)  # (vectors, code_dim) fp32
        with autocast("bf16", CPU):
            z_mixed = tokenizer.embed(x).reshape(-1, quantizer.cfg.dim).float()
        reference = quantizer.encode(z)
        low = _codes_low_precision(z, quantizer.codebooks)
        mixed = quantizer.encode(z_mixed)
    print(
        f"tokenizer of {servable} ({model.tokenizer_kind}, {model.provenance.get('stage')}), {len(z)} vectors"
    )
    print(
        f"RQ {quantizer.cfg.levels} x {quantizer.cfg.codebook_size}, dim {quantizer.cfg.dim}; {files} clips"
    )
    print(f"{'level':<7}{'bf16 distances':>16}{'bf16 network, fp32 RQ':>24}   (codes equal to all-fp32)")
    for level in range(quantizer.cfg.levels):
        a = (low[:, level] == reference[:, level]).float().mean()
        b = (mixed[:, level] == reference[:, level]).float().mean()
        print(f"{level:<7}{100 * a:>15.1f}%{100 * b:>23.1f}%")
    all_a = (low == reference).all(-1).float().mean()
    all_b = (mixed == reference).all(-1).float().mean()
    print(f"{'all':<7}{100 * all_a:>15.1f}%{100 * all_b:>23.1f}%")

    # one EMA step (decay d) with the codebook held in bf16: how much of the intended change survives
    decay = quantizer.cfg.decay
    book = quantizer.codebooks[0]
    idx = reference[:, 0]
    counts = torch.bincount(idx, minlength=book.shape[0]).float()
    means = torch.zeros_like(book).index_add_(0, idx, z) / counts.clamp(min=1)[:, None]
    used = counts > 0
    intended = (decay * book + (1 - decay) * means)[used] - book[used]
    low_book = book.bfloat16()
    stepped = (decay * low_book + (1 - decay) * means.bfloat16())[used]
    got = stepped.float() - low_book[used].float()
    lost = (got - intended).norm() / intended.norm()
    sums_bf16 = torch.zeros_like(book).bfloat16().index_add_(0, idx, z.bfloat16()).float()
    sum_err = (sums_bf16 - means * counts[:, None])[used].norm() / (means * counts[:, None])[used].norm()
    print(
        f"EMA step (decay {decay}) with the codebook in bf16: rounding error {100 * lost:.0f}% of the update"
    )
    print(f"per-code sums accumulated in bf16: relative error {100 * sum_err:.2f}%")


if __name__ == "__main__":
    app()

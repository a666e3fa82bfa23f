"""Imported Hugging Face models at full size: ONNX Runtime vs transformers eager throughput (goal: ViT-B/16
ratio >= 1.0 at batch 8).

    python -m bench.hf [--families vit,ast,videomae] [--batch 8] [--iters 3] [--warmup 1] [--rounds 2]

For each family, a real-size configuration with seeded random weights (ViT-B/16 at 224 px, 1,000 classes; AST
base: 1,024 frames x 128 mel, stride 10, 1,212 patches, 527 classes; VideoMAE base: 16 frames at 224 px, 1,568
tubelets, 400 classes) is written by transformers (`save_pretrained`), imported with `bridle.importers.hf` and
exported with `bridle.export.model_dir` (the exported directory is verified by the tests on small configs;
here verification is skipped, it would triple the run time). Both sides then classify the
same batch:

- transformers: `model(pixel_values=...)` / `model(input_values=...)` in PyTorch eager (its default
  attention), on inputs its processor made beforehand: its preprocessing is NOT timed (for AST that is the
  fbank, which the ONNX side does time);
- ONNX Runtime: `encoder.onnx` from the decoded signal (preprocessing, encoder, pooling, head), CPU
  provider, the service's session options.

Each side runs in a process of its own, the processes alternate for `--rounds` rounds, and the figure is
the median over all timed runs. The logits of the two are compared as a check.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import typer

from bench.timing import call_times, run_worker
from bridle.data.hf_models import load_model, make_folder, reference, sample_input
from bridle.export.model_dir import export_model_dir
from bridle.export.verify import ort_session
from bridle.importers.hf import import_hf

GOAL = {"vit": 1.0}
CLASSES = {"vit": 1000, "ast": 527, "videomae": 400}
INPUT_KEY = {"vit": "pixel_values", "videomae": "pixel_values", "ast": "input_values"}


def time_worker(runtime: str, work: Path, warmup: int, iters: int) -> list[float]:
    """Seconds per batch of one runtime, in this process."""
    if runtime == "ort":
        session = ort_session(work / "model" / "encoder.onnx")
        signal = np.load(work / "signal.npy")
        return call_times(lambda: session.run(["logits"], {"signal": signal}), warmup, iters)
    model = load_model(work / "folder")
    inputs = {INPUT_KEY[_family(work)]: torch.from_numpy(np.load(work / "inputs.npy"))}

    def run() -> None:
        with torch.inference_mode():
            model(**inputs)

    return call_times(run, warmup, iters)


def _family(work: Path) -> str:
    return (work / "family").read_text().strip()


def _worker(runtime: str, work: Path, warmup: int, iters: int) -> list[float]:
    return run_worker(
        "bench.hf", "--worker", runtime, "--work", str(work), "--warmup", str(warmup), "--iters", str(iters)
    )


def prepare(family: str, work: Path, batch: int) -> str:
    """Write, import and export a full-size model; save both sides' inputs; a line on agreement."""
    folder = make_folder(family, work, size="base", seed=0, num_labels=CLASSES[family])
    folder.rename(work / "folder")
    folder = work / "folder"
    (work / "family").write_text(family)
    servable = import_hf(folder)
    export_model_dir(servable, work / "model", run_verify=False)
    signal = sample_input(family, folder, batch, seed=0)
    np.save(work / "signal.npy", signal)
    model = load_model(folder)
    inputs = _processor_inputs(family, folder, signal)
    np.save(work / "inputs.npy", inputs)
    _, ref_logits = reference(family, folder, model, signal)
    (logits,) = ort_session(work / "model" / "encoder.onnx").run(["logits"], {"signal": signal})
    diff = float(np.abs(logits - ref_logits).max())
    same = bool((logits.argmax(1) == ref_logits.argmax(1)).all())
    return f"logits max abs diff {diff:.1e}, same top-1: {same}"


def _processor_inputs(family: str, folder: Path, signal: np.ndarray) -> np.ndarray:
    import transformers as T

    if family == "ast":
        fe = T.ASTFeatureExtractor.from_pretrained(folder)
        return fe(list(signal), sampling_rate=16_000, return_tensors="np")["input_values"]
    proc = T.AutoImageProcessor.from_pretrained(folder)
    keep = {"do_resize": False, "do_center_crop": False, "return_tensors": "np"}
    if family == "videomae":
        return proc([list(clip.transpose(0, 2, 3, 1)) for clip in signal], **keep)["pixel_values"]
    return proc(list(signal.transpose(0, 2, 3, 1)), **keep)["pixel_values"]


def main(
    families: Annotated[str, typer.Option(help="comma-separated: vit, ast, videomae")] = "vit,ast,videomae",
    batch: Annotated[int, typer.Option()] = 8,
    iters: Annotated[int, typer.Option()] = 3,
    warmup: Annotated[int, typer.Option()] = 1,
    rounds: Annotated[int, typer.Option()] = 2,
    worker: Annotated[Literal["torch", "ort"] | None, typer.Option(hidden=True)] = None,
    work: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    """Imported Hugging Face models at full size: ONNX Runtime against transformers eager, batch 8."""
    if worker:
        print(json.dumps(time_worker(worker, work, warmup, iters)))
        return

    print(
        f"batch {batch}; each runtime in its own process, {rounds} rounds x {iters} timed "
        f"runs after {warmup} warm-up, median; torch threads {torch.get_num_threads()}"
    )
    for family in families.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            check = prepare(family, work, batch)
            runs: dict[str, list[float]] = {"torch": [], "ort": []}
            for _ in range(rounds):
                for runtime in runs:
                    runs[runtime] += _worker(runtime, work, warmup, iters)
        ms = {k: 1000 * float(np.median(v)) for k, v in runs.items()}
        ratio = ms["torch"] / ms["ort"]
        goal = GOAL.get(family)
        verdict = f" (goal >= {goal}: {'MET' if ratio >= goal else 'NOT MET'})" if goal else ""
        print(f"{family} base: {check}")
        for name, key in (("transformers eager", "torch"), ("onnxruntime       ", "ort")):
            print(f"  {name}: {1000 * batch / ms[key]:7.2f} samples/s ({ms[key]:.0f} ms/batch)")
        print(f"  ratio ORT / transformers: {ratio:.2f}x{verdict}", flush=True)


if __name__ == "__main__":
    typer.run(main)

"""Issue 29's tokenizer goal: a 4 x 256 BRIDLE tokenizer distilled from a ViT teacher, per-level held-out
code usage (goal >= 0.9 at every level), measured through the real `bridle-train tokenizer` CLI.

    python -m bench.distill_vit [--teacher hf|own] [--out runs/distill-vit-s] [--steps 120] [--held-out 0.2]

The teacher, at ViT-S width and depth (12 blocks x 384, 6 heads, MLP x 4, pre-LN, cls token) with seeded
random weights (no pretrained ViT weights can be had offline here):
- `hf` (the default): a Hugging Face `ViTForImageClassification` folder written by `transformers` itself
  (`bridle.data.hf_models`, size "vit-s-32"; needs the `import` extra), imported by the real
  `bridle-import hf`: the imported-encoder path a user takes with a Hub download;
- `own`: the project's own image `Encoder` (sin-cos positions, `build_servable(seed=0)`).

Both read the demo images' own size, 32 px in 4 px patches (an 8 x 8 grid, ImageNet mean/std), not
224 px: the digits are 8 x 8 scans upscaled to 32 px, and a 224 px teacher would cost 3x per image for the
same content on this 2-core machine. T is a 2 x 192 ViT, TE 2 x 192. Data: all 1,797 handwritten digits of
the demo set (scikit-learn's `load_digits`, the demo's train, val and test folders copied into one folder;
`python -m bridle.data.demo_data --out data --only image-digits` makes them), a fifth of the files held out
by the CLI's seeded split: about 29k held-out patches for 256 codes.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from bridle.model.checkpoint import build_servable, save_servable
from bridle.model.config import ImageInput, ModelConfig, QuantizerConfig, ViTConfig

VIT_S = ViTConfig(dim=384, depth=12, heads=6, mlp_ratio=4.0)
HANDWRITTEN = ("train", "val", "test")  # the demo folders of load_digits' images (the rest are printed fonts)
DEMO_DATA = "python -m bridle.data.demo_data --out data --only image-digits"
SMALL = ViTConfig(dim=192, depth=2, heads=3, mlp_ratio=4.0)


def teacher_config() -> ModelConfig:
    return ModelConfig(
        modality="image",
        input=ImageInput(image_size=32),
        patch_size=4,
        encoder=VIT_S,
        predictor=SMALL,
        tokenizer=SMALL,
        estimator=SMALL,
        quantizer=QuantizerConfig(levels=4, codebook_size=256, dim=256),
    )


def own_teacher(out: Path) -> Path:
    servable = build_servable(teacher_config(), seed=0, provenance={"recipe": "bench.distill_vit"})
    return save_servable(out / "teacher", servable)


def hf_teacher(out: Path) -> Path:
    """A seeded ViT-S folder as transformers writes it, through `bridle-import hf`: the servable."""
    from bridle.data.hf_models import make_folder

    folder = make_folder("vit", out / "hub", size="vit-s-32", num_labels=10)
    command = [sys.executable, "-m", "bridle.importers.cli", "hf", "--checkpoint", str(folder),
               "--out", str(out / "teacher"), "--force"]  # fmt: skip
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True)
    return out / "teacher"


def main(
    teacher_kind: Annotated[Literal["hf", "own"], typer.Option("--teacher")] = "hf",
    digits: Annotated[Path, typer.Option()] = Path("data/image-digits"),
    out: Annotated[Path, typer.Option()] = Path("runs/distill-vit-s"),
    steps: Annotated[int, typer.Option()] = 120,
    held_out: Annotated[float, typer.Option()] = 0.2,
    seed: Annotated[int, typer.Option()] = 0,
    dead_code_steps: Annotated[int, typer.Option()] = 10,
) -> None:
    """A 4 x 256 BRIDLE tokenizer distilled from a ViT-S teacher; its per-level held-out code usage."""
    if not all((digits / split).is_dir() for split in HANDWRITTEN):
        sys.exit(f"error: {digits} is missing: run `{DEMO_DATA}`")
    data = out / "digits"
    shutil.rmtree(data, ignore_errors=True)
    for split in HANDWRITTEN:
        shutil.copytree(digits / split, data / split)
    teacher = hf_teacher(out) if teacher_kind == "hf" else own_teacher(out)
    command = [
        sys.executable, "-m", "bridle.training.cli", "tokenizer", str(teacher), "--data", str(data),
        "--levels", "4", "--codebook-size", "256", "--steps", str(steps), "--seed", str(seed),
        "--held-out", str(held_out),
        "--dead-code-steps", str(dead_code_steps), "--out", str(out / "servable"), "--force",
    ]  # fmt: skip
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True)
    report = json.loads((out / "servable" / "tokenizer_report.json").read_text())
    usage = [lv["usage_rate"] for lv in report["held_out"]["levels"]]
    verdict = "met" if min(usage) >= 0.9 else "NOT met"
    print(f"goal: per-level held-out usage >= 0.9: {verdict} (lowest level {min(usage):.3f})")


if __name__ == "__main__":
    typer.run(main)

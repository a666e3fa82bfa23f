"""`bridle-import`: turn a public checkpoint into a servable checkpoint that `bridle-export` exports.

bridle-import beats --checkpoint BEATs.pt [--tokenizer Tokenizer.pt] [--labels class_labels_indices.csv]
                   --out DIR [--num-frames 992] [--force]
bridle-import hf --checkpoint HF_MODEL_DIR --out DIR [--clip-seconds 2.0] [--force]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def main_callback() -> None:
    """Import public checkpoints (one sub-command per model family)."""


@app.command("beats")
def beats_command(
    checkpoint: Annotated[
        Path, typer.Option(help="BEATs model checkpoint (.pt) from microsoft/unilm beats/ (MIT licence)")
    ],
    out: Annotated[Path, typer.Option(help="servable checkpoint directory to write")],
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="BEATs tokenizer checkpoint (.pt); without it /tokenize serves random-projection codes"
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="AudioSet's class_labels_indices.csv (index,mid,display_name; CC BY 4.0): labels become "
            "display names with the mids beside them; without it the labels are the checkpoint's ids"
        ),
    ] = None,
    num_frames: Annotated[
        int, typer.Option(help="fbank frames per window (992 = 9.935 s); a multiple of the patch size")
    ] = 992,
    force: Annotated[bool, typer.Option(help="replace an existing non-empty OUT")] = False,
) -> None:
    """Import a BEATs checkpoint (and its tokenizer) as a servable checkpoint in OUT."""
    from bridle.importers.beats import BeatsImportError, write_import

    _refuse_non_empty(out, force)
    try:
        servable = write_import(out, checkpoint, tokenizer, num_frames, labels)
    except BeatsImportError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from None
    cfg = servable.config
    named = f", named by {labels.name}" if labels else ""
    typer.echo(
        f"wrote {out}: BEATs encoder {cfg.encoder.depth} x {cfg.encoder.dim}, "
        f"{len(servable.labels)} labels (sigmoid{named}), "
        f"tokenizer {servable.tokenizer_kind}"
        f" ({cfg.quantizer.codebook_size} codes), windows of {cfg.input.window_samples} samples"
    )
    if servable.tokenizer_kind == "random":
        typer.echo(
            "note: no --tokenizer: the model directory's codes come from a random-projection tokenizer"
        )


@app.command("hf")
def hf_command(
    checkpoint: Annotated[
        Path,
        typer.Option(
            help="Hugging Face model folder (config.json + model.safetensors [+ preprocessor_config.json]) "
            "of a ViT, DeiT, BEiT, DINOv2, VideoMAE or AST model"
        ),
    ],
    out: Annotated[Path, typer.Option(help="servable checkpoint directory to write")],
    clip_seconds: Annotated[
        float, typer.Option(help="video: seconds of video the model's frames are sampled from")
    ] = 2.0,
    force: Annotated[bool, typer.Option(help="replace an existing non-empty OUT")] = False,
) -> None:
    """Import a Hugging Face image, video or audio transformer as a servable checkpoint in OUT."""
    from bridle.importers.hf import HFImportError, write_import

    _refuse_non_empty(out, force)
    try:
        servable = write_import(out, checkpoint, clip_seconds)
    except HFImportError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from None
    cfg = servable.config
    assert cfg.hf is not None
    head = f"{len(servable.labels)} labels ({cfg.classifier_activation})" if servable.labels else "no head"
    typer.echo(
        f"wrote {out}: {cfg.hf.family} {cfg.modality} encoder {cfg.encoder.depth} x {cfg.encoder.dim}, "
        f"patch grid {list(cfg.grid)}, {head}, tokenizer {servable.tokenizer_kind}"
    )
    typer.echo(f"preprocessing: {servable.provenance['preprocessing']}")


def _refuse_non_empty(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        typer.echo(f"error: {str(out)!r} exists and is not empty (pass --force to replace it)", err=True)
        raise typer.Exit(code=1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

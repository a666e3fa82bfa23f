"""`bridle-batch`: embeddings, codes and labels of every file of a dataset, as Parquet, on Ray Data.

    bridle-batch INPUT --output OUT [--model-dir DIR ...] [--address ADDR] [--actors N] [--batch-size B]

INPUT is a folder or a .csv / .jsonl / .parquet manifest with a `path` column, local or an fsspec URL.
A re-run with the same arguments skips the shards that are complete. Exit status: 0 done (files that
could not be used are in OUT/errors), 2 bad input, models, settings, an output folder that cannot be
written or that holds another job's output.
"""

from __future__ import annotations

from typing import Annotated

import typer

from bridle.batch.inputs import InputError
from bridle.batch.job import JobSummary, run_job
from bridle.batch.settings import DEFAULT_LIMITS, Device, JobSettings, SettingsError
from bridle.batch.store import JobMismatch
from bridle.model.logs import log_to_stderr
from bridle.model.manifest import ManifestError
from bridle.model.windowing import Aggregate, WindowPolicy
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.models import DEFAULT_MODELS_ROOT
from bridle.runtime.windows import Limits

EXIT_BAD_JOB = 2
DEFAULTS = JobSettings(input="", model_dirs=("",), output="")

app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])

# ---- the options -----------------------------------------------------------------------------------------

Input = Annotated[
    str, typer.Argument(help="a folder or a .csv/.jsonl/.parquet manifest (path column); local or URL")
]
Output = Annotated[str, typer.Option("--output", "-o", help="output dataset folder, local or fsspec URL")]
ModelDirs = Annotated[
    list[str] | None,
    typer.Option(help=f"a model directory or a folder of them; repeatable (default {DEFAULT_MODELS_ROOT})"),
]
Address = Annotated[
    str | None,
    typer.Option(help="an existing Ray cluster (auto, host:6379, ray://host:10001); default: local"),
]
Actors = Annotated[int, typer.Option(help="ONNX Runtime actors (0: one per CPU/GPU)")]
BatchSize = Annotated[int, typer.Option(help="windows per ONNX Runtime run")]
ShardFiles = Annotated[int, typer.Option(help="files per shard (resume unit)")]
Threads = Annotated[int, typer.Option(help="ORT threads per actor (0: its CPUs)")]
TopK = Annotated[int, typer.Option(help="labels per window (classifier models)")]
AggregateOption = Annotated[
    Aggregate | None,
    typer.Option(
        help="clip scores from window scores: mean (weighted by seconds of signal) or max (multi-label "
        "models only); default max for a multi-label model, mean for a softmax one"
    ),
]
WindowHop = Annotated[
    float,
    typer.Option(
        help="step between windows of long media, a fraction of the window (the last ends at the end)"
    ),
]
WindowTolerance = Annotated[
    float,
    typer.Option(help="media at most this fraction longer than one window is one window (its tail dropped)"),
]
Precision = Annotated[
    str,
    typer.Option(help="of a model's variants (fp32, int8, fp16 siblings), the first found; comma-separated"),
]
NumCpus = Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all)")]


def window_policy(tolerance: float, hop: float) -> WindowPolicy:
    try:
        return WindowPolicy(tolerance=tolerance, hop=hop)
    except ValueError as e:
        raise SettingsError(str(e)) from None


@app.command()
def batch(
    input: Input,
    output: Output,
    model_dir: ModelDirs = None,
    address: Address = None,
    actors: Actors = DEFAULTS.actors,
    batch_size: BatchSize = DEFAULTS.batch_size,
    shard_files: ShardFiles = DEFAULTS.shard_files,
    device: Annotated[Device, typer.Option()] = DEFAULTS.device,
    threads: Threads = DEFAULTS.threads,
    top_k: TopK = DEFAULTS.top_k,
    aggregate: AggregateOption = None,
    window_hop: WindowHop = DEFAULTS.windowing.hop,
    window_tolerance: WindowTolerance = DEFAULTS.windowing.tolerance,
    precision: Precision = ",".join(DEFAULTS.precision),
    num_cpus: NumCpus = None,
    max_audio_seconds: Annotated[float, typer.Option()] = DEFAULT_LIMITS.max_audio_seconds,
    max_video_seconds: Annotated[float, typer.Option()] = DEFAULT_LIMITS.max_video_seconds,
    max_image_pixels: Annotated[int, typer.Option()] = DEFAULT_LIMITS.max_image_pixels,
) -> None:
    """Embeddings, codes and labels of every file of INPUT, as Parquet under OUTPUT."""
    log_to_stderr()
    try:
        settings = JobSettings(
            input=input,
            model_dirs=tuple(model_dir or [str(DEFAULT_MODELS_ROOT)]),
            output=output,
            address=address,
            actors=actors,
            batch_size=batch_size,
            shard_files=shard_files,
            device=device,
            threads=threads,
            top_k=top_k,
            windowing=window_policy(window_tolerance, window_hop),
            aggregate=aggregate,
            limits=Limits(max_audio_seconds, max_image_pixels, max_video_seconds),
            num_cpus=num_cpus,
            precision=tuple(p.strip() for p in precision.split(",") if p.strip()),
        )
        summary = run_job(settings)
    except (InputError, JobMismatch, ManifestError, ModelLoadError, SettingsError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_BAD_JOB) from None
    print_summary(summary, output)


def print_summary(s: JobSummary, output: str) -> None:
    """What the job did: its files, shards and windows; this run's rate and where it ran."""
    print(
        f"{s.files} files in {s.shards} shards ({s.shards_skipped} complete before this run): "
        f"{s.windows} windows, {s.errors} files not usable (see {output}/errors)"
    )
    if s.plan is not None:
        print(
            f"this run: {s.windows_this_run} windows in {s.seconds:.1f} s "
            f"({s.windows_this_run / s.seconds:.1f} windows/s, Ray start included) on {s.plan.actors} "
            f"actor(s) x {s.plan.threads} thread(s), {s.plan.providers[0]}"
        )


def main(argv: list[str] | None = None) -> None:
    """The `bridle-batch` entry point (`argv`: the arguments, for tests; default the process's)."""
    app(args=argv, prog_name="bridle-batch")


if __name__ == "__main__":
    main()

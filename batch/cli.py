"""`bridle-batch`: embeddings, codes and labels of every file of a dataset, as Parquet, on Ray Data.

    bridle-batch INPUT --output OUT [--model-dir DIR ...] [--address ADDR] [--actors N] [--batch-size B]

INPUT is a folder or a .csv / .jsonl / .parquet manifest with a `path` column, local or an fsspec URL.
A re-run with the same arguments skips the shards that are complete. Exit status: 0 done (files that
could not be used are in OUT/errors), 2 bad input, models, settings, an output folder that cannot be
written or that holds another job's output.
"""

from __future__ import annotations

import argparse
import logging
import sys

from batch.inputs import InputError
from batch.job import run_job
from batch.settings import DEFAULT_LIMITS, JobSettings, SettingsError
from batch.store import JobMismatch
from bridle_model.manifest import ManifestError
from bridle_model.windowing import AGGREGATES, WindowPolicy
from runtime.errors import ModelLoadError
from runtime.models import DEFAULT_MODELS_ROOT
from runtime.windows import Limits

EXIT_BAD_JOB = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = JobSettings(input="", model_dirs=("",), output="")
    p = argparse.ArgumentParser(prog="bridle-batch", description=__doc__.splitlines()[0])
    p.add_argument("input", help="a folder or a .csv/.jsonl/.parquet manifest (path column); local or URL")
    p.add_argument("--output", "-o", required=True, help="output dataset folder, local or fsspec URL")
    p.add_argument(
        "--model-dir",
        action="append",
        dest="model_dirs",
        help=f"a model directory or a folder of them; repeatable (default {DEFAULT_MODELS_ROOT})",
    )
    p.add_argument(
        "--address", help="an existing Ray cluster (auto, host:6379, ray://host:10001); default: local"
    )
    p.add_argument(
        "--actors", type=int, default=defaults.actors, help="ONNX Runtime actors (0: one per CPU/GPU)"
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="windows per ONNX Runtime run")
    p.add_argument(
        "--shard-files", type=int, default=defaults.shard_files, help="files per shard (resume unit)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default=defaults.device)
    p.add_argument(
        "--threads", type=int, default=defaults.threads, help="ORT threads per actor (0: its CPUs)"
    )
    p.add_argument("--top-k", type=int, default=defaults.top_k, help="labels per window (classifier models)")
    p.add_argument(
        "--aggregate",
        choices=list(AGGREGATES),
        help="clip scores from window scores: mean (weighted by seconds of signal) or max (multi-label "
        "models only); default max for a multi-label model, mean for a softmax one",
    )
    p.add_argument(
        "--window-hop",
        type=float,
        default=defaults.windowing.hop,
        help="step between windows of long media, a fraction of the window (the last ends at the end)",
    )
    p.add_argument(
        "--window-tolerance",
        type=float,
        default=defaults.windowing.tolerance,
        help="media at most this fraction longer than one window is one window (its tail dropped)",
    )
    p.add_argument(
        "--precision",
        default=",".join(defaults.precision),
        help="of a model's variants (fp32, int8, fp16 siblings), the first of these found; comma-separated",
    )
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--max-audio-seconds", type=float, default=DEFAULT_LIMITS.max_audio_seconds)
    p.add_argument("--max-video-seconds", type=float, default=DEFAULT_LIMITS.max_video_seconds)
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_LIMITS.max_image_pixels)
    return p.parse_args(argv)


def window_policy(tolerance: float, hop: float) -> WindowPolicy:
    try:
        return WindowPolicy(tolerance=tolerance, hop=hop)
    except ValueError as e:
        raise SettingsError(str(e)) from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = JobSettings(
            input=args.input,
            model_dirs=tuple(args.model_dirs or [str(DEFAULT_MODELS_ROOT)]),
            output=args.output,
            address=args.address,
            actors=args.actors,
            batch_size=args.batch_size,
            shard_files=args.shard_files,
            device=args.device,
            threads=args.threads,
            top_k=args.top_k,
            windowing=window_policy(args.window_tolerance, args.window_hop),
            aggregate=args.aggregate,
            limits=Limits(args.max_audio_seconds, args.max_image_pixels, args.max_video_seconds),
            num_cpus=args.num_cpus,
            precision=tuple(p.strip() for p in args.precision.split(",") if p.strip()),
        )
        summary = run_job(settings)
    except (InputError, JobMismatch, ManifestError, ModelLoadError, SettingsError, OSError) as e:
        print(f"bridle-batch: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_JOB)
    s = summary
    print(
        f"{s.files} files in {s.shards} shards ({s.shards_skipped} complete before this run): "
        f"{s.windows} windows, {s.errors} files not usable (see {args.output}/errors)"
    )
    if s.plan is not None:
        print(
            f"this run: {s.windows_this_run} windows in {s.seconds:.1f} s "
            f"({s.windows_this_run / s.seconds:.1f} windows/s, Ray start included) on {s.plan.actors} "
            f"actor(s) x {s.plan.threads} thread(s), {s.plan.providers[0]}"
        )


if __name__ == "__main__":
    main()

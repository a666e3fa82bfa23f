"""Batch job against the HTTP service: `python -m bench.batch [--files N] [--rounds R] [--seconds S]`.

Both give each window of a dataset its embedding and its codes, on the bundled `models/audio-digits`
and this machine's cores. The dataset is N one-window 16-bit wavs (distinct noise). Per round:

1. `bridle-batch` on a local Ray (started before the clock, as a cluster would be running already) with
   1 and with 2 ONNX Runtime actors: windows per second from the job's start to its end (listing,
   actor start and model load included), and between its first and last finished shard (steady);
2. the service (`bridle-serve` with its default settings, a subprocess) at saturation: wrk with 64
   clients posting each window to /embed and /tokenize in turn, so one window = two requests.

It prints each figure and batch (the better actor count, end to end) / service per round (goal >= 1.3).
On a machine shared with other work, wall-clock rates move with the load; so it also prints windows
per CPU-second, which do not: for the batch job the CPU time of the actors' shard work (the done
markers' cpu_seconds; Ray's own processes and the actors' start not counted), for the service the
server process's CPU time over the load phase against the 200 responses its /metrics counted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
import ray

from batch.job import run_job
from batch.settings import JobSettings
from batch.store import DONE
from bench.serve import running_service
from bench.service_load import BUNDLED_AUDIO, drive, wav_bytes
from bridle_model.manifest import read_manifest
from service.settings import usable_cores

# each connection posts the body to /embed and /tokenize in turn
EMBED_AND_TOKENIZE = """
local f = assert(io.open(os.getenv("BRIDLE_BENCH_BODY"), "rb"))
local body = f:read("*a")
f:close()
local headers = {["Content-Type"] = "audio/wav"}
local sent = 0
request = function()
  sent = sent + 1
  return wrk.format("POST", (sent % 2 == 0) and "/tokenize" or "/embed", headers, body)
end
"""


def make_dataset(folder: Path, files: int, samples: int, rate: int) -> None:
    folder.mkdir(parents=True)
    for i in range(files):
        (folder / f"{i:06d}.wav").write_bytes(wav_bytes(samples, rate, seed=i))


def batch_rates(
    data: Path, out: Path, model_dir: Path, actors: int, args: argparse.Namespace
) -> tuple[float, float, float]:
    """Windows per second of one job: end to end, from its first to its last finished shard, and per
    CPU-second of the actors' shard work."""
    settings = JobSettings(
        input=str(data),
        model_dirs=(str(model_dir),),
        output=str(out),
        actors=actors,
        batch_size=args.batch_size,
        shard_files=args.shard_files,
    )
    summary = run_job(settings)
    assert summary.windows_this_run == args.files, summary
    markers = sorted((m.stat().st_mtime, json.loads(m.read_text())) for m in (out / DONE).iterdir())
    if len(markers) < 2:
        raise SystemExit("bench.batch needs at least two shards: more --files or fewer --shard-files")
    after_first = args.files - markers[0][1]["windows"]  # markers by finishing time
    steady = after_first / max(markers[-1][0] - markers[0][0], 1e-9)
    per_cpu = args.files / sum(m["cpu_seconds"] for _, m in markers)
    return summary.windows_this_run / summary.seconds, steady, per_cpu


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(url: str) -> float:
    """The 200 responses of /embed and /tokenize so far, from the service's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    pattern = r'^bridle_requests_total\{route="/(?:embed|tokenize)",status="200"\} (\S+)$'
    return sum(float(n) for n in re.findall(pattern, text, re.M))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=BUNDLED_AUDIO, help="an audio model directory")
    p.add_argument("--files", type=int, default=3000, help="one-window files in the dataset")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds of the service phase")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument(
        "--batch-size", type=int, default=JobSettings.batch_size, help="windows per ORT run in the batch job"
    )
    p.add_argument("--shard-files", type=int, default=64)
    args = p.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("bench.batch needs wrk: `make bench-batch` installs it (apt-get install wrk)")
    manifest = read_manifest(args.model_dir)
    if manifest.modality != "audio":
        sys.exit(f"{args.model_dir} is a {manifest.modality} model; this bench drives an audio model")
    samples, rate = int(manifest.input.shape[1]), int(manifest.input.sample_rate or 16_000)
    cores = usable_cores()
    print(
        f"model {manifest.name}, {args.files} one-window wavs, {cores} cores; batch: {args.batch_size} "
        f"windows per run, {args.shard_files} files per shard; service: defaults, {args.clients} clients"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_dataset(data, args.files, samples, rate)
        body = data / "000000.wav"
        for round_ in range(1, args.rounds + 1):
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
            try:
                rates = {
                    a: batch_rates(data, Path(tmp) / f"out-{round_}-{a}", args.model_dir, a, args)
                    for a in (1, 2)
                }
            finally:
                ray.shutdown()
            with running_service([args.model_dir], {"BRIDLE_QUEUE_SIZE": "4096"}) as service:
                cpu, responses = cpu_seconds(service.process.pid), served(service.url)
                load = drive(wrk, service.url, body, args.clients, args.seconds, lua=EMBED_AND_TOKENIZE)
                service_per_cpu = (
                    (served(service.url) - responses) / 2 / (cpu_seconds(service.process.pid) - cpu)
                )
            service_rate = load.throughput / 2  # two requests per window
            for actors, (end_to_end, steady, per_cpu) in rates.items():
                print(
                    f"round {round_}: batch job, {actors} actor(s): {end_to_end:7.1f} windows/s end to end, "
                    f"{steady:7.1f} steady, {per_cpu:6.1f} per CPU-second"
                )
            print(
                f"round {round_}: service at saturation:  {service_rate:7.1f} windows/s, "
                f"{service_per_cpu:6.1f} per CPU-second ({load.throughput:.1f} req/s, "
                f"p50 {load.p50_ms:.0f} ms, {load.errors} errors)"
            )
            best = max(end_to_end for end_to_end, _, _ in rates.values())
            best_cpu = max(per_cpu for _, _, per_cpu in rates.values())
            print(
                f"round {round_}: batch job / service:    {best / service_rate:.2f}  (goal >= 1.3); "
                f"per CPU-second {best_cpu / service_per_cpu:.2f}; load average {os.getloadavg()[0]:.1f}"
            )


if __name__ == "__main__":
    main()

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
per CPU-second, which move much less. Batch job: the CPU time of every process of the local Ray (this
driver, Ray's daemons, the workers; an actor's time up to its last shard, from the done markers, since
Ray stops it at the end) over the job. Service: the server process's CPU time over the load phase,
against the 200 responses its /metrics counted (wrk's own CPU is not counted).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import ray
import typer

from bench.serve import cpu_seconds, process_cpu_seconds, running_service
from bench.service_load import BUNDLED_AUDIO, drive, wav_bytes
from bridle.batch.job import run_job
from bridle.batch.settings import JobSettings
from bridle.batch.store import DONE
from bridle.model.manifest import read_manifest
from bridle.service.settings import usable_cores

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


@dataclass(frozen=True)
class BatchRates:
    end_to_end: float  # windows per second, the job's start to its end
    steady: float  # windows per second, its first to its last finished shard
    per_cpu: float  # windows per CPU-second of the whole local Ray over the job
    per_work_cpu: float  # windows per CPU-second of the actors' shard work alone


def batch_rates(
    data: Path, out: Path, model_dir: Path, actors: int, files: int, batch_size: int, shard_files: int
) -> BatchRates:
    """The rates of one job over the `files` of `data`."""
    settings = JobSettings(
        input=str(data),
        model_dirs=(str(model_dir),),
        output=str(out),
        actors=actors,
        batch_size=batch_size,
        shard_files=shard_files,
    )
    before = tree_cpu()
    summary = run_job(settings)
    assert summary.windows_this_run == files, summary
    markers = sorted(
        ((m.stat().st_mtime, json.loads(m.read_text())) for m in (out / DONE).iterdir()), key=lambda m: m[0]
    )
    if len(markers) < 2:
        raise SystemExit("bench.batch needs at least two shards: more --files or fewer --shard-files")
    after_first = files - markers[0][1]["windows"]  # markers by finishing time
    steady = after_first / max(markers[-1][0] - markers[0][0], 1e-9)
    work = sum(m["cpu_seconds"] for _, m in markers)  # the actors' shard work alone
    return BatchRates(
        summary.windows_this_run / summary.seconds,
        steady,
        files / job_cpu(before, markers),
        files / work,
    )


def job_cpu(before: dict[int, float], markers: list[tuple[float, dict]]) -> float:
    """CPU seconds that this process and its descendants (the local Ray) spent since `before`."""
    actors: dict[int, float] = {}  # actor pid -> its CPU seconds at its last shard
    for _, m in markers:
        actors[m["pid"]] = max(actors.get(m["pid"], 0.0), m["process_cpu_seconds"])
    after = {pid: cpu for pid, cpu in tree_cpu().items() if pid not in actors}
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in (after | actors).items())


def tree_cpu() -> dict[int, float]:
    """CPU seconds of this process and every process below it, by pid."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            found[pid] = process_cpu_seconds(pid)
        todo += children.get(pid, [])
    return found


def served(url: str) -> float:
    """The 200 responses of /embed and /tokenize so far, from the service's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    pattern = r'^bridle_requests_total\{route="/(?:embed|tokenize)",status="200"\} (\S+)$'
    return sum(float(n) for n in re.findall(pattern, text, re.M))


def main(
    model_dir: Annotated[Path, typer.Option(help="an audio model directory")] = BUNDLED_AUDIO,
    files: Annotated[int, typer.Option(help="one-window files in the dataset")] = 3000,
    rounds: Annotated[int, typer.Option()] = 2,
    seconds: Annotated[float, typer.Option(help="measured seconds of the service phase")] = 10.0,
    clients: Annotated[int, typer.Option()] = 64,
    batch_size: Annotated[
        int, typer.Option(help="windows per ORT run in the batch job")
    ] = JobSettings.batch_size,
    shard_files: Annotated[int, typer.Option()] = 64,
) -> None:
    """bridle-batch's windows/s (1 and 2 Ray actors) against the HTTP service at saturation."""
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("bench.batch needs wrk: `make bench-batch` installs it (apt-get install wrk)")
    manifest = read_manifest(model_dir)
    if manifest.modality != "audio":
        sys.exit(f"{model_dir} is a {manifest.modality} model; this bench drives an audio model")
    samples, rate = int(manifest.input.shape[1]), int(manifest.input.sample_rate)
    cores = usable_cores()
    print(
        f"model {manifest.name}, {files} one-window wavs, {cores} cores; batch: {batch_size} "
        f"windows per run, {shard_files} files per shard; service: defaults, {clients} clients"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_dataset(data, files, samples, rate)
        body = data / "000000.wav"
        for round_ in range(1, rounds + 1):
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
            try:
                rates = {
                    a: batch_rates(
                        data, Path(tmp) / f"out-{round_}-{a}", model_dir, a, files, batch_size, shard_files
                    )
                    for a in (1, 2)
                }
            finally:
                ray.shutdown()
            with running_service([model_dir], {"BRIDLE_QUEUE_SIZE": "4096"}) as service:
                cpu, responses = cpu_seconds(service.process.pid), served(service.url)
                load = drive(wrk, service.url, body, clients, seconds, lua=EMBED_AND_TOKENIZE)
                service_per_cpu = (
                    (served(service.url) - responses) / 2 / (cpu_seconds(service.process.pid) - cpu)
                )
            service_rate = load.throughput / 2  # two requests per window
            for actors, r in rates.items():
                print(
                    f"round {round_}: batch job, {actors} actor(s): {r.end_to_end:7.1f} windows/s end to "
                    f"end, {r.steady:7.1f} steady; per CPU-second {r.per_cpu:6.1f} (all of Ray), "
                    f"{r.per_work_cpu:6.1f} (shard work)"
                )
            print(
                f"round {round_}: service at saturation:  {service_rate:7.1f} windows/s; "
                f"per CPU-second {service_per_cpu:6.1f} ({load.throughput:.1f} req/s, "
                f"p50 {load.p50_ms:.0f} ms, {load.errors} errors)"
            )
            best = max(r.end_to_end for r in rates.values())
            best_cpu = max(r.per_cpu for r in rates.values())
            best_work = max(r.per_work_cpu for r in rates.values())
            print(
                f"round {round_}: batch job / service:    {best / service_rate:.2f}  (goal >= 1.3); per "
                f"CPU-second {best_cpu / service_per_cpu:.2f} (all of Ray), "
                f"{best_work / service_per_cpu:.2f} (shard work); load average {os.getloadavg()[0]:.1f}"
            )


if __name__ == "__main__":
    typer.run(main)

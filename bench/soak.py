"""Soak test of the service: `python -m bench.soak [--seconds 600] [--clients 32] [--env KEY=VALUE ...]`.

Starts `bridle-serve` on the bundled models (bench/serve.py) and keeps `--clients` closed-loop clients
posting a mix of valid uploads (every format of bench/fuzz.py) and damaged ones (its mutations) to
/embed, /tokenize and /classify. The server's RSS is sampled every second. It prints the RSS after the
warm-up (the first tenth of the run, at least 30 s) and at the end with the growth between them, the
answers by status class, the 5xx count and the latency of the 2xx answers (p50, p99). Exit status 1
on any 5xx or RSS growth over `--max-growth` (default 20 %). `--env` passes settings or allocator
variables (`MALLOC_ARENA_MAX=2`, `BRIDLE_MAX_BATCH_SIZE=8`) to the server, to compare them.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import typer

from bench.fuzz import CONTENT_TYPES, FORMATS, ROUTES, mutate, seed_files
from bench.serve import BUNDLED, Service, running_service


def client_loop(url: str, seed: int, stop_at: float, files: dict[str, bytes], out: list) -> None:
    """Post until `stop_at`: half valid files, half damaged ones; append (status, seconds) per answer."""
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < stop_at:
            fmt = rng.choice(FORMATS)
            data = files[fmt]
            if rng.random() < 0.5:
                _, data = mutate(data, rng, files[rng.choice(FORMATS)])
            upload = {"file": (f"soak.{fmt}", data, CONTENT_TYPES[fmt])}
            start = time.perf_counter()
            try:
                status = client.post(rng.choice(ROUTES), files=upload).status_code
            except httpx.HTTPError:
                status = 0  # no answer
            out.append((status, time.perf_counter() - start))


def sample_rss(service: Service, stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    start = time.monotonic()
    while not stop.is_set():
        samples.append((time.monotonic() - start, service.rss_mb()))
        stop.wait(1.0)


def main(
    seconds: Annotated[float, typer.Option()] = 600.0,
    clients: Annotated[int, typer.Option()] = 32,
    max_growth: Annotated[float, typer.Option(help="percent RSS growth after warm-up")] = 20.0,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the server; repeatable")] = None,
    rss_log: Annotated[
        Path | None, typer.Option(help="write the RSS samples (seconds, MB) to this file")
    ] = None,
) -> None:
    """Closed-loop clients on the bundled models; exit 1 on any 5xx or RSS growth over --max-growth."""
    server_env = dict(item.split("=", 1) for item in env or [])
    files = seed_files()
    warmup = max(30.0, seconds / 10)
    answers: list[tuple[int, float]] = []
    rss: list[tuple[float, float]] = []
    with running_service(BUNDLED, server_env) as service:
        stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(service, stop, rss))
        sampler.start()
        stop_at = time.monotonic() + seconds
        loops = [
            threading.Thread(target=client_loop, args=(service.url, i, stop_at, files, answers))
            for i in range(clients)
        ]
        for c in loops:
            c.start()
        for c in loops:
            c.join()
        stop.set()
        sampler.join()
    if rss_log:
        rss_log.write_text("".join(f"{t:.1f} {mb:.1f}\n" for t, mb in rss))
    after_warmup = next(mb for t, mb in rss if t >= warmup)
    end = rss[-1][1]
    classes = Counter(f"{s // 100}xx" if s else "no answer" for s, _ in answers)
    served = np.array([t for s, t in answers if 200 <= s < 300]) * 1000  # (n,) ms
    growth = 100 * (end - after_warmup) / after_warmup
    print(f"soak: {seconds:g} s, {clients} clients, env {server_env or '{}'}, {len(answers)} requests")
    print("  answers: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items())))
    print(f"  2xx latency: p50 {np.percentile(served, 50):.0f} ms, p99 {np.percentile(served, 99):.0f} ms")
    print(
        f"  RSS: {rss[0][1]:.0f} MB at start, {after_warmup:.0f} MB after the {warmup:g} s warm-up, "
        f"{end:.0f} MB at the end ({growth:+.1f} %), {max(mb for _, mb in rss):.0f} MB at most"
    )
    bad = classes["5xx"] + classes["no answer"]
    print(f"  5xx or no answer: {bad}")
    sys.exit(1 if bad or growth > max_growth else 0)


if __name__ == "__main__":
    typer.run(main)

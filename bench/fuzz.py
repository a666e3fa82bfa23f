"""Seeded mutation fuzzing of the service: `python -m bench.fuzz [--cases N] [--seed S] [--clients C]`.

Valid wav, flac, mp3, ogg, png, jpeg, webp, mp4 and webm files (made with bridle/data/media_files.py) are
damaged by bit flips, truncations, spliced byte runs and inserted junk, and posted to a real
`bridle-serve` on loopback (the bundled models, or `--model-dir`). Every answer must be 2xx, or 4xx
with a JSON error body; the run prints the counts by status and error code and exits 1 when any answer
was 5xx, not JSON, or no answer at all. `make fuzz` runs 20,000 cases; the tests run a few hundred
through the same `mutate` and `check_answer`.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

import httpx
import typer

from bridle.data.media_files import CONTENT_TYPES, make_audio, make_image, make_video

FORMATS = ("wav", "flac", "mp3", "ogg", "png", "jpeg", "webp", "mp4", "webm")
ROUTES = ("/embed", "/tokenize", "/classify")
MUTATIONS = ("flip", "truncate", "splice", "junk")


def seed_files() -> dict[str, bytes]:
    """One short valid file per format: format -> bytes."""
    files = {f: make_audio(f, 0.6, kind="speechlike") for f in ("wav", "flac", "mp3", "ogg")}
    files |= {f: make_image(f, (48, 40)) for f in ("png", "jpeg", "webp")}
    files |= {f: make_video(f, 1.2) for f in ("mp4", "webm")}
    return files


def mutate(data: bytes, rng: random.Random, donor: bytes) -> tuple[str, bytes]:
    """One to three damages of `data`; `donor` (another valid file) lends byte runs to splices."""
    out = bytearray(data)
    names = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.choice(MUTATIONS)
        names.append(kind)
        n = len(out)
        if n == 0:
            break
        if kind == "flip":
            for _ in range(rng.randint(1, 16)):
                i = rng.randrange(n)
                out[i] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            del out[rng.randrange(n) :]
        elif kind == "splice":
            source = rng.choice((bytes(out), donor))
            length = rng.randint(1, max(1, min(4096, len(source) // 4)))
            start = rng.randrange(max(1, len(source) - length))
            at = rng.randrange(n)
            out[at : at + length] = source[start : start + length]
        else:  # junk
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 512)))
            out[rng.randrange(n + 1) : rng.randrange(n + 1) if rng.random() < 0.3 else None] = b""
            at = rng.randrange(len(out) + 1)
            out[at:at] = junk
    return "+".join(names), bytes(out)


@dataclass(frozen=True)
class Case:
    index: int
    fmt: str
    mutation: str
    route: str
    content_type: str
    data: bytes


def cases(count: int, seed: int, files: dict[str, bytes]) -> Iterator[Case]:
    """`count` damaged uploads, the same for the same seed; a tenth go as application/octet-stream."""
    rng = random.Random(seed)
    for i in range(count):
        fmt = FORMATS[i % len(FORMATS)]
        donor = files[rng.choice(FORMATS)]
        mutation, data = mutate(files[fmt], rng, donor)
        ctype = "application/octet-stream" if rng.random() < 0.1 else CONTENT_TYPES[fmt]
        yield Case(i, fmt, mutation, rng.choice(ROUTES), ctype, data)


def post(client: httpx.Client, case: Case) -> httpx.Response:
    files = {"file": (f"case{case.index}.{case.fmt}", case.data, case.content_type)}
    return client.post(case.route, files=files)


def check_answer(r: httpx.Response) -> str:
    """The answer's class for the counts ("200", "422 corrupt", ...); raises AssertionError for a 5xx or
    a non-JSON error."""
    if 200 <= r.status_code < 300:
        return str(r.status_code)
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    body = r.json()  # a ValueError here: not JSON
    code = body["error"]["code"]
    assert isinstance(code, str) and body["error"]["message"], body
    return f"{r.status_code} {code}"


def run(url: str, count: int, seed: int, clients: int) -> tuple[Counter[str], list[str]]:
    """Post every case; the counts by answer class and a description of every failure."""
    files = seed_files()
    counts: Counter[str] = Counter()
    failures: list[str] = []

    def one(case: Case, client: httpx.Client) -> None:
        try:
            counts[check_answer(post(client, case))] += 1
        except (AssertionError, ValueError, KeyError, httpx.HTTPError) as e:
            counts["FAILED"] += 1
            failures.append(f"case {case.index} ({case.fmt}, {case.mutation}, {case.route}): {e!r}"[:400])

    with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(clients) as pool:
        for done, _ in enumerate(pool.map(lambda c: one(c, client), cases(count, seed, files)), 1):
            if done % 1000 == 0:
                print(f"  {done}/{count} cases, {counts['FAILED']} failed", file=sys.stderr, flush=True)
    return counts, failures


def main(
    count: Annotated[int, typer.Option("--cases", help="damaged uploads to post")] = 20_000,
    seed: Annotated[int, typer.Option()] = 0,
    clients: Annotated[int, typer.Option()] = 4,
    model_dir: Annotated[
        list[str] | None, typer.Option(help="repeatable; default: the bundled models")
    ] = None,
) -> None:
    """Post seeded damaged uploads to a real bridle-serve; exit 1 on any 5xx, non-JSON or no answer."""
    from bench.serve import BUNDLED, running_service

    with running_service(model_dir or [str(d) for d in BUNDLED]) as service:
        rss_ready = service.rss_mb()
        counts, failures = run(service.url, count, seed, clients)
        rss = service.rss_mb()
    print(f"{count} cases (seed {seed}), answers by status and error code:")
    for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {key:32s} {n:7d}  {100 * n / count:6.2f} %")
    print(f"server RSS: {rss_ready:.0f} MB when ready, {rss:.0f} MB at the end")
    for f in failures[:20]:
        print("  FAILED", f)
    bad = counts["FAILED"]
    print(f"5xx, non-JSON or no answer: {bad}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    typer.run(main)

"""Models swapped under load: `bridle-serve` over a versioned model folder (`NAME/VERSION/`), closed-loop
clients on `/embed?model=NAME`, while new versions are added and reloaded (by `POST /admin/reload` and by
SIGHUP, in turn), a version that cannot load is refused, and old versions are removed.

    python -m bench.reload_load [--model-dir models/audio-digits] [--frontends 2] [--clients 16]
                                [--cycles 6] [--json out.json]

It counts every request by status and by the version that served it (`results[0].model`), and the
requests that began after a reload had answered but were served by an older version ("stale": a
front end that had not switched yet). Each reload's own time is printed. Exit 1 when any request failed,
when the broken version's reload was not refused with 409 `reload_failed`, or when a reload did not
bring its version in.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.serve import running_service
from bridle.data.media_files import make_audio, make_image, make_video
from bridle.model.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


def sample(modality: str) -> tuple[bytes, str]:
    """A small file of the model's modality."""
    if modality == "audio":
        return make_audio("wav", 1.0), "audio/wav"
    if modality == "image":
        return make_image("png", (64, 64)), "image/png"
    return make_video("mp4", 1.0), "video/mp4"


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    # (start, end, version served) of every 200
    answers: list[tuple[float, float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def client_loop(url: str, name: str, body: tuple[bytes, str], stop: threading.Event, tally: Tally) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                r = client.post("/embed", params={"model": name}, files={"file": ("x", body[0], body[1])})
            except httpx.HTTPError as e:
                with tally.lock:
                    tally.statuses[0] += 1
                    tally.failures.append(f"{type(e).__name__}: {e}")
                continue
            ended = time.monotonic()
            with tally.lock:
                tally.statuses[r.status_code] += 1
                if r.status_code == 200:
                    version = r.json()["results"][0]["model"]
                    tally.served[version] += 1
                    tally.answers.append((started, ended, version))
                else:
                    tally.failures.append(f"{r.status_code} {r.text[:300]}")


def wait_serving(url: str, key: str, within_s: float = 120) -> None:
    """Until `/models` lists `key` as the newest (SIGHUP answers nothing)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        models = httpx.get(f"{url}/models", timeout=10).json()["models"]
        if any(m["name"] == key and m.get("newest") for m in models):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{key} was not served within {within_s} s")


def reload_under_load(
    model_dir: Path, frontends: int, clients: int, cycles: int, settle_s: float = 2.0
) -> dict[str, object]:
    """The run (see the module docstring); its counts and each reload's time."""
    manifest = read_manifest(model_dir, check_hashes=False)
    name = manifest.name
    body = sample(manifest.modality)
    root = Path(tempfile.mkdtemp(prefix="bridle-reload-"))
    versions = root / name

    def add(version: int, broken: bool = False) -> Path:
        target = versions / str(version)
        tmp = versions / f".{version}.tmp"  # a version appears whole (a folder renamed into place)
        shutil.copytree(model_dir, tmp)
        if broken:
            (tmp / "encoder.onnx").write_bytes(b"not an onnx graph")
        tmp.rename(target)
        return target

    add(1)
    env = {"BRIDLE_FRONTENDS": str(frontends), "BRIDLE_PROVIDERS": "CPUExecutionProvider"}
    log: list[str] = []
    reloads: list[dict[str, object]] = []
    tally = Tally()
    stop = threading.Event()
    problems: list[str] = []
    try:
        with running_service([root], env, log=log) as service:
            threads = [
                threading.Thread(target=client_loop, args=(service.url, name, body, stop, tally))
                for _ in range(clients)
            ]
            for t in threads:
                t.start()
            time.sleep(settle_s)
            for version in range(2, cycles + 2):
                add(version)
                how = "POST /admin/reload" if version % 2 == 0 else "SIGHUP"
                started = time.monotonic()
                if how == "SIGHUP":
                    service.process.send_signal(signal.SIGHUP)
                    wait_serving(service.url, f"{name}@{version}")
                    status = 200
                else:
                    r = httpx.post(f"{service.url}/admin/reload", timeout=120)
                    status = r.status_code
                    if status != 200 or f"{name}@{version}" not in r.json()["loaded"]:
                        problems.append(f"reload of version {version}: {r.status_code} {r.text}")
                answered = time.monotonic()
                reloads.append(
                    {
                        "version": version,
                        "how": how,
                        "status": status,
                        "seconds": answered - started,
                        "answered": answered,
                    }
                )
                if version > 3:  # unload the oldest under load too
                    shutil.rmtree(versions / str(version - 3))
                time.sleep(settle_s)
            # a version that cannot load: refused, and the service serves on
            broken = add(cycles + 2, broken=True)
            started = time.monotonic()
            r = httpx.post(f"{service.url}/admin/reload", timeout=120)
            reloads.append(
                {
                    "version": cycles + 2,
                    "how": "POST /admin/reload (broken)",
                    "status": r.status_code,
                    "seconds": time.monotonic() - started,
                    "message": r.json()["error"]["message"] if r.status_code != 200 else None,
                }
            )
            if r.status_code != 409 or r.json()["error"]["code"] != "reload_failed":
                problems.append(f"the broken version's reload answered {r.status_code} {r.text}")
            time.sleep(settle_s)
            shutil.rmtree(broken)
            stop.set()
            for t in threads:
                t.join()
    finally:
        stop.set()
        shutil.rmtree(root, ignore_errors=True)
    stale = 0
    for reload in reloads:
        if reload["how"] != "POST /admin/reload":
            continue  # SIGHUP's answer time is when /models showed it, not when every front end had it
        newer = f"{name}@{reload['version']}"
        after = [a for a in tally.answers if a[0] > reload["answered"]]
        # served by an older version than the one this reload brought in
        stale += sum(1 for a in after if _version(a[2]) < _version(newer))
    return {
        "model": name,
        "frontends": frontends,
        "clients": clients,
        "requests": sum(tally.statuses.values()),
        "statuses": dict(tally.statuses),
        "served_by": dict(sorted(tally.served.items())),
        "failures": tally.failures[:20],
        "stale_after_reload_answer": stale,
        "reloads": [{k: v for k, v in r.items() if k != "answered"} for r in reloads],
        "problems": problems,
    }


def _version(key: str) -> int:
    return int(key.rsplit("@", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=REPO / "models" / "audio-digits")
    parser.add_argument("--frontends", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = reload_under_load(args.model_dir, args.frontends, args.clients, args.cycles)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    failed = sum(n for s, n in result["statuses"].items() if s != 200)  # type: ignore[union-attr]
    sys.exit(1 if failed or result["problems"] else 0)


if __name__ == "__main__":
    main()

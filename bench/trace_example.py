"""One `/classify` request's trace across the front end and the engine process, as an OTLP receiver got it:
`python -m bench.trace_example [--out docs/trace-classify.txt]`.

Starts `bridle-serve` on the bundled `audio-digits` model in its default layout (front-end processes over
the engine process) with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a receiver in this process
(bench/otlp_sink.py), posts one spoken "seven" (espeak-ng's, else a synthetic tone) to `/classify` with a
client's `traceparent`, waits for the spans of both processes and writes the trace as a tree
(`otlp_sink.render`) with the request and the answer.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

import httpx
import typer

from bench.otlp_sink import OtlpSink, render
from bench.serve import REPO, running_service
from bridle.data.media_files import make_audio

MODEL = REPO / "models" / "audio-digits"
EXPECTED = {
    "POST /classify",
    "admission",
    "read",
    "decode",
    "engine",
    "engine.run",
    "queue",
    "run",
    "serialise",
}


def spoken_seven() -> tuple[bytes, str]:
    """espeak-ng saying "seven" (what the README's examples post), else a 1 s tone."""
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "seven.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), "seven"], check=True)
            return path.read_bytes(), "seven.wav (espeak-ng -v en-us seven)"
    return make_audio("wav", 1.0), "a 1 s synthetic tone"


def main(out: Annotated[Path | None, typer.Option(help="write the trace here too")] = None) -> None:
    data, what = spoken_seven()
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{client_span}-01"
    env = {"OTEL_BSP_SCHEDULE_DELAY": "100", "BRIDLE_ENGINE_SPARE": "false"}
    with OtlpSink() as sink:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.url
        with running_service([MODEL], env, ready_timeout_s=300) as service:
            response = httpx.post(
                f"{service.url}/classify?top_k=2",
                content=data,
                headers={"Content-Type": "audio/wav", "traceparent": traceparent},
                timeout=60,
            )
            response.raise_for_status()
            sink.wait_for(lambda _: {s.name for s in sink.trace(trace_id)} >= EXPECTED)
        spans = sink.trace(trace_id)
    answer = response.json()["results"][0]
    text = "\n".join(
        [
            "$ curl -s -X POST '<bridle-serve>/classify?top_k=2' -H 'Content-Type: audio/wav' \\",
            f"    -H 'traceparent: {traceparent}' --data-binary @seven.wav   # {what}",
            json.dumps({k: answer[k] for k in ("model", "duration", "labels")}),
            "",
            f"the receiver (bench/otlp_sink.py) got {len(spans)} spans of trace {trace_id} from "
            f"{len({s.resource['process.pid'] for s in spans})} processes (load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} when written):",
            render(spans),
            "",
        ]
    )
    print(text)
    if out is not None:
        out.write_text(text)


if __name__ == "__main__":
    typer.run(main)

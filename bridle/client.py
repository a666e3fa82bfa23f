"""A Python client for `bridle-serve`: `Client` (sync) and `AsyncClient` (asyncio), on httpx.

    from bridle.client import Client

    with Client("http://127.0.0.1:8000") as c:
        e = c.embed("seven.wav")                  # one input -> one Embedding
        e.embedding, e.windows, e.start, e.end     # (D,) clip, (W, D) windows, (W,) seconds each
        for codes in c.tokenize(["a.wav", "b.png"]):   # a list -> a list, in order
            codes.codes                            # (W, N, L) int32
        c.classify(open("x.png", "rb").read(), top_k=3).labels

Inputs are paths (str or Path), bytes of a media file, or numpy arrays: a 1-D waveform with
`sample_rate=` (sent as a float32 wav, or 16-bit PCM for int16) or an image, (H, W) or (H, W, 3|4) uint8
(sent as png; Pillow). Every answer comes back as numpy arrays (base64 decoded where the service sends
base64) with each window's start and end in seconds (NaN for an image).

Each input is one request, at most `concurrency` at a time. A 503 (queue full, overloaded, warming up)
and a refused connection are retried after the answer's Retry-After (else an exponential back-off), up to
`retries` times; any other error raises `ClientError` with the service's code and message, or, with
`return_exceptions=True`, takes the input's place in the list. Over many inputs a tqdm progress bar
shows on a terminal (`progress=False` hides it, `True` shows it anywhere).

`bridle-client embed FILES... --out x.parquet` (`main`) writes the batch job's windows table
(`bridle-batch`, bridle/batch/tables.py) from the service's answers.

This module imports nothing of the project's packages: httpx, numpy and tqdm (pyarrow for `--out`,
Pillow for image arrays), so it installs and runs apart from the server (`pip install ".[client]"` in a
checkout).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import mimetypes
import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import numpy as np
from tqdm import tqdm

Input = str | os.PathLike | bytes | np.ndarray
Task = Literal["embed", "tokenize", "classify"]
DEFAULT_URL = "http://127.0.0.1:8000"
RETRIED = frozenset({503})


class ClientError(Exception):
    """The service refused an input (or kept answering 503 past the retries)."""

    def __init__(self, status: int, code: str, message: str, source: str | None = None):
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{status} {code}: {message}")
        self.status, self.code, self.message, self.source = status, code, message, source


# ---- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    source: str | None  # the path, or None for bytes and arrays
    model: str
    modality: str
    duration: float | None  # seconds of media; None for an image
    start: np.ndarray  # (W,) seconds, NaN for an image
    end: np.ndarray  # (W,)


@dataclass(frozen=True)
class Embedding(Result):
    embedding: np.ndarray  # (D,) float32: the windows' mean, weighted by their seconds of signal
    windows: np.ndarray  # (W, D) float32


@dataclass(frozen=True)
class Codes(Result):
    codes: np.ndarray  # (W, N, L) int32: codes[w, n, l], patch n in row-major order over patch_grid
    patch_grid: list[int]
    grid_axes: list[str]
    codebook_size: int


@dataclass(frozen=True)
class Labels(Result):
    labels: list[str]  # the clip's top-k, best first
    scores: np.ndarray  # (k,) float64
    window_labels: list[list[str]]  # (W, k)
    window_scores: list[np.ndarray]  # W arrays of (k,)
    aggregate: str  # how the clip's scores pool the windows': mean or max
    label_ids: list[str] | None = None  # the clip's labels' ids, for models with label ids


# ---- requests and answers (no I/O: both clients share them) -------------------------------------------


@dataclass(frozen=True)
class Call:
    """One input's request."""

    path: str
    params: dict[str, Any]
    content: bytes
    content_type: str
    source: str | None


def _wav(signal: np.ndarray, sample_rate: int) -> bytes:
    """A mono wav: 16-bit PCM for int16 samples, else 32-bit IEEE float (the samples as they are)."""
    pcm = signal.dtype == np.int16
    data = np.ascontiguousarray(signal, "<i2" if pcm else "<f4").tobytes()
    fmt, bits = (1, 16) if pcm else (3, 32)
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, fmt, 1, sample_rate, sample_rate * bits // 8, bits // 8, bits)
    return header + b"data" + struct.pack("<I", len(data)) + data


def _png(image: np.ndarray) -> bytes:
    from PIL import Image  # only for image arrays

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def encode_input(item: Input, sample_rate: int | None = None) -> tuple[bytes, str, str | None]:
    """An input as (body, content type, source name)."""
    if isinstance(item, np.ndarray):
        if item.ndim == 1:
            if sample_rate is None:
                raise ValueError("a 1-D array is a waveform: give its sample_rate=")
            return _wav(item, sample_rate), "audio/wav", None
        if item.ndim in (2, 3) and item.dtype == np.uint8 and (item.ndim == 2 or item.shape[2] in (3, 4)):
            return _png(item), "image/png", None
        raise ValueError(
            f"an array of shape {item.shape} and dtype {item.dtype} is neither a 1-D waveform nor an "
            "(H, W[, 3|4]) uint8 image; send other media as a file"
        )
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item), "application/octet-stream", None
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return path.read_bytes(), ctype, str(item)
    raise TypeError(f"an input is a path, bytes or a numpy array, not {type(item).__name__}")


def make_call(task: Task, item: Input, params: dict[str, Any], sample_rate: int | None) -> Call:
    body, ctype, source = encode_input(item, sample_rate)
    query = {k: v for k, v in params.items() if v is not None}
    if task == "tokenize":
        query["encoding"] = "base64"
    return Call(f"/{task}", query, body, ctype, source)


def _times(windows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    start = np.array([np.nan if w["start"] is None else w["start"] for w in windows], np.float64)
    end = np.array([np.nan if w["end"] is None else w["end"] for w in windows], np.float64)
    return start, end


def _decoded(array: dict[str, Any] | list) -> np.ndarray:
    """A `{dtype, shape, data}` base64 array (docs/contracts.md), or nested numbers."""
    if isinstance(array, list):
        return np.asarray(array)
    data = np.frombuffer(base64.b64decode(array["data"]), np.dtype(array["dtype"]).newbyteorder("<"))
    return data.astype(array["dtype"]).reshape(array["shape"])


def parse_result(task: Task, r: dict[str, Any], source: str | None) -> Result:
    """One item of an answer's `results` as numpy arrays."""
    start, end = _times(r["windows"])
    common = {
        "source": source,
        "model": r["model"],
        "modality": r["modality"],
        "duration": r["duration"],
        "start": start,
        "end": end,
    }
    if task == "embed":
        windows = np.array([w["embedding"] for w in r["windows"]], np.float32).reshape(len(start), -1)
        return Embedding(**common, embedding=np.array(r["embedding"], np.float32), windows=windows)
    if task == "tokenize":
        codes = [_decoded(w["codes"]) for w in r["windows"]]
        shape = (len(codes), math.prod(r["patch_grid"]), r["levels"])
        return Codes(
            **common,
            codes=np.stack(codes).astype(np.int32).reshape(shape),
            patch_grid=r["patch_grid"],
            grid_axes=r["grid_axes"],
            codebook_size=r["codebook_size"],
        )
    ids = [x["id"] for x in r["labels"]] if r["labels"] and "id" in r["labels"][0] else None
    return Labels(
        **common,
        labels=[x["label"] for x in r["labels"]],
        scores=np.array([x["score"] for x in r["labels"]], np.float64),
        window_labels=[[x["label"] for x in w["labels"]] for w in r["windows"]],
        window_scores=[np.array([x["score"] for x in w["labels"]], np.float64) for w in r["windows"]],
        aggregate=r["aggregate"],
        label_ids=ids,
    )


def retry_after(response: httpx.Response | None, attempt: int) -> float:
    """Seconds to wait before retrying: the answer's Retry-After (seconds), else 0.25 s doubling, 10 s
    at most."""
    if response is not None:
        value = response.headers.get("retry-after", "")
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    return min(10.0, 0.25 * 2**attempt)


def error_of(response: httpx.Response, source: str | None) -> ClientError:
    try:
        error = response.json()["error"]
        code, message = str(error.get("code")), str(error.get("message"))
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "http_error", response.text[:300]
    return ClientError(response.status_code, code, message, source)


def parse_answer(task: Task, call: Call, response: httpx.Response) -> Result:
    if response.status_code != 200:
        raise error_of(response, call.source)
    (result,) = response.json()["results"]
    return parse_result(task, result, call.source)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _as_list(inputs: Input | Sequence[Input]) -> tuple[list[Input], bool]:
    """(the inputs, whether one input was given)."""
    if isinstance(inputs, str | os.PathLike | bytes | bytearray | memoryview | np.ndarray):
        return [inputs], True
    return list(inputs), False


R = TypeVar("R")


# ---- what both clients hold --------------------------------------------------------------------------------


class _Connection:
    """The settings and the httpx connection pool of a client (`transport`: httpx's sync or async client)."""

    transport: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        concurrency: int = 4,
        retries: int = 8,
        timeout: float = 120.0,
        progress: bool | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency, self.retries, self.progress = concurrency, retries, progress
        self._http = self.transport(
            base_url=url,
            headers=_headers(api_key),
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency),
        )


# ---- the sync client --------------------------------------------------------------------------------------


class Client(_Connection):
    """`bridle-serve` at `url` (thread-safe; one connection pool)."""

    transport = httpx.Client
    _http: httpx.Client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def models(self) -> dict[str, dict[str, Any]]:
        """The served models' manifests, by name (GET /models)."""
        response = self._http.get("/models")
        if response.status_code != 200:
            raise error_of(response, None)
        return {m["name"]: m["manifest"] for m in response.json()["models"]}

    def _send(self, task: Task, call: Call) -> Result:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.post(
                    call.path,
                    params=call.params,
                    content=call.content,
                    headers={"Content-Type": call.content_type},
                )
            except httpx.ConnectError:
                if attempt == self.retries:
                    raise
                time.sleep(retry_after(None, attempt))
                continue
            if response.status_code in RETRIED and attempt < self.retries:
                time.sleep(retry_after(response, attempt))
                continue
            return parse_answer(task, call, response)
        raise AssertionError("unreachable")

    def _map(
        self,
        task: Task,
        inputs: Input | Sequence[Input],
        params: dict[str, Any],
        sample_rate: int | None,
        return_exceptions: bool,
    ) -> Any:
        items, single = _as_list(inputs)

        def one(item: Input) -> Result:
            return self._send(task, make_call(task, item, params, sample_rate))

        results = _run_threads(one, items, self.concurrency, self._bar(task, len(items)), return_exceptions)
        return results[0] if single else results

    def _bar(self, task: str, total: int) -> tqdm | None:
        return _progress(task, total, self.progress)

    def embed(self, inputs, model=None, *, normalize=False, sample_rate=None, return_exceptions=False):
        """The clip and window embeddings of each input (POST /embed): an Embedding for one input, a
        list of them for a list."""
        return self._map("embed", inputs, _params(model, normalize=normalize), sample_rate, return_exceptions)

    def tokenize(self, inputs, model=None, *, sample_rate=None, return_exceptions=False):
        """The codes of each window (POST /tokenize)."""
        return self._map("tokenize", inputs, _params(model), sample_rate, return_exceptions)

    def classify(
        self, inputs, model=None, *, top_k=5, aggregate=None, sample_rate=None, return_exceptions=False
    ):
        """The top-k labels of the clip and of each window (POST /classify)."""
        params = _params(model, top_k=top_k, aggregate=aggregate)
        return self._map("classify", inputs, params, sample_rate, return_exceptions)


def _params(model: str | None, **more: Any) -> dict[str, Any]:
    params = {"model": model, **more}
    return {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in params.items() if v is not None}


def _progress(task: str, total: int, progress: bool | None) -> tqdm | None:
    """A bar over more than one input: on a terminal (progress None), always (True) or never (False)."""
    if progress is False or (progress is None and total < 2):
        return None
    return tqdm(total=total, desc=task, unit="file", disable=None if progress is None else False)


def _run_threads(
    one: Callable[[Input], R], items: list[Input], concurrency: int, bar: tqdm | None, return_exceptions: bool
) -> list[R | BaseException]:
    """`one` over `items` on at most `concurrency` threads, results in order. The first error stops
    the others from starting (unless `return_exceptions`), and is raised."""
    results: list[R | BaseException | None] = [None] * len(items)
    failed = threading.Event()

    def run(i: int) -> None:
        if failed.is_set():
            return
        try:
            results[i] = one(items[i])
        except Exception as e:
            if not return_exceptions:
                failed.set()
            results[i] = e
        finally:
            if bar is not None:
                bar.update()

    try:
        with ThreadPoolExecutor(min(concurrency, max(1, len(items)))) as pool:
            list(pool.map(run, range(len(items))))
    finally:
        if bar is not None:
            bar.close()
    if not return_exceptions:
        for r in results:
            if isinstance(r, BaseException):
                raise r
    return results  # type: ignore[return-value]


# ---- the async client -------------------------------------------------------------------------------------


class AsyncClient(_Connection):
    """`bridle-serve` at `url`, for asyncio: the methods of `Client`, awaited."""

    transport = httpx.AsyncClient
    _http: httpx.AsyncClient

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def models(self) -> dict[str, dict[str, Any]]:
        response = await self._http.get("/models")
        if response.status_code != 200:
            raise error_of(response, None)
        return {m["name"]: m["manifest"] for m in response.json()["models"]}

    async def _send(self, task: Task, call: Call) -> Result:
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.post(
                    call.path,
                    params=call.params,
                    content=call.content,
                    headers={"Content-Type": call.content_type},
                )
            except httpx.ConnectError:
                if attempt == self.retries:
                    raise
                await asyncio.sleep(retry_after(None, attempt))
                continue
            if response.status_code in RETRIED and attempt < self.retries:
                await asyncio.sleep(retry_after(response, attempt))
                continue
            return parse_answer(task, call, response)
        raise AssertionError("unreachable")

    async def _map(
        self,
        task: Task,
        inputs: Input | Sequence[Input],
        params: dict[str, Any],
        sample_rate: int | None,
        return_exceptions: bool,
    ) -> Any:
        items, single = _as_list(inputs)
        bar = _progress(task, len(items), self.progress)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: Input) -> Result:
            async with gate:
                try:
                    return await self._send(task, make_call(task, item, params, sample_rate))
                finally:
                    if bar is not None:
                        bar.update()

        try:
            if return_exceptions:
                results = await asyncio.gather(*(one(x) for x in items), return_exceptions=True)
            else:
                async with asyncio.TaskGroup() as group:  # the first error cancels the rest
                    tasks = [group.create_task(one(x)) for x in items]
                results = [t.result() for t in tasks]
        except BaseExceptionGroup as e:
            raise e.exceptions[0] from None
        finally:
            if bar is not None:
                bar.close()
        return results[0] if single else list(results)

    async def embed(self, inputs, model=None, *, normalize=False, sample_rate=None, return_exceptions=False):
        """The clip and window embeddings of each input (POST /embed)."""
        params = _params(model, normalize=normalize)
        return await self._map("embed", inputs, params, sample_rate, return_exceptions)

    async def tokenize(self, inputs, model=None, *, sample_rate=None, return_exceptions=False):
        """The codes of each window (POST /tokenize)."""
        return await self._map("tokenize", inputs, _params(model), sample_rate, return_exceptions)

    async def classify(
        self, inputs, model=None, *, top_k=5, aggregate=None, sample_rate=None, return_exceptions=False
    ):
        """The top-k labels of the clip and of each window (POST /classify)."""
        params = _params(model, top_k=top_k, aggregate=aggregate)
        return await self._map("classify", inputs, params, sample_rate, return_exceptions)


# ---- bridle-client embed FILES... --out x.parquet ----------------------------------------------------------


def list_files(paths: Iterable[str]) -> list[str]:
    """Each path, a folder as every file below it (hidden ones skipped) in sorted order, as the batch
    job lists a folder."""
    files: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            below = sorted(x for x in path.rglob("*") if x.is_file())
            files += [
                str(x) for x in below if not any(part.startswith(".") for part in x.relative_to(path).parts)
            ]
        else:
            files.append(p)
    return files


def codes_dtype(codebook_size: int) -> type[np.unsignedinteger]:
    """The smallest unsigned integer type that holds every code, as the batch job stores them."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return dtype
    raise ValueError(f"codebook size {codebook_size} does not fit 32 bits")


def windows_table(
    manifest: dict[str, Any], embedded: list[Embedding], codes: list[Codes], labels: list[Labels] | None
) -> Any:
    """The batch job's windows table (bridle/batch/tables.py: one row per window, same columns, types and
    schema metadata) from the service's answers for the files of one model."""
    import pyarrow as pa  # only for the table

    def fixed(values: np.ndarray) -> pa.Array:
        array: pa.Array = pa.array(values.reshape(-1))
        for size in reversed(values.shape[1:]):
            array = pa.FixedSizeListArray.from_arrays(array, size)
        return array

    def spans(x: np.ndarray) -> list[float | None]:  # NaN (an image) -> null, as the batch job
        return [None if np.isnan(v) else float(v) for v in x]

    quantizer = manifest["quantizer"]
    rows = [(e, w) for e in embedded for w in range(len(e.start))]
    columns: dict[str, pa.Array] = {
        "path": pa.array([e.source for e, _ in rows], pa.string()),
        "window": pa.array([w for _, w in rows], pa.int32()),
        "start": pa.array([v for e in embedded for v in spans(e.start)], pa.float64()),
        "end": pa.array([v for e in embedded for v in spans(e.end)], pa.float64()),
        "duration": pa.array([e.duration for e, _ in rows], pa.float64()),
        "embedding": fixed(np.concatenate([e.windows for e in embedded]).astype(np.float32)),
        "codes": fixed(
            np.concatenate([c.codes for c in codes])
            .transpose(0, 2, 1)
            .astype(codes_dtype(quantizer["codebook_size"]))
        ),
    }
    if labels is not None:
        columns["labels"] = pa.array([w for x in labels for w in x.window_labels], pa.list_(pa.string()))
        columns["scores"] = pa.array(
            [list(w) for x in labels for w in x.window_scores], pa.list_(pa.float64())
        )
        if manifest.get("label_ids"):
            ids = dict(zip(manifest["labels"], manifest["label_ids"], strict=True))
            names = [w for x in labels for w in x.window_labels]
            columns["label_ids"] = pa.array([[ids[n] for n in row] for row in names], pa.list_(pa.string()))
    about = {
        "model": manifest["name"],
        "modality": manifest["modality"],
        "patch_grid": manifest["patch_grid"],
        "grid_axes": manifest["grid_axes"],
        "levels": quantizer["levels"],
        "codebook_size": quantizer["codebook_size"],
        "tokenizer_kind": manifest["tokenizer_kind"],
        "codes_layout": "codes[l][n]: level l of the patch at row-major index n over patch_grid",
    }
    return pa.table(columns).replace_schema_metadata({"bridle": json.dumps(about)})


def write_parquet(table: Any, out: Path) -> None:
    """`table` to `out`, atomically (a temporary sibling renamed into place)."""
    import pyarrow.parquet as pq

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


class UsageError(Exception):
    """A command-line problem: printed, exit status 2."""


def embed_to_parquet(
    client: Client, files: list[str], out: Path, model: str | None, top_k: int
) -> tuple[int, list[ClientError]]:
    """The windows table of `files` into `out`; (windows written, the files the service refused)."""
    if not files:
        raise UsageError("no files to embed")
    if not out.parent.is_dir():
        raise UsageError(f"--out: the folder {out.parent} does not exist")
    manifests = client.models()  # by key: NAME, or NAME@VERSION for a version
    names = set(manifests) | {key.rpartition("@")[0] for key in manifests if "@" in key}
    if model is not None and model not in names:
        raise UsageError(f"--model: the service has no model {model!r}; it serves {sorted(manifests)}")
    found = client.embed(files, model, return_exceptions=True)
    failed = [e for e in found if isinstance(e, ClientError)]
    if unexpected := [e for e in found if isinstance(e, BaseException) and not isinstance(e, ClientError)]:
        raise unexpected[0]
    embedded: list[Embedding] = [e for e in found if isinstance(e, Embedding)]
    if not embedded:
        return 0, failed
    models = sorted({e.model for e in embedded})
    if len(models) > 1:
        raise UsageError(
            f"the files went to {len(models)} models ({', '.join(models)}): a table holds one model's "
            "windows, so pass --model or embed each model's files apart"
        )
    name = models[0]  # the key that served: a version's codes and labels come from that version too
    paths = [e.source for e in embedded]
    codes = client.tokenize(paths, name)
    labels = client.classify(paths, name, top_k=top_k) if manifests[name]["labels"] else None
    write_parquet(windows_table(manifests[name], embedded, codes, labels), out)
    return sum(len(e.start) for e in embedded), failed


def _parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="bridle-client", description="A client of bridle-serve.")
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser(
        "embed",
        help="embed files (and folders' files) into a Parquet table, the batch job's windows table",
        description="Embed, tokenize and (for a model with a classifier) classify each file through the "
        "service, and write one row per window as bridle-batch's windows/<model> table does.",
    )
    embed.add_argument("files", nargs="+", help="media files, or folders of them")
    embed.add_argument("--out", "-o", required=True, type=Path, help="the Parquet file to write")
    embed.add_argument(
        "--url", default=os.environ.get("BRIDLE_URL", DEFAULT_URL), help="the service (BRIDLE_URL)"
    )
    embed.add_argument("--api-key", default=os.environ.get("BRIDLE_API_KEY"), help="(BRIDLE_API_KEY)")
    embed.add_argument("--model", help="the model to use; default: the model of each file's modality")
    embed.add_argument("--top-k", type=int, default=5, help="labels per window (models with a classifier)")
    embed.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    embed.add_argument("--retries", type=int, default=8, help="retries of a 503 or a refused connection")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`bridle-client embed FILES... --out x.parquet`: exit 0 when every file was embedded, 1 when some
    were refused (the others are in the table), 2 for a usage error or an unreachable service."""
    args = _parser().parse_args(argv)
    if args.top_k < 1 or args.concurrency < 1 or args.retries < 0:
        print(
            "bridle-client: --top-k and --concurrency must be at least 1, --retries at least 0",
            file=sys.stderr,
        )
        return 2
    files = list_files(args.files)
    if missing := [f for f in files if not Path(f).is_file()]:
        print(f"bridle-client: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        with Client(args.url, args.api_key, concurrency=args.concurrency, retries=args.retries) as client:
            windows, failed = embed_to_parquet(client, files, args.out, args.model, args.top_k)
    except UsageError as e:
        print(f"bridle-client: {e}", file=sys.stderr)
        return 2
    except ClientError as e:  # /models, or a tokenize or classify of a file the service embedded
        print(f"bridle-client: {e}", file=sys.stderr)
        return 2
    except httpx.HTTPError as e:
        print(f"bridle-client: cannot reach the service at {args.url}: {e}", file=sys.stderr)
        return 2
    for e in failed:
        print(f"bridle-client: {e}", file=sys.stderr)
    done = len(files) - len(failed)
    if windows:
        print(f"{done} of {len(files)} files: {windows} windows in {args.out}", file=sys.stderr)
    else:
        print(f"bridle-client: no file could be embedded; {args.out} not written", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

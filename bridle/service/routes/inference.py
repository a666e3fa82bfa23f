"""The inference routes: `POST /embed`, `/tokenize`, `/classify` and `/features`.

Uploads come as multipart (`file`, several allowed) or a raw body (bridle/service/media.py); `model` names a
manifest, else the model of the upload's modality is used (404 `unknown_model`). The answers are built
as dicts, validated by their models (bridle/service/schemas.py, which the OpenAPI schema comes from) and
rendered from the dicts (the `serialise` stage of the metrics).

`/features` is the encoder's input as the model saw it, for the page at `/` to draw: the model
directory's `features.onnx` (bridle/export/features.py), audio the normalised log-mel fbank, images and video
the resized, cropped and normalised pixels, as little-endian float32 in base64 with its shape, one array
for all the windows of an upload, with the model's `preprocessing` settings (the image mean/std to turn
the pixels back into colours).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from bridle.model.modalities import spec_for
from bridle.runtime import tracing
from bridle.service.infer import Codes, Embedding, Features, Label, Labels, Source
from bridle.service.routes.admission import admitted
from bridle.service.routes.deps import State, require_key, uploads_of
from bridle.service.schemas import (
    ClassifyQuery,
    ClassifyResponse,
    EmbedQuery,
    EmbedResponse,
    Encoding,
    FeaturesResponse,
    ModelQuery,
    TokenizeQuery,
    TokenizeResponse,
    error_responses,
)
from bridle.service.state import ServiceState

# FastAPI cannot describe an upload it does not parse itself (the body is streamed, under the size
# limit, by bridle/service/media.py), so the request body's schema is written out here
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "one or more files as multipart/form-data parts named `file`, "
        "or one file as the raw body",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["file"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
Route = TypeVar("Route", bound=Callable[..., Any])

router = APIRouter(
    dependencies=[Depends(require_key)],
    responses=error_responses(400, 401, 404, 413, 415, 422, 503),
)


def _post(path: str, answer: type[BaseModel], summary: str) -> Callable[[Route], Route]:
    """A POST route of this router: uploads in (UPLOAD_BODY), `answer` out (for the schema)."""
    return router.post(path, summary=summary, response_model=answer, openapi_extra=UPLOAD_BODY)


@_post(
    "/embed",
    EmbedResponse,
    "pooled embedding per upload (and per window); pooling=tokens adds the patch embeddings",
)
@admitted
async def embed(request: Request, state: State, q: Annotated[EmbedQuery, Query()]) -> Response:
    uploads = await uploads_of(request)
    found = await state.inference.embed(uploads, q.model, q.pooling == "tokens", q.normalize)
    return _results(state, EmbedResponse, lambda: [_embedding(e, q.encoding) for e in found])


@_post(
    "/tokenize",
    TokenizeResponse,
    "multi-level discrete codes (N, L) per window, with the patch grid to place them",
)
@admitted
async def tokenize(request: Request, state: State, q: Annotated[TokenizeQuery, Query()]) -> Response:
    uploads = await uploads_of(request)
    found = await state.inference.tokenize(uploads, q.model)
    return _results(state, TokenizeResponse, lambda: [_codes(c, q.encoding) for c in found])


@_post(
    "/classify",
    ClassifyResponse,
    "top-k labels with scores, per window and for the whole clip (aggregate of the window "
    "scores): a softmax, or independent sigmoid probabilities (multi-label: classifier.activation)",
)
@admitted
async def classify(request: Request, state: State, q: Annotated[ClassifyQuery, Query()]) -> Response:
    uploads = await uploads_of(request)
    found = await state.inference.classify(uploads, q.model, q.top_k, q.threshold, q.aggregate)
    return _results(state, ClassifyResponse, lambda: [_classes(x) for x in found])


@_post(
    "/features",
    FeaturesResponse,
    "the encoder's input as the model saw it (log-mel fbank, resized pixels), base64 float32",
)
@admitted
async def features(request: Request, state: State, q: Annotated[ModelQuery, Query()]) -> Response:
    uploads = await uploads_of(request)
    found = await state.inference.features(uploads, q.model)
    return _results(state, FeaturesResponse, lambda: [_features(f) for f in found])


# ---- serialisation ---------------------------------------------------------------------------------


def _results(
    state: ServiceState, answer: type[BaseModel], build: Callable[[], list[dict[str, Any]]]
) -> Response:
    """`{"results": [...]}` built, checked against its model `answer` (a mismatch is a bug: 500) and
    rendered from the dict, timed together as the `serialise` stage; a Response, so FastAPI does not
    serialise it again."""
    started = time.perf_counter()
    with tracing.span("serialise"):
        body = {"results": build()}
        answer.model_validate(body)
        response = Response(orjson.dumps(body), media_type="application/json")  # a 20th of json.dumps' time
    state.inference.metrics.stage_seconds.labels("serialise").observe(time.perf_counter() - started)
    return response


def _source(source: Source) -> dict[str, Any]:
    m = source.model.manifest  # the model by key: NAME@VERSION says which version served the request
    return {
        "filename": source.filename,
        "model": source.model.key,
        "modality": m.modality,
        "duration": source.duration,
    }


def _array(x: np.ndarray, encoding: Encoding, dtype: str) -> Any:
    """`x` as nested JSON numbers, or with `encoding=base64` as {"dtype", "shape", "data"}: the
    little-endian `dtype` bytes in row-major order, base64 (docs/contracts.md says how to decode)."""
    if encoding == "json":
        return x.tolist()
    data = np.ascontiguousarray(x, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return {"dtype": dtype, "shape": list(x.shape), "data": base64.b64encode(data).decode("ascii")}


def _labels(labels: list[Label]) -> list[dict[str, Any]]:
    return [
        {"label": x.label, "id": x.id, "score": x.score}
        if x.id is not None
        else {"label": x.label, "score": x.score}
        for x in labels
    ]


def _embedding(e: Embedding, encoding: Encoding) -> dict[str, Any]:
    windows = []
    for w, (start, end) in enumerate(e.source.spans):
        item: dict[str, Any] = {"start": start, "end": end, "embedding": e.windows[w].tolist()}
        if e.tokens is not None:
            item["patch_embeddings"] = _array(e.tokens[w], encoding, "float32")  # (N, D)
        windows.append(item)
    return {
        **_source(e.source),
        "dim": int(e.clip.shape[0]),
        "embedding": e.clip.tolist(),
        "windows": windows,
    }


def _codes(c: Codes, encoding: Encoding) -> dict[str, Any]:
    m = c.source.model.manifest
    return {
        **_source(c.source),
        "patch_grid": m.patch_grid,
        "grid_axes": m.grid_axes,
        "layout": "codes[n]: the patch at row-major index n over patch_grid (grid_axes)",
        "levels": m.quantizer.levels,
        "codebook_size": m.quantizer.codebook_size,
        "tokenizer_kind": m.tokenizer_kind,
        "windows": [
            {"start": s, "end": e, "codes": _array(c.codes[w], encoding, "int32")}  # (N, L)
            for w, (s, e) in enumerate(c.source.spans)
        ],
    }


def _classes(x: Labels) -> dict[str, Any]:
    windows = [
        {"start": s, "end": e, "labels": _labels(x.windows[w])} for w, (s, e) in enumerate(x.source.spans)
    ]
    return {**_source(x.source), "aggregate": x.aggregate, "labels": _labels(x.clip), "windows": windows}


def _features(f: Features) -> dict[str, Any]:
    m = f.source.model.manifest
    data = f.features.astype("<f4", copy=False)  # (W, ...)
    return {
        **_source(f.source),
        "windows": [{"start": s, "end": e} for s, e in f.source.spans],
        "patch_grid": m.patch_grid,
        "grid_axes": m.grid_axes,
        "preprocessing": m.model_config.get("input", {}),
        "features": {
            "shape": list(data.shape),
            "dtype": "float32",
            "layout": spec_for(m.modality).features_layout,
            "data": base64.b64encode(data.tobytes()).decode("ascii"),
        },
    }

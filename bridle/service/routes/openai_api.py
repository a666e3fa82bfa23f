"""The OpenAI embeddings API: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{model}`.

What the official `openai` client, LangChain, LlamaIndex and vector databases' built-in embedders call,
on the media this service reads:

- `model`: a served model's name (404 `unknown_model`, `param: "model"`).
- `input`: a string or a non-empty list of strings, each a data URL (`data:audio/wav;base64,...`; the
  media type is a hint, as a raw upload's Content-Type) or plain standard base64, read as the model's
  modality when its bytes do not say what they are. URLs are not fetched.
- `encoding_format`: `float` (a list of numbers) or `base64` (the little-endian float32 bytes, what the
  official client asks for by default and decodes).
- `dimensions`: refused (400) unless it is the model's embedding size.
- one `data` item per input, in order: the clip's embedding as `/embed` gives it (the windows' mean,
  weighted by their seconds of signal; not normalised); `usage.prompt_tokens` and `total_tokens` are
  the patches the model read (windows x patches per window, summed over the inputs).

The inputs run through the same inference as `/embed` (`Inference.embed`), behind the same API key
(`Authorization: Bearer`), body limit (`BRIDLE_MAX_UPLOAD_BYTES`, here the whole JSON body) and window
limit. Errors are in the OpenAI shape, `{"error": {"message", "type", "param", "code"}}`, with the
service's codes; an error about one input names it, `param: "input[3]"` and the message starting
`input[3]: `. Refusals answered before the route runs (503 `overloaded` at the in-flight bound) keep the
service's `{"error": {"code", "message"}}`, which the OpenAI client reads the same way.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from python_multipart.multipart import parse_options_header

from bridle.model.decoding import MediaError
from bridle.model.modalities import sniff_modality
from bridle.runtime import tracing
from bridle.runtime.models import LoadedModel
from bridle.runtime.versions import newest, resolve
from bridle.service.errors import STATUSES, ServiceError, as_service_error, from_media_error
from bridle.service.infer import Embedding
from bridle.service.media import Upload
from bridle.service.routes.admission import admitted, not_admitted
from bridle.service.routes.deps import State, require_key, uploads_of
from bridle.service.schemas import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelCard,
    ModelList,
    OpenAIErrorBody,
)

# ---- errors in the OpenAI shape ---------------------------------------------------------------------


class OpenAIError(ServiceError):
    """A ServiceError that names the request field at fault."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(status, code, message)
        self.param = param


INPUT_PREFIX = re.compile(r"(input\[\d+\]): ")  # how a message about one input begins


def openai_error(err: ServiceError, param: str | None = None) -> JSONResponse:
    """`err` in OpenAI's shape; `param` the request field at fault, else the OpenAIError's, else the
    input a decoding error's message names (the upload's filename is its input's index)."""
    param = param or getattr(err, "param", None)
    if param is None and (m := INPUT_PREFIX.match(err.message)):
        param = m.group(1)
    body = {
        "error": {
            "message": err.message,
            "type": "invalid_request_error" if err.status < 500 else "server_error",
            "param": param,
            "code": err.code,
        }
    }
    return JSONResponse(body, status_code=err.status, headers=err.headers or None)


class OpenAIRoute(APIRoute):
    """A route whose errors, its dependencies' (the API key) included, answer in the OpenAI shape."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                err = as_service_error(exc)
                if err is None:  # unexpected: the request-id middleware's 500
                    raise
                param = None
                if isinstance(exc, RequestValidationError) and exc.errors():
                    param = _param(tuple(x for x in exc.errors()[0]["loc"] if x not in ("query", "path")))
                return openai_error(err, param)

        return handle


router = APIRouter(
    prefix="/v1",
    route_class=OpenAIRoute,
    dependencies=[Depends(require_key)],
    responses={
        s: {"model": OpenAIErrorBody, "description": STATUSES[s]} for s in (400, 401, 404, 413, 415, 422, 503)
    },
)

# the body is read under the upload limit by the route (bridle/service/media.py), not parsed by FastAPI, so
# its schema is written out here
REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": EmbeddingsRequest.model_json_schema()}},
    }
}


# ---- the inputs -------------------------------------------------------------------------------------

DATA_URL = re.compile(r"data:([^,]*),", re.ASCII)  # data:[<media type>][;<parameter>]*[;base64],


def parse_request(body: bytes) -> EmbeddingsRequest:
    """The JSON body as an EmbeddingsRequest; 400 naming the field at fault (`input[2]` for the third
    input) otherwise."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise OpenAIError(400, "bad_request", f"the body is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise OpenAIError(400, "bad_request", "the body must be a JSON object with model and input")
    try:
        request = EmbeddingsRequest.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()
        # of a union's branches, the one that says which list item is wrong
        error = next((x for x in errors if any(isinstance(p, int) for p in x["loc"])), errors[0])
        param = _param(error["loc"])
        message = error["msg"]
        if param.startswith("input") and error["type"] == "string_type":
            message = "must be a string: a data URL or base64 media (token arrays are not read)"
        raise OpenAIError(400, "invalid_parameter", f"{param}: {message}", param) from None
    if isinstance(request.input, list) and not request.input:
        raise OpenAIError(400, "invalid_parameter", "input: the list of inputs is empty", "input")
    return request


def _param(loc: tuple[int | str, ...]) -> str:
    """('input', 'list[str]', 2) -> 'input[2]': a validation error's place as the request spells it."""
    name = str(loc[0]) if loc else "body"
    return name + "".join(f"[{p}]" for p in loc[1:] if isinstance(p, int))


def decode_input(text: str, index: int) -> Upload:
    """One input -> an upload named `input[index]` (its errors say so): a data URL's base64 with its
    media type as the content type, or plain base64 without one (the bytes, else the model, say what
    it is)."""
    where = f"input[{index}]"
    content_type: str | None = None
    payload = text
    if text.startswith("data:"):
        m = DATA_URL.match(text)
        if m is None:
            raise OpenAIError(400, "bad_data_url", f"{where}: a data URL without a comma", where)
        media_type, *params = m.group(1).split(";")
        if "base64" not in (p.strip().lower() for p in params):
            raise OpenAIError(
                400,
                "bad_data_url",
                f"{where}: only base64 data URLs are read (data:<type>;base64,...)",
                where,
            )
        content_type = media_type.strip() or None
        payload = text[m.end() :]
    if not payload:
        raise OpenAIError(400, "empty", f"{where}: the input is empty", where)
    try:
        # strict, in C: b64decode(validate=True) checks with a regex, 10x slower (~200 µs for 20 KB)
        data = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise OpenAIError(
            400, "bad_base64", f"{where}: neither a base64 data URL nor standard base64", where
        ) from None
    return Upload(where, content_type, data)


def served_model(state: State, name: str) -> LoadedModel:
    """The named model (NAME: its newest version; NAME@VERSION), or 404 `unknown_model` naming the
    `model` field."""
    loaded = resolve(state.inference.models, name)
    if loaded is None:
        served = sorted(state.inference.models)
        raise OpenAIError(404, "unknown_model", f"no model named {name!r}; served: {served}", "model")
    return loaded


def check_input(state: State, model: LoadedModel, upload: Upload) -> Upload:
    """The upload, once the model is known to read it (415 for another modality), before any decoding.
    Plain base64 whose bytes do not say what they are is taken as the model's modality."""
    try:
        modality = sniff_modality(upload.data, upload.content_type)
    except MediaError as e:
        if upload.content_type is not None or e.code != "unsupported":
            raise from_media_error(e, upload.filename) from None
        # plain base64 of a format the magic bytes do not tell: the model's modality, which the decoder
        # then confirms or refuses (422 corrupt)
        modality = model.manifest.modality
        upload = dataclasses.replace(upload, content_type=modality)
    try:
        state.inference.model_for(model.key, modality)
    except ServiceError as e:
        raise OpenAIError(e.status, e.code, f"{upload.filename}: {e.message}", upload.filename) from None
    return upload


def _patches(model: LoadedModel) -> int:
    return math.prod(model.manifest.patch_grid)


def _item(index: int, e: Embedding, encoding: str) -> dict[str, Any]:
    clip = e.clip  # (D,)
    if encoding == "base64":
        vector: Any = base64.b64encode(np.ascontiguousarray(clip, "<f4").tobytes()).decode("ascii")
    else:
        vector = clip.tolist()
    return {"object": "embedding", "index": index, "embedding": vector}


# ---- routes -----------------------------------------------------------------------------------------


@router.post(
    "/embeddings",
    summary="OpenAI embeddings: the clip embedding of each input (data URLs or base64 media)",
    response_model=EmbeddingsResponse,
    openapi_extra=REQUEST_BODY,
)
@admitted  # reads media and runs the encoder: inside the in-flight bound, as /embed
async def embeddings(request: Request, state: State) -> Response:
    media_type, _ = parse_options_header(request.headers.get("content-type", ""))
    if media_type not in (b"", b"application/json"):
        raise OpenAIError(415, "unsupported", "send the request as application/json")
    (body,) = await uploads_of(request)  # 503 before the read when not ready; 413 over the upload limit
    q = parse_request(body.data)
    model = served_model(state, q.model)
    dim = model.manifest.embedding_dim
    if q.dimensions is not None and q.dimensions != dim:
        raise OpenAIError(
            400,
            "bad_dimensions",
            f"model {q.model!r} gives {dim} dimensions, not {q.dimensions}",
            "dimensions",
        )
    texts = [q.input] if isinstance(q.input, str) else q.input
    uploads = [decode_input(t, i) for i, t in enumerate(texts)]
    uploads = [check_input(state, model, u) for u in uploads]
    found = await state.inference.embed(uploads, model.key)  # the version checked above
    started = time.perf_counter()
    with tracing.span("serialise"):
        tokens = sum(len(e.source.spans) for e in found) * _patches(model)
        answer = {
            "object": "list",
            "data": [_item(i, e, q.encoding_format) for i, e in enumerate(found)],
            "model": q.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        EmbeddingsResponse.model_validate(answer)  # a mismatch is a bug: 500
        response = Response(orjson.dumps(answer), media_type="application/json")
    state.inference.metrics.stage_seconds.labels("serialise").observe(time.perf_counter() - started)
    return response


def _card(name: str, model: LoadedModel) -> dict[str, Any]:
    manifest = model.directory / "manifest.json"
    created = int(manifest.stat().st_mtime) if manifest.exists() else 0
    return {"id": name, "object": "model", "created": created, "owned_by": "bridle"}


@router.get("/models", summary="OpenAI model list: the served models", response_model=ModelList)
@not_admitted("lists the loaded models: no upload, no model run")
async def list_models(state: State) -> ModelList:
    models = state.inference.models
    cards = [ModelCard(**_card(n, m)) for n, m in models.items()]
    # a versioned model's name too: what `model=NAME` takes
    cards += [ModelCard(**_card(n, m)) for n, m in newest(models).items() if n not in models]
    return ModelList(object="list", data=cards)


@router.get("/models/{model}", summary="OpenAI model: one served model", response_model=ModelCard)
@not_admitted("one loaded model's card: no upload, no model run")
async def get_model(model: str, state: State) -> ModelCard:
    return ModelCard(**_card(model, served_model(state, model)))

"""The service's HTTP vocabulary as pydantic models: query parameters, answers and the error body.

The OpenAPI schema (`/openapi.json`, `/docs`) is generated from these models, and
tests/service/test_contracts.py checks docs/contracts.md's examples and real answers against them. The
routes validate every answer with its model, then render the dict they built with Python's json, as
before the models (byte for byte: pydantic's serialiser would write 1e-05 as 0.00001). Fields absent
from an answer are the ones with a default here (`patch_embeddings` without `pooling=tokens`, a label's
`id` without manifest label ids).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bridle.model.config import Modality, Precision
from bridle.model.windowing import Aggregate
from bridle.service.errors import STATUSES

Encoding = Literal["json", "base64"]

MODEL_FIELD = Field(
    None, description="model name from its manifest; default: the model of the upload's modality"
)


class Answer(BaseModel):
    """An answer's model: unknown fields are errors, so a test finds a field the model does not list."""

    model_config = ConfigDict(extra="forbid")


# ---- errors --------------------------------------------------------------------------------------


class ErrorDetail(Answer):
    code: str = Field(description="stable and machine-readable: unknown_model, too_large, not_ready...")
    message: str = Field(description="for people: what was wrong and what to do")


class ErrorBody(Answer):
    """Every 4xx and 5xx answer of the service (bridle/service/errors.py)."""

    error: ErrorDetail


# ---- query parameters ----------------------------------------------------------------------------


class ModelQuery(BaseModel):
    model: str | None = MODEL_FIELD


class EncodingQuery(ModelQuery):
    encoding: Encoding = Field(
        "json",
        description="base64: patch_embeddings (float32) and codes (int32) as little-endian base64 "
        "{dtype, shape, data} objects (docs/contracts.md); json: nested numbers",
    )


class EmbedQuery(EncodingQuery):
    pooling: Literal["mean", "tokens"] = Field("mean", description="tokens: also the (N, D) patch embeddings")
    normalize: bool = Field(False, description="L2-normalise the embeddings")


class TokenizeQuery(EncodingQuery):
    pass


class ClassifyQuery(ModelQuery):
    top_k: int = Field(5, ge=1, le=1000, description="how many labels to return")
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="return only the top-k labels scoring at least this"
    )
    aggregate: Aggregate | None = Field(
        None,
        description="the clip's scores from its windows': mean (weighted by seconds of signal) or max "
        "(multi-label models only; 422 bad_aggregate for a softmax head); default max for a "
        "multi-label model, mean otherwise",
    )


# ---- the inference answers -----------------------------------------------------------------------


class EncodedArray(Answer):
    """An array with `encoding=base64`: its little-endian bytes, row-major, standard base64."""

    dtype: Literal["float32", "int32"]
    shape: list[int]
    data: str


class Span(Answer):
    start: float | None = Field(description="seconds; null for an image")
    end: float | None = Field(description="seconds; null for an image")


class Source(Answer):
    """Which upload a result is for and the model that read it."""

    filename: str | None = Field(description="the multipart part's filename; null for a raw body")
    model: str = Field(description="the model that read it: NAME, or NAME@VERSION for a version")
    modality: Modality
    duration: float | None = Field(description="seconds of media; null for an image")


class EmbedWindow(Span):
    embedding: list[float] = Field(description="(D,) the window's pooled embedding")
    patch_embeddings: list[list[float]] | EncodedArray | None = Field(
        None, description="(N, D), with pooling=tokens only"
    )


class EmbedResult(Source):
    dim: int
    embedding: list[float] = Field(description="(D,) the windows' mean, weighted by their seconds of signal")
    windows: list[EmbedWindow]


class CodesWindow(Span):
    codes: list[list[int]] | EncodedArray = Field(description="(N, L) int32 codes, one row per patch")


class TokenizeResult(Source):
    patch_grid: list[int]
    grid_axes: list[str]
    layout: str = Field(description="how codes[n] maps to the patch grid")
    levels: int
    codebook_size: int
    tokenizer_kind: Literal["random", "trained"]
    windows: list[CodesWindow]


class Label(Answer):
    label: str
    id: str | None = Field(
        None, description="the label's id (an AudioSet mid): only when the manifest has label_ids"
    )
    score: float


class LabelsWindow(Span):
    labels: list[Label]


class ClassifyResult(Source):
    aggregate: Aggregate
    labels: list[Label] = Field(description="top-k of the clip's scores (aggregate of the window scores)")
    windows: list[LabelsWindow]


class FeaturesArray(Answer):
    shape: list[int]
    dtype: Literal["float32"]
    layout: str = Field(description="the axes and the normalisation, per modality")
    data: str = Field(description="little-endian float32, row-major, base64")


class FeaturesResult(Source):
    windows: list[Span]
    patch_grid: list[int]
    grid_axes: list[str]
    preprocessing: dict[str, Any] = Field(description="the model config's input settings (image mean/std...)")
    features: FeaturesArray


class EmbedResponse(Answer):
    results: list[EmbedResult] = Field(description="one per upload, in order")


class TokenizeResponse(Answer):
    results: list[TokenizeResult] = Field(description="one per upload, in order")


class ClassifyResponse(Answer):
    results: list[ClassifyResult] = Field(description="one per upload, in order")


class FeaturesResponse(Answer):
    results: list[FeaturesResult] = Field(description="one per upload, in order")


# ---- service answers -----------------------------------------------------------------------------


class Health(Answer):
    status: Literal["ok"]


class Ready(Answer):
    status: Literal["ready"]
    models: list[str] = Field(description="the loaded models' names, sorted")


class ModelInfo(Answer):
    name: str
    modality: Modality
    directory: str
    providers: list[str] = Field(description="ONNX Runtime execution providers, in order of preference")
    execution_provider: str = Field(description="the first of providers: where the model runs")
    provider_options: dict[str, dict[str, str]] = Field(
        description="per provider, as the session holds them: device_id, use_tf32, cudnn_conv_algo_search..."
    )
    precision: Precision
    manifest: dict[str, Any] = Field(description="the model directory's manifest.json (docs/contracts.md)")
    version: str | None = Field(
        None, description="a version (models/NAME/VERSION/, listed as NAME@VERSION); absent for a flat one"
    )
    newest: bool | None = Field(None, description="a version: whether `model=NAME` takes it")


class Models(Answer):
    models: list[ModelInfo]


class Reloaded(Answer):
    """`POST /admin/reload`: what the model directories hold now, served."""

    models: list[str] = Field(description="the models served now, sorted (NAME, NAME@VERSION)")
    loaded: list[str] = Field(description="loaded and warmed by this reload (new or changed directories)")
    unloaded: list[str] = Field(description="no longer served (their directories went)")


# ---- the OpenAI embeddings API (bridle/service/routes/openai_api.py) -------------------------------------


class EmbeddingsRequest(BaseModel):
    """The body of `POST /v1/embeddings` (other fields the OpenAI API defines, such as `user`, are
    accepted and ignored)."""

    model: str = Field(description="a served model's name (GET /v1/models)")
    input: str | list[str] = Field(
        description="a data URL (data:audio/wav;base64,...) or plain base64 media, or a list of them"
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each embedding as its little-endian float32 bytes, base64"
    )
    dimensions: int | None = Field(None, description="refused unless it is the model's embedding size")


class EmbeddingItem(Answer):
    object: Literal["embedding"]
    index: int = Field(description="the input's index")
    embedding: list[float] | str = Field(description="(D,) numbers, or base64 little-endian float32")


class Usage(Answer):
    prompt_tokens: int = Field(description="the patches the model read: windows x patches per window")
    total_tokens: int


class EmbeddingsResponse(Answer):
    object: Literal["list"]
    data: list[EmbeddingItem] = Field(description="one per input, in order")
    model: str
    usage: Usage


class ModelCard(Answer):
    id: str
    object: Literal["model"]
    created: int = Field(description="Unix time of the model directory's manifest")
    owned_by: str


class ModelList(Answer):
    object: Literal["list"]
    data: list[ModelCard]


class OpenAIErrorDetail(Answer):
    message: str
    type: str = Field(description="invalid_request_error (4xx) or server_error (5xx)")
    param: str | None = Field(description="the request field at fault: model, input[3], dimensions...")
    code: str = Field(description="the service's code: unknown_model, bad_data_url, corrupt, too_large...")


class OpenAIErrorBody(Answer):
    error: OpenAIErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route's errors: each status with its meaning (bridle/service/errors.py)
    and the error body. Listing 422 here also replaces FastAPI's own validation-error schema, which the
    service reshapes into the same body."""
    return {s: {"model": ErrorBody, "description": STATUSES[s]} for s in statuses}

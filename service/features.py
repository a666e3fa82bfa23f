"""`POST /features`: the encoder's input as the model saw it, for the page at `/` to draw.

The tensor comes from the model directory's `features.onnx`, the preprocessing cut out of the encoder
graph (export/features.py): audio the normalised log-mel fbank, images and video the resized, cropped
and normalised pixels. It is returned as little-endian float32 in base64 with its shape, one array for
all the windows of an upload, and the model's `preprocessing` settings (the image mean/std to turn the
pixels back into colours).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from service.infer import Features
from service.media import read_uploads

LAYOUTS = {
    "audio": "(windows, 1, frames, mel): the log-mel fbank, (log-mel - mean) / (2 std)",
    "image": "(windows, 3, height, width): RGB, (pixel / 255 - mean) / std per channel",
    "video": "(windows, 3, frames, height, width): RGB, (pixel / 255 - mean) / std per channel",
}


def _features(f: Features) -> dict[str, Any]:
    m = f.source.model.manifest
    data = f.features.astype("<f4", copy=False)  # (W, ...)
    return {
        "filename": f.source.filename,
        "model": m.name,
        "modality": m.modality,
        "duration": f.source.duration,
        "windows": [{"start": s, "end": e} for s, e in f.source.spans],
        "patch_grid": m.patch_grid,
        "grid_axes": m.grid_axes,
        "preprocessing": m.model_config.get("input", {}),
        "features": {
            "shape": list(data.shape),
            "dtype": "float32",
            "layout": LAYOUTS[m.modality],
            "data": base64.b64encode(data.tobytes()).decode("ascii"),
        },
    }


def add_features_route(
    app: FastAPI, require_key: Callable[[Request], Awaitable[None]], upload_body: dict[str, Any]
) -> None:
    """Register `POST /features` on `app` (its state is the service's `ServiceState`; `upload_body` the
    OpenAPI description of the uploads, as the other routes')."""

    @app.post(
        "/features",
        summary="the encoder's input as the model saw it (log-mel fbank, resized pixels), base64 float32",
        openapi_extra=upload_body,
        dependencies=[Depends(require_key)],
    )
    async def features(
        request: Request,
        model: str | None = Query(None, description="model name; default: the upload's modality's"),
    ) -> JSONResponse:
        state = request.app.state.bridle
        if (error := state.unavailable()) is not None:
            raise error
        uploads = await read_uploads(request, state.settings.max_upload_bytes)
        found = await state.inference.features(uploads, model)
        return JSONResponse({"results": [_features(f) for f in found]})

"""`GET /models`: the loaded models, their manifests and where they run; a version (models/NAME/VERSION/)
is listed as NAME@VERSION, with its version and whether `model=NAME` takes it."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from bridle.runtime.versions import newest
from bridle.service.routes.admission import not_admitted
from bridle.service.routes.deps import State, require_key
from bridle.service.schemas import ModelInfo, Models, error_responses

router = APIRouter(dependencies=[Depends(require_key)], responses=error_responses(401))


@router.get("/models", summary="the loaded models: manifests and execution providers", response_model=Models)
@not_admitted("lists the loaded manifests: no upload, no model run")
async def models(state: State) -> JSONResponse:
    """Validated by `Models`, rendered by Python's json (a manifest's 1e-05 stays 1e-05, as before the
    model: pydantic would write 0.00001)."""
    served = state.inference.models
    takes = {m.instance for m in newest(served).values()}
    answer = Models(
        models=[
            ModelInfo(
                name=name,
                **({} if m.version is None else {"version": m.version, "newest": m.instance in takes}),
                modality=m.manifest.modality,
                directory=str(m.directory),
                providers=m.providers,
                execution_provider=m.providers[0],
                provider_options=m.provider_options,
                precision=m.manifest.precision,
                manifest=m.manifest.to_dict(),
            )
            for name, m in served.items()
        ]
    )
    return JSONResponse(answer.model_dump())

"""`GET /models`: the loaded models, their manifests and where they run."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from service.routes.admission import not_admitted
from service.routes.deps import State, require_key
from service.schemas import ModelInfo, Models, error_responses

router = APIRouter(dependencies=[Depends(require_key)], responses=error_responses(401))


@router.get("/models", summary="the loaded models: manifests and execution providers", response_model=Models)
@not_admitted("lists the loaded manifests: no upload, no model run")
async def models(state: State) -> JSONResponse:
    """Validated by `Models`, rendered by Python's json (a manifest's 1e-05 stays 1e-05, as before the
    model: pydantic would write 0.00001)."""
    answer = Models(
        models=[
            ModelInfo(
                name=name,
                modality=m.manifest.modality,
                directory=str(m.directory),
                providers=m.providers,
                execution_provider=m.providers[0],
                provider_options=m.provider_options,
                precision=m.manifest.precision,
                manifest=m.manifest.to_dict(),
            )
            for name, m in state.inference.models.items()
        ]
    )
    return JSONResponse(answer.model_dump())

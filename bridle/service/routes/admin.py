"""`POST /admin/reload`: read the model directories again and swap the models while serving.

New, changed and removed directories (flat `models/NAME/` and versions `models/NAME/VERSION/`) are
picked up: the new loads are made and warmed beside the old, requests in flight finish on the old and
new ones take the new (`Inference.reload`; with front-end processes the engine reloads and every front
end switches with it). A load that fails leaves what served serving: 409 `reload_failed` says why. The
same as SIGHUP to `bridle-serve`, behind the API key.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from bridle.service.errors import ServiceError
from bridle.service.routes.admission import not_admitted
from bridle.service.routes.deps import State, require_key
from bridle.service.schemas import Reloaded, error_responses

router = APIRouter(dependencies=[Depends(require_key)], responses=error_responses(401))


@router.post(
    "/admin/reload",
    summary="reload the model directories: new, changed and removed models, swapped while serving",
    response_model=Reloaded,
    responses=error_responses(409, 503),
)
@not_admitted("no upload and no model run of its own: an operator's reload must not wait behind the bound")
async def reload(state: State) -> Reloaded:
    answer = await state.inference.reload()
    if not answer["ok"]:
        raise ServiceError(
            409, "reload_failed", f"{answer['message']} (still serving {', '.join(answer['models'])})"
        )
    return Reloaded(models=answer["models"], loaded=answer["loaded"], unloaded=answer["unloaded"])

"""`GET /`: the page that sends a file and draws what the model saw (bridle/service/static/index.html)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from bridle.service.routes.admission import not_admitted

STATIC = Path(__file__).parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
@not_admitted("a static file")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")

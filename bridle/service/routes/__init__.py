"""The service's routes, one `APIRouter` per family: the page, health, models, inference, the OpenAI
embeddings API and the operator's reload."""

from fastapi import APIRouter

from bridle.service.routes import admin, health, inference, models, openai_api, page

ROUTERS: tuple[APIRouter, ...] = (
    page.router,
    health.router,
    models.router,
    inference.router,
    openai_api.router,
    admin.router,
)

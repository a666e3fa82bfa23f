"""The service's routes, one `APIRouter` per family: the page, health, models, inference and the OpenAI
embeddings API."""

from fastapi import APIRouter

from service.routes import health, inference, models, openai_api, page

ROUTERS: tuple[APIRouter, ...] = (
    page.router,
    health.router,
    models.router,
    inference.router,
    openai_api.router,
)

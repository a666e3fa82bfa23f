"""The service's routes, one `APIRouter` per family: the page, health, models and inference."""

from fastapi import APIRouter

from service.routes import health, inference, models, page

ROUTERS: tuple[APIRouter, ...] = (page.router, health.router, models.router, inference.router)

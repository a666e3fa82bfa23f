"""docs/contracts.md, the pydantic models of bridle/service/schemas.py, the OpenAPI schema and real answers
agree."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, Server, run_server
from pydantic import BaseModel

from bridle.service import schemas
from bridle.service.app import create_app
from bridle.service.settings import Settings

CONTRACTS = Path(__file__).parents[2] / "docs" / "contracts.md"
# "→ `Model`" and the first ```json block after it
EXAMPLE = re.compile(r"→ `(\w+)`.*?```json\n(.*?)\n```", re.DOTALL)


def documented() -> list[tuple[type[BaseModel], Any]]:
    text = CONTRACTS.read_text()
    return [(getattr(schemas, name), json.loads(body)) for name, body in EXAMPLE.findall(text)]


def given_fields(value: Any) -> set[tuple[str, str]]:
    """(model name, field) of every field a validated example gave, through nested models and lists."""
    if isinstance(value, BaseModel):
        found = {(type(value).__name__, f) for f in value.model_fields_set}
        for f in value.model_fields_set:
            found |= given_fields(getattr(value, f))
        return found
    if isinstance(value, list | tuple):
        return set().union(*(given_fields(x) for x in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(given_fields(x) for x in value.values())) if value else set()
    return set()


def schema_fields(model: type[BaseModel]) -> set[tuple[str, str]]:
    """(model name, field) of every field of `model` and the models it holds, from its JSON schema."""
    schema = model.model_json_schema()
    defs = {model.__name__: schema, **schema.get("$defs", {})}
    return {(name, field) for name, d in defs.items() for field in d.get("properties", {})}


def test_each_example_validates_against_its_model() -> None:
    examples = documented()
    assert len(examples) >= 8, [m.__name__ for m, _ in examples]
    for model, example in examples:
        model.model_validate(example)  # extra="forbid": a field the model lacks fails here


def test_the_examples_show_every_field_of_the_models() -> None:
    examples = documented()
    shown = set().union(*(given_fields(m.model_validate(x)) for m, x in examples))
    fields = set().union(*(schema_fields(m) for m, _ in examples))
    assert fields - shown == set(), "fields of the models that docs/contracts.md does not show"
    assert shown <= fields


def test_every_answer_of_the_openapi_schema_is_documented() -> None:
    spec = create_app(Settings(model_dirs=[Path("unused")])).openapi()
    answers = set()
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            for status, response in op["responses"].items():
                ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
                assert ref or (status == "200" and path == "/metrics"), (method, path, status)
                if ref:
                    answers.add(ref.rsplit("/", 1)[-1])
                if status != "200":  # the OpenAI routes answer errors in OpenAI's shape
                    error = "OpenAIErrorBody" if path.startswith("/v1/") else "ErrorBody"
                    assert ref == f"#/components/schemas/{error}", (method, path, status)
    assert answers == {m.__name__ for m, _ in documented()}
    # the query models are the parameters: /classify's bounds and choices come from ClassifyQuery
    params = {p["name"]: p["schema"] for p in spec["paths"]["/classify"]["post"]["parameters"]}
    assert params["top_k"]["minimum"] == 1 and params["top_k"]["maximum"] == 1000
    assert set(params) == set(schemas.ClassifyQuery.model_fields)


# ---- real answers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[Server]:
    yield from run_server([model_root], api_key=API_KEY)


def test_real_answers_fit_the_models(server: Server, media_files) -> None:
    c = server.client
    c.headers["X-API-Key"] = API_KEY
    answers: list[tuple[type[BaseModel], Any]] = [
        (schemas.Health, c.get("/health")),
        (schemas.Ready, c.get("/ready")),
        (schemas.Models, c.get("/models")),
    ]
    for fmt in ("wav", "png", "mp4"):
        data, ctype = media_files[fmt]
        files = {"file": (f"x.{fmt}", data, ctype)}
        for encoding in ("json", "base64"):
            params = {"pooling": "tokens", "encoding": encoding}
            answers.append((schemas.EmbedResponse, c.post("/embed", params=params, files=files)))
            answers.append((schemas.TokenizeResponse, c.post("/tokenize", params=params, files=files)))
        answers.append((schemas.ClassifyResponse, c.post("/classify", files=files)))
        answers.append((schemas.FeaturesResponse, c.post("/features", files=files)))
    answers.append((schemas.ErrorBody, c.post("/embed", params={"model": "nope"}, files=files)))
    answers.append((schemas.ErrorBody, c.post("/classify", params={"top_k": 0}, files=files)))
    answers.append((schemas.ErrorBody, c.get("/models", headers={"X-API-Key": "wrong"})))
    for model, response in answers:
        model.model_validate(response.json())
    assert [r.status_code for _, r in answers[-3:]] == [404, 422, 401]

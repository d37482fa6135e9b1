"""What an endpoint needs, as FastAPI dependencies: the settings and the model built by
the lifespan, the API-key check, a way to run blocking work (the pyfunc model) off the
event loop within the request's time budget, and the JSON answer of the hot paths.
"""
from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
import pydantic_core
from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import APIKeyHeader
from starlette.datastructures import State

from plumbing.config import ServingConfig
from serving.model_registry import LoadedModel, ModelRegistry

API_KEY_HEADER = "X-API-Key"
Result = TypeVar("Result")


class RequestTimeout(Exception):
    """The request's work outlived ``serving.request_timeout_s`` (answered 504)."""


class ModelNotLoaded(Exception):
    """No model version could be loaded yet (answered 503)."""


# The dependencies are `async def` although they do not await: FastAPI would run plain
# `def` ones in its thread pool, a thread hop per dependency per request.
async def get_settings(request: Request) -> ServingConfig:
    return request.app.state.settings


def current_model(state: State) -> LoadedModel:
    """The model being served right now: take it once, so a swap mid-request cannot mix versions."""
    registry: ModelRegistry = state.model_registry
    model = registry.current
    if model is None:
        raise ModelNotLoaded()
    return model


Settings = Annotated[ServingConfig, Depends(get_settings)]

_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                               description="The API key, when the API requires one (serving.require_api_key).")


async def require_api_key(request: Request, api_key: Annotated[str | None, Security(_api_key_header)]) -> None:
    """401 unless the header matches a configured key; no check when none is configured."""
    if not api_key_accepted(request.app.state.api_key, None if api_key is None else api_key.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or invalid API key",
                            headers={"WWW-Authenticate": API_KEY_HEADER})


def api_key_accepted(expected: tuple[bytes, ...] | None, given: bytes | None) -> bool:
    """True when no key is configured, or ``given`` is one of the configured keys (several
    during a rotation)."""
    if expected is None:
        return True
    if given is None:
        return False
    # Constant-time comparisons, all of them: the answer's timing says nothing about how
    # much of a key matched, nor which key.
    matches = [hmac.compare_digest(given, key) for key in expected]
    return any(matches)


def check_entity_count(count: int, settings: ServingConfig, field: str) -> None:
    """A 422 (like any invalid field) when a request asks for more than ``max_entities``."""
    if count > settings.max_entities:
        raise RequestValidationError([{
            "type": "too_long", "loc": ("body", field),
            "msg": f"at most {settings.max_entities} {field} per request, got {count}"}])


async def run_blocking(settings: ServingConfig, func: Callable[..., Result], *args: Any) -> Result:
    """``func(*args)`` in a worker thread, abandoned with :class:`RequestTimeout` after
    ``request_timeout_s``. (A thread cannot be killed: an abandoned call finishes in the
    background, e.g. when Redis answers or its socket times out.)"""
    with anyio.move_on_after(settings.request_timeout_s):
        return await anyio.to_thread.run_sync(partial(func, *args), abandon_on_cancel=True)
    raise RequestTimeout()  # only reached when the budget ran out


def json_response(content: Any) -> Response:
    """``content`` (plain dicts, lists, numbers, strings, datetimes) as a JSON answer,
    serialized in one pass by pydantic-core; infinities and NaN become null, as
    FastAPI's own serialization of the response models makes them."""
    return Response(pydantic_core.to_json(content, inf_nan_mode="null"), media_type="application/json")

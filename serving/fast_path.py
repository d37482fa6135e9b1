"""The hot endpoints without FastAPI's per-request machinery.

A one-entity /v1/features answer costs well under a millisecond of CPU, and about half of
it went to the framework around the endpoint: routing, dependency solving (the API key),
the exit stack, the exception wrappers. :class:`FastPath` answers ``POST /v1/features``
and ``POST /v1/predict`` itself when the request is the ordinary kind, a JSON body that
validates, with the right key, and hands everything else to the app, which gives the
documented answer (422 with the messages, 401, ...). It does what the route does:
  * the same request models, on the same input (``json.loads`` of the body, then
    validation, as FastAPI does: no parser of its own that could accept something else);
  * the same answer function (``answer_features``, ``answer_predict``);
  * the same API-key rule (``dependencies.api_key_accepted``);
  * errors raised while answering go to the app's own exception handlers (503, 504,
    422 of too many entities); an unexpected one propagates to Starlette's
    ServerErrorMiddleware, as from the route (a bare 500, traceback in the log).
The routes stay, so the OpenAPI document is unchanged; the metrics and body-size
middlewares wrap this one, so they see every request.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import Response

from serving.dependencies import api_key_accepted
from serving.models import FeaturesRequest, PredictRequest
from serving.routers.features import answer_features
from serving.routers.predict import answer_predict

# Any: each answer takes the request model beside it in ROUTES, which a Callable type cannot say.
Answer = Callable[[State, Any], Awaitable[Response]]
ROUTES: dict[str, tuple[type[BaseModel], Answer]] = {
    "/v1/features": (FeaturesRequest, answer_features),
    "/v1/predict": (PredictRequest, answer_predict),
}


class FastPath:
    """Pure ASGI: answers the ordinary requests of :data:`ROUTES`, passes the rest on."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        route = ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        content_type = length = api_key = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
            elif name == b"x-api-key" and api_key is None:  # the first, as the route's header lookup
                api_key = value
        app = scope["app"]  # set by Starlette before any middleware runs
        if (content_type != b"application/json" or length is None
                or not api_key_accepted(app.state.api_key, api_key)):
            await self.app(scope, receive, send)  # the route answers, the body still unread
            return
        request_model, answer = route
        body = await _read_body(receive)
        if body is None:
            return  # the client left
        try:
            valid = request_model.model_validate(json.loads(body))
        except (ValueError, ValidationError):  # not JSON (JSONDecodeError, UnicodeDecodeError) or invalid
            await self.app(scope, _replay(body), send)  # the route's 422 with its messages
            return
        try:
            response = await answer(app.state, valid)
        except Exception as exc:
            handler = _handler(app.exception_handlers, exc)
            if handler is None:
                raise  # unexpected: ServerErrorMiddleware's 500, and the traceback in the log
            response = await handler(Request(scope), exc)
        await response(scope, receive, send)


async def _read_body(receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes):
    """A ``receive`` that gives the already-read body again, then waits as Starlette's would."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def _handler(handlers: dict, exc: Exception):
    """The app's handler for ``exc`` by its class hierarchy (as Starlette's
    ExceptionMiddleware looks it up), short of the catch-all for Exception."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None

"""The Tessera feature API: ``create_app(cfg)`` builds it, ``main`` runs it with uvicorn.

    python -m serving --profile local            # workers, host and port from the profile
    python -m serving --profile s3 --port 8020   # TESSERA_API_KEY must be set: s3 requires a key

Endpoints: POST /v1/features, POST /v1/predict, GET /healthz, /readyz, /metrics; the
OpenAPI document at /openapi.json, interactive docs at /docs and /redoc (served from the
app itself, so they work offline: serving.docs_pages).

Safety rules, all here or in the dependencies:
  * an X-API-Key header when ``serving.require_api_key`` (the keys come from the environment
    variable named by ``serving.api_key_env``, comma-separated for a rotation; the app refuses
    to start without one);
  * bodies over ``serving.max_body_bytes`` are 413, more than ``serving.max_entities``
    entities or transactions 422, work past ``serving.request_timeout_s`` 504;
  * invalid input is 422 with a message per field; Redis unreachable is 503 (redis-py
    reconnects on the next request, so service resumes by itself when Redis is back);
  * an unexpected error is a 500 whose body says only that: the traceback goes to the log.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager

import redis
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from plumbing.config import PROFILE_ENV, Config, ConfigError, add_profile_option, load_config
from plumbing.online_store import FEAST_PROJECT, OnlineStoreReader, RedisSettings
from serving import metrics
from serving.dependencies import ModelNotLoaded, RequestTimeout
from serving.docs_pages import add_docs_pages
from serving.fast_path import FastPath
from serving.model_registry import (
    CHAMPION_ALIAS,
    MODEL_NAME,
    POLL_INTERVAL_S,
    ModelRegistry,
)
from serving.online import async_redis_client
from serving.routers import features, health, predict
from serving.served_log import ServedLog, served_features_table

log = logging.getLogger(__name__)
OUTAGE_LOG_INTERVAL_S = 10.0  # during a Redis outage, log it at most this often (metrics count every error)


def create_app(cfg: Config, *, project: str = FEAST_PROJECT, model_name: str = MODEL_NAME,
               model_alias: str = CHAMPION_ALIAS, model_poll_interval_s: float = POLL_INTERVAL_S) -> FastAPI:
    """The API for ``cfg``. ``project`` is the Feast project of the Redis keys (tests use
    their own); the model is ``models:/<model_name>@<model_alias>``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.reader = OnlineStoreReader(cfg, project)  # views and plans; its reads go through:
        app.state.redis = async_redis_client(RedisSettings.from_config(cfg))  # this loop's client
        app.state.model_registry = ModelRegistry(cfg.mlflow.tracking_uri, model_name, model_alias,
                                                 model_poll_interval_s)
        await app.state.model_registry.start()
        app.state.served_log = ServedLog(served_features_table(cfg), cfg.serving.served_log)
        app.state.served_log.start()
        # Hundreds of thousands of long-lived objects (MLflow, Feast's plugin, the model)
        # made a full garbage collection stall every request for most of a second (measured):
        # move them out of the collector's sight.
        gc.freeze()
        yield
        await app.state.model_registry.stop()
        await asyncio.to_thread(app.state.served_log.stop)  # the last append: off the event loop
        await app.state.redis.aclose()

    app = FastAPI(title="Tessera feature API", version="1",
                  summary="Online features and fraud scores at Redis speed.", lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # FastAPI's own load their scripts from a CDN
    add_docs_pages(app)
    app.state.settings = cfg.serving
    app.state.api_key = _api_key(cfg)
    routers = (features.router, predict.router, health.router)
    for router in routers:
        app.include_router(router)
    # Metric labels: the API's paths; anything else counts as "other".
    api_paths = {route.path for router in routers for route in router.routes if isinstance(route, Route)}
    _add_error_handlers(app, api_paths)
    # The last added runs first: metrics see every answer, the 413s included; the fast path
    # of the hot endpoints runs inside the body-size limit.
    app.add_middleware(FastPath)
    app.add_middleware(BodySizeLimit, max_bytes=cfg.serving.max_body_bytes, api_paths=api_paths)
    app.add_middleware(metrics.MetricsMiddleware, api_paths=api_paths)
    return app


def app_from_environment() -> FastAPI:
    """The app of the profile in $TESSERA_PROFILE: what each uvicorn worker builds."""
    return create_app(load_config())


def _api_key(cfg: Config) -> tuple[bytes, ...] | None:
    """The keys requests may carry, or None when the profile requires none.

    The variable named by ``serving.api_key_env`` holds one key or several, comma-separated,
    all accepted: a key is rotated without refusing a client (docs/operations.md): deploy
    "new,old", move the clients to the new key, then deploy "new" alone.
    """
    if not cfg.serving.require_api_key:
        return None
    keys = tuple(key.strip().encode() for key in os.environ.get(cfg.serving.api_key_env, "").split(",")
                 if key.strip())
    if not keys:
        raise ConfigError(f"serving.require_api_key is true for profile {cfg.profile}, but the environment "
                          f"variable {cfg.serving.api_key_env} (serving.api_key_env) holding the key is not set")
    return keys


# ---- errors: one JSON shape (models.ErrorResponse), never a traceback ---------------------
def _error(status: int, detail: str, route: str, kind: str, errors: list[dict] | None = None,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    metrics.ERRORS.labels(route, kind).inc()
    return JSONResponse({"detail": detail, "errors": errors or []}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI, api_paths: set[str]) -> None:
    def route_of(request: Request) -> str:
        return metrics.route_label(request.url.path, api_paths)

    outage_logged_at = -OUTAGE_LOG_INTERVAL_S

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Messages and locations only: FastAPI's default answer echoes the input, which fails
        # to encode when it holds a lone surrogate ("\ud800"), turning a 422 into a 500.
        errors = [{"location": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
                  for error in exc.errors()]
        summary = "; ".join(f"{error['location']}: {error['message']}" for error in errors)
        return _error(422, f"invalid request: {summary}", route_of(request), "invalid_request", errors)

    # Starlette's class, as FastAPI's docs advise: it also catches Starlette's own 404, 405
    # and FastAPI's 400 for an undecodable body.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's answer to a body it cannot decode (not UTF-8): invalid input
            errors = [{"location": "body", "message": str(exc.detail)}]
            return _error(422, f"invalid request: body: {exc.detail}", route_of(request), "invalid_request", errors)
        kind = {401: "unauthorized", 413: "body_too_large"}.get(exc.status_code, f"http_{exc.status_code}")
        return _error(exc.status_code, str(exc.detail), route_of(request), kind, headers=exc.headers)

    @app.exception_handler(redis.RedisError)
    async def online_store_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        nonlocal outage_logged_at
        if time.monotonic() - outage_logged_at >= OUTAGE_LOG_INTERVAL_S:  # not one line per failed request
            outage_logged_at = time.monotonic()
            log.warning("online store unavailable: %s", exc)
        return _error(503, "the online store is unavailable; retry shortly", route_of(request), "online_store")

    @app.exception_handler(ModelNotLoaded)
    async def no_model(request: Request, exc: ModelNotLoaded) -> JSONResponse:
        return _error(503, "no model is loaded yet; retry shortly", route_of(request), "no_model")

    @app.exception_handler(RequestTimeout)
    async def timed_out(request: Request, exc: RequestTimeout) -> JSONResponse:
        return _error(504, "the request took too long", route_of(request), "timeout")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises the exception after this answer, so uvicorn logs its traceback.
        return _error(500, "internal server error", route_of(request), "internal")


class BodySizeLimit:
    """413 for a body over ``max_bytes``: at once from Content-Length, else (chunked
    bodies) as soon as the bytes received pass the limit. Pure ASGI, before any parsing."""

    def __init__(self, app, max_bytes: int, api_paths: set[str]):
        self.app = app
        self.max_bytes = max_bytes
        self.api_paths = api_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = b""
        for name, value in scope["headers"]:  # a scan: cheaper than a dict of every header
            if name == b"content-length":
                declared = value
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, send)
            return
        received = 0

        async def receive_counting():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised inside the endpoint's body reading: FastAPI answers it with http_error.
                raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, receive_counting, send)

    async def _too_large(self, scope, send) -> None:
        metrics.ERRORS.labels(metrics.route_label(scope["path"], self.api_paths), "body_too_large").inc()
        body = json.dumps({"detail": f"request body over {self.max_bytes} bytes", "errors": []}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# ---- running it ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.split("\n\n")[0])
    add_profile_option(parser)
    parser.add_argument("--host", help="address to listen on (default: serving.host)")
    parser.add_argument("--port", type=int, help="port (default: serving.port)")
    parser.add_argument("--workers", type=int, help="worker processes (default: serving.workers)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.profile)
        _api_key(cfg)  # fail here, with the message, rather than in every worker
    except ConfigError as exc:
        print(f"serving: {exc}", file=sys.stderr)
        return 2
    os.environ[PROFILE_ENV] = str(cfg.source_file)  # the workers load the same profile
    workers = args.workers or cfg.serving.workers
    if workers > 1:
        # Each worker is a process: prometheus_client's multiprocess mode adds them up.
        metrics_dir = cfg.run_dir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[metrics.METRICS_DIR_ENV] = str(metrics_dir)
    print(f"serving: API docs at http://{args.host or cfg.serving.host}:{args.port or cfg.serving.port}/docs",
          flush=True)
    # No access log: one line per request costs more than the request; /metrics counts them.
    uvicorn.run("serving.app:app_from_environment", factory=True, host=args.host or cfg.serving.host,
                port=args.port or cfg.serving.port, workers=workers, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Liveness, readiness and metrics: for the orchestrator and Prometheus, no API key."""
from __future__ import annotations

import anyio
import redis
import redis.asyncio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from plumbing.config import ServingConfig
from serving import metrics
from serving.dependencies import Settings
from serving.model_registry import ModelRegistry
from serving.models import HealthResponse, ReadinessResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="The process is up")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadinessResponse, summary="Ready to serve: Redis reachable, model loaded",
            responses={503: {"model": ReadinessResponse, "description": "Redis unreachable or no model loaded."}})
async def readyz(request: Request, settings: Settings) -> JSONResponse:
    redis_ok = await _redis_reachable(request.app.state.redis, settings)
    registry: ModelRegistry = request.app.state.model_registry
    model = registry.current
    answer = ReadinessResponse(ready=redis_ok and model is not None, redis="ok" if redis_ok else "unreachable",
                               model={"name": model.name, "version": model.version} if model else None)
    return JSONResponse(answer.model_dump(mode="json"), status_code=200 if answer.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format: requests, latency, errors, feature age."}})
async def prometheus_metrics() -> Response:
    body, content_type = metrics.metrics_text()
    return Response(body, media_type=content_type)


async def _redis_reachable(client: redis.asyncio.Redis, settings: ServingConfig) -> bool:
    try:
        with anyio.fail_after(settings.request_timeout_s):
            # redis-py types ping() for its sync and async clients at once (Awaitable[bool] | bool).
            return bool(await client.ping())  # type: ignore[misc]
    except (redis.RedisError, TimeoutError):
        return False

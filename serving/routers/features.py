"""POST /v1/features: feature values of 1..N entities from the online store."""
from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends

from plumbing.online_store import FeatureValue, OnlineStoreReader
from serving import metrics
from serving.dependencies import (
    Reader,
    Settings,
    check_entity_count,
    require_api_key,
    run_blocking,
)
from serving.models import ERROR_RESPONSES, FeaturesRequest, FeaturesResponse

router = APIRouter(prefix="/v1", tags=["features"], dependencies=[Depends(require_api_key)])


@router.post("/features", response_model=FeaturesResponse, responses=ERROR_RESPONSES,
             summary="Feature values of entities, with their status and age")
async def get_features(body: FeaturesRequest, reader: Reader, settings: Settings) -> dict:
    """Reads every requested feature of every entity in one pipelined Redis round trip.

    Each value comes with its status: `present`, `missing` (nothing stored for this
    entity: an unknown entity is all missing, not an error) or `expired` (the row is older
    than its feature view's ttl; the value is then null), and each feature view with the
    event time and age of its stored row.
    """
    check_entity_count(len(body.entities), settings, "entities")
    refs = body.feature_refs()
    entity_rows = [entity.model_dump(exclude_none=True) for entity in body.entities]
    now = datetime.now(timezone.utc)
    results = await run_blocking(settings, read_online, reader, refs, entity_rows, now)
    metrics.record_features_served(refs, results, now)
    # Plain dicts: FastAPI validates and serializes them against FeaturesResponse in
    # pydantic's Rust core, much faster than building model objects.
    return {"features": refs,
            "results": [_entity_out(entity, values, refs, now)
                        for entity, values in zip(entity_rows, results, strict=True)]}


def read_online(reader: OnlineStoreReader, refs: list[str], entity_rows: list[dict[str, str]],
                now: datetime) -> list[dict[str, FeatureValue]]:
    """The reader's one round trip, timed (blocking: call it through run_blocking)."""
    with metrics.ONLINE_READ.time():
        return reader.read(refs, entity_rows, now)


def _entity_out(entity: dict[str, str], values: dict[str, FeatureValue], refs: list[str], now: datetime) -> dict:
    in_order = [values[ref] for ref in refs]  # the reader groups features by view: back to the request's order
    event_times: dict[str, datetime | None] = {}
    for ref, value in zip(refs, in_order, strict=True):
        view = ref.partition(":")[0]
        if event_times.get(view) is None:
            event_times[view] = value.event_time  # the same for all features of the view's row
    return {"entity": entity,
            "values": [value.value for value in in_order],
            "statuses": [value.status for value in in_order],
            "event_times": event_times,
            "ages_seconds": {view: None if time is None else (now - time).total_seconds()
                             for view, time in event_times.items()}}

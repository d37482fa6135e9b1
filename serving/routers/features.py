"""POST /v1/features: feature values of 1..N entities from the online store."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import State

from plumbing.config import ServingConfig
from plumbing.online_store import MISSING, OnlineStoreReader
from serving import metrics
from serving.dependencies import check_entity_count, json_response, require_api_key
from serving.models import ERROR_RESPONSES, FEATURES_EXAMPLES, FeaturesRequest, FeaturesResponse
from serving.online import Rows, read_rows

router = APIRouter(prefix="/v1", tags=["features"], dependencies=[Depends(require_api_key)])


@router.post("/features", response_model=FeaturesResponse, responses=ERROR_RESPONSES,
             summary="Feature values of entities, with their status and age")
async def get_features(body: Annotated[FeaturesRequest, Body(openapi_examples=FEATURES_EXAMPLES)],
                       request: Request) -> Response:
    """Reads every requested feature of every entity in one pipelined Redis round trip.

    Each value comes with its status: `present`, `missing` (nothing stored for this
    entity: an unknown entity is all missing, not an error) or `expired` (the row is older
    than its feature view's ttl; the value is then null), and each feature view with the
    event time and age of its stored row.
    """
    return await answer_features(request.app.state, body)


async def answer_features(state: State, body: FeaturesRequest) -> Response:
    """The answer to a valid request (also serving.fast_path's, which skips the routing)."""
    settings: ServingConfig = state.settings  # read here, not as a dependency: one less to solve per request
    check_entity_count(len(body.entities), settings, "entities")
    reader: OnlineStoreReader = state.reader
    plan = reader.plan(body.feature_refs())
    entity_rows = [entity.model_dump(exclude_none=True) for entity in body.entities]
    now = datetime.now(timezone.utc)
    rows = await read_rows(state.redis, reader, plan, entity_rows, now, settings.request_timeout_s)
    metrics.record_rows_served(plan, rows, now)
    # The answer is built as plain data and serialized once (pydantic-core): FeaturesResponse
    # documents it, and the tests check answers against it, but validating every answer
    # again against the model costed more than the rest of the request.
    results = entity_results(plan, entity_rows, rows, now)
    served_log = state.served_log
    sampled = served_log.sample(len(results))
    if sampled:
        served_log.add("features", now, plan.refs, [results[number] for number in sampled])
    return json_response({"features": plan.refs, "results": results})


def entity_results(plan: OnlineStoreReader.Plan, entity_rows: list[dict[str, str]], rows: Rows,
                   now: datetime) -> list[dict]:
    """One ``EntityFeatures`` per entity: values and statuses in the request's order, event
    time and age per view (None when nothing of the view is stored for the entity)."""
    view_names = [planned.view.name for planned in plan.views]
    order = plan.order
    results = []
    for entity, view_rows in zip(entity_rows, rows, strict=True):
        values: list = []
        statuses: list = []
        event_times: dict[str, datetime | None] = {}
        ages: dict[str, float | None] = {}
        for name, row in zip(view_names, view_rows, strict=True):
            values += row.values
            statuses += row.statuses
            event_time = row.event_time
            if event_time is not None and MISSING in row.statuses and all(s == MISSING for s in row.statuses):
                event_time = None  # a stored row without any of the requested fields
            event_times[name] = event_time
            ages[name] = None if event_time is None else (now - event_time).total_seconds()
        if order is not None:  # back to the request's order
            values = [values[position] for position in order]
            statuses = [statuses[position] for position in order]
        results.append({"entity": entity, "values": values, "statuses": statuses, "event_times": event_times,
                        "ages_seconds": ages})
    return results

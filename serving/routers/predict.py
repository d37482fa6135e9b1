"""POST /v1/predict: score transactions with the served model on online and request-time features."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import State

from plumbing.config import ServingConfig
from plumbing.online_store import MISSING, PRESENT, OnlineStoreReader
from plumbing.training_sets import REQUEST_RATIO
from serving import metrics
from serving.dependencies import (
    check_entity_count,
    current_model,
    json_response,
    require_api_key,
    run_blocking,
)
from serving.model_registry import HOUR_OF_DAY, RATIO_MEAN_REF, LoadedModel
from serving.models import ERROR_RESPONSES, PREDICT_EXAMPLES, PredictRequest, PredictResponse, Transaction
from serving.online import Rows, read_rows
from serving.routers.features import entity_results
from transformations.on_demand import amount_to_mean_ratio_value

router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[Depends(require_api_key)])


@router.post("/predict", response_model=PredictResponse, responses=ERROR_RESPONSES,
             summary="Fraud scores of transactions")
async def predict(body: Annotated[PredictRequest, Body(openapi_examples=PREDICT_EXAMPLES)],
                  request: Request) -> Response:
    """Scores each transaction with the model the `champion` alias points at.

    The model's online features are read for all transactions in one Redis round trip;
    the request-time feature `txn_amount_to_mean_7d_ratio` (amount over the user's 7-day
    mean amount) is computed by the same definition the training sets use. Features not
    present online (an unknown user or merchant, an expired row) go to the model as null,
    as they do in training, and are listed per prediction.
    """
    return await answer_predict(request.app.state, body)


async def answer_predict(state: State, body: PredictRequest) -> Response:
    """The answer to a valid request (also serving.fast_path's, which skips the routing)."""
    model = current_model(state)  # taken once: a swap mid-request cannot mix versions
    transactions = body.transactions
    settings: ServingConfig = state.settings  # read here, not as a dependency: one less to solve per request
    check_entity_count(len(transactions), settings, "transactions")
    reader: OnlineStoreReader = state.reader
    plan = reader.plan(model.online_refs)
    now = datetime.now(timezone.utc)
    entity_rows = [{"user_id": t.user_id, "merchant_id": t.merchant_id} for t in transactions]
    rows = await read_rows(state.redis, reader, plan, entity_rows, now, settings.request_timeout_s)
    metrics.record_rows_served(plan, rows, now)
    inputs = model_inputs(model, plan, transactions, rows, now)
    if model.compiled is not None:
        scores = model.score(inputs)  # ~0.15 ms a row: on the event loop, no thread hand-off
    else:  # the pyfunc model: milliseconds, off the event loop
        scores = await run_blocking(settings, model.score, inputs)
    sampled = state.served_log.sample(len(transactions))
    if sampled:
        entities = [{**entity_rows[number], "transaction_id": transactions[number].transaction_id}
                    for number in sampled]
        results = entity_results(plan, entities, [rows[number] for number in sampled], now)
        state.served_log.add("predict", now, plan.refs, results, (model.name, model.version),
                             [float(scores[number]) for number in sampled])
    return json_response({
        "model": {"name": model.name, "version": model.version},
        "predictions": [{"transaction_id": transaction.transaction_id, "score": float(score),
                         "unavailable_features": unavailable_features(plan, view_rows)}
                        for transaction, view_rows, score in zip(transactions, rows, scores, strict=True)],
    })


def model_inputs(model: LoadedModel, plan: OnlineStoreReader.Plan, transactions: list[Transaction], rows: Rows,
                 now: datetime) -> dict[str, list]:
    """The model's inputs, column -> one value per transaction (None for null): what
    jobs/train_model.py's ``model_inputs`` builds from a training-set row."""
    where = {ref: (number, position) for number, planned in enumerate(plan.views)
             for position, ref in enumerate(planned.refs)}
    columns: dict[str, list] = {
        "amount": [t.amount for t in transactions], "channel": [t.channel for t in transactions],
        "country": [t.country for t in transactions], "currency": [t.currency for t in transactions],
        HOUR_OF_DAY: [float((t.event_time or now).astimezone(timezone.utc).hour) for t in transactions]}
    for column, ref in model.feature_columns.items():
        number, position = where[ref]
        # None unless present: null, as past the ttl in training
        columns[column] = [view_rows[number].values[position] for view_rows in rows]
    if REQUEST_RATIO in model.input_columns:
        number, position = where[RATIO_MEAN_REF]
        columns[REQUEST_RATIO] = [amount_to_mean_ratio_value(t.amount, view_rows[number].values[position])
                                  for t, view_rows in zip(transactions, rows, strict=True)]
    return columns


def unavailable_features(plan: OnlineStoreReader.Plan, view_rows: list[OnlineStoreReader.Row]) -> dict[str, str]:
    """The features read for the model without a present value, and their status."""
    unavailable: dict[str, str] = {}
    for planned, row in zip(plan.views, view_rows, strict=True):
        if row.status != PRESENT or MISSING in row.statuses:
            unavailable.update((ref, status) for ref, status in zip(planned.refs, row.statuses, strict=True)
                               if status != PRESENT)
    return unavailable

"""POST /v1/predict: score transactions with the served model on online and request-time features."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends

from plumbing.online_store import PRESENT, FeatureValue, OnlineStoreReader
from plumbing.training_sets import REQUEST_RATIO
from serving import metrics
from serving.dependencies import (
    Model,
    Reader,
    Settings,
    check_entity_count,
    require_api_key,
    run_blocking,
)
from serving.model_registry import HOUR_OF_DAY, RATIO_MEAN_REF, LoadedModel
from serving.models import ERROR_RESPONSES, PredictRequest, PredictResponse, Transaction
from serving.routers.features import read_online
from transformations.on_demand import amount_to_mean_ratio_value

router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[Depends(require_api_key)])


@router.post("/predict", response_model=PredictResponse, responses=ERROR_RESPONSES,
             summary="Fraud scores of transactions")
async def predict(body: PredictRequest, reader: Reader, model: Model, settings: Settings) -> dict:
    """Scores each transaction with the model the `champion` alias points at.

    The model's online features are read for all transactions in one Redis round trip;
    the request-time feature `txn_amount_to_mean_7d_ratio` (amount over the user's 7-day
    mean amount) is computed by the same definition the training sets use. Features not
    present online (an unknown user or merchant, an expired row) go to the model as null,
    as they do in training, and are listed per prediction.
    """
    check_entity_count(len(body.transactions), settings, "transactions")
    now = datetime.now(timezone.utc)
    values, scores = await run_blocking(settings, _read_and_score, reader, model, body.transactions, now)
    metrics.record_features_served(model.online_refs, values, now)
    return {
        "model": {"name": model.name, "version": model.version},
        "predictions": [
            {"transaction_id": transaction.transaction_id, "score": float(score),
             "unavailable_features": {ref: value.status for ref, value in features.items() if value.status != PRESENT}}
            for transaction, features, score in zip(body.transactions, values, scores, strict=True)],
    }


def _read_and_score(reader: OnlineStoreReader, model: LoadedModel, transactions: list[Transaction],
                    now: datetime) -> tuple[list[dict[str, FeatureValue]], np.ndarray]:
    entity_rows = [{"user_id": t.user_id, "merchant_id": t.merchant_id} for t in transactions]
    values = read_online(reader, model.online_refs, entity_rows, now)
    return values, model.score(model_inputs(model, transactions, values, now))


def model_inputs(model: LoadedModel, transactions: list[Transaction], values: list[dict[str, FeatureValue]],
                 now: datetime) -> pd.DataFrame:
    """The model's input frame: one row per transaction, the signature's columns in order
    and types (what jobs/train_model.py's ``model_inputs`` builds from a training-set row)."""
    columns: dict[str, list] = {column: [] for column in model.input_columns}
    for transaction, features in zip(transactions, values, strict=True):
        event_time = transaction.event_time or now
        row = {"amount": transaction.amount, "channel": transaction.channel, "country": transaction.country,
               "currency": transaction.currency, HOUR_OF_DAY: event_time.astimezone(timezone.utc).hour}
        for column, ref in model.feature_columns.items():
            row[column] = features[ref].value  # None unless present: null, as past the ttl in training
        if REQUEST_RATIO in columns:
            row[REQUEST_RATIO] = amount_to_mean_ratio_value(transaction.amount, features[RATIO_MEAN_REF].value)
        for column, cells in columns.items():
            cells.append(row[column])
    # Typed column by column (None -> NaN in float columns): far cheaper than a frame of
    # rows converted afterwards, which costs milliseconds a request.
    return pd.DataFrame({column: np.array(cells, dtype=model.dtypes[column]) for column, cells in columns.items()})

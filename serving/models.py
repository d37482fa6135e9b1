"""The API's request and response bodies (pydantic): what the OpenAPI document shows.

Requests forbid unknown fields, so a typo is a 422 that names it instead of a silently
ignored option.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from plumbing.online_store import EXPIRED, MISSING, PRESENT
from transformations.catalog import FEATURE_SERVICE_TABLES, FEATURE_TABLES, feature_refs
from transformations.schemas import ALLOWED_VALUES, TRANSACTIONS

MAX_FEATURES_PER_REQUEST = 200  # more than every feature of the catalog, far less than abuse
# Looked up on every request, so computed once: feature reference -> the join key it needs,
# and each service's references.
JOIN_KEY_OF_REF = {f"{table.name}:{feature}": table.entity_column
                   for table in FEATURE_TABLES.values() for feature in table.feature_names}
SERVICE_REFS = {service: feature_refs(service) for service in FEATURE_SERVICE_TABLES}


Text = Annotated[str, Field(min_length=1, max_length=256)]
EntityId = Annotated[Text, Field(examples=["user-000042"])]
FeatureStatus = Literal["present", "missing", "expired"]
assert {PRESENT, MISSING, EXPIRED} == {"present", "missing", "expired"}  # the reader's statuses


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- /v1/features -------------------------------------------------------------------------
class Entity(_Request):
    """One entity row: the join keys the requested features need (``user_id`` for user
    features, ``merchant_id`` for merchant features)."""

    user_id: EntityId | None = None
    merchant_id: EntityId | None = None


class FeaturesRequest(_Request):
    """Either a feature service or a list of feature references, for 1..N entities."""

    # Literal[("a", "b")] is Literal["a", "b"]: the known service names, in the OpenAPI document too.
    feature_service: Literal[tuple(FEATURE_SERVICE_TABLES)] | None = Field(  # type: ignore[valid-type]
        None, description="A feature service: every feature it lists. Give this or `features`.")
    features: list[Annotated[str, Field(pattern=r"^[a-z0-9_]+:[a-z0-9_]+$")]] | None = Field(
        None, min_length=1, max_length=MAX_FEATURES_PER_REQUEST,
        description='Feature references "<feature view>:<feature>". Give this or `feature_service`.',
        examples=[["user_transaction_features:txn_count_1h", "merchant_features:merchant_txn_count_30d"]])
    entities: list[Entity] = Field(
        min_length=1, description="The entities to read; at most `serving.max_entities` (config) per request.")

    @model_validator(mode="after")
    def _features_exist_and_entities_have_their_keys(self) -> FeaturesRequest:
        refs = self.feature_refs()
        unknown = [ref for ref in refs if ref not in JOIN_KEY_OF_REF]
        if unknown:
            raise ValueError(f"unknown feature reference(s) {', '.join(map(repr, unknown))}")
        if len(set(refs)) != len(refs):
            raise ValueError("a feature reference is listed twice")
        join_keys = sorted({JOIN_KEY_OF_REF[ref] for ref in refs})
        for number, entity in enumerate(self.entities):
            absent = [key for key in join_keys if getattr(entity, key) is None]
            if absent:
                raise ValueError(f"entity {number} lacks {', '.join(absent)}, needed by the requested features")
        return self

    def feature_refs(self) -> list[str]:
        if (self.feature_service is None) == (self.features is None):
            raise ValueError("give exactly one of `feature_service` and `features`")
        if self.feature_service is not None:
            return SERVICE_REFS[self.feature_service]
        assert self.features is not None  # exactly one of the two: checked above
        return self.features


class EntityFeatures(BaseModel):
    """One entity's features. Lists run parallel to the response's `features`; times are per
    feature view (all features of a view come from one stored row). Compact on purpose: 100
    entities of 32 features as one object per value made half a megabyte of JSON."""

    entity: dict[str, str] = Field(description="The entity as requested.")
    values: list[float | int | None] = Field(
        description="One value per feature, in `features` order; null unless present (or stored as null).")
    statuses: list[FeatureStatus] = Field(
        description="One per feature: present; missing (nothing stored for this entity and feature, e.g. an "
                    "unknown entity); expired (the row is older than its feature view's ttl: value null).")
    event_times: dict[str, datetime | None] = Field(
        description="Feature view -> when its stored row's values were computed; null when nothing is stored.")
    ages_seconds: dict[str, float | None] = Field(
        description="Feature view -> seconds from its event time to the time of the request.")


class FeaturesResponse(BaseModel):
    features: list[str] = Field(description="The feature references read, in order.")
    results: list[EntityFeatures] = Field(description="One per requested entity, in request order.")


# ---- /v1/predict --------------------------------------------------------------------------
class Transaction(_Request):
    """A transaction to score: its ids and the fields known at request time."""

    transaction_id: Text
    user_id: EntityId
    merchant_id: Annotated[Text, Field(examples=["merchant-0007"])]
    amount: float = Field(ge=0, le=1e12, allow_inf_nan=False, examples=[42.5])
    # Only the values the events' contract declares (schemas.ALLOWED_VALUES): what the batch
    # job and the stream dead-letter as unknown_value is a 422 here. (mypy cannot check a
    # Literal made from a tuple at run time, hence the ignores.)
    currency: Literal[ALLOWED_VALUES[TRANSACTIONS]["currency"]] = Field(examples=["EUR"])  # type: ignore[valid-type]
    country: Annotated[Text, Field(max_length=16, examples=["DE"])]
    channel: Literal[ALLOWED_VALUES[TRANSACTIONS]["channel"]] = Field(examples=["web"])  # type: ignore[valid-type]
    event_time: AwareDatetime | None = Field(
        None, description="When the transaction happened (with a time zone); default: the time of the "
                          "request. Sets the model's hour of day; features are always the newest online.")


class PredictRequest(_Request):
    transactions: list[Transaction] = Field(
        min_length=1, description="At most `serving.max_entities` (config) per request.")


class ModelOut(BaseModel):
    name: str
    version: str


class Prediction(BaseModel):
    transaction_id: str
    score: float = Field(description="The model's fraud probability, 0..1.")
    unavailable_features: dict[str, FeatureStatus] = Field(
        description="Model features without a present online value (they go to the model as null).")


class PredictResponse(BaseModel):
    model: ModelOut
    predictions: list[Prediction] = Field(description="One per transaction, in request order.")


# ---- request examples: what "Try it out" in /docs sends -----------------------------------
# Ids in the generator's format ("u000001", "m00001"), so after `make demo` they return values;
# an unknown id still answers 200 (its features "missing"). tests/test_pages.py posts each.
EXAMPLE_ENTITY = {"user_id": "u000001", "merchant_id": "m00001"}
FEATURES_EXAMPLES = {
    "feature_service": {
        "summary": "Every feature of a feature service",
        "value": {"feature_service": "fraud_model_v1", "entities": [EXAMPLE_ENTITY]},
    },
    "features": {
        "summary": "Chosen features of two users",
        "value": {"features": ["user_transaction_features:txn_count_1h",
                               "user_transaction_features:txn_amount_sum_24h", "user_activity_features:logins_1h"],
                  "entities": [{"user_id": "u000001"}, {"user_id": "u000002"}]},
    },
}
PREDICT_EXAMPLES = {
    "one_transaction": {
        "summary": "Score one transaction",
        "value": {"transactions": [{"transaction_id": "t-example-1", **EXAMPLE_ENTITY, "amount": 250.0,
                                    "currency": "EUR", "country": "DE", "channel": "web"}]},
    },
}


# ---- health -------------------------------------------------------------------------------
class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadinessResponse(BaseModel):
    ready: bool
    redis: Literal["ok", "unreachable"]
    model: ModelOut | None = Field(description="The model being served; null until one is loaded.")


# ---- errors -------------------------------------------------------------------------------
class FieldError(BaseModel):
    location: str = Field(description='Where in the request, e.g. "body.entities.0.user_id".')
    message: str


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong, for a human; never a stack trace.")
    errors: list[FieldError] = Field(default_factory=list, description="The invalid fields (422 only).")


def _error(description: str) -> dict:
    return {"model": ErrorResponse, "description": description}


# The error answers of the /v1 endpoints, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict] = {
    401: _error("Missing or wrong X-API-Key header (when the API requires a key)."),
    413: _error("The request body is larger than `serving.max_body_bytes`."),
    422: _error("Invalid request: the message and `errors` say which field and why."),
    500: _error("Unexpected server error (logged on the server; no details in the answer)."),
    503: _error("The online store (Redis) is unreachable, or no model is loaded yet (/v1/predict)."),
    504: _error("The request took longer than `serving.request_timeout_s`."),
}

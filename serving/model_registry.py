"""The model the API scores with: loaded from the MLflow registry by alias, swapped in the
background when the alias moves.

At start-up the registry resolves ``models:/<name>@<alias>`` to a version and loads it.
A background task then asks MLflow every ``poll_interval_s`` which version the alias
points at; when it changed, the new version is downloaded and loaded in a worker thread
while requests keep being scored by the old one, and then swapped in with one attribute
assignment. A request takes ``registry.current`` once and uses that model to the end, so
no request ever sees half a swap and none fails because of it. A version that cannot be
served (no signature, an input column the API cannot fill) is refused, logged, and the
old model stays.

What the API can fill, per model input column (the columns of ``jobs/train_model.py``'s
``model_inputs``; a test keeps the two in step):
  * the request fields ``amount``, ``channel``, ``country``, ``currency``;
  * ``hour_of_day``: the UTC hour of the transaction's ``event_time``;
  * the request-time feature ``txn_amount_to_mean_7d_ratio``: the request amount over the
    user's online ``txn_amount_mean_7d``, by the plain-Python twin of the batch Column;
  * any other feature of the version's feature service (its ``feature_service`` tag,
    default ``fraud_model_v1``), by its bare name, read from the online store.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING

import anyio
import mlflow
import numpy as np
import pandas as pd
from mlflow.types import DataType
from threadpoolctl import ThreadpoolController

from plumbing.training_sets import RATIO_MEAN, RATIO_TABLE, REQUEST_RATIO
from serving import metrics
from serving.scoring import CompiledPipeline, NotCompilable, verify
from transformations.catalog import feature_refs

if TYPE_CHECKING:  # mlflow loads mlflow.pyfunc lazily
    from mlflow.pyfunc import PyFuncModel

log = logging.getLogger(__name__)

# The same names as jobs/train_model.py (MODEL_NAME, CHAMPION): a test keeps them equal.
MODEL_NAME = "tessera-fraud"
CHAMPION_ALIAS = "champion"
FEATURE_SERVICE_TAG = "feature_service"  # train_model tags each version with its service
DEFAULT_FEATURE_SERVICE = "fraud_model_v1"
POLL_INTERVAL_S = 10.0

REQUEST_FIELDS = ("amount", "channel", "country", "currency")
HOUR_OF_DAY = "hour_of_day"
RATIO_MEAN_REF = f"{RATIO_TABLE}:{RATIO_MEAN}"  # what the request-time ratio divides by


class ModelNotServable(ValueError):
    """A registered model version the API cannot score with; the message says why."""


@dataclass(frozen=True)
class LoadedModel:
    """One model version, ready to score, and what its inputs need."""

    name: str
    version: str
    pyfunc: PyFuncModel
    input_columns: list[str]        # the signature's columns, in order
    dtypes: dict[str, str]          # column -> numpy dtype the signature expects
    feature_columns: dict[str, str]  # column -> online feature reference it is read from
    online_refs: list[str]           # everything to read online: the features, plus the ratio's mean
    # The same model compiled for cheap scoring (serving.scoring), when its shape allows and
    # it scored probe rows exactly as the pyfunc model did; None: the pyfunc path.
    compiled: CompiledPipeline | None = None

    def score(self, columns: Mapping[str, Sequence]) -> np.ndarray:
        """Fraud probabilities, one per row of ``columns`` (input column -> one value per
        row, None for null): the compiled model's, else the pyfunc model's."""
        if self.compiled is not None:
            return self.compiled.predict(columns)
        return self.score_with_pyfunc(self.frame(columns))

    def frame(self, columns: Mapping[str, Sequence]) -> pd.DataFrame:
        """The pyfunc model's input: the signature's columns in order and types (None -> NaN)."""
        return pd.DataFrame({column: np.array(columns[column], dtype=self.dtypes[column])
                             for column in self.input_columns})

    def score_with_pyfunc(self, inputs: pd.DataFrame) -> np.ndarray:
        """The pyfunc flavour returns ``predict_proba`` (jobs/train_model.py logs it so):
        column 1 is the fraud class."""
        # One OpenMP thread per prediction: requests already run in parallel, and on a busy
        # 2-core machine OpenMP's spinning threads made a one-row prediction 10x slower (measured).
        with _thread_pools().limit(limits=1, user_api="openmp"):
            probabilities: np.ndarray = np.asarray(self.pyfunc.predict(inputs))
        return probabilities[:, 1]


@cache
def _thread_pools() -> ThreadpoolController:
    # Built at the first prediction, when the model's libraries (and their OpenMP) are loaded;
    # built once, because finding them costs milliseconds.
    return ThreadpoolController()


def plan_inputs(input_columns: list[str], feature_service: str) -> dict[str, str]:
    """Which online feature each model input column is read from; raises
    :class:`ModelNotServable` for a column the API has no way to fill."""
    by_name = {ref.partition(":")[2]: ref for ref in feature_refs(feature_service)}
    feature_columns, unknown = {}, []
    for column in input_columns:
        if column in REQUEST_FIELDS or column in (HOUR_OF_DAY, REQUEST_RATIO):
            continue
        if column in by_name:
            feature_columns[column] = by_name[column]
        else:
            unknown.append(column)
    if unknown:
        raise ModelNotServable(f"input column(s) {', '.join(unknown)} are neither request fields nor "
                               f"features of the feature service {feature_service!r}")
    return feature_columns


def load_version(client: mlflow.MlflowClient, name: str, version: str) -> LoadedModel:
    """Download and load one registered version (slow: seconds); raise ModelNotServable
    when its signature asks for inputs the API cannot fill."""
    tags = client.get_model_version(name, version).tags
    feature_service = tags.get(FEATURE_SERVICE_TAG, DEFAULT_FEATURE_SERVICE)
    # MLflow refuses to deserialize a model unless allowed. The API loads only from the
    # project's own registry (jobs/train_model.py writes it): whoever can move its alias
    # decides what runs here anyway.
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    schema = pyfunc.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        raise ModelNotServable(f"{name} version {version} has no input signature with column names")
    input_columns = schema.input_names()
    dtypes = {column: "object" if kind == DataType.string else "float64"
              for column, kind in zip(input_columns, schema.input_types(), strict=True)}
    feature_columns = plan_inputs(input_columns, feature_service)
    online_refs = list(feature_columns.values())
    if REQUEST_RATIO in input_columns and RATIO_MEAN_REF not in online_refs:
        online_refs.append(RATIO_MEAN_REF)
    loaded = LoadedModel(name, str(version), pyfunc, input_columns, dtypes, feature_columns, online_refs)
    # One row of nulls, before the version can replace a working one: a model that cannot
    # score is refused here, not discovered by requests (and the first, slower call is paid now).
    try:
        loaded.score_with_pyfunc(loaded.frame({column: [None] for column in input_columns}))
    except Exception as exc:
        raise ModelNotServable(f"{name} version {version} fails to score a row of nulls: {exc}") from exc
    compiled = compile_model(loaded)
    return replace(loaded, compiled=compiled) if compiled else loaded


def compile_model(loaded: LoadedModel) -> CompiledPipeline | None:
    """The compiled twin of ``loaded`` if it scores probe rows exactly as the pyfunc model
    does; None (logged) when the model's shape is another or any probe differs."""
    try:
        compiled = CompiledPipeline.compile(loaded.pyfunc.get_raw_model(), loaded.input_columns)
        problem = verify(compiled, loaded.score_with_pyfunc, loaded.input_columns, loaded.dtypes)
    except NotCompilable as exc:
        problem = str(exc)
    except Exception as exc:  # e.g. a flavour without a raw scikit-learn model
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        log.warning("%s version %s: scoring through mlflow.pyfunc (slow path): %s",
                    loaded.name, loaded.version, problem)
        return None
    return compiled


class ModelRegistry:
    """Holds the model being served (``current``, None until one is loaded) and keeps it
    on the version the alias points at."""

    def __init__(self, tracking_uri: str, name: str = MODEL_NAME, alias: str = CHAMPION_ALIAS,
                 poll_interval_s: float = POLL_INTERVAL_S):
        self.name, self.alias, self.poll_interval_s = name, alias, poll_interval_s
        self.current: LoadedModel | None = None
        # mlflow.pyfunc.load_model resolves models:/ URIs with the global tracking URI.
        mlflow.set_tracking_uri(tracking_uri)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in the server log
        self._client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self._refused_version: str | None = None  # a version that failed: not retried on every poll
        self._last_failure = ""  # logged once, not at every poll while it lasts
        self._poller: asyncio.Task | None = None

    def refresh(self) -> bool:
        """Load the alias's version if it is not the one being served; True when swapped.
        Blocking (MLflow calls): run it in a worker thread."""
        version = str(self._client.get_model_version_by_alias(self.name, self.alias).version)
        if (self.current and self.current.version == version) or version == self._refused_version:
            return False
        try:
            loaded = load_version(self._client, self.name, version)
        except ModelNotServable:
            self._refused_version = version
            metrics.MODEL_RELOADS.labels("refused").inc()
            raise
        self.current = loaded  # the swap: one assignment; requests in flight keep their model
        gc.freeze()  # the new model's objects join the long-lived ones the collector skips (see serving.app)
        metrics.MODEL_VERSION.labels(self.name).set(float(version))
        metrics.MODEL_RELOADS.labels("loaded").inc()
        log.info("serving %s version %s (alias %s)", self.name, version, self.alias)
        return True

    async def start(self) -> None:
        """First load (the app serves features even when it fails: /readyz then says not
        ready and /v1/predict answers 503), then poll in the background."""
        await self._refresh_logging_errors()
        self._poller = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._poller:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            await self._refresh_logging_errors()

    async def _refresh_logging_errors(self) -> None:
        try:
            # A thread, so MLflow's HTTP calls and the model download never block requests.
            await anyio.to_thread.run_sync(self.refresh)
        except ModelNotServable as exc:
            log.error("not serving the new version of %s: %s", self.name, exc)
        except Exception as exc:  # no such alias yet, MLflow unreachable, a broken artifact, ...
            # Keep the model being served and try again at the next poll: the poller must live on.
            metrics.MODEL_RELOADS.labels("failed").inc()
            if str(exc) != self._last_failure:
                self._last_failure = str(exc)
                log.warning("could not refresh %s@%s: %s", self.name, self.alias, exc)
        else:
            self._last_failure = ""

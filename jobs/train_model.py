"""Train the fraud model on point-in-time features and register it in MLflow.

    spark-submit jobs/train_model.py --profile local [--start 2026-01-02 --end 2026-01-15]
    python -m jobs.train_model --profile local
    tessera train ...                                                   (the same)

1. Labels: the valid transactions of ``[--start, --end)`` (UTC dates), from ``--labels``
   (``plumbing.training_sets``): ``chargebacks`` (default), label 1 when a chargeback
   arrived within ``--label-maturity-days``; or ``flag``, the fraud flag ``tessera ingest``
   landed from an export, known ``--label-delay-days`` after the transaction (stated: a
   flag has no time of its own), which is then the maturity. By default the range is the
   whole history after its first day (the windows' warm-up) up to the last day whose
   labels are mature.
2. Training set: every feature of ``--feature-service`` as of each transaction, from the
   latest Delta version of each table or the ``--versions`` given; hashed for lineage. A
   table of the service that is not in the lake (its events were never there: an export
   without activity) is left out, said once, and the model trains on the others.
3. A time-based split: the last ``--holdout-days`` are the holdout, the days before train.
   The holdout follows the training days directly; in production a model trains only on
   labels that have matured, so it would also be ``maturity`` older than the traffic it
   scores. The holdout measures the features, not that delay.
4. Two HistGradientBoosting models: ``features`` (the raw transaction fields plus the
   feature service and the request-time ratio) and ``baseline`` (the raw fields only:
   amount, channel, country, currency, UTC hour). Both are scored on the holdout: ROC AUC,
   PR AUC (average precision), precision and recall when the top ``--alert-rate`` of
   transactions by score raise an alert.
5. MLflow (experiment ``tessera/fraud-model``): parameters, metrics of both models, ROC/PR
   plots, permutation importance (plot and table), the model with signature and input
   example, and lineage: the Delta version of every table read, the feature service, the
   feature definitions' hash, the training set's rows and hash (``mlflow.log_input``).
6. Registry: a new version of ``tessera-fraud`` per run; the alias ``champion`` moves to
   it only when it beats the current champion's ROC AUC on THIS holdout (the champion is
   re-scored here, not compared by its old metric).

Model input: a pandas frame with ``MODEL_INPUTS`` columns; numbers as floats (MLflow's
schema check refuses ints for double columns), categories as strings. The pyfunc flavour
returns ``predict_proba``: column 1 is the fraud probability.

Exit codes: 0 trained and registered; 1 cannot train or evaluate (e.g. no fraud in the
holdout); 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import date, timedelta
from unittest import mock

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import sklearn
import skops
from matplotlib.figure import Figure
from mlflow.entities import RunInfo
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.inspection import permutation_importance
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder
from threadpoolctl import threadpool_limits

from plumbing import training_sets
from plumbing.config import Config, add_profile_option, load_config_for_command
from plumbing.lake import LakeTable
from plumbing.spark import get_spark
from plumbing.tracking import configure_tracking, use_experiment
from transformations.catalog import FEATURE_SERVICE_TABLES, FEATURE_TABLES, definitions_hash, feature_refs
from transformations.times import utc_midnight

EXPERIMENT = "tessera/fraud-model"
MODEL_NAME = "tessera-fraud"
CHAMPION = "champion"
DEFAULT_FEATURE_SERVICE = "fraud_model_v1"
DEFAULT_ALERT_RATE = 0.01
WARM_UP = timedelta(days=1)  # the first day of history has almost empty windows: not trained on

# Raw transaction fields both models see; hour_of_day is derived from event_time (UTC).
CATEGORICAL_FIELDS = ["channel", "country", "currency"]
NUMERIC_FIELDS = ["amount", "hour_of_day"]
RAW_FIELDS = NUMERIC_FIELDS + CATEGORICAL_FIELDS
HYPERPARAMETERS = {"learning_rate": 0.05, "max_iter": 400, "max_leaf_nodes": 31, "min_samples_leaf": 40,
                   "l2_regularization": 1.0, "early_stopping": True, "validation_fraction": 0.1,
                   "n_iter_no_change": 30}
# The types of the saved pipeline that skops (MLflow's default format) must be told to
# load; reviewed: scikit-learn's own tree predictor and the passthrough's input check.
SKOPS_TRUSTED_TYPES = ["functools.partial", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                       "sklearn.utils.validation.check_array"]
# Declared, not inferred: MLflow's inference loads the model in a subprocess (~20 s here).
PIP_REQUIREMENTS = [f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}",
                    f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]
IMPORTANCE_ROWS = 20_000  # holdout rows the permutation importance is computed on (a sample)

# Lineage tags of a run; rebuild_training_set reads them back.
VERSION_TAG_PREFIX = "delta_version."
HASH_TAG = "training_set_hash"
SERVICE_TAG = "feature_service"
LABELS_TAG = "label_source"


@dataclass
class Scores:
    """One model's holdout metrics."""

    roc_auc: float
    pr_auc: float
    precision_at_alert_rate: float
    recall_at_alert_rate: float

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}{name}": value for name, value in vars(self).items()}


# ------------------------------------------------------------------ data
def build(spark: SparkSession, cfg: Config, start: date, end: date, maturity: timedelta, feature_service: str,
          versions: dict[str, int] | None, label_source: str = training_sets.CHARGEBACK_LABELS,
          tables: list[str] | None = None) -> tuple[DataFrame, dict[str, int]]:
    """The labelled training set of [start, end) and the table versions it read: the
    service's features, of ``tables`` only when given."""
    labels = training_sets.labelled_transactions(spark, cfg, utc_midnight(start), utc_midnight(end), maturity,
                                                 label_source)
    refs = [ref for ref in feature_refs(feature_service) if tables is None or ref.partition(":")[0] in tables]
    return training_sets.build_training_set(spark, cfg, labels, refs, versions)


def tables_in_lake(cfg: Config, feature_service: str) -> tuple[list[str], list[str]]:
    """The service's tables that are in the lake, and those that are not (never written:
    no events of their kind)."""
    names = list(FEATURE_SERVICE_TABLES[feature_service])
    present = [name for name in names if LakeTable.for_config(cfg, name).exists()]
    return present, [name for name in names if name not in present]


def rebuild_training_set(spark: SparkSession, cfg: Config, run_id: str) -> tuple[DataFrame, str]:
    """The training set of a logged run, rebuilt from its recorded range, maturity, feature
    service and table versions; and its hash (equal to the run's ``training_set_hash`` tag
    while the raw history is unchanged)."""
    configure_tracking(cfg)
    run = mlflow.get_run(run_id)
    params, tags = run.data.params, run.data.tags
    versions = {key[len(VERSION_TAG_PREFIX):]: int(value) for key, value in tags.items()
                if key.startswith(VERSION_TAG_PREFIX)}
    training_set, _ = build(spark, cfg, date.fromisoformat(params["start"]), date.fromisoformat(params["end"]),
                            timedelta(days=float(params["label_maturity_days"])), tags[SERVICE_TAG], versions,
                            params.get(LABELS_TAG, training_sets.CHARGEBACK_LABELS), list(versions))
    return training_set, training_sets.training_set_hash(training_set)


def model_inputs(training_set: pd.DataFrame, feature_columns: list[str]) -> pd.DataFrame:
    """The model's input frame: raw fields (plus the derived hour) and features, numbers as floats."""
    return pd.DataFrame({
        "amount": training_set["amount"].astype("float64"),
        "hour_of_day": pd.to_datetime(training_set["event_time"]).dt.hour.astype("float64"),
        **{column: training_set[column].astype("object") for column in CATEGORICAL_FIELDS},
        **{column: training_set[column].astype("float64") for column in feature_columns},
    })


def make_model(categorical: list[str], seed: int) -> Pipeline:
    """Categories ordinal-encoded (unknown or missing -> NaN), then gradient boosting, which
    takes NaN as its own branch: a feature null past its ttl needs no imputation."""
    encode = ColumnTransformer(
        [("categories", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                       encoded_missing_value=np.nan), categorical)],
        remainder="passthrough", verbose_feature_names_out=False).set_output(transform="pandas")
    classifier = HistGradientBoostingClassifier(categorical_features=categorical, random_state=seed,
                                                **HYPERPARAMETERS)
    return Pipeline([("encode", encode), ("classify", classifier)])


# ------------------------------------------------------------------ evaluation
def score(y_true: np.ndarray, y_score: np.ndarray, alert_rate: float) -> Scores:
    """ROC AUC, PR AUC and precision/recall when the top ``alert_rate`` share alerts."""
    alerts = max(1, math.ceil(alert_rate * len(y_score)))
    top = np.argsort(-y_score, kind="stable")[:alerts]
    caught = int(y_true[top].sum())
    return Scores(roc_auc=float(roc_auc_score(y_true, y_score)),
                  pr_auc=float(average_precision_score(y_true, y_score)),
                  precision_at_alert_rate=caught / alerts,
                  recall_at_alert_rate=caught / int(y_true.sum()))


def curves_figure(y_true: np.ndarray, scores_by_model: dict[str, np.ndarray], kind: str) -> Figure:
    """ROC or precision-recall curves of the models on the holdout. (A plain Figure, no
    pyplot: no display backend, no global figure state to close.)"""
    figure = Figure(figsize=(5.5, 5))
    axes = figure.subplots()
    for name, y_score in scores_by_model.items():
        if kind == "roc":
            x, y, _ = roc_curve(y_true, y_score)
            label = f"{name} (AUC {roc_auc_score(y_true, y_score):.3f})"
        else:
            y, x, _ = precision_recall_curve(y_true, y_score)
            label = f"{name} (AP {average_precision_score(y_true, y_score):.3f})"
        axes.plot(x, y, label=label)
    if kind == "roc":
        axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
        axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, holdout")
    else:
        axes.axhline(y_true.mean(), linestyle=":", color="grey")
        axes.set(xlabel="recall", ylabel="precision", title="Precision-recall, holdout")
    axes.legend(loc="lower right" if kind == "roc" else "upper right")
    figure.tight_layout()
    return figure


def importance(model: Pipeline, x: pd.DataFrame, y: np.ndarray, seed: int) -> pd.DataFrame:
    """Permutation importance on (a sample of) the holdout: the ROC AUC lost when a column
    is shuffled. Model-agnostic and measured where it matters, on unseen data."""
    if len(x) > IMPORTANCE_ROWS:
        sample = np.random.default_rng(seed).choice(len(x), IMPORTANCE_ROWS, replace=False)
        x, y = x.iloc[sample], y[sample]
    result = permutation_importance(model, x, y, scoring="roc_auc", n_repeats=3, random_state=seed)
    return (pd.DataFrame({"feature": x.columns, "auc_drop_mean": result.importances_mean,
                          "auc_drop_std": result.importances_std})
            .sort_values("auc_drop_mean", ascending=False, ignore_index=True))


def importance_figure(table: pd.DataFrame, top: int = 20) -> Figure:
    shown = table.head(top).iloc[::-1]
    figure = Figure(figsize=(7, 0.3 * len(shown) + 1.2))
    axes = figure.subplots()
    axes.barh(shown["feature"], shown["auc_drop_mean"], xerr=shown["auc_drop_std"])
    axes.set(xlabel="ROC AUC lost when shuffled (holdout)", title="Permutation importance")
    figure.tight_layout()
    return figure


# ------------------------------------------------------------------ registry
def champion_auc(client: mlflow.MlflowClient, model_name: str, x: pd.DataFrame,
                 y: np.ndarray) -> tuple[str | None, float | None]:
    """The current champion's version and its ROC AUC re-scored on this holdout; (None, None)
    without a champion; (version, None) when it cannot score these inputs (other columns)."""
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None, None
    # MLflow refuses to deserialise any model unless allowed: this one comes from the
    # project's own registry, so allow it for this load only.
    with mock.patch.dict(os.environ, {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}):
        champion = mlflow.sklearn.load_model(f"models:/{model_name}/{version.version}")
    needed = list(getattr(champion, "feature_names_in_", x.columns))
    if not set(needed) <= set(x.columns):
        return version.version, None
    return version.version, float(roc_auc_score(y, champion.predict_proba(x[needed])[:, 1]))


# ------------------------------------------------------------------ the job
@dataclass
class Split:
    """The training set cut by time: model inputs and labels before and after the holdout start."""

    train_x: pd.DataFrame
    train_y: np.ndarray
    holdout_x: pd.DataFrame
    holdout_y: np.ndarray

    @classmethod
    def by_time(cls, frame: pd.DataFrame, holdout_start: date) -> Split:
        feature_columns = [c for c in frame.columns if c not in training_sets.LABELLED_COLUMNS]
        inputs = model_inputs(frame, feature_columns)
        labels = frame[training_sets.LABEL].to_numpy()
        in_holdout = (pd.to_datetime(frame["event_time"]) >= pd.Timestamp(holdout_start)).to_numpy()
        return cls(inputs[~in_holdout], labels[~in_holdout], inputs[in_holdout], labels[in_holdout])

    def problem(self) -> str | None:
        """Why no model can be trained or evaluated on this split, if so."""
        if 0 < self.train_y.sum() and 0 < self.holdout_y.sum() < len(self.holdout_y):
            return None
        return (f"need fraud and non-fraud in both parts; train {int(self.train_y.sum())}/{len(self.train_y)}, "
                f"holdout {int(self.holdout_y.sum())}/{len(self.holdout_y)} positive: widen the range or "
                f"generate more events")


@dataclass
class Decision:
    """What the registry did with the new model."""

    new_version: str
    champion_version: str | None   # the champion before this run
    champion_score: float | None   # its ROC AUC on this run's holdout
    promoted: bool


def run(cfg: Config, args: argparse.Namespace, spark: SparkSession | None = None) -> int:
    # The stage bar for a person at a terminal; logs and tests get no carriage-return lines.
    spark = spark or get_spark(cfg, "train-model", console_progress=sys.stderr.isatty())
    configure_tracking(cfg)
    if args.label_maturity_days is None:  # main() resolves it; a caller of run() may not have
        args.label_maturity_days = float(training_sets.DEFAULT_LABEL_MATURITY.days)
    maturity = timedelta(days=args.label_maturity_days)
    start, end = _resolve_range(spark, cfg, args.start, args.end, maturity)
    tables, missing = tables_in_lake(cfg, args.feature_service)
    if not tables:
        raise ValueError(f"none of the tables of {args.feature_service} is in the lake {cfg.lake.root}: "
                         f"run tessera batch-features first")
    for name in missing:
        print(f"train-model: {name} is not in the lake (no events of its kind): trained without its "
              f"{len(FEATURE_TABLES[name].features)} features", flush=True)
    holdout_days = args.holdout_days or max(1, round(0.3 * (end - start).days))
    holdout_start = end - timedelta(days=holdout_days)
    if holdout_start <= start:
        raise ValueError(f"the holdout ({holdout_days} days) leaves no training days in [{start}, {end})")
    labels = ("chargebacks within" if args.labels == training_sets.CHARGEBACK_LABELS
              else "ingested fraud flags, known")
    print(f"train-model: transactions [{start}, {end}), holdout from {holdout_start}, labels from {labels} "
          f"{args.label_maturity_days:g} days after the transaction, feature service {args.feature_service}",
          flush=True)

    started = time.monotonic()
    training_set, versions = build(spark, cfg, start, end, maturity, args.feature_service, args.versions,
                                   args.labels, tables)
    training_set = training_set.persist(StorageLevel.MEMORY_AND_DISK)
    digest = training_sets.training_set_hash(training_set)
    # sklearn trains in one process: the finished training set (not the feature tables)
    # comes to the driver here, through Arrow.
    frame = training_set.toPandas()
    training_set.unpersist()
    print(f"  training set: {len(frame):,} rows, hash {digest}, versions {versions} "
          f"({time.monotonic() - started:.0f}s)", flush=True)
    split = Split.by_time(frame, holdout_start)
    if split.problem():
        print(f"train_model: {split.problem()}", file=sys.stderr)
        return 1

    # scikit-learn's OpenMP threads spin-wait when the cores are busy elsewhere: on a small
    # shared machine one thread is many times faster than two (--threads).
    with threadpool_limits(args.threads):
        model = make_model(CATEGORICAL_FIELDS, args.seed).fit(split.train_x, split.train_y)
        baseline = make_model(CATEGORICAL_FIELDS, args.seed).fit(split.train_x[RAW_FIELDS], split.train_y)
        model_scores = model.predict_proba(split.holdout_x)[:, 1]
        baseline_scores = baseline.predict_proba(split.holdout_x[RAW_FIELDS])[:, 1]
        features_result = score(split.holdout_y, model_scores, args.alert_rate)
        baseline_result = score(split.holdout_y, baseline_scores, args.alert_rate)
        scores_by_model = {"features": model_scores, "baseline (raw fields)": baseline_scores}
        use_experiment(args.experiment, (
            "One run per training: the fraud model on a point-in-time training set, beside a baseline on "
            "the raw fields; holdout metrics (ROC AUC, PR AUC, precision and recall at the alert rate), "
            "plots, and the Delta versions of the feature tables it read (lineage)."))
        with mlflow.start_run(run_name=f"fraud {start}..{end}") as active:
            mlflow.log_params({
                "start": start.isoformat(), "end": end.isoformat(), "holdout_start": holdout_start.isoformat(),
                "label_maturity_days": args.label_maturity_days, LABELS_TAG: args.labels,
                "alert_rate": args.alert_rate, "seed": args.seed,
                "model": "HistGradientBoostingClassifier", **HYPERPARAMETERS,
                "model_inputs": ",".join(split.train_x.columns), "baseline_inputs": ",".join(RAW_FIELDS),
            })
            lineage = log_lineage(cfg, frame, digest, versions, args.feature_service, f"{start}..{end}")
            if missing:
                mlflow.set_tag("tables_not_in_lake", ",".join(missing))
            mlflow.log_metrics({
                **features_result.as_metrics(""), **baseline_result.as_metrics("baseline_"),
                "train_rows": len(split.train_y), "train_positives": int(split.train_y.sum()),
                "holdout_rows": len(split.holdout_y), "holdout_positives": int(split.holdout_y.sum()),
            })
            for kind in ("roc", "pr"):
                mlflow.log_figure(curves_figure(split.holdout_y, scores_by_model, kind), f"plots/{kind}_curve.png")
            ranking = importance(model, split.holdout_x, split.holdout_y, args.seed)
            mlflow.log_table(ranking, "feature_importance.json")
            mlflow.log_figure(importance_figure(ranking), "plots/feature_importance.png")
            decision = register(model, args.model_name, split, features_result.roc_auc,
                                {**lineage, "run_id": active.info.run_id, "holdout_start": holdout_start.isoformat()})
    _print_report(cfg, args.model_name, active.info, features_result, baseline_result, split, decision)
    return 0


def log_lineage(cfg: Config, frame: pd.DataFrame, digest: str, versions: dict[str, int], feature_service: str,
                date_range: str) -> dict[str, str]:
    """Tag the active run with what the training set was built from (and return the tags);
    log the training set as the run's input dataset."""
    lineage = {SERVICE_TAG: feature_service, "feature_definitions_hash": definitions_hash(),
               HASH_TAG: digest, "training_set_rows": str(len(frame)),
               **{f"{VERSION_TAG_PREFIX}{table}": str(version) for table, version in versions.items()}}
    mlflow.set_tags(lineage)
    with warnings.catch_warnings():
        # Two warnings that do not apply here: a local path matches two equivalent MLflow
        # source types; the dataset's (descriptive) schema has integer columns.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        # mlflow.data defines its from_* constructors at import time, unseen by a type checker.
        dataset = mlflow.data.from_pandas(frame, source=cfg.lake.root,  # type: ignore[attr-defined]
                                          targets=training_sets.LABEL,
                                          name=f"{feature_service} {date_range}", digest=digest)
        mlflow.log_input(dataset, context="training",
                         tags={"delta_versions": json.dumps(versions, sort_keys=True), SERVICE_TAG: feature_service})
    return lineage


def register(model: Pipeline, model_name: str, split: Split, roc_auc: float, tags: dict[str, str]) -> Decision:
    """Log the model as a new registered version (tagged with ``tags``); move the champion
    alias to it when it beats the champion re-scored on the same holdout."""
    example = split.holdout_x.head(5)
    info = mlflow.sklearn.log_model(
        model, name="model", signature=infer_signature(example, model.predict_proba(example)),
        input_example=example, pyfunc_predict_fn="predict_proba", registered_model_name=model_name,
        skops_trusted_types=SKOPS_TRUSTED_TYPES, pip_requirements=PIP_REQUIREMENTS)
    client = mlflow.MlflowClient()
    new_version = str(info.registered_model_version)
    champion_version, champion_score = champion_auc(client, model_name, split.holdout_x, split.holdout_y)
    promoted = champion_version is None or (champion_score is not None and roc_auc > champion_score)
    # Tags first: a server that sees the alias move reads the feature service from them.
    for key, value in {**tags, "roc_auc": f"{roc_auc:.6f}"}.items():
        client.set_model_version_tag(model_name, new_version, key, value)
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, new_version)
    mlflow.set_tags({"registered_version": new_version, "champion_before": champion_version or "none",
                     "promoted_to_champion": str(promoted).lower()})
    if champion_score is not None:
        mlflow.log_metric("champion_before_roc_auc", champion_score)
    return Decision(new_version, champion_version, champion_score, promoted)


def _print_report(cfg: Config, model_name: str, run_info: RunInfo, features: Scores, baseline: Scores, split: Split,
                  decision: Decision) -> None:
    print(f"\nholdout: {len(split.holdout_y):,} transactions, {int(split.holdout_y.sum()):,} charged back "
          f"(trained on {len(split.train_y):,})")
    print(f"  {'metric':26s} {'features':>9s} {'baseline':>9s}")
    for name in vars(features):
        print(f"  {name:26s} {getattr(features, name):9.3f} {getattr(baseline, name):9.3f}")
    print(f"ROC AUC {features.roc_auc:.3f} with features vs {baseline.roc_auc:.3f} baseline (raw fields only)")
    new, old = decision.new_version, decision.champion_version
    if old is None:
        text = f"version {new} is the first champion"
    elif decision.champion_score is None:
        text = (f"champion stays version {old}: it takes other inputs, so it cannot be re-scored on this "
                f"holdout (move the alias by hand if intended)")
    elif decision.promoted:
        text = f"version {new} is champion: it beats version {old} ({decision.champion_score:.3f} on this holdout)"
    else:
        text = (f"champion stays version {old} ({decision.champion_score:.3f} on this holdout; new version "
                f"{new} has {features.roc_auc:.3f})")
    print(f"registry {model_name}: {text}")
    print(f"MLflow run: {cfg.mlflow.tracking_uri}/#/experiments/{run_info.experiment_id}/runs/{run_info.run_id}")


def _resolve_range(spark: SparkSession, cfg: Config, start: date | None, end: date | None,
                   maturity: timedelta) -> tuple[date, date]:
    """The given dates, else the history after its warm-up day up to the last mature day."""
    if start is None or end is None:
        history_start, history_end = training_sets.history_bounds(spark, cfg)
        if history_start is None or history_end is None:  # both or neither
            raise ValueError(f"no transactions in {cfg.events.history_uri}: generate history first")
        start = start or (history_start + WARM_UP).date()
        # Whole days only: the last day whose transactions all have mature labels.
        end = end or (history_end - maturity).date()
    if end <= start:
        raise ValueError(f"empty range [{start}, {end}): the history is too short for "
                         f"{maturity.days}-day label maturity")
    return start, end


def _versions(text: str) -> dict[str, int]:
    versions = {}
    for item in filter(None, text.split(",")):
        table, _, version = item.partition("=")
        if table not in FEATURE_TABLES or not version.isdigit():
            raise argparse.ArgumentTypeError(f"{item!r}: expected <table>=<version> with a table of "
                                             f"{', '.join(FEATURE_TABLES)}")
        versions[table] = int(version)
    return versions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_model", description=__doc__.split("\n\n")[0],
                                     epilog="Dates are UTC; the range is half-open [start, end).")
    add_profile_option(parser)
    parser.add_argument("--start", type=date.fromisoformat,
                        help="first transaction date (default: the history's second day)")
    parser.add_argument("--end", type=date.fromisoformat,
                        help="date after the last transaction (default: the last day with mature labels)")
    parser.add_argument("--holdout-days", type=int, help="the last days of the range held out (default: 30%%)")
    parser.add_argument("--labels", choices=training_sets.LABEL_SOURCES, default=training_sets.CHARGEBACK_LABELS,
                        help="the label source: chargebacks (default), or flag, the fraud flag ingested with a "
                             "mapping's fraud_flag: (then give --label-delay-days)")
    parser.add_argument("--label-maturity-days", type=float,
                        help=f"chargebacks: one counts when it arrives this soon after the transaction "
                             f"(default {training_sets.DEFAULT_LABEL_MATURITY.days})")
    parser.add_argument("--label-delay-days", type=float,
                        help="flag: a transaction's flag is known this long after it, e.g. 30 (required with "
                             "--labels flag); transactions younger than that at the history's end are not used")
    parser.add_argument("--feature-service", default=DEFAULT_FEATURE_SERVICE,
                        help=f"the features to train on (default {DEFAULT_FEATURE_SERVICE})")
    parser.add_argument("--versions", type=_versions, default=None,
                        help="Delta versions to read, e.g. merchant_features=3,user_activity_features=5 "
                             "(default: the latest of each)")
    parser.add_argument("--alert-rate", type=float, default=DEFAULT_ALERT_RATE,
                        help="share of transactions that raise an alert, for precision/recall (default 0.01)")
    parser.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment (default {EXPERIMENT})")
    parser.add_argument("--threads", type=int, default=1,
                        help="scikit-learn threads (default 1: right for a small shared machine; raise it on "
                             "a dedicated many-core one)")
    parser.add_argument("--model-name", default=MODEL_NAME, help=f"registered model (default {MODEL_NAME})")
    parser.add_argument("--seed", type=int, default=42)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.start and args.end and args.start >= args.end:  # refused before a Spark session starts
        parser.error(f"--start {args.start} must be before --end {args.end} (the range is [start, end))")
    if args.labels == training_sets.FLAG_LABELS:
        if args.label_delay_days is None or args.label_maturity_days is not None:
            parser.error("--labels flag needs --label-delay-days (when a flag is known after its transaction, "
                         "e.g. 30), which is also its maturity: not --label-maturity-days")
        args.label_maturity_days = args.label_delay_days
    elif args.label_delay_days is not None:
        parser.error("--label-delay-days is for --labels flag: a chargeback carries its own arrival time "
                     "(see --label-maturity-days)")
    cfg = load_config_for_command(args.profile, "train_model")
    try:
        return run(cfg, args)
    except ValueError as exc:
        print(f"train_model: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Skew check: does what the API serves look like what the champion model learned from?

    python -m jobs.skew_check [--since-hours 24] [--max-psi 0.25]
    tessera skew-check ...                         (the same, through the console command)

Compares, feature by feature, the model's online features in the API's sampled
``/v1/predict`` answers of the period (the lake table ``served_features``, written by
``serving.served_log``) with the champion's training set, rebuilt from its run's lineage
(``jobs.train_model.rebuild_training_set``: the same table versions, range and label
maturity). Per feature: the population stability index and a KS distance on the training
set's deciles (``plumbing.feature_stats``), and the share of served values that were
missing or expired (the model got null). The score distribution is compared the same way:
the champion's scores on its training set against the served scores.

Records a run in the MLflow experiment ``tessera/skew-check`` (metrics per feature,
``skew.json``, a PNG panel per feature: served in colour, training as outline).

Exit codes: 0 every PSI within ``--max-psi``; 1 one above it, or nothing to compare (no
champion, no served predictions in the period); 2 bad usage.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from mlflow.entities import Run
from pyspark.sql import SparkSession

from jobs import train_model
from plumbing import feature_stats, tracking, training_sets
from plumbing.config import Config, add_profile_option, load_config_for_command
from plumbing.feature_stats import FeatureStatistics
from plumbing.online_store import PRESENT
from plumbing.spark import get_spark
from serving.model_registry import load_version
from serving.served_log import SERVED_AT, served_features_table

SKEW_EXPERIMENT = "tessera/skew-check"
SCORE = "score"


class NothingToCompare(Exception):
    """No champion, or no served predictions in the period: the check cannot run."""


@dataclass
class SkewReport:
    model: str
    version: str
    served_rows: int
    training_rows: int
    features: list[FeatureStatistics]   # served, with drift against training; the score last
    unavailable_share: dict[str, float]  # feature -> share of served values missing or expired
    over: list[str]                      # features (or the score) above the PSI limit
    # feature -> its statistics on the champion's training set (the reference of ``features``)
    training: dict[str, FeatureStatistics] = field(default_factory=dict)

    def lines(self) -> list[str]:
        worst = max(self.features, key=lambda stats: stats.psi or 0.0)
        head = (f"skew of {self.model} v{self.version}: {self.served_rows:,} served predictions against "
                f"{self.training_rows:,} training rows: {len(self.over)} of {len(self.features)} over the limit"
                f"{' (' + ', '.join(self.over) + ')' if self.over else ''}; largest psi {worst.psi or 0.0:.3f} "
                f"({worst.feature})")
        unavailable = {name: share for name, share in self.unavailable_share.items() if share > 0}
        tail = ["  unavailable when served: " + ", ".join(f"{name} {share:.1%}"
                                                          for name, share in sorted(unavailable.items()))]
        return [head, *(tail if unavailable else [])]


def served_predictions(cfg: Config, start: datetime, end: datetime, model: str) -> pa.Table:
    """The sampled /v1/predict rows of ``model`` served in [start, end)."""
    table = served_features_table(cfg)
    if not table.exists():
        raise NothingToCompare(f"no served features yet ({table.uri}): the API samples its answers when "
                               "serving.served_log.sample_fraction > 0")
    rows = table.read_arrow(
        filter=(pc.field("endpoint") == "predict") & (pc.field("model_name") == model)
        & (pc.field(SERVED_AT) >= pa.scalar(start, pa.timestamp("us", tz="UTC")))
        & (pc.field(SERVED_AT) < pa.scalar(end, pa.timestamp("us", tz="UTC"))))
    if not rows.num_rows:
        raise NothingToCompare(f"no served predictions of {model} between {start:%Y-%m-%d %H:%M} and "
                               f"{end:%Y-%m-%d %H:%M} UTC in {table.uri}")
    return rows


def run(cfg: Config, start: datetime, end: datetime, max_psi: float, model_name: str = train_model.MODEL_NAME,
        spark: SparkSession | None = None) -> SkewReport:
    tracking.configure_tracking(cfg)
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, train_model.CHAMPION)
    except mlflow.exceptions.MlflowException as error:
        raise NothingToCompare(f"no champion of {model_name} to compare with (train one: tessera train)") from error
    served = served_predictions(cfg, start, end, model_name)
    spark = spark or get_spark(cfg, "skew-check")
    if not version.run_id:
        raise NothingToCompare(f"{model_name} v{version.version} was not registered from a run: no lineage")
    training, _ = train_model.rebuild_training_set(spark, cfg, version.run_id)
    training = training.persist()
    loaded = load_version(client, model_name, str(version.version))
    columns = {column: ref for column, ref in loaded.feature_columns.items() if column in training.columns}

    # The champion's scores on its own training set, as the training job built its inputs.
    frame: pd.DataFrame = training.toPandas()
    inputs = train_model.model_inputs(frame, [column for column in frame.columns
                                              if column not in training_sets.LABELLED_COLUMNS])
    training_scores = loaded.score_with_pyfunc(loaded.frame(inputs))
    reference = {stats.feature: stats for stats in [
        *feature_stats.compute(training, "training_set", list(columns)),
        *feature_stats.compute(spark.createDataFrame(pa.table({SCORE: training_scores})), "training_set", [SCORE])]}
    training.unpersist()

    values = [dict(row) for row in served["feature_values"].to_pylist()]
    statuses = [dict(row) for row in served["feature_statuses"].to_pylist()]
    served_columns = {column: pa.array([row.get(ref) for row in values], pa.float64())
                      for column, ref in columns.items()}
    served_columns[SCORE] = served[SCORE]
    unavailable = {column: sum(row.get(ref) != PRESENT for row in statuses) / len(statuses)
                   for column, ref in columns.items()}
    names = [*columns, SCORE]
    compared = feature_stats.compute(spark.createDataFrame(pa.table(served_columns)), "served_features", names,
                                     reference)
    over = [stats.feature for stats in compared if (stats.psi or 0.0) > max_psi]
    return SkewReport(model_name, str(version.version), served.num_rows, len(frame), compared, unavailable, over,
                      reference)


def record(cfg: Config, report: SkewReport, start: datetime, end: datetime, max_psi: float) -> str:
    """The report as a run of ``tessera/skew-check``; returns its id."""
    tracking.use_experiment(SKEW_EXPERIMENT, "Served features against the champion's training set, per feature.")
    with mlflow.start_run(run_name=f"skew {report.model} v{report.version}") as active:
        mlflow.log_params({"model": report.model, "model_version": report.version, "start": start.isoformat(),
                           "end": end.isoformat(), "max_psi": max_psi})
        mlflow.log_metrics({"served_rows": report.served_rows, "training_rows": report.training_rows,
                            "features_over_limit": len(report.over),
                            **{f"psi.{stats.feature}": stats.psi or 0.0 for stats in report.features},
                            **{f"unavailable.{name}": share for name, share in report.unavailable_share.items()}})
        mlflow.log_dict({"features": feature_stats.as_json(report.features),
                         "training": feature_stats.as_json(list(report.training.values())),
                         "unavailable_share": report.unavailable_share, "over": report.over}, "skew.json")
        # Served (bars) over training (the outline): where they part is the skew.
        figure = feature_stats.plot(report.features, report.training)
        mlflow.log_figure(figure, "skew.png")
        return active.info.run_id


def recorded(cfg: Config, model_name: str = train_model.MODEL_NAME) -> tuple[Run, SkewReport] | None:
    """The newest finished skew check of ``model_name`` as ``record`` kept it: its run (the
    period and limit are its params ``start``, ``end``, ``max_psi``) and the report rebuilt from
    ``skew.json``, without Spark; None when none was recorded."""
    tracking.configure_tracking(cfg)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(SKEW_EXPERIMENT)
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], filter_string=f"params.model = '{model_name}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run = runs[0]
    kept = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/skew.json")
    report = SkewReport(run.data.params["model"], run.data.params["model_version"],
                        int(run.data.metrics["served_rows"]), int(run.data.metrics["training_rows"]),
                        feature_stats.from_json(kept["features"]), kept["unavailable_share"], kept["over"],
                        {stats.feature: stats for stats in feature_stats.from_json(kept.get("training", []))})
    return run, report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skew_check", description=__doc__.split("\n\n")[0])
    add_profile_option(parser)
    parser.add_argument("--since-hours", type=float, default=24.0,
                        help="the period: the last N hours of served predictions (default 24)")
    parser.add_argument("--max-psi", type=float, default=0.25,
                        help="a feature (or the score) with a larger PSI fails the check (default 0.25)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.since_hours <= 0 or args.max_psi <= 0:
        parser.error("--since-hours and --max-psi must be positive")
    cfg = load_config_for_command(args.profile, "skew_check")
    end = datetime.now(timezone.utc)
    start = end - timedelta(hours=args.since_hours)
    try:
        report = run(cfg, start, end, args.max_psi)
    except NothingToCompare as reason:
        print(f"skew-check: nothing to compare: {reason}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    run_id = record(cfg, report, start, end, args.max_psi)
    print(f"  run {run_id} in experiment {SKEW_EXPERIMENT}")
    return 1 if report.over else 0


if __name__ == "__main__":
    sys.exit(main())

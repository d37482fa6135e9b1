"""The training job end to end on a small generated history: what it logs to MLflow, the
champion rule, rebuilding a run's training set from its recorded versions, and the
training set against Feast on real feature tables."""
from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from threadpoolctl import threadpool_limits

import feature_repo
from jobs import skew_check, train_model
from plumbing.config import ServedLogConfig, load_config
from plumbing.lake import LakeTable
from plumbing.training_sets import (
    LABELLED_COLUMNS,
    REQUEST_RATIO,
    build_training_set,
    labelled_transactions,
    training_set_hash,
)
from serving.model_registry import load_version
from serving.served_log import ServedLog, served_features_table
from tests.generated_lake import write_generated_lake
from transformations.catalog import FEATURE_TABLES

START, DAYS = date(2026, 1, 1), 10
END = START + timedelta(days=DAYS)
# A high fraud rate so that a small history still has a few dozen mature labels.
EVENTS, FRAUD_RATE, MATURITY = 20_000, 0.05, timedelta(days=5)
# The job's default range: after the history's first day, up to the last day whose labels
# are mature (the history ends 2026-01-11, minus 5 days).
TRAIN_START, TRAIN_END = date(2026, 1, 2), date(2026, 1, 6)
TRAIN_ARGS = ["--holdout-days", "1", "--label-maturity-days", str(MATURITY.days)]


@pytest.fixture(scope="module")
def lake(local_services, spark, tmp_path_factory, monkeypatch_module):
    """A generated history and its feature tables (version 0), computed by the batch job's
    transformations without its validation and tracking (tested elsewhere)."""
    root = tmp_path_factory.mktemp("train")
    for key, value in {"TESSERA__LAKE__ROOT": str(root / "lake"),
                       "TESSERA__EVENTS__HISTORY_URI": str(root / "history")}.items():
        monkeypatch_module.setenv(key, value)
    cfg = load_config("local")
    write_generated_lake(spark, cfg, events=EVENTS, start=START, days=DAYS, seed=11, fraud_rate=FRAUD_RATE)
    return cfg


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_training_set_equals_feast_on_generated_tables(lake, spark, tmp_path):
    """Every feature of every labelled transaction equals Feast's answer as of 1 us before
    the transaction (see test_training_sets for why the microsecond). Runs before the
    reproducibility test below, which writes newer versions (Feast reads the latest)."""
    assert {LakeTable.for_config(lake, name).version() for name in FEATURE_TABLES} == {0}
    labels = labelled_transactions(spark, lake, _midnight(TRAIN_START), _midnight(TRAIN_END), MATURITY)
    ours = build_training_set(spark, lake, labels, "fraud_model_v1")[0].toPandas()

    store = feature_repo.apply(lake, project=f"t_train_{uuid.uuid4().hex[:8]}", directory=tmp_path / "feast")
    entity_df = pd.DataFrame({
        "transaction_id": ours["transaction_id"], "user_id": ours["user_id"], "merchant_id": ours["merchant_id"],
        "event_timestamp": pd.to_datetime(ours["event_time"]).dt.tz_localize("UTC") - pd.Timedelta(microseconds=1)})
    feast = store.get_historical_features(entity_df=entity_df,
                                          features=store.get_feature_service("fraud_model_v1")).to_df()
    both = ours.merge(feast, on="transaction_id", suffixes=("", "_feast"), validate="one_to_one")
    assert len(both) == len(ours) > 1000
    features = [c for c in feast.columns if c not in entity_df.columns and c != REQUEST_RATIO]
    for column in features:
        ours_values, feast_values = both[column].astype("float64"), both[f"{column}_feast"].astype("float64")
        same = (ours_values == feast_values) | (ours_values.isna() & feast_values.isna())
        assert same.all(), f"{column}: {int((~same).sum())} values differ"
    assert both[features].notna().any().all()  # no column is trivially all null


@pytest.fixture(scope="module")
def trained(lake):
    """One run of the job, as `tessera train` runs it: its MLflow run and registered model."""
    model_name = f"test-fraud-{uuid.uuid4().hex[:8]}"
    code = train_model.main([*TRAIN_ARGS, "--experiment", "tessera-tests/fraud-model", "--model-name", model_name])
    assert code == 0
    client = mlflow.MlflowClient(lake.mlflow.tracking_uri)
    run_id = client.get_model_version(model_name, "1").run_id
    yield client.get_run(run_id), model_name
    client.delete_registered_model(model_name)  # the runs stay, as every test run's do


def test_the_run_logs_metrics_beside_the_baseline_plots_and_the_model(trained, lake):
    run, model_name = trained
    metrics = run.data.metrics
    for name in ("roc_auc", "pr_auc", "precision_at_alert_rate", "recall_at_alert_rate"):
        assert 0.0 <= metrics[name] <= 1.0 and 0.0 <= metrics[f"baseline_{name}"] <= 1.0
    assert metrics["holdout_positives"] > 0 and metrics["train_positives"] > 0
    params = run.data.params
    assert (params["start"], params["end"], params["holdout_start"]) == ("2026-01-02", "2026-01-06", "2026-01-05")
    client = mlflow.MlflowClient(lake.mlflow.tracking_uri)
    plots = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/roc_curve.png", "plots/pr_curve.png", "plots/feature_importance.png"}
    assert "feature_importance.json" in {artifact.path for artifact in client.list_artifacts(run.info.run_id)}

    model_info = mlflow.models.get_model_info(f"models:/{model_name}/1")
    assert "txn_count_24h" in model_info.signature.inputs.input_names()
    assert model_info.flavors["python_function"]["predict_fn"] == "predict_proba"
    assert model_info.saved_input_example_info is not None


def test_the_run_records_the_lineage_of_its_training_set(trained):
    run, _ = trained
    tags = run.data.tags
    assert tags["feature_service"] == "fraud_model_v1"
    assert len(tags["feature_definitions_hash"]) == 64
    assert {tags[f"delta_version.{name}"] for name in FEATURE_TABLES} == {"0"}
    assert int(tags["training_set_rows"]) == run.data.metrics["train_rows"] + run.data.metrics["holdout_rows"]
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == tags["training_set_hash"]
    input_tags = {tag.key: tag.value for tag in dataset_input.tags}
    assert input_tags["mlflow.data.context"] == "training"
    assert '"merchant_features": 0' in input_tags["delta_versions"]


def test_the_first_model_becomes_champion(trained, lake):
    run, model_name = trained
    client = mlflow.MlflowClient(lake.mlflow.tracking_uri)
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"
    assert run.data.tags["promoted_to_champion"] == "true"


def test_rebuilding_from_the_recorded_versions_gives_the_same_hash_after_new_versions(trained, lake, spark):
    run, _ = trained
    # Newer versions of a feature table: every count changes.
    table = FEATURE_TABLES["user_transaction_features"]
    lake_table = LakeTable.for_config(lake, table.name, time_column=table.timestamp_column)
    changed = lake_table.read(spark, version=0).withColumn("txn_count_1h", F.col("txn_count_1h") + 1)
    assert lake_table.write(changed.drop("event_date"), mode="replace_range", replace_range=(START, END)) == 1

    rebuilt, digest = train_model.rebuild_training_set(spark, lake, run.info.run_id)
    assert digest == run.data.tags["training_set_hash"]
    assert rebuilt.count() == int(run.data.tags["training_set_rows"])
    latest, versions = train_model.build(spark, lake, TRAIN_START, TRAIN_END, MATURITY, "fraud_model_v1", None)
    assert versions["user_transaction_features"] == 1
    assert training_set_hash(latest) != digest


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def _toy_split(seed: int, signal: str = "f") -> train_model.Split:
    """A small model-input frame whose label follows the column ``signal``."""
    rng = np.random.default_rng(seed)
    n = 2000
    frame = pd.DataFrame({"amount": rng.gamma(2, 20, n), "hour_of_day": rng.integers(0, 24, n).astype("float64"),
                          "channel": rng.choice(["web", "app", "pos"], n), "country": "DE", "currency": "EUR",
                          signal: rng.normal(size=n)})
    label = (frame[signal] + rng.normal(scale=0.5, size=n) > 1.6).astype(int).to_numpy()
    return train_model.Split(frame[:1500], label[:1500], frame[1500:], label[1500:])


def _fit(split: train_model.Split, noise: float) -> train_model.Pipeline:
    """A model trained on labels flipped at rate ``noise``: the higher, the worse."""
    flip = np.random.default_rng(0).random(len(split.train_y)) < noise
    return train_model.make_model(train_model.CATEGORICAL_FIELDS, 0).fit(split.train_x, split.train_y ^ flip)


@pytest.fixture
def one_thread():
    """scikit-learn on one thread, as the job runs it (train_model --threads)."""
    with threadpool_limits(1):
        yield


def test_champion_moves_only_when_beaten_on_the_same_holdout(local_services, request, one_thread):
    mlflow.set_tracking_uri(local_services.mlflow.tracking_uri)
    mlflow.set_experiment("tessera-tests/champion")
    model_name = f"test-champion-{uuid.uuid4().hex[:8]}"

    def register(model, split: train_model.Split) -> tuple[train_model.Decision, float]:
        auc = train_model.score(split.holdout_y, model.predict_proba(split.holdout_x)[:, 1], 0.01).roc_auc
        with mlflow.start_run():
            return train_model.register(model, model_name, split, auc, {"test": "yes"}), auc

    split = _toy_split(1)
    request.addfinalizer(lambda: mlflow.MlflowClient().delete_registered_model(model_name))
    first, _ = register(_fit(split, 0.3), split)
    second, good_auc = register(_fit(split, 0.0), split)
    third, worse_auc = register(_fit(split, 0.4), split)
    assert (first.promoted, first.champion_version) == (True, None)
    assert (second.promoted, second.champion_version) == (True, "1")
    # The champion is re-scored on the challenger's holdout: exactly its own AUC there.
    assert (third.promoted, third.champion_version, third.champion_score) == (False, "2", pytest.approx(good_auc))
    assert worse_auc < good_auc

    # A challenger on other inputs cannot be compared with the champion: the alias stays.
    other = _toy_split(2, signal="g")
    fourth, _ = register(_fit(other, 0.0), other)
    assert (fourth.promoted, fourth.champion_version, fourth.champion_score) == (False, "2", None)
    assert mlflow.MlflowClient().get_model_version_by_alias(model_name, "champion").version == "2"


# ---- the skew check, against this run's champion ----------------------------------------------
def _serve(cfg, model_name: str, frame: pd.DataFrame, amount_factor: float) -> None:
    """Sampled /v1/predict answers as the API logs them: the training rows' online features
    (amount features times ``amount_factor``) and the champion's scores on them."""
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    loaded = load_version(client, model_name, "1")
    frame = frame.copy()
    for column in loaded.feature_columns:
        if "amount" in column:
            frame[column] = frame[column] * amount_factor
    inputs = train_model.model_inputs(frame, [c for c in frame.columns if c not in LABELLED_COLUMNS])
    scores = loaded.score_with_pyfunc(loaded.frame(inputs))
    refs = list(loaded.feature_columns.values())
    results = [{"entity": {"user_id": row["user_id"]},
                "values": [None if row[column] != row[column] else row[column] for column in loaded.feature_columns],
                "statuses": ["present"] * len(refs)} for _, row in frame.iterrows()]
    log = ServedLog(served_features_table(cfg), ServedLogConfig(sample_fraction=1.0, buffer_rows=len(results)))
    log.add("predict", datetime.now(timezone.utc), refs, results, (model_name, "1"), list(scores))
    assert log.flush() == len(results)


def test_skew_check_passes_served_rows_like_training_and_names_the_shifted_features(trained, lake, spark):
    run, model_name = trained
    assert mlflow.MlflowClient(lake.mlflow.tracking_uri).get_model_version_by_alias(model_name, "champion")
    frame = train_model.rebuild_training_set(spark, lake, run.info.run_id)[0].toPandas().sample(600, random_state=1)
    now = datetime.now(timezone.utc)
    with pytest.raises(skew_check.NothingToCompare, match="no served"):
        skew_check.run(lake, now - timedelta(hours=1), now + timedelta(hours=1), 0.25, model_name, spark)

    _serve(lake, model_name, frame, amount_factor=1.0)
    alike = skew_check.run(lake, now - timedelta(hours=1), now + timedelta(hours=1), 0.25, model_name, spark)
    assert alike.over == [] and alike.served_rows == 600
    assert all(share == 0 for share in alike.unavailable_share.values())

    _serve(lake, model_name, frame, amount_factor=5.0)  # the period now holds both samples
    shifted = skew_check.run(lake, now - timedelta(hours=1), now + timedelta(hours=1), 0.25, model_name, spark)
    assert shifted.over and {name for name in shifted.over if name != skew_check.SCORE} <= {
        column for column in shifted.unavailable_share if "amount" in column}
    assert skew_check.record(lake, shifted, now, now, 0.25)
    # What was recorded reads back whole, the training side (the plot's outline) included.
    _, kept = skew_check.recorded(lake, model_name)
    assert kept.over == shifted.over
    assert set(kept.training) == {stats.feature for stats in shifted.features}
    assert all(kept.training[stats.feature].edges == stats.edges for stats in shifted.training.values())

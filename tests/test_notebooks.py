"""The notebooks run top to bottom on a small generated history, a short stream run and the
feature statistics of two table versions (their own asserts included: no value from the
future, the rebuilt training set's hash, online equal to batch after the stream drains,
statistics and drift that add up), draw their plots, and are kept in git without outputs."""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta, timezone

import nbformat
import pytest
from nbclient import NotebookClient

from jobs import generate_events, stream_features, train_model
from jobs.stream_features import StreamSettings
from plumbing import feature_stats
from plumbing.config import REPO_ROOT, load_config
from plumbing.lake import LakeTable
from tests import test_stream_features as streaming
from tests.generated_lake import write_generated_lake
from transformations.catalog import MERCHANT_FEATURES

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
START, DAYS = date(2026, 1, 1), 10
# A high fraud rate so that a small history still has mature labels in the holdout.
EVENTS, FRAUD_RATE = 20_000, 0.05
TRAIN_ARGS = ["--holdout-days", "1", "--label-maturity-days", "5"]
# The live part: a few seconds of events (a landing file per second and event type), as
# many micro-batches, each taking one file of each type.
LIVE_EVENTS, LIVE_RATE = 600, 100
# Notebooks that read a stream run (the others need only demo_like_data).
NEEDS_STREAM = {"03_online_vs_offline"}
# Notebooks that read the feature statistics of two versions of a table.
NEEDS_STATISTICS = {"04_monitoring"}

# A Redis of this module's own (the streaming tests' fixture): the notebooks read exactly
# what the stream wrote, whatever the shared Redis holds.
isolated_redis = streaming.isolated_redis


@pytest.fixture(scope="module")
def demo_like_data(local_services, spark, tmp_path_factory):
    """A history, its feature tables and a champion model: what `make demo` leaves behind,
    small. The notebooks' kernels see it through the environment."""
    root = tmp_path_factory.mktemp("notebooks")
    model_name = f"tessera-fraud-notebooks-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"TESSERA__LAKE__ROOT": str(root / "lake"),
                           "TESSERA__EVENTS__HISTORY_URI": str(root / "history"),
                           "TESSERA_PROFILE": "local", "TESSERA_MODEL_NAME": model_name}.items():
            patch.setenv(key, value)
        cfg = load_config("local")
        write_generated_lake(spark, cfg, events=EVENTS, start=START, days=DAYS, seed=5, fraud_rate=FRAUD_RATE)
        assert train_model.main(["--profile", "local", "--model-name", model_name, *TRAIN_ARGS]) == 0
        yield cfg


@pytest.fixture(scope="module")
def stream_run(demo_like_data, isolated_redis, spark, tmp_path_factory):
    """What `make demo`'s live part leaves behind, small: after the batch tables exist, the
    streaming job drains a landing folder of recent events (trigger availableNow) into
    Redis and bronze, one micro-batch per landing file, with its MLflow run. The kernels
    see it through the environment (the Redis port and its data dir, the landing folder)."""
    home, port = isolated_redis
    root = tmp_path_factory.mktemp("stream")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"TESSERA__DATA_DIR": str(home), "TESSERA__REDIS__PORT": str(port),
                           "TESSERA__EVENTS__SOURCE": "files",  # one micro-batch per landing file
                           "TESSERA__EVENTS__LANDING_DIR": str(root / "landing")}.items():
            patch.setenv(key, value)
        cfg = load_config("local")
        # Event times up to now: what a live generator would have written by now.
        start = datetime.now(timezone.utc) - timedelta(seconds=LIVE_EVENTS / LIVE_RATE)
        generate_events.generate_live(cfg.events.landing_dir, rate=LIVE_RATE, events=LIVE_EVENTS, seed=11,
                                      users=100, start_time=start, realtime=False, progress=False)
        settings = StreamSettings(checkpoint_location=root / "checkpoint", available_now=True,
                                  max_files_per_trigger=1)
        assert stream_features.run(cfg, settings, spark=spark) == 0
        yield cfg


@pytest.fixture(scope="module")
def statistics_of_two_runs(demo_like_data, spark):
    """What the batch job's statistics step leaves in ``feature_statistics`` after two runs of
    one table, with the job's functions in its order but without the rest of the job
    (validation, MLflow, Redis: tests/test_batch_features.py). merchant_features, the table of
    3 features (the cheapest: each statistics computation is two Spark jobs): version 0
    described over its whole range, as a run over the history describes it; then a run over
    the last day alone: version 1 replaces that day with the same rows (the table's content
    does not change), and its statistics, that day's rows, drift against version 0's (the
    30-day windows fill up over a 10-day history)."""
    cfg = demo_like_data
    table = MERCHANT_FEATURES
    lake_table = LakeTable.for_config(cfg, table.name, time_column=table.timestamp_column)

    def publish_statistics(rows, write=None):
        """Statistics of ``rows`` against the newest kept; ``write`` publishes them (the version)."""
        rows = rows.select(*table.columns).persist()
        statistics = feature_stats.compute(rows, table.name, table.feature_names, feature_stats.load(cfg, table.name))
        assert feature_stats.judge(statistics, cfg.monitoring) == []  # nothing blocks by default
        version = write(rows) if write else lake_table.version()
        feature_stats.save(cfg, statistics, version, datetime.now(timezone.utc))
        rows.unpersist()
        return version, statistics

    publish_statistics(lake_table.read(spark))
    last_day, end = START + timedelta(days=DAYS - 1), START + timedelta(days=DAYS)
    version, statistics = publish_statistics(
        lake_table.read(spark, version=lake_table.version(), start=last_day, end=end),
        write=lambda rows: lake_table.write(rows, mode="replace_range", replace_range=(last_day, end)))
    assert version == 1 and any(stats.warnings for stats in statistics), [(s.feature, s.psi) for s in statistics]
    return cfg


def test_there_are_notebooks():
    assert [path.name for path in NOTEBOOKS] == ["01_events_and_features.ipynb", "02_train_and_evaluate.ipynb",
                                                 "03_online_vs_offline.ipynb", "04_monitoring.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_stored_without_outputs(path):
    notebook = json.loads(path.read_text())
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code_cells
    assert all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code_cells), \
        f"{path.name} has outputs: clear them before committing"


@pytest.mark.e2e
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_and_draws_its_plots(demo_like_data, request, path):
    if path.stem in NEEDS_STREAM:
        request.getfixturevalue("stream_run")
    if path.stem in NEEDS_STATISTICS:
        request.getfixturevalue("statistics_of_two_runs")
    notebook = nbformat.read(path, as_version=4)
    # Raises CellExecutionError, with the failing cell and its traceback, on any error.
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    plots = [output for cell in notebook.cells for output in cell.get("outputs", [])
             if "image/png" in output.get("data", {})]
    assert len(plots) >= 2, f"{path.name} drew {len(plots)} plot(s)"

"""The event generator: deterministic, exact counts, declared schemas, S3, live files.

Small runs (a few thousand events) keep the file fast; Spark is used only where the
cleaning functions check the output."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
import uuid
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from jobs import generate_events as gen
from jobs.events.sinks import open_filesystem
from transformations import cleaning
from transformations.schemas import ACTIVITY, CHARGEBACKS, EVENT_TYPES, SCHEMAS, TRANSACTIONS

UTC = dt.timezone.utc
N = 3000
START = dt.date(2026, 1, 1)
DAYS = 3
LIVE_START = dt.datetime(2026, 2, 1, 12, 0, tzinfo=UTC)


def _history(out: Path, **options) -> gen.Summary:
    settings = {"events": N, "days": DAYS, "start_date": START, "progress": False, **options}
    return gen.generate_history(str(out), **settings)


def _digests(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _table(root: Path, event_type: str):
    return pads.dataset(str(root / event_type), format="parquet", partitioning="hive").to_table()


def _rejected_kinds(spark, root: Path, reader) -> list[str]:
    """The reject kinds the cleaning functions find in all event types under root (one Spark job)."""
    per_type = [reader(spark, str(root / event_type), event_type)
                .where(F.col(cleaning.REJECT_REASON).isNotNull())
                .select(cleaning.reject_kind(F.col(cleaning.REJECT_REASON)).alias("kind"))
                for event_type in EVENT_TYPES if (root / event_type).exists()]
    union = per_type[0]
    for other in per_type[1:]:
        union = union.unionByName(other)
    return [row.kind for row in union.collect()]


def _parse_json(spark, path: str, event_type: str):
    return cleaning.parse_json_events(spark.read.text(path), event_type)


def _validate_parquet(spark, path: str, event_type: str):
    return cleaning.validate_typed_events(spark.read.parquet(path), event_type)


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_history_same_seed_writes_byte_identical_files(tmp_path, fmt):
    _history(tmp_path / "a", fmt=fmt, seed=7, malformed_fraction=0.02)
    _history(tmp_path / "b", fmt=fmt, seed=7, malformed_fraction=0.02)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert len(_digests(tmp_path / "a")) >= 2 * DAYS


def test_history_other_seed_writes_other_records(tmp_path):
    _history(tmp_path / "a", seed=7)
    _history(tmp_path / "b", seed=8)
    first, second = _table(tmp_path / "a", TRANSACTIONS), _table(tmp_path / "b", TRANSACTIONS)
    assert set(first["transaction_id"].to_pylist()).isdisjoint(second["transaction_id"].to_pylist())
    assert first["amount"].to_pylist() != second["amount"].to_pylist()


def test_live_same_seed_and_start_time_writes_identical_files(tmp_path):
    for name in ("a", "b"):
        gen.generate_live(str(tmp_path / name), rate=1000, events=2500, file_interval_s=0.5, start_time=LIVE_START,
                          seed=3, malformed_fraction=0.02, late_fraction=0.05, realtime=False, progress=False)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_malformed_records_replace_good_ones_and_leave_the_rest_unchanged(tmp_path):
    _history(tmp_path / "clean", seed=5)
    summary = _history(tmp_path / "bad", seed=5, malformed_fraction=0.05)
    clean, bad = _table(tmp_path / "clean", TRANSACTIONS), _table(tmp_path / "bad", TRANSACTIONS)
    changed = sum(a != b for a, b in zip(clean.to_pylist(), bad.to_pylist(), strict=True))
    assert bad.num_rows == clean.num_rows
    assert 0 < changed <= sum(summary.malformed.values())


# ------------------------------------------------------------------ exact counts
def test_history_writes_exactly_the_requested_events_over_many_small_slices(tmp_path):
    summary = _history(tmp_path, events=4321, chunk_events=300)  # several slices per day
    written = sum(_table(tmp_path, t).num_rows for t in (TRANSACTIONS, ACTIVITY))
    assert (summary.events, written) == (4321, 4321)


def test_malformed_fraction_is_exact_in_json_lines_with_every_kind(spark, tmp_path):
    _history(tmp_path, fmt="jsonl", malformed_fraction=0.05)
    kinds = _rejected_kinds(spark, tmp_path, _parse_json)
    assert len(kinds) == round(0.05 * N)
    assert set(kinds) == set(cleaning.REJECT_KINDS) - {cleaning.OVERSIZE}  # the generator writes no oversize


def test_malformed_fraction_is_exact_in_parquet_with_the_typed_kinds_only(spark, tmp_path):
    _history(tmp_path, fmt="parquet", malformed_fraction=0.05)
    kinds = _rejected_kinds(spark, tmp_path, _validate_parquet)
    assert len(kinds) == round(0.05 * N)
    assert set(kinds) == {"missing_field", "negative_amount", "future_timestamp"}


def test_malformed_fraction_is_exact_in_live_files(spark, tmp_path):
    gen.generate_live(str(tmp_path), rate=1000, events=2000, file_interval_s=0.5, start_time=LIVE_START,
                      malformed_fraction=0.03, realtime=False, progress=False)
    kinds = _rejected_kinds(spark, tmp_path, _parse_json)
    assert len(kinds) == round(0.03 * 2000)
    assert set(kinds) == set(cleaning.REJECT_KINDS) - {cleaning.OVERSIZE}  # the generator writes no oversize


# ------------------------------------------------------------------ schema
def test_every_good_json_record_parses_in_failfast_mode_and_passes_validation(spark, tmp_path):
    summary = _history(tmp_path, fmt="jsonl")
    for event_type in EVENT_TYPES:
        path = str(tmp_path / event_type)
        strict = spark.read.schema(SCHEMAS[event_type]).option("mode", "FAILFAST").json(path)
        assert strict.count() == summary.counts[event_type]  # FAILFAST raises on a bad record
    assert _rejected_kinds(spark, tmp_path, _parse_json) == []


def test_parquet_schema_equals_the_declared_schema_in_arrow(tmp_path):
    _history(tmp_path)
    for event_type in EVENT_TYPES:
        declared = to_arrow_schema(SCHEMAS[event_type], timezone="UTC")
        for path in (tmp_path / event_type).rglob("*.parquet"):
            assert pq.read_schema(path).remove_metadata() == declared, path


def test_parquet_with_malformed_records_declares_every_column_nullable(tmp_path):
    _history(tmp_path, malformed_fraction=0.05)
    schema = pq.read_schema(next((tmp_path / TRANSACTIONS).glob("*.parquet")))
    assert all(f.nullable for f in schema)


def test_partition_by_date_puts_each_event_in_the_folder_of_its_utc_date(tmp_path):
    _history(tmp_path, partition_by_date=True)
    table = _table(tmp_path, ACTIVITY)
    folder_dates = [str(d) for d in table["date"].to_pylist()]
    event_dates = [t.date().isoformat() for t in table["event_time"].to_pylist()]
    assert folder_dates == event_dates
    assert len(set(folder_dates)) == DAYS


# ------------------------------------------------------------------ content
def test_chargebacks_come_1_to_30_days_after_a_real_transaction_and_within_the_period(tmp_path):
    _history(tmp_path, events=20_000, days=10, fraud_rate=0.05)
    period_end = dt.datetime(2026, 1, 11, tzinfo=UTC)
    transactions = {r["transaction_id"]: r["event_time"] for r in _table(tmp_path, TRANSACTIONS).to_pylist()}
    chargebacks = _table(tmp_path, CHARGEBACKS).to_pylist()
    assert chargebacks
    for cb in chargebacks:
        assert transactions[cb["transaction_id"]] == cb["transaction_time"]
        assert dt.timedelta(days=1) <= cb["event_time"] - cb["transaction_time"] <= dt.timedelta(days=30)
        assert cb["event_time"] < period_end


def test_fraud_is_a_small_share_of_transactions(tmp_path):
    summary = _history(tmp_path, events=20_000)
    assert 0.003 < summary.fraud_transactions / summary.counts[TRANSACTIONS] < 0.03


def test_sessions_tie_page_views_to_a_session_of_the_same_user(tmp_path):
    _history(tmp_path)
    rows = _table(tmp_path, ACTIVITY).to_pylist()
    owner = {r["session_id"]: r["user_id"] for r in rows if r["activity_type"] == "session_start"}
    page_views = [r for r in rows if r["activity_type"] == "page_view"]
    assert page_views and all(owner.get(r["session_id"], r["user_id"]) == r["user_id"] for r in page_views)
    assert all(r["success"] is None for r in page_views)


def test_traffic_is_higher_in_the_afternoon_than_at_night(tmp_path):
    _history(tmp_path, events=20_000)
    hours = [t.hour for t in _table(tmp_path, TRANSACTIONS)["event_time"].to_pylist()]
    assert sum(12 <= h < 16 for h in hours) > 2 * sum(1 <= h < 5 for h in hours)


# ------------------------------------------------------------------ where it goes
def test_history_refuses_to_overwrite_existing_files_without_the_flag(tmp_path):
    _history(tmp_path)
    with pytest.raises(FileExistsError):
        _history(tmp_path)
    assert _history(tmp_path, overwrite=True).files == len(_digests(tmp_path))


def test_main_takes_the_default_output_from_the_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TESSERA__EVENTS__HISTORY_URI", str(tmp_path / "from-config"))
    assert gen.main(["history", "--profile", "local", "--events", "1000", "--days", "1", "--no-progress"]) == 0
    assert (tmp_path / "from-config" / TRANSACTIONS).is_dir()
    assert "1,000 events" in capsys.readouterr().out


def test_history_on_s3_round_trips_through_the_real_endpoint(s3_services, tmp_path):
    uri = f"s3://{s3_services.s3.buckets[0]}/tests/generator-{uuid.uuid4().hex[:8]}"
    assert gen.main(["history", "--profile", "s3", "--out", uri, "--events", "2000", "--days", "2",
                     "--no-progress"]) == 0
    _history(tmp_path, events=2000, days=2)  # the same run, locally
    filesystem, root = open_filesystem(uri, s3_services)
    try:
        for event_type in (TRANSACTIONS, ACTIVITY):
            from_s3 = pads.dataset(f"{root}/{event_type}", filesystem=filesystem, format="parquet").to_table()
            assert from_s3.sort_by("event_time").equals(_table(tmp_path, event_type).sort_by("event_time"))
    finally:
        filesystem.delete_dir(root)


def test_live_rejects_an_s3_landing_folder():
    with pytest.raises(ValueError, match="local"):
        gen.generate_live("s3://bucket/landing", rate=10, events=10, realtime=False, progress=False)


# ------------------------------------------------------------------ live files
def test_live_writes_at_the_requested_rate_and_never_shows_a_partial_file(tmp_path):
    seen: dict[Path, bytes] = {}
    changed_after_appearing: list[Path] = []
    stop = threading.Event()

    def watch():  # read every visible file as soon as it appears, and again later
        while not stop.is_set():
            for path in tmp_path.rglob("*.jsonl"):
                if path.read_bytes() != seen.setdefault(path, path.read_bytes()):
                    changed_after_appearing.append(path)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    began = time.monotonic()
    summary = gen.generate_live(str(tmp_path), rate=2000, duration_s=3, file_interval_s=0.5, progress=False)
    elapsed = time.monotonic() - began
    stop.set()
    watcher.join()

    assert summary.events == 6000
    assert 2.9 <= elapsed <= 4.5
    final = {p: p.read_bytes() for p in tmp_path.rglob("*.jsonl")}
    assert len(seen) >= len(final) - 3  # the watcher saw (nearly) every file appear
    assert {path: final[path] for path in seen} == seen  # and saw it whole from the start
    assert changed_after_appearing == []
    assert all(data.endswith(b"\n") for data in final.values())
    assert len(list((tmp_path / TRANSACTIONS).glob("*.jsonl"))) == 6
    assert not list(tmp_path.rglob(".*"))  # no temporary file left behind


def test_live_event_times_follow_the_wall_clock(tmp_path):
    before = dt.datetime.now(UTC)
    gen.generate_live(str(tmp_path), rate=500, duration_s=1, file_interval_s=0.5, progress=False)
    after = dt.datetime.now(UTC)
    times = [dt.datetime.fromisoformat(json.loads(line)["event_time"])
             for path in tmp_path.rglob("*.jsonl") for line in path.read_text().splitlines()]
    assert len(times) == 500
    assert all(before - dt.timedelta(seconds=1) <= t <= after for t in times)


def test_live_late_fraction_is_exact_and_late_events_precede_their_file_window(tmp_path):
    gen.generate_live(str(tmp_path), rate=1000, events=3000, file_interval_s=1.0, start_time=LIVE_START,
                      late_fraction=0.1, max_lateness_s=30, realtime=False, progress=False)
    late = 0
    for path in tmp_path.rglob("*.jsonl"):
        window_start = dt.datetime.strptime(path.name.split("Z-")[0], "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC)
        for line in path.read_text().splitlines():
            event_time = dt.datetime.fromisoformat(json.loads(line)["event_time"])
            if event_time < window_start:
                late += 1
                assert window_start - event_time <= dt.timedelta(seconds=30)
            else:
                assert event_time < window_start + dt.timedelta(seconds=1)
    assert late == round(0.1 * 3000)


# ------------------------------------------------------------------ the command
@pytest.mark.parametrize("mode, option", [("history", "--partition-by-date"), ("live", "--late-fraction")])
def test_each_subcommand_has_help(mode, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gen.build_parser().parse_args([mode, "--help"])
    assert exit_info.value.code == 0
    assert option in capsys.readouterr().out


def test_command_rejects_a_malformed_fraction_above_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gen.main(["history", "--malformed-fraction", "1.5"])
    assert exit_info.value.code == 2
    assert "fraction" in capsys.readouterr().err

"""transformations.cleaning: every reject reason, its edge cases, and the same functions
on a stream. Tiny hand-written inputs; one behaviour per test."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from chispa import assert_df_equality
from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transformations import cleaning
from transformations.schemas import ACTIVITY, CHARGEBACKS, TRANSACTION_SCHEMA, TRANSACTIONS

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # the validator's clock in these tests

TRANSACTION = {
    "transaction_id": "t1", "user_id": "u1", "merchant_id": "m1", "amount": 12.5, "currency": "EUR",
    "country": "DE", "device_id": "d1", "channel": "app", "event_time": "2026-03-01T10:00:00.000+00:00",
}
PAGE_VIEW = {
    "event_id": "a1", "user_id": "u1", "activity_type": "page_view", "success": None, "session_id": "s1",
    "device_id": "d1", "country": "DE", "event_time": "2026-03-01T10:00:00+00:00",
}
CHARGEBACK = {
    "chargeback_id": "c1", "transaction_id": "t1", "user_id": "u1", "merchant_id": "m1",
    "transaction_time": "2026-02-01T10:00:00+00:00", "event_time": "2026-03-01T10:00:00+00:00",
}


def _lines(spark, *lines: str):
    return spark.createDataFrame([(line,) for line in lines], "value string")


def _json(record: dict, **changes) -> str:
    return json.dumps({**record, **changes}, separators=(",", ":"))


def _without(record: dict, key: str) -> str:
    return json.dumps({k: v for k, v in record.items() if k != key}, separators=(",", ":"))


# Most tests look up the reason of their own line in one parse of all the lines below
# (one Spark job per event type instead of one per test: Spark jobs are the slow part).
LINES = {
    TRANSACTIONS: [
        _json(TRANSACTION, amount="12.5"),
        _json(TRANSACTION, amount=0),
        _json(TRANSACTION)[:40],
        "",
        "[" + _json(TRANSACTION) + "]",
        _json(TRANSACTION) + " garbage",
        _without(TRANSACTION, "merchant_id"),
        _json(TRANSACTION, amount=None),
        json.dumps({k: v for k, v in TRANSACTION.items() if k not in ("user_id", "country")}),
        _json(TRANSACTION, amount="12,50"),
        _json(TRANSACTION, event_time="01/03/2026 10:00:00"),
        _json(TRANSACTION, event_time=1772359200),
        _json(TRANSACTION, amount=-0.01),
        _json(TRANSACTION, event_time=(NOW + dt.timedelta(days=1)).isoformat()),
        _json(TRANSACTION, event_time=(NOW + dt.timedelta(days=1, milliseconds=1)).isoformat()),
        json.dumps({**{k: v for k, v in TRANSACTION.items() if k != "user_id"}, "amount": -5}),
        _json(TRANSACTION, channel="fax"),
        _json(TRANSACTION, currency="XXX"),
        _json(TRANSACTION, currency="eur"),
        _json(TRANSACTION, channel="fax", amount=-1),
    ],
    ACTIVITY: [
        _json(PAGE_VIEW),
        _without(PAGE_VIEW, "session_id"),
        _json(PAGE_VIEW, activity_type="login", success="unknown"),
        _json(PAGE_VIEW, activity_type="logout"),
    ],
    CHARGEBACKS: [
        _json(CHARGEBACK, transaction_time="2099-01-01T00:00:00+00:00"),
    ],
}


@pytest.fixture(scope="module")
def reason_of(spark) -> dict:
    """{(event type, line): reject_reason} for every line in LINES, parsed with clock NOW."""
    reasons = {}
    for event_type, lines in LINES.items():
        parsed = cleaning.parse_json_events(_lines(spark, *lines), event_type, now=NOW)
        for row in parsed.select(cleaning.RAW, cleaning.REJECT_REASON).collect():
            reasons[(event_type, row[cleaning.RAW])] = row[cleaning.REJECT_REASON]
    return reasons


# ------------------------------------------------------------------ valid records
def test_parse_valid_transaction_gives_declared_columns_and_null_reason(spark):
    line = _json(TRANSACTION)
    parsed = cleaning.parse_json_events(_lines(spark, line), TRANSACTIONS, now=NOW)
    expected_schema = T.StructType(TRANSACTION_SCHEMA.fields + [
        T.StructField(cleaning.RAW, T.StringType()), T.StructField(cleaning.REJECT_REASON, T.StringType())])
    expected = spark.createDataFrame(
        [("t1", "u1", "m1", 12.5, "EUR", "DE", "d1", "app", dt.datetime(2026, 3, 1, 10, tzinfo=UTC), line, None)],
        expected_schema)
    assert_df_equality(parsed, expected, ignore_nullable=True, ignore_row_order=True)


def test_parse_timestamp_with_plus_one_hour_offset_lands_on_the_utc_instant(spark):
    line = _json(TRANSACTION, event_time="2026-03-29T01:30:00+01:00")
    row = cleaning.parse_json_events(_lines(spark, line), TRANSACTIONS, now=NOW).first()
    assert row.event_time.replace(tzinfo=UTC) == dt.datetime(2026, 3, 29, 0, 30, tzinfo=UTC)


def test_parse_amount_as_numeric_string_is_accepted(reason_of):
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, amount="12.5"))] is None


def test_parse_zero_amount_is_not_negative(reason_of):
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, amount=0))] is None


def test_parse_null_success_on_page_view_is_valid_because_success_is_nullable(reason_of):
    assert reason_of[(ACTIVITY, _json(PAGE_VIEW))] is None


def test_parse_absent_nullable_session_id_is_valid(reason_of):
    assert reason_of[(ACTIVITY, _without(PAGE_VIEW, "session_id"))] is None


# ------------------------------------------------------------------ broken_json
def test_parse_truncated_line_is_broken_json(reason_of):
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION)[:40])] == "broken_json"


def test_parse_empty_line_is_broken_json(reason_of):
    assert reason_of[(TRANSACTIONS, "")] == "broken_json"


def test_parse_json_array_instead_of_object_is_broken_json(reason_of):
    assert reason_of[(TRANSACTIONS, "[" + _json(TRANSACTION) + "]")] == "broken_json"


def test_parse_text_after_the_closing_brace_is_broken_json(reason_of):
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION) + " garbage")] == "broken_json"


def test_parse_null_kafka_value_is_broken_json(spark):
    raw = spark.createDataFrame([(None,)], "value binary")
    assert [r.reject_reason for r in cleaning.parse_json_events(raw, TRANSACTIONS, now=NOW).collect()] == \
        ["broken_json"]


def test_parse_binary_kafka_value_is_decoded_as_utf8(spark):
    raw = spark.createDataFrame([(bytearray(_json(TRANSACTION).encode()),)], "value binary")
    assert [r.reject_reason for r in cleaning.parse_json_events(raw, TRANSACTIONS, now=NOW).collect()] == [None]


# ------------------------------------------------------------------ oversize
def test_parse_line_over_the_size_limit_is_oversize_even_if_valid_json(spark):
    padded = _json(TRANSACTION, device_id="d" * cleaning.MAX_RECORD_BYTES)    # valid JSON, too long
    at_limit = _json(TRANSACTION, device_id="d" * (cleaning.MAX_RECORD_BYTES - len(_json(TRANSACTION)) + 2))
    assert len(at_limit.encode()) == cleaning.MAX_RECORD_BYTES
    raw = spark.createDataFrame([(bytearray(line.encode()),) for line in (padded, padded[:-5], at_limit)],
                                "value binary")
    assert [r.reject_reason for r in cleaning.parse_json_events(raw, TRANSACTIONS, now=NOW).collect()] == \
        ["oversize", "oversize", None]


# ------------------------------------------------------------------ missing_field
def test_parse_absent_required_key_is_missing_field_with_its_column(reason_of):
    assert reason_of[(TRANSACTIONS, _without(TRANSACTION, "merchant_id"))] == "missing_field:merchant_id"


def test_parse_json_null_in_required_column_is_missing_field(reason_of):
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, amount=None))] == "missing_field:amount"


def test_parse_two_absent_keys_name_the_first_in_schema_order(reason_of):
    line = json.dumps({k: v for k, v in TRANSACTION.items() if k not in ("user_id", "country")})
    assert reason_of[(TRANSACTIONS, line)] == "missing_field:user_id"


# ------------------------------------------------------------------ wrong_type
def test_parse_amount_with_decimal_comma_is_wrong_type_amount(reason_of):
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, amount="12,50"))] == "wrong_type:amount"


def test_parse_day_first_timestamp_is_wrong_type_event_time(reason_of):
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, event_time="01/03/2026 10:00:00"))] == "wrong_type:event_time"


def test_parse_epoch_number_timestamp_is_wrong_type_event_time(reason_of):
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, event_time=1772359200))] == "wrong_type:event_time"


def test_parse_unknown_boolean_is_wrong_type_success(reason_of):
    assert reason_of[(ACTIVITY, _json(PAGE_VIEW, activity_type="login", success="unknown"))] == "wrong_type:success"


# ------------------------------------------------------------------ value checks
def test_parse_negative_amount_is_negative_amount(reason_of):
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, amount=-0.01))] == "negative_amount"


def test_parse_value_outside_the_declared_ones_is_unknown_value_with_its_column(reason_of):
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, channel="fax"))] == "unknown_value:channel"
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, currency="XXX"))] == "unknown_value:currency"
    assert reason_of[(ACTIVITY, _json(PAGE_VIEW, activity_type="logout"))] == "unknown_value:activity_type"


def test_parse_declared_values_are_case_sensitive(reason_of):
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, currency="eur"))] == "unknown_value:currency"


def test_parse_negative_amount_wins_over_unknown_value(reason_of):
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, channel="fax", amount=-1))] == "negative_amount"


def test_parse_timestamp_exactly_max_future_ahead_is_still_valid(reason_of):
    at_limit = (NOW + dt.timedelta(days=1)).isoformat()
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, event_time=at_limit))] is None


def test_parse_timestamp_one_millisecond_past_max_future_is_future_timestamp(reason_of):
    past_limit = (NOW + dt.timedelta(days=1, milliseconds=1)).isoformat()
    assert reason_of[(TRANSACTIONS, _json(TRANSACTION, event_time=past_limit))] == "future_timestamp"


def test_parse_max_future_parameter_moves_the_limit(spark):
    two_hours_ahead = (NOW + dt.timedelta(hours=2)).isoformat()
    parsed = cleaning.parse_json_events(_lines(spark, _json(TRANSACTION, event_time=two_hours_ahead)),
                                        TRANSACTIONS, now=NOW, max_future=dt.timedelta(hours=1))
    assert [r.reject_reason for r in parsed.collect()] == ["future_timestamp"]


def test_parse_future_transaction_time_of_a_chargeback_is_future_timestamp(reason_of):
    line = _json(CHARGEBACK, transaction_time="2099-01-01T00:00:00+00:00")
    assert reason_of[(CHARGEBACKS, line)] == "future_timestamp"


def test_parse_default_clock_is_current_timestamp(spark):
    year_ahead = (dt.datetime.now(UTC) + dt.timedelta(days=365)).isoformat()
    parsed = cleaning.parse_json_events(_lines(spark, _json(TRANSACTION, event_time=year_ahead)), TRANSACTIONS)
    assert [r.reject_reason for r in parsed.collect()] == ["future_timestamp"]


def test_parse_missing_field_wins_over_negative_amount(reason_of):
    line = json.dumps({**{k: v for k, v in TRANSACTION.items() if k != "user_id"}, "amount": -5})
    assert reason_of[(TRANSACTIONS, line)] == "missing_field:user_id"


def test_reject_kind_drops_the_column_name(spark):
    df = spark.createDataFrame([("wrong_type:amount",), ("broken_json",)], "reason string")
    assert [r.kind for r in df.select(cleaning.reject_kind(F.col("reason")).alias("kind")).collect()] == \
        ["wrong_type", "broken_json"]


# ------------------------------------------------------------------ typed input
TYPED_SCHEMA = T.StructType([T.StructField(f.name, f.dataType, True) for f in TRANSACTION_SCHEMA.fields])


def _typed_row(transaction_id: str, **changes) -> tuple:
    row = {**TRANSACTION, "transaction_id": transaction_id, "event_time": dt.datetime(2026, 3, 1, 10, tzinfo=UTC),
           **changes}
    return tuple(row[name] for name in TRANSACTION_SCHEMA.names)


@pytest.fixture(scope="module")
def typed_result(spark) -> dict:
    """{transaction_id: validated row} for typed rows, one per test below, validated at NOW."""
    df = spark.createDataFrame([
        _typed_row("valid"),
        _typed_row("null-device", device_id=None),
        _typed_row("negative", amount=-3.0),
        _typed_row("two-days-ahead", event_time=NOW + dt.timedelta(days=2)),
        _typed_row("fax", channel="fax"),
    ], TYPED_SCHEMA)
    # The same rows with amount stored as text, as a careless producer might write it.
    text_amounts = spark.createDataFrame(
        [_typed_row("text-decimal-comma", amount="12,50"), _typed_row("text-number", amount="12.5")],
        T.StructType([T.StructField(f.name, T.StringType() if f.name == "amount" else f.dataType, True)
                      for f in TRANSACTION_SCHEMA.fields]))
    rows = {}
    for typed in (df, text_amounts):
        validated = cleaning.validate_typed_events(typed, TRANSACTIONS, now=NOW)
        rows.update({row.transaction_id: row for row in validated.collect()})
        rows["_types_" + ("text" if typed is text_amounts else "typed")] = dict(validated.dtypes)
    return rows


def test_validate_typed_valid_row_has_null_reason_and_null_raw(typed_result):
    assert (typed_result["valid"].reject_reason, typed_result["valid"].raw) == (None, None)


def test_validate_typed_null_in_required_column_is_missing_field(typed_result):
    assert typed_result["null-device"].reject_reason == "missing_field:device_id"


def test_validate_typed_negative_amount_keeps_the_row_as_json_in_raw(typed_result):
    assert typed_result["negative"].reject_reason == "negative_amount"
    assert json.loads(typed_result["negative"].raw)["amount"] == -3.0


def test_validate_typed_time_two_days_ahead_is_future_timestamp(typed_result):
    assert typed_result["two-days-ahead"].reject_reason == "future_timestamp"


def test_validate_typed_unknown_channel_is_unknown_value(typed_result):
    assert typed_result["fax"].reject_reason == "unknown_value:channel"


def test_validate_typed_amount_stored_as_unreadable_string_is_wrong_type(typed_result):
    assert typed_result["text-decimal-comma"].reject_reason == "wrong_type:amount"


def test_validate_typed_amount_stored_as_numeric_string_is_cast_to_double(typed_result):
    assert typed_result["_types_text"]["amount"] == "double"
    assert typed_result["text-number"].reject_reason is None


def test_validate_typed_input_without_a_declared_column_raises(spark):
    df = spark.createDataFrame([_typed_row("valid")], TYPED_SCHEMA).drop("channel")
    with pytest.raises(ValueError, match="channel"):
        cleaning.validate_typed_events(df, TRANSACTIONS, now=NOW)


# ------------------------------------------------------------------ split and dedupe
def test_split_valid_keeps_declared_columns_for_valid_and_reason_for_rejected(spark):
    parsed = cleaning.parse_json_events(_lines(spark, _json(TRANSACTION), "{oops"), TRANSACTIONS, now=NOW)
    valid, rejected = cleaning.split_valid(parsed)
    assert valid.columns == TRANSACTION_SCHEMA.names
    assert [r.transaction_id for r in valid.collect()] == ["t1"]
    assert [(r.raw, r.reject_reason) for r in rejected.select("raw", "reject_reason").collect()] == \
        [("{oops", "broken_json")]


def test_drop_duplicate_events_in_batch_keeps_one_row_per_entity_and_id(spark):
    schema = "user_id string, transaction_id string, amount double"
    df = spark.createDataFrame([("u1", "t1", 1.0), ("u1", "t1", 1.0), ("u1", "t2", 2.0), ("u2", "t3", 3.0)], schema)
    expected = spark.createDataFrame([("u1", "t1", 1.0), ("u1", "t2", 2.0), ("u2", "t3", 3.0)], schema)
    assert_df_equality(cleaning.drop_duplicate_events(df, "user_id", "transaction_id"), expected,
                       ignore_row_order=True)


def test_drop_duplicate_events_in_batch_is_partitioned_by_the_entity(spark):
    """The windows partition by the entity: the dedupe's shuffle must serve them too."""
    df = spark.createDataFrame([("u1", "t1"), ("u2", "t2")], "user_id string, transaction_id string")
    deduplicated = cleaning.drop_duplicate_events(df, "user_id", "transaction_id")
    windowed = deduplicated.select(F.count("*").over(Window.partitionBy("user_id")).alias("n"))
    # Planned with the jobs' partitions (the profile's 4), whatever the test session runs with:
    # a single partition needs no hash partitioning at all.
    session_partitions = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "4")
    try:
        plan = windowed._jdf.queryExecution().executedPlan().toString()
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", session_partitions)
    assert plan.count("Exchange") == 1 and "hashpartitioning(user_id" in plan


# ------------------------------------------------------------------ on a stream
def _run_stream(spark, tmp_path, lines: list[str], build) -> list:
    """Feed ``lines`` through a file stream, apply ``build`` and collect the result."""
    source = tmp_path / "in"
    source.mkdir()
    (source / "part-0.jsonl").write_text("\n".join(lines) + "\n")
    name = f"cleaning_{tmp_path.name}".replace("-", "_")
    stream = build(spark.readStream.text(str(source)))
    query = (stream.writeStream.format("memory").queryName(name).outputMode("append")
             .option("checkpointLocation", str(tmp_path / "checkpoint")).trigger(availableNow=True).start())
    query.awaitTermination(120)
    try:
        return spark.table(name).collect()
    finally:
        spark.sql(f"DROP VIEW IF EXISTS {name}")


def test_parse_json_events_on_a_stream_gives_the_same_reasons(spark, tmp_path):
    lines = [_json(TRANSACTION), _json(TRANSACTION, amount=-1), _json(TRANSACTION)[:20]]
    rows = _run_stream(spark, tmp_path, lines,
                       lambda raw: cleaning.parse_json_events(raw, TRANSACTIONS, now=NOW))
    assert sorted(str(r.reject_reason) for r in rows) == ["None", "broken_json", "negative_amount"]


def test_drop_duplicate_events_on_a_stream_with_watermark_keeps_one_row_per_id(spark, tmp_path):
    lines = [_json(TRANSACTION), _json(TRANSACTION), _json(TRANSACTION, transaction_id="t2")]

    def build(raw):
        valid, _ = cleaning.split_valid(cleaning.parse_json_events(raw, TRANSACTIONS, now=NOW))
        return cleaning.drop_duplicate_events(valid.withWatermark("event_time", "1 hour"), "user_id",
                                              "transaction_id")

    rows = _run_stream(spark, tmp_path, lines, build)
    assert sorted(r.transaction_id for r in rows) == ["t1", "t2"]

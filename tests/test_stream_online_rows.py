"""``jobs.streaming.features.online_rows``, the rows a micro-batch stores, against the batch
function over every event: the stream gives each table only what its new rows' windows
reach, condensing what every window holds (the users' lifetime baseline, the merchants'
precounted events), and must still compute the batch values."""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from jobs.streaming.features import micro_batch_session, online_rows
from jobs.streaming.schemas import BASELINE_ARROW_SCHEMA, EVENT_ARROW_SCHEMAS
from jobs.streaming.state import RETENTION, EventHistory
from transformations.catalog import MERCHANT_FEATURES, USER_TRANSACTION_FEATURES
from transformations.schemas import ACTIVITY, CHARGEBACKS, SCHEMAS, TRANSACTIONS
from transformations.user_transactions import LIFETIME_BASELINE_SCHEMA

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def _transactions(rows: list[tuple[str, str, float, datetime]]) -> pa.Table:
    """(transaction id, user, amount, event time) -> transactions in the history's Arrow schema."""
    return pa.table({
        "transaction_id": [row[0] for row in rows],
        "user_id": [row[1] for row in rows],
        "merchant_id": [f"m{index % 3}" for index in range(len(rows))],
        "amount": [row[2] for row in rows],
        "currency": ["EUR"] * len(rows),
        "country": ["DE" if index % 2 else "FR" for index in range(len(rows))],
        "device_id": ["d1"] * len(rows),
        "channel": ["web"] * len(rows),
        "event_time": [row[3] for row in rows],
    }).cast(EVENT_ARROW_SCHEMAS[TRANSACTIONS])


def _merchant_transactions(rows: list[tuple[str, str, datetime]]) -> pa.Table:
    """(transaction id, merchant, event time) -> transactions in the history's Arrow schema."""
    return pa.table({
        "transaction_id": [row[0] for row in rows], "user_id": ["u1"] * len(rows),
        "merchant_id": [row[1] for row in rows], "amount": [10.0] * len(rows), "currency": ["EUR"] * len(rows),
        "country": ["DE"] * len(rows), "device_id": ["d1"] * len(rows), "channel": ["web"] * len(rows),
        "event_time": [row[2] for row in rows],
    }).cast(EVENT_ARROW_SCHEMAS[TRANSACTIONS])


def _chargebacks(rows: list[tuple[str, str, datetime]]) -> pa.Table:
    """(chargeback id, merchant, arrival time) -> chargebacks in the history's Arrow schema."""
    return pa.table({
        "chargeback_id": [row[0] for row in rows], "transaction_id": [f"t-{row[0]}" for row in rows],
        "user_id": ["u1"] * len(rows), "merchant_id": [row[1] for row in rows],
        "transaction_time": [row[2] - timedelta(days=1) for row in rows], "event_time": [row[2] for row in rows],
    }).cast(EVENT_ARROW_SCHEMAS[CHARGEBACKS])


def _ago(days: float = 0, hours: float = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


# Users whose history reaches past the table's 7 days: older transactions must reach
# the new rows through the lifetime baseline (count, spend, previous instant).
HISTORY = _transactions([
    # busy: every other day for 20 days, two ids delivered twice
    *[(f"b{day}", "busy", float(10 + day), _ago(days=day)) for day in range(1, 21, 2)],
    ("b12", "busy", 0.5, _ago(days=12)),
    ("b3", "busy", 13.0, _ago(days=3)),    # the same event delivered twice, inside 7 days
    ("b15", "busy", 25.0, _ago(days=15)),  # and twice, before them
    # quiet: nothing for the last 9 days, so the previous instant is older than 7 days
    ("q1", "quiet", 40.0, _ago(days=25)),
    ("q2", "quiet", 60.0, _ago(days=9)),
    # young: only recent transactions
    ("y1", "young", 5.0, _ago(hours=30)),
])
NEW = _transactions([
    ("n1", "busy", 30.0, _ago(hours=1)),
    ("n2", "quiet", 70.0, _ago(hours=1)),
    ("n3", "young", 8.0, _ago(hours=2)),
    ("n4", "young", 9.0, _ago(hours=1)),
])
# What eviction already folded: transactions older than the history, one per user.
FOLDED = pa.table({
    "user_id": ["busy", "quiet"], "lifetime_txn_count": [4, 1], "lifetime_txn_spend": [100.0, 7.5],
    "baseline_until": [_ago(days=31), _ago(days=40)],
}).cast(BASELINE_ARROW_SCHEMA)


@pytest.fixture(scope="module")
def session(spark):
    return micro_batch_session(spark)


def _history() -> EventHistory:
    events = {TRANSACTIONS: HISTORY, ACTIVITY: EVENT_ARROW_SCHEMAS[ACTIVITY].empty_table(),
              CHARGEBACKS: EVENT_ARROW_SCHEMAS[CHARGEBACKS].empty_table()}
    return EventHistory(events, FOLDED, {event_type: NOW - timedelta(days=30) - RETENTION[event_type]
                                         for event_type in events})


def _batch_rows(session) -> dict[str, dict]:
    """The batch function over every event, the folded ones as its baseline: each user's
    row at its newest instant."""
    every = pa.concat_tables([HISTORY, NEW])
    rows = USER_TRANSACTION_FEATURES.build(
        transactions=session.createDataFrame(every, SCHEMAS[TRANSACTIONS]),
        lifetime_baseline=session.createDataFrame(FOLDED, LIFETIME_BASELINE_SCHEMA),
    ).toArrow().to_pylist()
    newest: dict[str, dict] = {}
    for row in rows:
        if row["user_id"] not in newest or row["event_timestamp"] > newest[row["user_id"]]["event_timestamp"]:
            newest[row["user_id"]] = row
    return newest


def test_user_transactions_get_their_own_7_days_and_the_rest_as_baseline_with_batch_values(session):
    streamed, computed_over = online_rows(session, USER_TRANSACTION_FEATURES, _history(), {TRANSACTIONS: NEW})
    batch = _batch_rows(session)

    # Only the 6 transactions inside 7 days of the earliest new one went to Spark (a
    # replay among them); the 10 older ones reached it as baseline totals.
    assert computed_over == 6 + len(NEW)
    assert {row["user_id"] for row in streamed.to_pylist()} == {"busy", "quiet", "young"}
    for row in streamed.to_pylist():
        expected = batch[row["user_id"]]
        assert row["event_timestamp"] == expected["event_timestamp"]
        for name, value in row.items():
            if isinstance(value, float):
                assert math.isclose(value, expected[name], rel_tol=1e-12), (row["user_id"], name, value, expected[name])
            else:
                assert value == expected[name], (row["user_id"], name, value, expected[name])
    quiet = next(row for row in streamed.to_pylist() if row["user_id"] == "quiet")
    assert quiet["txn_seconds_since_prev"] == pytest.approx(timedelta(days=9, hours=-1).total_seconds())
    assert (quiet["txn_count_7d"], quiet["txn_lifetime_count"]) == (1, 1 + 2 + 1)


# Merchants: new events from 3 h to 1 h ago, so every wanted 30-day window holds
# (30 d + 1 h ago, 3 h ago): what lies there may go as counts. Events in the edge band
# (30 d + 3 h ago, 30 d + 1 h ago] are in some wanted windows and not in others, and
# events from 3 h ago on are as new as the new ones: both must go one by one.
MERCHANT_NEW = {
    TRANSACTIONS: _merchant_transactions([("n1", "ma", _ago(hours=3)), ("n2", "ma", _ago(hours=2)),
                                          ("n3", "mb", _ago(hours=1))]),
    CHARGEBACKS: _chargebacks([("cn1", "mb", _ago(hours=1))]),
}
MERCHANT_HISTORY = {
    TRANSACTIONS: _merchant_transactions([
        ("o1", "ma", _ago(days=30, hours=3)),    # before every wanted window: not needed
        ("e1", "ma", _ago(days=30, hours=2.5)),  # edge band, before ma's window (30 d + 2 h)
        ("e2", "ma", _ago(days=30, hours=1.5)),  # edge band, inside ma's window
        ("i1", "ma", _ago(days=10)),
        ("i2", "ma", _ago(days=5)),
        ("i2", "ma", _ago(days=5)),              # the same event delivered twice
        ("i3", "ma", _ago(hours=4)),
        ("l1", "ma", _ago(hours=2.5)),           # between the new ones (a late event, say)
        ("j1", "mb", _ago(days=15)),
        ("f1", "mb", _ago(days=30, hours=1.5)),  # edge band, before mb's window (30 d + 1 h)
    ]),
    CHARGEBACKS: _chargebacks([
        ("c1", "ma", _ago(days=20)),
        ("c2", "ma", _ago(days=30, hours=1.2)),  # edge band, inside ma's window
        ("c3", "mb", _ago(days=1)),
    ]),
}


def test_merchants_get_their_window_edges_one_by_one_and_the_rest_as_counts_with_batch_values(session):
    history = EventHistory({**MERCHANT_HISTORY, ACTIVITY: EVENT_ARROW_SCHEMAS[ACTIVITY].empty_table()},
                           BASELINE_ARROW_SCHEMA.empty_table(),
                           {event_type: NOW - timedelta(days=31) - RETENTION[event_type]
                            for event_type in (TRANSACTIONS, ACTIVITY, CHARGEBACKS)})
    streamed, computed_over = online_rows(session, MERCHANT_FEATURES, history, MERCHANT_NEW)
    every = {event_type: pa.concat_tables([MERCHANT_HISTORY[event_type], MERCHANT_NEW[event_type]])
             for event_type in MERCHANT_NEW}
    batch = MERCHANT_FEATURES.build(**{event_type: session.createDataFrame(events, SCHEMAS[event_type])
                                       for event_type, events in every.items()}).toArrow().to_pylist()
    newest_batch = {row["merchant_id"]: row for row in sorted(batch, key=lambda row: row["event_timestamp"])}

    # One by one: the 4 edge-band events, the late one and the 4 new ones; as counts:
    # one row per merchant for 5 more (the replay counted once); o1 not at all.
    assert computed_over == 4 + 1 + 4 + 2
    assert streamed.sort_by("merchant_id").to_pylist() == [newest_batch["ma"], newest_batch["mb"]]
    # ma at 2 h ago: e2, i1, i2, i3, l1, n1, n2 and chargebacks c1, c2; mb at 1 h ago: j1, n3; c3, cn1.
    assert [(row["merchant_txn_count_30d"], row["merchant_chargeback_count_30d"])
            for row in streamed.sort_by("merchant_id").to_pylist()] == [(7, 2), (2, 2)]


def _empty_history(**events: pa.Table) -> EventHistory:
    every = {event_type: events.get(event_type, EVENT_ARROW_SCHEMAS[event_type].empty_table())
             for event_type in (TRANSACTIONS, ACTIVITY, CHARGEBACKS)}
    return EventHistory(every, BASELINE_ARROW_SCHEMA.empty_table(),
                        {event_type: NOW - timedelta(days=31) - RETENTION[event_type] for event_type in every})


@pytest.mark.parametrize("table", [USER_TRANSACTION_FEATURES, MERCHANT_FEATURES], ids=lambda table: table.name)
def test_a_late_event_recomputes_its_entitys_newest_row_with_it(session, table):
    # The entity's newest event (1 h ago) is in the history, and Redis holds its row there;
    # the late event (2 h ago) must reach that row, as in the batch over every event.
    history = _merchant_transactions([("h1", "ml", _ago(days=3)), ("h2", "ml", _ago(hours=1))])
    late = _merchant_transactions([("late", "ml", _ago(hours=2))])
    streamed, _ = online_rows(session, table, _empty_history(**{TRANSACTIONS: history}), {TRANSACTIONS: late})

    every = {TRANSACTIONS: pa.concat_tables([history, late]),
             CHARGEBACKS: EVENT_ARROW_SCHEMAS[CHARGEBACKS].empty_table()}
    inputs = {source: session.createDataFrame(every[source], SCHEMAS[source]) for source in table.sources}
    batch = sorted(table.build(**inputs).toArrow().to_pylist(), key=lambda row: row["event_timestamp"])
    assert streamed.to_pylist() == [batch[-1]]
    assert batch[-1]["event_timestamp"] == _ago(hours=1)
    count = "txn_lifetime_count" if table is USER_TRANSACTION_FEATURES else "merchant_txn_count_30d"
    assert batch[-1][count] == 3

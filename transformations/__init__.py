"""Feature transformations: pure functions from event DataFrames to feature tables.

This docstring is THE definition of what a feature value means. The batch job, the
streaming job, the training-set builder, the consistency check and the API all rely on
it; the tests in ``tests/test_transformations_*.py`` pin every rule below.

Rows
----
A feature table has one row per (entity, ``event_timestamp``) for every distinct instant
at which the entity had an event of the table's source(s). Several events at the same
instant collapse into ONE row whose values count all of them, so (entity,
``event_timestamp``) is unique. ``event_timestamp`` is that instant (``TimestampType``,
a UTC instant). The values of a row hold from that instant on.

Times are instants, never wall-clock readings: a source in a non-UTC zone is converted
to UTC when it is parsed (see ``schemas``), so DST changes and midnights do not matter
here. Europe/Berlin 2026-03-29 01:30+01:00 and 03:30+02:00 are one hour apart.
Nothing is cut at midnight or at a partition boundary: windows cross them.

Windows
-------
A window of length W at a row with time t covers the entity's events with
``event_time`` in ``(t - W, t]``: the start is exclusive, the end inclusive, so the
row's own events count and an event exactly W before t does not. Windows are exact
sliding windows, one per row, with no hop and no tiles.

Precision is the microsecond (Spark timestamps hold microseconds). Rows are ordered by
``event_time`` as microseconds since the epoch (a long) and a window is the range frame
``-(W_micros - 1) .. 0`` over that key, which is exactly ``(t - W, t]``: an event
exactly W before t is out, one a microsecond later is in. All frames are built, named,
in ``windows.py``.

Lifetime features count all the entity's events with ``event_time <= t``.

Events
------
* Duplicate events (the same entity and id: ``transaction_id``, ``event_id``,
  ``chargeback_id``) count once: every function drops duplicates itself
  (``cleaning.drop_duplicate_events``), so it is safe on raw, replayed input.
  Duplicates are taken to be identical replays; the raw-events suite flags an id seen
  under two entities.
* Input order does not matter: late and out-of-order events land in the windows of
  their event time (and so also change the rows after them).
* A null ``amount`` still counts as a transaction (counts, lifetime count) but is left
  out of the amount statistics. A zero amount is a real amount.
* A chargeback is known only when it arrives, so it is placed at its arrival time
  (``event_time``), never at the time of the disputed transaction: using it at arrival
  cannot leak the label backwards.

"As of time T"
--------------
The value of a feature table for an entity as of time T (training sets, the online
store, the API) is the entity's newest row with ``event_timestamp`` strictly before T,
or null (every feature) when there is no such row or it is older than the table's
``ttl``: valid when ``T - ttl <= event_timestamp < T``. An event at exactly T is not
yet visible at T, so a training row never sees its own event.
As-of values do not decay between events: ``txn_count_1h`` as of T is the count in the
hour ending at the entity's last event before T, which may include events older than
``T - 1h``. The ttl (per table, in ``catalog.py``) bounds how stale such a value may be.

Request-time features (``on_demand.py``) combine a request field with as-of values: one
Column definition, also used by the batch columns, and a plain-Python twin for the HTTP
path that a test holds equal to it. At request time the amount is divided by the as-of
``txn_amount_mean_7d``; the batch column ``txn_amount_to_mean_7d_ratio`` divides a row's
amount by the mean over ``(t - 7d, t)``, the window without the row's own instant.

Streaming
---------
These functions take static DataFrames (row-based range windows are not supported on
streaming DataFrames). The streaming job applies them inside ``foreachBatch`` to the
micro-batch unioned with the entities' recent history (at least the table's longest
window back) and keeps the rows of the new events, so online values are the batch
values by construction. What reaches further back than the history is carried in the
``lifetime_baseline`` argument of ``user_transaction_features``: the lifetime totals of
the user's events up to ``baseline_until``, the instant of the newest of them (which is
also the previous instant for ``txn_seconds_since_prev``). Supplied events at or before
``baseline_until`` feed the windows only. An event arriving after a baseline that
should have held it must be folded into that baseline by the caller. The parsing and
cleaning functions (``cleaning.py``) are the ones that run on the streaming DataFrame
itself.
"""

"""Reading features of N entities from Redis in one pipelined round trip, no registry
calls; each view's ttl applied on read (see :mod:`plumbing.online_store`)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import NamedTuple, cast

import numpy as np
import redis
from google.protobuf.timestamp_pb2 import Timestamp
from redis.cluster import RedisCluster

from plumbing.config import Config
from plumbing.online_store.connections import RedisSettings, redis_client
from plumbing.online_store.layout import DOUBLE_TAG, FEAST_PROJECT, MICROS_PER_SECOND, View, decode_value
from transformations.tables import FeatureTable

PRESENT, MISSING, EXPIRED = "present", "missing", "expired"


@dataclass(frozen=True)
class FeatureValue:
    value: float | int | None    # None unless present (or present and stored as null)
    status: str                  # present | missing | expired
    event_time: datetime | None  # the stored row's event time; None when missing


_MISSING = FeatureValue(None, MISSING, None)


class OnlineStoreReader:
    """Reads features of N entities in one pipelined round trip, with no registry calls.

    The feature views come from the catalog's specs (or ``tables``) at construction. A
    feature reference is ``"<feature view>:<feature>"``, as in Feast.

    ``read`` does it all (blocking). An asyncio caller (the API) does the same in three
    steps around its own Redis client: ``plan`` (cached per list of references),
    ``commands`` (one HMGET per entity and view) and ``decode`` of the replies into
    compact :class:`OnlineStoreReader.Row` tuples, which ``read`` also uses. On Redis
    Cluster (``redis.mode: cluster``) ``read``'s pipeline is redis-py's cluster pipeline:
    one round trip per node.
    """

    class Plan:
        """What to read for a list of feature references: the views in first-seen order,
        each with its features, and the permutation back to the request's order."""

        __slots__ = ("order", "refs", "views")

        def __init__(self, refs: tuple[str, ...], views: list[_PlannedView]):
            self.refs = refs
            self.views = views
            grouped = [ref for view in views for ref in view.refs]
            # None when the grouped order is the request's (a feature service's refs are grouped)
            self.order = None if grouped == list(refs) else [grouped.index(ref) for ref in refs]

    class Row(NamedTuple):
        """One entity's row of one view: its status (``missing`` when nothing is stored,
        ``expired`` past the view's ttl, else ``present``), the stored event time, and per
        feature the value (None unless present) and status (a field absent from a stored
        row is ``missing``)."""

        status: str
        event_time: datetime | None
        values: tuple
        statuses: tuple[str, ...]

    def __init__(self, cfg: Config, project: str = FEAST_PROJECT, tables: Iterable[FeatureTable] | None = None):
        if tables is None:
            from transformations.catalog import FEATURE_TABLES

            tables = FEATURE_TABLES.values()
        self._views = {table.name: View(table, project) for table in tables}
        self._settings = RedisSettings.from_config(cfg)
        self._client: redis.Redis | RedisCluster | None = None  # on the first read (a cluster client connects)
        self._plans: dict[tuple[str, ...], OnlineStoreReader.Plan] = {}

    def plan(self, feature_refs: Sequence[str]) -> OnlineStoreReader.Plan:
        """The plan of ``feature_refs`` (KeyError for an unknown reference); cached."""
        refs = tuple(feature_refs)
        plan = self._plans.get(refs)
        if plan is None:
            grouped: dict[str, list[str]] = {}
            for ref in refs:
                view_name, _, feature = ref.partition(":")
                view = self._views.get(view_name)
                if view is None or feature not in view.fields:
                    raise KeyError(f"unknown feature reference {ref!r} (expected '<feature view>:<feature>')")
                grouped.setdefault(view_name, []).append(feature)
            plan = OnlineStoreReader.Plan(refs, [_PlannedView(self._views[name], features)
                                                 for name, features in grouped.items()])
            if len(self._plans) >= _MAX_CACHED_PLANS:  # arbitrary lists of references: stay bounded
                self._plans.clear()
            self._plans[refs] = plan
        return plan

    @staticmethod
    def _keys(plan: OnlineStoreReader.Plan, entity_rows: Sequence[Mapping[str, str]]):
        """(planned view, Redis key) per entity row and view, entity-major: the order of the replies."""
        for row_number, row in enumerate(entity_rows):
            for planned in plan.views:
                view = planned.view
                entity_id = row.get(view.join_key)
                if entity_id is None:
                    raise KeyError(f"entity row {row_number} has no {view.join_key!r} (needed by {view.name})")
                yield planned, view.key(entity_id)

    def commands(self, plan: OnlineStoreReader.Plan, entity_rows: Sequence[Mapping[str, str]]) -> list[tuple]:
        """One ``HMGET key _ts:<view> fields...`` per entity row and view, entity-major."""
        return [("HMGET", key, *planned.fields) for planned, key in self._keys(plan, entity_rows)]

    def packed_commands(self, plan: OnlineStoreReader.Plan, entity_rows: Sequence[Mapping[str, str]]) -> bytes:
        """``commands`` in Redis's wire protocol, ready to send: each view's fields are
        encoded once per plan, so a request encodes only its keys."""
        parts: list[bytes] = []
        for planned, key in self._keys(plan, entity_rows):
            parts += (planned.resp_head, b"$%d\r\n" % len(key), key, planned.resp_fields)
        return b"".join(parts)

    def keyed_commands(self, plan: OnlineStoreReader.Plan,
                       entity_rows: Sequence[Mapping[str, str]]) -> list[tuple[bytes, bytes]]:
        """``packed_commands`` one by one, each with its key: (key, packed HMGET), in the
        replies' order. For Redis Cluster, where each goes to the node of its key's slot."""
        return [(key, b"".join((planned.resp_head, b"$%d\r\n" % len(key), key, planned.resp_fields)))
                for planned, key in self._keys(plan, entity_rows)]

    def decode(self, plan: OnlineStoreReader.Plan, replies: Sequence[list], now: datetime,
               entity_count: int) -> list[list[OnlineStoreReader.Row]]:
        """The replies of ``commands`` -> per entity, one :class:`Row` per view of the plan.

        Values are decoded a feature column at a time across entities (doubles in one
        numpy pass), which is what makes a 100-entity read cheap."""
        view_count = len(plan.views)
        by_view = []
        for number, planned in enumerate(plan.views):
            by_view.append(planned.decode(replies[number::view_count], now))
        return [list(rows) for rows in zip(*by_view, strict=True)] if by_view else [[] for _ in range(entity_count)]

    def read(self, feature_refs: Sequence[str], entity_rows: Sequence[Mapping[str, str]],
             now: datetime | None = None) -> list[dict[str, FeatureValue]]:
        """For each entity row (join key -> id), ``{feature ref: FeatureValue}``.

        ``now`` (timezone-aware) decides expiry; default: the current time.
        """
        plan = self.plan(feature_refs)
        now = now or datetime.now(timezone.utc)
        if self._client is None:
            self._client = redis_client(self._settings)
        pipe = self._client.pipeline(transaction=False)
        for command in self.commands(plan, entity_rows):
            pipe.execute_command(*command)
        decoded = self.decode(plan, pipe.execute(), now, len(entity_rows))
        results = []
        for rows in decoded:
            values: dict[str, FeatureValue] = {}
            for planned, row in zip(plan.views, rows, strict=True):
                if row.status == MISSING:
                    values.update((ref, _MISSING) for ref in planned.refs)
                    continue
                for ref, value, status in zip(planned.refs, row.values, row.statuses, strict=True):
                    values[ref] = _MISSING if status == MISSING else FeatureValue(value, status, row.event_time)
            results.append(values)
        return results


# ---- the reader's decoding -----------------------------------------------------------------
_MAX_CACHED_PLANS = 256
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DOUBLE_RECORDS = np.dtype([("tag", "u1"), ("value", "<f8")])  # a serialized double Value: 9 bytes
_VECTORIZE_FROM_ROWS = 8  # fewer present rows: value by value is cheaper than numpy's fixed cost
# Decoded int64 Values: counts repeat a lot. Keyed by bytes only; the None in the key type lets
# map(_BIGINTS.get, column) take a column with absent fields (None) as it is.
_BIGINTS: dict[bytes | None, int | None] = {}


def _decode_bigints(column: Sequence[bytes | None]) -> list[int | None]:
    """A column of stored int64 Values (b"" for null, None for an absent field) -> ints."""
    values = list(map(_BIGINTS.get, column))  # None: null, absent, or not decoded yet
    if None in values:
        if len(_BIGINTS) >= 1 << 16:
            _BIGINTS.clear()
        for number, data in enumerate(column):
            if data and values[number] is None:
                values[number] = _BIGINTS[data] = cast("int | None", decode_value(data))  # an int64 Value: an int
    return values


def _decode_doubles(column: Sequence[bytes | None]) -> list[float | None]:
    """A column of stored double Values (b"" for null, None for an absent field) ->
    floats, in one numpy pass when every value is a 9-byte double."""
    if len(column) >= _VECTORIZE_FROM_ROWS and None not in column:
        stored = cast("Sequence[bytes]", column)  # no None in it: checked just above
        if set(map(len, stored)) == {9}:
            records = np.frombuffer(b"".join(stored), dtype=_DOUBLE_RECORDS)
            if (records["tag"] == DOUBLE_TAG[0]).all():
                return records["value"].tolist()
    return [decode_value(data) for data in column]


class _PlannedView:
    """One view of a read plan: its features, their references and hash fields."""

    def __init__(self, view: View, features: list[str]):
        self.view = view
        self.features = features
        self.refs = [f"{view.name}:{feature}" for feature in features]
        self.fields = [view.ts_field, *(view.fields[feature] for feature in features)]
        # RESP: "*<arguments>" "$5 HMGET", then the key (per entity), then the fields ("\r\n" after each).
        self.resp_head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(self.fields))
        self.resp_fields = b"\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(field), field) for field in self.fields)
        dtypes = {feature.name: feature.dtype for feature in view.table.features}
        self.decoders = [_decode_doubles if dtypes[feature] == "double" else None for feature in features]
        self.ttl_micros = view.ttl_micros
        count = len(features)
        self.missing = OnlineStoreReader.Row(MISSING, None, (None,) * count, (MISSING,) * count)
        self.all_present = (PRESENT,) * count
        self.all_expired = (EXPIRED,) * count
        self.nulls = (None,) * count

    def decode(self, replies: Sequence[list], now: datetime) -> list[OnlineStoreReader.Row]:
        """This view's replies, one per entity -> its rows."""
        now_micros = (now - _EPOCH) // _ONE_MICROSECOND
        rows: list = [self.missing] * len(replies)
        present: list[int] = []  # reply numbers of rows within their ttl
        times: dict[int, datetime] = {}
        for number, reply in enumerate(replies):
            stored_ts = reply[0]
            if stored_ts is None:
                continue
            stamp = Timestamp.FromString(stored_ts)
            micros = stamp.seconds * MICROS_PER_SECOND + stamp.nanos // 1000
            event_time = times[number] = _EPOCH + timedelta(microseconds=micros)
            if now_micros - micros > self.ttl_micros:
                statuses = self.all_expired
                if None in reply:
                    statuses = tuple(MISSING if stored is None else EXPIRED for stored in reply[1:])
                rows[number] = OnlineStoreReader.Row(EXPIRED, event_time, self.nulls, statuses)
            else:
                present.append(number)
        if not present:
            return rows
        # Decode feature columns over the present rows, then back to rows.
        stored_columns = list(zip(*[replies[number] for number in present], strict=True))  # [0]: the timestamps
        columns = []
        for column, decoder in zip(stored_columns[1:], self.decoders, strict=True):
            columns.append(_decode_doubles(column) if decoder is _decode_doubles else _decode_bigints(column))
        for number, values in zip(present, zip(*columns, strict=True), strict=True):
            reply = replies[number]
            statuses = self.all_present
            if None in reply:  # a field absent from a stored row (e.g. a feature added later)
                statuses = tuple(MISSING if stored is None else PRESENT for stored in reply[1:])
            rows[number] = OnlineStoreReader.Row(PRESENT, times[number], values, statuses)
        return rows


_ONE_MICROSECOND = timedelta(microseconds=1)

"""The online store: Redis in exactly the layout of Feast's Redis online store, written
and read without Feast on the hot path.

The streaming job (``foreachBatch``), the batch publish and the API use this module;
Feast's SDK, ``feast serve`` and ``feast materialize`` read and write the same bytes.
It never imports feast (a 5 s import), because it runs inside Spark's Python workers.

Layout (Feast 0.67, ``entity_key_serialization_version: 3``; read from
``feast/infra/online_stores/redis.py``, ``helpers.py`` and ``key_encoding_utils.py``,
and pinned byte for byte against Feast by ``tests/test_online_store.py``)
--------------------------------------------------------------------------------------
* One Redis hash per (entity, project). Its key is the serialized entity key followed by
  the project name. For one string join key, integers as uint32 little-endian::

      1 (join keys) | 2 (ValueType.STRING) | len(join key) | join key (utf-8)
      | 2 (ValueType.STRING) | len(id) | id (utf-8) | project (utf-8)

  All feature views of an entity share its hash: ``user_transaction_features`` and
  ``user_activity_features`` both live in the ``user_id`` hash.
* A feature's hash field is murmur3_32 (seed 0, unsigned) of ``"<view>:<feature>"`` as 4
  little-endian bytes; its value a serialized ``feast.types.Value``: ``double_val`` for
  double features, ``int64_val`` for bigint ones, an empty Value for null (and for NaN,
  which Feast also stores as null).
* The field ``"_ts:<view>"`` (plain text) holds the row's event time, a serialized
  ``google.protobuf.Timestamp`` to the microsecond (Feast converts through datetime).
  Fields go in Feast's order (timestamp, then features), so even HGETALL's order matches.

Writes: an older row never wins, atomically
-------------------------------------------
The Lua script :data:`WRITE_UNLESS_OLDER_LUA` compares each row's event time with the
stored ``_ts:<view>`` of its entity and writes the row unless it is older, inside Redis.
So an older value never overwrites a newer one and concurrent writers cannot interleave.
A row of the same instant does replace the stored one (Feast's rule is strictly newer):
the stream recomputes an entity's newest row when a late event for it arrives, and that
later computation has seen every event the earlier one had. Replaying a micro-batch
writes the same values again. One ``EVALSHA`` carries
``ROWS_PER_SCRIPT`` rows (a call per row costs Redis several times more); calls go out
pipelined, ``batch_size`` rows per round trip, the next chunk encoded while Redis works
on the previous one. A call's keys need not share a hash slot, so this is for a single
Redis (with replicas), not Redis Cluster.

TTL: what Feast 0.67 does, and what we do
-----------------------------------------
Feast's ``get_online_features`` on Redis ignores a view's ttl (only its pre-computed
vector path checks one); its only expiry is ``key_ttl_seconds``: ``EXPIRE`` after each
of its writes, one number for all views. We expire a key when its last valid value
expires, at ``max(event time + view ttl)`` over the views in it, and a write only ever
moves that later; so Feast's readers stop seeing an entity once all its values are
stale. Our reader applies each view's ttl on read: a value past it is ``expired`` even
while the key lives on for another view. Valid means ``now - ttl <= event time`` (the
"as of" rule of ``transformations``); the key expiry is rounded up to the millisecond.
A row already past its ttl when written is skipped and counted (``skipped_expired``):
storing it would expire the key at once, and the entity's other views with it.
"""
from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import NamedTuple, TypeAlias, cast

import mmh3
import numpy as np
import pandas as pd
import pyarrow as pa
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from plumbing.config import Config
from transformations.tables import FeatureTable

FEAST_PROJECT = "tessera"  # the project of feature_store.yaml; it ends every Redis key
DEFAULT_BATCH_SIZE = 2_000  # rows per pipelined round trip
# Rows per script call: a call blocks Redis (and so the API's reads) while it runs, about
# 1 ms for 50 rows of 21 features on this 2-core machine; fewer rows add per-call overhead.
ROWS_PER_SCRIPT = 50

PRESENT, MISSING, EXPIRED = "present", "missing", "expired"

# ---- Feast's wire format (tests compare every byte with Feast's own) --------------------
_UINT32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d")
_VALUE_TYPE_STRING = 2  # feast.types.ValueType.STRING
_INT64_TAG = b"\x20"    # feast.types.Value field 4 (int64_val), varint
_DOUBLE_TAG = b"\x29"   # feast.types.Value field 5 (double_val), 64-bit
_MICROS_PER_SECOND = 1_000_000


def entity_key_prefix(join_key: str) -> bytes:
    """The part of a Redis key before the entity id: it depends only on the join key."""
    name = join_key.encode()
    return _UINT32(1) + _UINT32(_VALUE_TYPE_STRING) + _UINT32(len(name)) + name + _UINT32(_VALUE_TYPE_STRING)


def redis_key(join_key: str, entity_id: str, project: str = FEAST_PROJECT) -> bytes:
    """Feast's Redis key of one entity (string join key), project included."""
    value = entity_id.encode()
    return entity_key_prefix(join_key) + _UINT32(len(value)) + value + project.encode()


def feature_field(view: str, feature: str) -> bytes:
    """Feast's hash field of a feature: murmur3_32 of "view:feature", 4 bytes little-endian."""
    return _UINT32(mmh3.hash(f"{view}:{feature}", signed=False))


def timestamp_field(view: str) -> bytes:
    return f"_ts:{view}".encode()


def encode_doubles(column: pa.ChunkedArray) -> list[bytes]:
    """Serialized Values of a double column: tag + 8 little-endian bytes, b"" for null and
    NaN. Built in one numpy pass, since this runs for most values written."""
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)  # null -> NaN
    packed = np.empty(len(values), dtype=[("tag", "u1"), ("value", "<f8")])  # 9 bytes a row
    packed["tag"] = _DOUBLE_TAG[0]
    packed["value"] = values
    raw = packed.tobytes()
    encoded = [raw[start:start + 9] for start in range(0, len(raw), 9)]
    for row in np.flatnonzero(np.isnan(values)):
        encoded[row] = b""
    return encoded


@lru_cache(maxsize=1 << 16)  # counts repeat a lot, so most values come from the cache
def encode_bigint(value: int | None) -> bytes:
    """Serialized Value with int64_val: tag + varint (7 bits a byte, low first; a negative
    number is its 64-bit two's complement, 10 bytes)."""
    if value is None:
        return b""
    number = value & 0xFFFF_FFFF_FFFF_FFFF
    varint = bytearray()
    while number > 0x7F:
        varint.append((number & 0x7F) | 0x80)
        number >>= 7
    varint.append(number)
    return _INT64_TAG + bytes(varint)


def encode_bigints(column: pa.ChunkedArray) -> list[bytes]:
    # pandas keeps an integer column with nulls as float: back to int64 (3.0 -> 3; 3.5 fails).
    return [encode_bigint(value) for value in column.cast(pa.int64()).to_pylist()]


_COLUMN_ENCODERS = {"double": encode_doubles, "bigint": encode_bigints}


def decode_value(data: bytes | None) -> float | int | None:
    """A serialized feast Value of the kinds this project stores -> Python value."""
    if not data:
        return None
    if data[:1] == _DOUBLE_TAG:
        return _DOUBLE.unpack_from(data, 1)[0]
    if data[:1] == _INT64_TAG:
        number = 0
        for position, byte in enumerate(data[1:]):
            number |= (byte & 0x7F) << (7 * position)
        return number - (1 << 64) if number >= (1 << 63) else number
    raise ValueError(f"unsupported feast Value {data[:12]!r}: this project stores only double and int64")


def encode_timestamp(micros: int) -> bytes:
    """google.protobuf.Timestamp of microseconds since the epoch."""
    if micros < 0:
        raise ValueError("event times before 1970 are not supported (the Lua comparison reads seconds unsigned)")
    seconds, sub_micros = divmod(micros, _MICROS_PER_SECOND)
    return Timestamp(seconds=seconds, nanos=sub_micros * 1000).SerializeToString()


def decode_timestamp(data: bytes) -> datetime:
    stamp = Timestamp.FromString(data)
    return datetime.fromtimestamp(stamp.seconds, tz=timezone.utc) + timedelta(microseconds=stamp.nanos // 1000)


# ---- the atomic write -----------------------------------------------------------------
WRITE_UNLESS_OLDER_LUA = """
-- Writes rows of one feature view, each unless older than the stored row of its entity
-- (a row of the same instant replaces it: it was recomputed with a late event).
-- KEYS: one entity hash per row.
-- ARGV: "_ts:<view>", the number of features F, the F feature fields; then per row: the
--       serialized Timestamp, the unix ms when the row stops being valid, F serialized values.
-- Returns how many rows were written (the others were older than the stored one).
local function decode_timestamp(bytes)
  -- google.protobuf.Timestamp: field 1 seconds (tag 8), field 2 nanos (tag 16), varints.
  local seconds, nanos, i = 0, 0, 1
  while i <= #bytes do
    local tag = string.byte(bytes, i)
    i = i + 1
    local value, scale, byte = 0, 1, 128
    while byte >= 128 do
      byte = string.byte(bytes, i)
      i = i + 1
      value = value + (byte % 128) * scale
      scale = scale * 128
    end
    if tag == 8 then seconds = value elseif tag == 16 then nanos = value end
  end
  return seconds, nanos
end

local function is_older(new_bytes, stored_bytes)
  local new_seconds, new_nanos = decode_timestamp(new_bytes)
  local old_seconds, old_nanos = decode_timestamp(stored_bytes)
  return new_seconds < old_seconds or (new_seconds == old_seconds and new_nanos < old_nanos)
end

local ts_field = ARGV[1]
local feature_count = tonumber(ARGV[2])
local args_per_row = 2 + feature_count
-- One HSET argument list for every row, in Feast's field order (the timestamp, then the
-- features): the fields stay, each row fills in its key, Timestamp and values.
local hset = {'HSET', false, ts_field, false}
for f = 1, feature_count do
  hset[3 + 2 * f] = ARGV[2 + f]
end
local written = 0
for row = 1, #KEYS do
  local key = KEYS[row]
  local at = 3 + feature_count + (row - 1) * args_per_row  -- this row's Timestamp
  local stored = redis.call('HGET', key, ts_field)
  if not stored or not is_older(ARGV[at], stored) then
    hset[2], hset[4] = key, ARGV[at]
    for f = 1, feature_count do
      hset[4 + 2 * f] = ARGV[at + 1 + f]
    end
    redis.call(unpack(hset))
    -- Only ever push the expiry later: the key also holds the entity's other views.
    -- PEXPIRETIME is -1 for a key without expiry, so a new key always gets one.
    local expires_at = tonumber(ARGV[at + 1])
    if redis.call('PEXPIRETIME', key) < expires_at then
      redis.call('PEXPIREAT', key, expires_at)
    end
    written = written + 1
  end
end
return written
"""
WRITE_UNLESS_OLDER_SHA = hashlib.sha1(WRITE_UNLESS_OLDER_LUA.encode()).hexdigest()


# ---- connections ------------------------------------------------------------------------
@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is: plain values, so a writer pickles cheaply into Spark tasks."""

    host: str
    port: int
    db: int
    password: str | None = field(default=None, repr=False)
    username: str | None = None      # redis.username (ACL user)
    ssl: bool = False                # redis.ssl: TLS to a managed Redis
    ssl_ca_certs: str | None = None  # redis.ssl_ca_certs: CA bundle (None: the system's)

    @classmethod
    def from_config(cls, cfg: Config) -> RedisSettings:
        return cls(cfg.redis.host, cfg.redis.port, cfg.redis.db, cfg.redis_password(),
                   cfg.redis.username, cfg.redis.ssl, cfg.redis.ssl_ca_certs)

    def client_options(self) -> dict:
        """The connection options redis-py's clients (sync and asyncio) take for these settings."""
        options = {"host": self.host, "port": self.port, "db": self.db, "password": self.password,
                   "username": self.username}
        if self.ssl:
            options.update(ssl=True, ssl_ca_certs=self.ssl_ca_certs)
        return options


_POOLS: dict[RedisSettings, redis.ConnectionPool] = {}


def redis_client(settings: RedisSettings) -> redis.Redis:
    """A client on this process's one connection pool for ``settings`` (cheap to call).

    redis-py pools notice a fork and reconnect, so Spark's forked Python workers are safe.
    """
    pool = _POOLS.get(settings)
    if pool is None:
        options = settings.client_options()
        if options.pop("ssl", False):  # a pool takes TLS as its connection class
            options["connection_class"] = redis.SSLConnection
        pool = _POOLS[settings] = redis.ConnectionPool(
            **options, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)
    return redis.Redis(connection_pool=pool)


# ---- one feature view's place in the hashes ----------------------------------------------
class _View:
    """Everything the Redis layout needs about one feature table, derived once."""

    def __init__(self, table: FeatureTable, project: str):
        if table.ttl <= timedelta(0):
            raise ValueError(f"{table.name}: the online store needs a positive ttl, got {table.ttl}")
        self.table = table
        self.name = table.name
        self.join_key = table.entity_column
        self.ttl = table.ttl
        self.ttl_micros = table.ttl // timedelta(microseconds=1)
        self.key_prefix = entity_key_prefix(table.entity_column)
        self.project_bytes = project.encode()
        self.ts_field = timestamp_field(table.name)
        self.fields = {feature.name: feature_field(table.name, feature.name) for feature in table.features}

    def key(self, entity_id: str) -> bytes:
        if not isinstance(entity_id, str):
            raise TypeError(f"{self.join_key} must be a string (a Feast entity of type STRING), "
                            f"got {type(entity_id).__name__} {entity_id!r}")
        value = entity_id.encode()
        return self.key_prefix + _UINT32(len(value)) + value + self.project_bytes


# ---- writing ----------------------------------------------------------------------------
@dataclass
class WriteResult:
    written: int = 0
    skipped_older: int = 0    # the stored row was newer
    skipped_expired: int = 0  # already past the view's ttl when written

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(self.written + other.written, self.skipped_older + other.skipped_older,
                           self.skipped_expired + other.skipped_expired)


Rows: TypeAlias = pd.DataFrame | pa.Table | pa.RecordBatch | Iterable[Mapping]


def _as_arrow(rows: Rows, table: FeatureTable) -> pa.Table:
    """The table's columns (entity, timestamp, features) of any supported input, as Arrow."""
    if isinstance(rows, pd.DataFrame):
        data = pa.Table.from_pandas(rows, preserve_index=False)
    elif isinstance(rows, pa.RecordBatch):
        data = pa.Table.from_batches([rows])
    elif isinstance(rows, pa.Table):
        data = rows
    else:
        data = pa.Table.from_pylist(list(rows))
    if data.num_rows == 0:
        return data
    missing = [name for name in table.columns if name not in data.column_names]
    if missing:
        raise ValueError(f"rows for {table.name} lack the columns {missing}")
    return data.select(table.columns)


def _epoch_micros(column: pa.ChunkedArray) -> list[int]:
    """Event times as microseconds since the epoch; a time without zone is taken as UTC."""
    if not pa.types.is_timestamp(column.type):
        raise TypeError(f"the timestamp column must be an Arrow timestamp, got {column.type}")
    # Truncates nanoseconds, as Feast's conversion through datetime does.
    return column.cast(pa.timestamp("us", tz=column.type.tz), safe=False).cast(pa.int64()).to_pylist()


@dataclass
class _Chunk:
    """The Redis commands for a slice of rows, and how to count their replies."""

    commands: list[tuple]
    rows_sent: int
    skipped_expired: int

    def read_result(self, connection: redis.Connection) -> WriteResult:
        replies = [connection.read_response() for _ in self.commands]
        written = sum(replies[1:])  # replies[0] answers SCRIPT LOAD
        return WriteResult(written=written, skipped_older=self.rows_sent - written,
                           skipped_expired=self.skipped_expired)


def _encode_chunk(view: _View, chunk: pa.Table, now_ms: int) -> _Chunk:
    """SCRIPT LOAD, then one EVALSHA of the write script per ``ROWS_PER_SCRIPT`` rows."""
    keys = [view.key(entity_id) for entity_id in chunk.column(view.join_key).to_pylist()]
    event_micros = _epoch_micros(chunk.column(view.table.timestamp_column))
    value_columns = [_COLUMN_ENCODERS[feature.dtype](chunk.column(feature.name))
                     for feature in view.table.features]
    header = [view.ts_field, len(view.fields), *view.fields.values()]

    # Loaded ahead of the EVALSHAs on the same connection: after a Redis restart the
    # script cache is empty, and this keeps the writer working without a retry path.
    commands: list[tuple] = [("SCRIPT", "LOAD", WRITE_UNLESS_OLDER_LUA)]
    rows_sent = skipped_expired = 0
    call_keys: list[bytes] = []
    call_args: list = []
    for key, micros, values in zip(keys, event_micros, zip(*value_columns, strict=True), strict=True):
        expires_at_ms = -(-(micros + view.ttl_micros) // 1000)  # rounded up
        if expires_at_ms <= now_ms:
            skipped_expired += 1
            continue
        call_keys.append(key)
        call_args += (encode_timestamp(micros), expires_at_ms)
        call_args += values
        if len(call_keys) == ROWS_PER_SCRIPT:
            commands.append(("EVALSHA", WRITE_UNLESS_OLDER_SHA, len(call_keys), *call_keys, *header, *call_args))
            rows_sent += len(call_keys)
            call_keys, call_args = [], []
    if call_keys:
        commands.append(("EVALSHA", WRITE_UNLESS_OLDER_SHA, len(call_keys), *call_keys, *header, *call_args))
        rows_sent += len(call_keys)
    return _Chunk(commands, rows_sent, skipped_expired)


class OnlineStoreWriter:
    """Writes feature rows to Redis in Feast's layout; an older row never replaces a newer one.

    Cheap to build and to pickle (it holds only connection settings), so build it on the
    driver and use it inside ``foreachBatch``, ``foreachPartition`` or ``mapInArrow``:
    each process opens one connection pool on first use.
    """

    def __init__(self, cfg: Config, project: str = FEAST_PROJECT, batch_size: int = DEFAULT_BATCH_SIZE):
        self.settings = RedisSettings.from_config(cfg)
        self.project = project
        self.batch_size = batch_size

    def write(self, table: FeatureTable, rows: Rows, now: datetime | None = None) -> WriteResult:
        """Write ``rows`` (pandas, an Arrow table or batch, or dicts) of feature table ``table``.

        ``now`` decides which rows are already expired (default: the current time).
        """
        view = _View(table, self.project)
        data = _as_arrow(rows, table)
        now_ms = int((now.timestamp() if now else time.time()) * 1000)
        pool = redis_client(self.settings).connection_pool
        connection = pool.get_connection()
        result = WriteResult()
        try:
            # One chunk in flight: while Redis runs chunk n, this process encodes chunk n+1,
            # so client and server work overlap instead of adding up.
            in_flight: _Chunk | None = None
            for start in range(0, data.num_rows, self.batch_size):
                chunk = _encode_chunk(view, data.slice(start, self.batch_size), now_ms)
                connection.send_packed_command(connection.pack_commands(chunk.commands))
                if in_flight:
                    result += in_flight.read_result(connection)
                in_flight = chunk
            if in_flight:
                result += in_flight.read_result(connection)
        except BaseException:
            connection.disconnect()  # replies may be left unread: never reuse this connection as is
            raise
        finally:
            pool.release(connection)
        return result


def write_dataframe_online(df, table: FeatureTable, cfg: Config, project: str = FEAST_PROJECT) -> WriteResult:
    """Write the newest row per entity of a feature-table Spark DataFrame, from the
    executors (``mapInArrow``); only per-partition counts come back to the driver."""
    from pyspark.sql import functions as F

    newest = (df.groupBy(table.entity_column)
              .agg(F.max_by(F.struct(*table.columns), F.col(table.timestamp_column)).alias("row"))
              .select("row.*"))
    writer = OnlineStoreWriter(cfg, project)
    count_names = list(asdict(WriteResult()))

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        result = WriteResult()
        for batch in batches:
            result += writer.write(table, batch)
        yield pa.RecordBatch.from_pylist([asdict(result)])

    counts = newest.mapInArrow(write_partition, ", ".join(f"{name} long" for name in count_names))
    totals = counts.agg(*[F.sum(name).alias(name) for name in count_names]).first()
    return WriteResult(**{name: int(totals[name] or 0) for name in count_names})


# ---- reading ----------------------------------------------------------------------------
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
    compact :class:`OnlineStoreReader.Row` tuples, which ``read`` also uses.
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
        self._views = {table.name: _View(table, project) for table in tables}
        self._client = redis_client(RedisSettings.from_config(cfg))
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
            if (records["tag"] == _DOUBLE_TAG[0]).all():
                return records["value"].tolist()
    return [decode_value(data) for data in column]


class _PlannedView:
    """One view of a read plan: its features, their references and hash fields."""

    def __init__(self, view: _View, features: list[str]):
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
            micros = stamp.seconds * _MICROS_PER_SECOND + stamp.nanos // 1000
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
